"""Timings of `distill bench`: the training step of each configuration in interleaved rounds, the loss
alone, and the teacher's counterfactual pass alone (what the keys mean: `distill.bench.run`).

    from distill.bench.timing import time_steps
    res = time_steps(trainer, cfgs, batches, repeats=3, matmul_n=2048, flops_per_kd_step=flops)
    res["ratios"]["kd_over_ce_step"]     # the median over rounds of the per-round ratio
"""

from __future__ import annotations

import statistics
import time

import torch

from distill.bench.setup import STEP_CONFIGS, Trainer, matmul_flops


def time_steps(trainer: Trainer, cfgs: dict, batches: list[dict], repeats: int, matmul_n: int,
               flops_per_kd_step: float, peak_mem: bool = False) -> dict:
    """Interleaved rounds: round r runs every configuration once on batch r (order rotated each round) and one
    matmul probe; round 0 is the untimed warm-up. Ratios are per round (same batch, same minute), then the
    median over rounds."""
    names = [n for n in STEP_CONFIGS if n in cfgs]
    rec, first, cuda_peak = _timed_rounds(trainer, cfgs, names, batches, repeats, matmul_n, peak_mem)
    out, steps = _step_medians(names, rec, first, cuda_peak if peak_mem else None)
    paired = _paired_ratios(steps, rec, flops_per_kd_step)
    out["per_round"] = paired
    out["ratios"] = {k: statistics.median(v) for k, v in paired.items()}
    out["matmul_flops_per_s"] = statistics.median(rec["matmul_flops"])
    out["matmul_flops_per_s_all"] = rec["matmul_flops"]
    return out


def _timed_rounds(trainer: Trainer, cfgs: dict, names: list[str], batches: list[dict], repeats: int,
                  matmul_n: int, peak_mem: bool) -> tuple[dict, dict, dict]:
    """Run the rounds. Returns the per-round phase times of each configuration (and the matmul FLOP/s under
    "matmul_flops"), each configuration's untimed first step and its CUDA peak (with `peak_mem`)."""
    rec = {n: {"fwd_bwd": [], "opt": [], "teacher": [], "counterfactual_batch": []} for n in names}
    first = {}
    rec["matmul_flops"] = []
    cuda_peak = {}
    for r in range(repeats + 1):
        # Rotated, and reversed every other round, so no configuration always follows the same one.
        order = names[r % len(names):] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            if peak_mem:
                torch.cuda.reset_peak_memory_stats(trainer.device)
            spent = trainer.step(cfgs[name], batches[r % len(batches)])
            if peak_mem:
                cuda_peak[name] = max(cuda_peak.get(name, 0), torch.cuda.max_memory_allocated(trainer.device))
            if r == 0:
                first[name] = spent["step"]  # includes one-off work: torch.compile for kd_compiled
                continue
            rec[name]["fwd_bwd"].append(spent["fwd_bwd"])
            rec[name]["opt"].append(spent["clip"] + spent["optimizer"])
            rec[name]["teacher"].append(spent.get("teacher", 0.0))
            rec[name]["counterfactual_batch"].append(spent.get("counterfactual_batch", 0.0))
        flops = matmul_flops(matmul_n, trainer.device)
        if r > 0:
            rec["matmul_flops"].append(flops)
    return rec, first, cuda_peak


def _step_medians(names: list[str], rec: dict, first: dict, cuda_peak: dict | None) -> tuple[dict, dict]:
    """Per configuration: the medians of each phase and the per-round step times (fwd_bwd + opt); also
    returns those step times by configuration."""
    out = {}
    steps = {}
    for name in names:
        steps[name] = [a + b for a, b in zip(rec[name]["fwd_bwd"], rec[name]["opt"], strict=True)]
        out[name] = {
            "step_s": statistics.median(steps[name]), "steps_s": steps[name], "first_step_s": first[name],
            "fwd_bwd_s": statistics.median(rec[name]["fwd_bwd"]),
            "optimizer_s": statistics.median(rec[name]["opt"]),
            "teacher_s": statistics.median(rec[name]["teacher"]),
            "counterfactual_batch_s": statistics.median(rec[name]["counterfactual_batch"]),
        }
        if cuda_peak is not None:
            out[name]["cuda_max_memory_allocated_mb"] = cuda_peak[name] / 2**20
    return out, steps


