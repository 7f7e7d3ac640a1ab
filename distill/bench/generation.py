"""Generation and swap throughput of `distill bench` (what the keys mean: `distill.bench.run`)."""

from __future__ import annotations

import json
import statistics
import time

from distill.bench.setup import ROOT

PROMPTS = ROOT / "data" / "prompts" / "professions.json"


def load_prompts(n: int) -> list[str]:
    data = json.loads(PROMPTS.read_text(encoding="utf-8"))
    prompts = [p for group in data.values() for ps in group.values() for p in ps]
    step = max(1, len(prompts) // n)
    return prompts[::step][:n]


def measure_generation(model, tokenizer, settings: dict) -> dict:
    """generate_samples at batch_size prompts vs one prompt at a time (interleaved rounds, medians)."""
    from distill.sampling import SamplingConfig, generate_samples

    g = settings["gen"]
    prompts = load_prompts(g["n_prompts"])
    n_new = g["max_new_tokens"]
    gen_cfg = model.generation_config
    saved = gen_cfg.eos_token_id
    # Equal work: no row stops early at EOS. (Not min_new_tokens: its processor adds an isin + where over the
    # vocabulary per step, a cost the eval does not pay.)
    gen_cfg.eos_token_id = None
    was_training = model.training
    times = {"batched": [], "sequential": []}
    try:
        def run(bs: int) -> float:
            cfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=n_new, batch_size=bs, seed=0)
            t0 = time.perf_counter()
            generate_samples(model, tokenizer, prompts, cfg, progress=False)
            return time.perf_counter() - t0

        run(g["batch_size"])  # warm-up
        one = SamplingConfig(samples_per_prompt=1, max_new_tokens=n_new, batch_size=1)
        generate_samples(model, tokenizer, prompts[:2], one, progress=False)
        for r in range(g["repeats"]):
            for mode in (("batched", "sequential") if r % 2 == 0 else ("sequential", "batched")):
                times[mode].append(run(g["batch_size"] if mode == "batched" else 1))
    finally:
        gen_cfg.eos_token_id = saved
        model.train(was_training)
    tokens = len(prompts) * n_new
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    return {"tokens_per_s_batched": tps["batched"], "tokens_per_s_sequential": tps["sequential"],
            "ratio": tps["batched"] / tps["sequential"], "times_s": times, "prompts": len(prompts),
            "batch_size": g["batch_size"], "max_new_tokens": n_new, "sampling": "top_k 40, top_p 0.95, T 1.0",
            "model": g["model"]}


def measure_swaps(settings: dict, setup, batches: list[dict]) -> dict:
    from distill.bench.swap import benchmark_swap
    from distill.crr.token_swap import counterfactual_batch

    text = benchmark_swap(n_bytes=settings["cda_bytes"], lexicon=setup.lexicon, repeats=3)
    n = settings["token_swap_batches"]
    use = [batches[i % len(batches)] for i in range(n)]
    end = setup.tokenizer.eos_token_id
    counterfactual_batch(use[0]["input_ids"], setup.tokenizer, setup.swap_table, setup.lexicon, end)  # warm up
    t0 = time.perf_counter()
    for b in use:
        counterfactual_batch(b["input_ids"], setup.tokenizer, setup.swap_table, setup.lexicon, end)
    dt = time.perf_counter() - t0
    seqs = sum(b["input_ids"].shape[0] for b in use)
    toks = sum(b["input_ids"].numel() for b in use)
    return {"cda_mb_per_s": text["mb_per_s"], "cda": text, "token_swap_per_s": seqs / dt,
            "token_swap_tokens_per_s": toks / dt, "token_swap_unit": "sequences/s"}


