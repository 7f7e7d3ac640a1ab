"""Benchmarks of what training and evaluation run: step time, step memory, FLOP use, generation, swaps.

    distill bench                               # GPT-2-small shapes; minutes on a CPU (README: Performance)
    distill bench --tiny --out /tmp/bench.json  # tiny shapes, seconds: checks that every key is written
    python -m pytest tests/test_bench.py -q

Writes out/bench.json and prints a table (key, value, target, PASS/FAIL). Benchmarks are not tests: the test
only checks that every key is written. Everything is measured side by side in one process (whole-process
memory also in fresh child processes). The machine may be shared and its load drifts, so configurations are
interleaved in rounds (the order rotates every round, round 0 is an untimed warm-up), each round uses one
batch for every configuration, and a ratio is the median over rounds of the per-round ratio.
Code: `distill.bench.setup` (shapes, batches, configurations, the step), `distill.bench.timing` (the step,
the loss and the counterfactual teacher timed), `distill.bench.memory` (memory), `distill.bench.generation`
(generation, swaps), this module (counterfactual work, the GPU section, the run and its report). Steps are
`train.step.kd_step`, the function training runs, timed per phase through its `phases` hook.

Models (stated in the JSON under "settings"): a GPT-2-small-shaped teacher with random weights (12 layers,
width 768, 12 heads, vocab 50257, via `models.build_random_model`), a 6-layer student of its blocks
[0, 2, 4, 7, 9, 11] (`models.student_from_teacher_layers`), batches of 8 x 128 tokens. The tokenizer is a
byte-level BPE trained here on data/tiny_corpus.txt (4096 ids); the model vocabulary stays 50257, so the
rows no text uses are still computed, as they would be with GPT-2's tokenizer. Batches: lines of
data/tiny_corpus.txt; 40% of the rows (spread evenly over the batches) hold one line with gendered words
(`Lexicon.has_gendered_word`) after 0-2 lines without, the rest only lines without; half of the gendered
lines are gender-swapped first, as `crr.augment=replace` does. settings.counterfactual_work reports the share
of rows `counterfactual_batch` swaps and the share of extra positions the teacher's counterfactual pass runs.

What each key means:

- kd_over_ce_step: seconds of one KD optimizer step / one CE-only student step. A step is `kd_step`, what
  `train.loop.fit` runs (teacher targets under inference mode, student forward, loss, backward, gradient
  clipping, AdamW and schedule step, zero_grad), on a `train.setup.Setup` built here (as `build` does) and a
  `config.Config` from `config_from_dict`. KD: loss.alpha_kd=1, alpha_ce=0.5 (T=2, forward KL, chunked
  `distill_loss`, chunk_size 0 = the recipe default, auto); CE: alpha_kd=0, alpha_ce=1 (the teacher is not
  run). One student and one AdamW serve every configuration. kd_over_ce_theoretical = (2 N_t + 6 N_s) / (6 N_s) with N = all
  parameters: the tied token embedding is counted once (it is the LM head matmul, real work), the position
  embedding too (a lookup, 0.6% of N). Attention scores and the optimizer are outside the formula;
  kd_over_ce_fwd_bwd is the same ratio without clip + optimizer.
- crr_over_kd_step: a counterfactual-role-reversal step (crr.teacher=cf_mean, crr.augment=replace, the default
  crr.cf_scope=document: `counterfactual_batch` + the teacher's counterfactual pass from the first swapped
  token to the end of its document) / a plain KD step. crr_block_over_kd_step: the same with
  crr.cf_scope=block (the counterfactual pass runs to the end of the packed block).
- kd_topk_cached_over_kd_step: a KD step with loss.teacher_top_k=64 whose targets are all in the cache (a
  later epoch: the teacher does not run; the cached top-k ids and values are made dense) / a plain KD step;
  kd_topk_cached_theoretical = 6 N_s / (2 N_t + 6 N_s). topk_kept_mass: the mean teacher mass in the top 64
  of the random-weight teacher here (nearly flat, so far lower than a trained teacher's; the effect of
  top-k targets on a real teacher is measured in the README).
- loss_over_unchunked: seconds of `losses.distill_loss` forward + backward (chunked, closed-form gradient)
  / `bench.memory.unchunked_distill_loss` (kd_loss + ce_loss under autograd) on random logits and targets of
  one step's shape (loss.loss_s and loss.loss_unchunked_s hold the seconds).
- kd_compiled_over_kd_step (with --compile): a KD step with train.compile (the student run through
  torch.compile, inductor) / a plain KD step; kd_compiled_first_step_s: its untimed first step, compile
  included.
  steps.<config> splits each step into teacher / counterfactual_batch / the rest (kd_step's phases).
  cf_teacher_over_plain_teacher times `targets.teacher_targets` alone: cf_mean over mode none.
- kd_peak_mem_over_ce: step working memory of a KD step / of a CE step, i.e. the peak of bytes held by
  torch's CPU allocator during one step above what it held just before (models and AdamW state resident;
  gradients are freed by zero_grad(set_to_none=True), so they count as step memory in both), read from the
  allocation events of torch.profiler (profile_memory=True): the CPU analogue of cuda.max_memory_allocated
  minus the start. Same batch for all. kd_peak_mem_over_ce_unchunked: the KD step with `losses.kd_loss +
  losses.ce_loss` under plain autograd in place of `distill_loss`. kd_peak_mem_over_ce_process:
  whole-process peak RSS (VmHWM, reset through /proc/self/clear_refs just before the step) of a fresh KD
  process (teacher + student + AdamW) over a fresh CE process (student + AdamW, no teacher), run with
  MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS; step_rss_over_ce: the RSS growth during
  that step, KD over CE.
- kd_flops_fraction_of_peak: analytic FLOPs of the KD step (2 N_t + 6 N_s per token; attention scores and
  the loss not counted) per second of the step, over the FLOP/s of a 2048^3 fp32 matmul (best of 3) measured
  in the same round with the same threads.
- gen_batched_over_sequential: tokens/s of `distill.sampling.generate_samples` (the eval path: sampling with top-k 40,
  top-p 0.95, one sample per prompt) at batch_size prompts per call / one prompt per call: same 64 prompts of
  data/prompts/professions.json, same max_new_tokens, EOS disabled (generation_config.eos_token_id = None)
  so every row generates exactly max_new_tokens in both. Model: the student above (81.9M parameters).
- cpu, precision, auto_precision: torch's CPU capability checks (`precision.cpu_features`), the precision the CPU
  section ran in (fp32 always: comparable across machines), and what `auto` would pick on this CPU and why.
- cda_mb_per_s: `bench.swap.benchmark_swap` (the text swap of augmentation), MB/s.
- token_swap_per_s: `counterfactual_batch` on the benchmark batches, sequences/s (tokens/s beside it).

Threads: torch.set_num_threads is set explicitly and reported. When the load average at start is within half
a core of the core count, every parallel region waits for a descheduled OpenMP thread (README: Performance
has the measured cost), which distorts everything made of small ops; the benchmark
then uses 1 thread, else all cores (DISTILL_BENCH_THREADS overrides). With CUDA available a GPU section
(the same ratios with bf16 autocast, tokens/s, torch.cuda.max_memory_allocated) runs in a child process.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
import transformers

from distill.bench.generation import measure_generation, measure_swaps
from distill.bench.memory import measure_memory, memory_child
from distill.bench.report import assemble_result, format_table, load_average
from distill.bench.setup import (
    STEP_CONFIGS,
    Trainer,
    build_batches,
    build_setup,
    build_tokenizer,
    choose_threads,
    count_flops,
    fill_target_cache,
    make_configs,
    matmul_flops,
    run_child,
    settings_for,
)
from distill.bench.timing import measure_cf_teacher, measure_loss, time_steps

# --------------------------------------------------------------------------------------------------------------
# Child processes


def child_main(spec_path: str) -> None:
    """Entry point of the child processes: fresh-process memory (`bench.memory`) or the GPU section."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    batch = torch.load(spec["batch_path"], weights_only=True)
    if spec.get("gpu"):
        batches = torch.load(spec["batches_path"], weights_only=True)
        result = _gpu_measure(spec["settings"], tok, Path(spec["tokenizer_dir"]), Path(spec["workdir"]), batches)
    else:
        result = memory_child(spec, tok, batch)
    Path(spec["result_path"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------------
# Counterfactual work of the batches


def cf_stats(setup, batches: list[dict]) -> dict:
    """How much counterfactual work the batches hold: rows with a swap, and the positions the teacher's
    counterfactual pass runs (the swapped rows, cut to the longest) as a share of the plain pass, for both
    cf_scopes."""
    from distill.crr.token_swap import counterfactual_batch

    out = {}
    for scope, end in (("document", setup.tokenizer.eos_token_id), ("block", None)):
        rows = cf_rows = extra = 0
        for b in batches:
            ids = b["input_ids"]
            cf = counterfactual_batch(ids, setup.tokenizer, setup.swap_table, setup.lexicon, end)
            rows += ids.shape[0]
            cf_rows += cf.rows.numel()
            if cf.rows.numel():
                extra += cf.rows.numel() * int(cf.attention_mask.sum(1).max()) / ids.shape[1]
        out["cf_rows_share"] = cf_rows / max(rows, 1)
        out[f"teacher_extra_positions_share_{scope}"] = extra / max(rows, 1)
    return out


# --------------------------------------------------------------------------------------------------------------
# GPU (child process: accelerate's state is per process, and the GPU step uses bf16 autocast)


def _gpu_measure(settings, tok, tokenizer_dir: Path, workdir: Path, batches: list[dict]) -> dict:
    """The step ratios on CUDA with bf16 autocast and a bf16 teacher (as recipes/gpt2_to_distilgpt2_*.yaml run),
    tokens/s and torch.cuda.max_memory_allocated per configuration. Not exercised on the CPU-only CI."""
    from accelerate import Accelerator

    bf16 = torch.cuda.is_bf16_supported()
    cfgs = make_configs(settings, tokenizer_dir, workdir, mixed_precision="bf16" if bf16 else "no",
                        teacher_dtype="bfloat16" if bf16 else "float32")
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
    setup = build_setup(cfgs["kd"], tok, accelerator.device)
    trainer = Trainer(cfgs["kd"], setup, accelerator)
    trainer.init_optimizer_state()
    fill_target_cache(setup, cfgs["kd_topk_cached"], batches)
    flops = count_flops(setup, settings)
    res = time_steps(trainer, cfgs, batches, max(3, settings["repeats"]), 8192, flops["kd_step_flops"],
                     peak_mem=True)
    peak = matmul_flops(8192, accelerator.device, torch.bfloat16 if bf16 else torch.float32)
    mem = {n: res[n]["cuda_max_memory_allocated_mb"] for n in STEP_CONFIGS if n in res}
    return {
        "device": torch.cuda.get_device_name(), "precision": "bf16 autocast, bf16 teacher" if bf16 else "fp32",
        "kd_over_ce_step": res["ratios"]["kd_over_ce_step"],
        "crr_over_kd_step": res["ratios"]["crr_over_kd_step"],
        "kd_topk_cached_over_kd_step": res["ratios"]["kd_topk_cached_over_kd_step"],
        "kd_peak_mem_over_ce": mem["kd"] / mem["ce"],
        "cuda_max_memory_allocated_mb": mem,
        "tokens_per_s": {n: flops["tokens_per_step"] / res[n]["step_s"] for n in STEP_CONFIGS if n in res},
        "kd_flops_fraction_of_peak": flops["kd_step_flops"] / res["kd"]["step_s"] / peak,
        "peak_matmul_flops_per_s": peak, "peak_matmul": ("bf16" if bf16 else "fp32") + " 8192^3",
        "steps": res,
    }


def cpu_and_precision() -> dict:
    """What the CPU offers and what the CPU section ran in: fp32 throughout (Accelerator without mixed
    precision, fp32 models), whatever `auto` would pick here, so that figures compare across machines."""
    from distill.precision import choose, cpu_features

    auto = choose("cpu")
    return {"cpu": cpu_features(), "precision": "fp32",
            "auto_precision": {"choice": auto.name, "reason": auto.reason}}


def run(tiny: bool = False, repeats: int | None = None, workdir: Path | None = None, compile: bool = False) -> dict:
    """Every measurement of the module docstring, as the dict written to bench.json (`report.assemble_result`)."""
    from accelerate.utils import set_seed

    t_start = time.perf_counter()
    transformers.logging.set_verbosity_error()  # packed blocks hold EOS ids without a mask: harmless, noisy
    load_start = [round(x, 2) for x in os.getloadavg()]
    settings, threads, why = _bench_settings(tiny, repeats, compile)
    set_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="distill-bench-") if workdir is None else None
    workdir = Path(tmp.name) if tmp else Path(workdir)
    try:
        measured = _measure(settings, threads, workdir)
    finally:
        if tmp:
            tmp.cleanup()
    load_end = [round(x, 2) for x in os.getloadavg()]
    host = {"torch_threads": threads, "threads_reason": why, **cpu_and_precision(),
            "load_average": load_average(load_start, load_end)}
    return assemble_result(settings, measured, host, t_start)


def _bench_settings(tiny: bool, repeats: int | None, compile: bool) -> tuple[dict, int, str]:
    """The settings (shapes, repeats, threads, chunk size), with the thread count chosen and set, and why."""
    settings = settings_for(tiny)
    if repeats is not None:
        settings["repeats"] = max(1, repeats)
    settings["compile"] = compile
    threads, why = choose_threads()
    torch.set_num_threads(threads)
    settings["torch_threads"] = threads
    if settings["chunk_size"] == 0:
        from distill.train.losses import auto_chunk_size

        settings["chunk_size_auto"] = auto_chunk_size(torch.device("cpu"))
    return settings, threads, why


def _measure(settings: dict, threads: int, workdir: Path) -> dict:
    """Build the models and batches, then run each section in turn, timing the sections themselves."""
    from accelerate import Accelerator

    sections = {}

    def mark(name: str, t0: float) -> float:
        now = time.perf_counter()
        sections[name] = round(now - t0, 1)
        return now

    t = time.perf_counter()
    tok, tok_dir = build_tokenizer(settings, workdir)
    cfgs = make_configs(settings, tok_dir, workdir)
    setup = build_setup(cfgs["kd"], tok, torch.device("cpu"))
    batches, batch_info = build_batches(tok, setup.lexicon, settings, settings["repeats"] + 1)
    flops = count_flops(setup, settings)
    trainer = Trainer(cfgs["kd"], setup, Accelerator(cpu=True))
    trainer.init_optimizer_state()
    topk_mass = fill_target_cache(setup, cfgs["kd_topk_cached"], batches)
    t = mark("setup", t)
    steps = time_steps(trainer, cfgs, batches, settings["repeats"], settings["matmul_n"],
                       flops["kd_step_flops"])
    t = mark("steps", t)
    cf_teacher = measure_cf_teacher(setup, batches, min(settings["repeats"], 3))
    loss = measure_loss(settings)
    t = mark("cf_teacher_and_loss", t)
    memory = measure_memory(settings, tok_dir, workdir, batches[0], threads, trainer, cfgs)
    t = mark("memory", t)
    gen = measure_generation(setup.student, tok, settings)
    t = mark("generation", t)
    swaps = measure_swaps(settings, setup, batches)
    cf = cf_stats(setup, batches)
    t = mark("swaps", t)
    gpu = None
    if torch.cuda.is_available():
        gpu = _gpu_child(settings, tok_dir, workdir, batches, threads)
        t = mark("gpu", t)
    return {"tokenizer_ids": len(tok), "batch_info": batch_info, "flops": flops, "topk_mass": topk_mass,
            "steps": steps, "cf_teacher": cf_teacher, "loss": loss, "memory": memory, "gen": gen, "swaps": swaps,
            "cf": cf, "gpu": gpu, "sections": sections}


def _gpu_child(settings: dict, tok_dir: Path, workdir: Path, batches: list[dict], threads: int) -> dict:
    """The GPU section in a child process (`_gpu_measure`), or {"error": ...} if it failed."""
    try:
        bp = workdir / "gpu_batches.pt"
        torch.save(batches, bp)
        return run_child({"gpu": True, "settings": settings, "tokenizer_dir": str(tok_dir),
                          "workdir": str(workdir), "batch_path": str(bp), "batches_path": str(bp),
                          "threads": threads}, workdir, "gpu")
    except Exception as exc:  # the CPU results stand on their own
        return {"error": str(exc)[-1000:]}


def main(args) -> int:
    from distill.atomic import rescue_copy, write_text_atomic
    from distill.errors import UserError
    from distill.rundir import check_writable

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the path of a .json file")
    check_writable(out, "--out")  # before the minutes of measuring, not after
    r = run(tiny=args.tiny, repeats=args.repeats, compile=args.compile)
    text = json.dumps(r, indent=1, default=str) + "\n"
    try:
        write_text_atomic(out, text)
    except OSError as exc:  # a disk that filled up while measuring: the figures go elsewhere, and the line says where
        name = rescue_copy(text, "distill-bench-", ".json")
        where = f"the results were written to {name} instead" if name else "they could not be written elsewhere"
        raise UserError(f"could not write {out} ({exc.strerror or exc}); {where}") from exc
    print(format_table(r))
    if r.get("gpu"):
        g = r["gpu"]
        if "error" in g:
            print(f"gpu: {g['error']}")
        else:
            print(f"gpu ({g['device']}, {g['precision']}): kd/ce {g['kd_over_ce_step']:.3g}, crr/kd "
                  f"{g['crr_over_kd_step']:.3g}, mem kd/ce {g['kd_peak_mem_over_ce']:.3g}, "
                  f"flops fraction {g['kd_flops_fraction_of_peak']:.3g}")
    print(f"wrote {out}")
    return 0