def _paired_ratios(steps: dict, rec: dict, flops_per_kd_step: float) -> dict:
    """The per-round ratios (same batch in a round), by key."""
    def per_round(a, b):
        return [x / y for x, y in zip(a, b, strict=True)]

    return {
        "kd_over_ce_step": per_round(steps["kd"], steps["ce"]),
        "kd_over_ce_fwd_bwd": per_round(rec["kd"]["fwd_bwd"], rec["ce"]["fwd_bwd"]),
        "crr_over_kd_step": per_round(steps["crr"], steps["kd"]),
        "crr_block_over_kd_step": per_round(steps["crr_block"], steps["kd"]),
        "kd_topk_cached_over_kd_step": per_round(steps["kd_topk_cached"], steps["kd"]),
        **({"kd_compiled_over_kd_step": per_round(steps["kd_compiled"], steps["kd"])} if "kd_compiled" in steps
           else {}),
        "kd_flops_fraction_of_peak": [flops_per_kd_step / t / m
                                      for t, m in zip(steps["kd"], rec["matmul_flops"], strict=True)],
    }


def measure_loss(settings: dict, repeats: int = 3) -> dict:
    """`losses.distill_loss` alone (forward + backward; chunk_size auto, closed-form gradient) against the
    autograd reference `unchunked_distill_loss`, on random logits and targets of one step's shape."""
    from distill.bench.memory import unchunked_distill_loss
    from distill.train.losses import distill_loss

    g = torch.Generator().manual_seed(0)
    n, v = settings["batch_size"] * settings["seq_len"], settings["teacher"]["vocab_size"]
    logits = torch.randn(n, v, generator=g) * 3
    probs = torch.softmax(torch.randn(n, v, generator=g) * 3 / 2, -1)
    labels = torch.randint(0, v, (n,), generator=g)
    times = {"chunked": [], "unchunked": []}
    for r in range(repeats + 1):
        for name, fn in (("chunked", distill_loss), ("unchunked", unchunked_distill_loss)):
            z = logits.clone().requires_grad_()
            t0 = time.perf_counter()
            total, _, _ = fn(z, probs.clone(), labels, w_kd=1 / n, w_ce=0.5 / n, temperature=2.0,
                             chunk_size=settings["chunk_size"], reuse_teacher_buffer=True)
            total.backward()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(x) for k, x in times.items()}
    return {"loss_s": med["chunked"], "loss_unchunked_s": med["unchunked"],
            "loss_over_unchunked": med["chunked"] / med["unchunked"], "times_s": times,
            "shape": f"({n}, {v}) logits, forward KL T=2 + CE"}


def measure_cf_teacher(setup, batches: list[dict], rounds: int) -> dict:
    """`targets.teacher_targets` alone: cf_mean (with the counterfactual rows of the batch) over plain (mode
    none); interleaved, per-round ratios."""
    from distill.crr.token_swap import counterfactual_batch
    from distill.train.targets import teacher_targets

    modes = ["none", "cf_mean"]
    times = {m: [] for m in modes}
    for r in range(rounds + 1):
        ids = batches[r % len(batches)]["input_ids"]
        cf = counterfactual_batch(ids, setup.tokenizer, setup.swap_table, setup.lexicon,
                                  setup.tokenizer.eos_token_id)
        for m in (modes if r % 2 == 0 else modes[::-1]):
            t0 = time.perf_counter()
            teacher_targets(setup.teacher, ids, mode=m, temperature=2.0, vocab_rows=setup.vocab_rows,
                            table=setup.swap_table, cf=cf)
            if r > 0:
                times[m].append(time.perf_counter() - t0)
    cf_over = [a / b for a, b in zip(times["cf_mean"], times["none"], strict=True)]
    return {"median_s": {m: statistics.median(v) for m, v in times.items()}, "times_s": times,
            "cf_teacher_over_plain_teacher": statistics.median(cf_over)}
