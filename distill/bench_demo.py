"""Per-component rates of `make demo`, to size its budget for a machine (issue 12: 20 minutes on 2 AVX2 cores).

    python -m distill.bench_demo                                        # native precision (auto), ~5 min
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m distill.bench_demo    # as an AVX2-only CPU

Short runs of each piece on the real teacher (`make teacher`), in the precision `auto` picks:
- transfer: `transfer.sample_continuations` of `--sequences` seed prompts at the demo recipes' batch size;
- train_kd / train_crr: optimizer steps of recipes/demo_kd.yaml and recipes/demo_crr.yaml as `train.fit` runs
  them (`bench_setup.Trainer`), on blocks of data/tiny_corpus.txt (the same shapes as the transfer set's);
- score: `generate.generate_samples` with the Makefile's eval settings (3 samples x 24 new tokens, batch 64)
  for `--prompts` profession prompts, on the teacher (the students cost 26/30 of it).
Each reports wall seconds and process CPU seconds (user + system) per unit. On a shared machine the wall time
is inflated by other jobs; CPU seconds are less so, and CPU seconds / cores is a lower bound on the wall time
of a machine with that many free cores. Threads: 1 under load (see `bench_setup.choose_threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from distill.precision import choose, cpu_features


def _clock():
    t = os.times()
    return time.perf_counter(), t.user + t.system


def _since(start) -> dict:
    wall, cpu = _clock()
    return {"wall_s": wall - start[0], "cpu_s": cpu - start[1]}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_transfer(teacher, tok, sequences: int, max_new_tokens: int, batch_size: int) -> dict:
    from distill.transfer import parse_transfer_config, read_seed_prompts, sample_continuations

    prompts = read_seed_prompts("data/seed_prompts.txt")[:sequences]
    tcfg = parse_transfer_config({"max_new_tokens": max_new_tokens, "batch_size": batch_size, "top_k": 50})
    sample_continuations(teacher, tok, prompts[:2], parse_transfer_config({"max_new_tokens": 2}), 0,
                         show_progress=False)
    start = _clock()
    _, _, new = sample_continuations(teacher, tok, prompts, tcfg, 0, show_progress=False)
    t = _since(start)
    return {**t, "sequences": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "new_tokens": sum(new), "cpu_s_per_sequence": t["cpu_s"] / len(prompts),
            "wall_s_per_sequence": t["wall_s"] / len(prompts)}


def measure_train(recipe: str, steps: int) -> dict:
    from accelerate import Accelerator

    from distill.bench_setup import Trainer
    from distill.config import load_config
    from distill.precision import resolve_mixed_precision
    from distill.train import build

    cfg = load_config(recipe, ["data.transfer_set=null", "data.path=data/tiny_corpus.txt"])
    accelerator = Accelerator(cpu=True, mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision, "cpu")[0])
    setup = build(cfg, accelerator)
    trainer = Trainer(cfg, setup, accelerator, accelerator.project_dir or ".")
    B = cfg.train.batch_size
    times = []
    for s in range(steps + 1):  # step 0: warm-up (allocator, AdamW state)
        idx = [(s * B + i) % len(setup.train_blocks) for i in range(B)]
        start = _clock()
        trainer.step(cfg, {**setup.train_blocks[idx], "blocks": idx})
        t = _since(start)
        _log(f"  {recipe} step {s}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s cpu")
        if s:
            times.append(t)
    return {"steps": steps, "batch": [B, cfg.data.block_size], "mixed_precision": accelerator.mixed_precision,
            "wall_s_per_step": sum(t["wall_s"] for t in times) / steps,
            "cpu_s_per_step": sum(t["cpu_s"] for t in times) / steps, "per_step": times}


def measure_score(teacher, tok, n_prompts: int) -> dict:
    from distill.generate import SamplingConfig, generate_samples
    from distill.prompts import load_prompts, select_prompts

    prompts = [p.text for p in select_prompts(load_prompts("professions"), n_prompts, "category", 0)]
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=24, batch_size=64, seed=0)
    start = _clock()
    generate_samples(teacher, tok, prompts, cfg, progress=False)
    t = _since(start)
    return {**t, "prompts": len(prompts), "samples_per_prompt": 3, "max_new_tokens": 24,
            "cpu_s_per_prompt": t["cpu_s"] / len(prompts), "wall_s_per_prompt": t["wall_s"] / len(prompts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench_demo", description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=20, help="transfer-set sequences (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="transfer-set tokens per sequence (default 48)")
    p.add_argument("--batch-size", type=int, default=20, help="transfer-set batch (default 20)")
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per recipe (default 2)")
    p.add_argument("--prompts", type=int, default=32, help="profession prompts scored (default 32)")
    p.add_argument("--only", nargs="*", default=("transfer", "train_kd", "train_crr", "score"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from distill.bench_setup import choose_threads
    from distill.models import load_model_and_tokenizer

    torch.set_num_threads(choose_threads()[0])
    prec = choose("cpu")
    r = {"cpu": cpu_features(), "precision": prec.name, "precision_reason": prec.reason,
         "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()}
    _log(f"CPU capability {r['cpu']['capability']}; {prec.name} ({prec.reason}); {r['threads']} threads")
    if {"transfer", "score"} & set(args.only):
        teacher, tok = load_model_and_tokenizer("cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf", "auto")
        teacher.eval()
    if "transfer" in args.only:
        r["transfer"] = measure_transfer(teacher, tok, args.sequences, args.max_new_tokens, args.batch_size)
        _log(f"transfer: {json.dumps(r['transfer'])}")
    for name in ("kd", "crr"):
        if f"train_{name}" in args.only:
            r[f"train_{name}"] = measure_train(f"recipes/demo_{name}.yaml", args.steps)
            _log(f"train_{name}: {r[f'train_{name}']['wall_s_per_step']:.1f} s/step wall, "
                 f"{r[f'train_{name}']['cpu_s_per_step']:.1f} s/step cpu")
    if "score" in args.only:
        r["score"] = measure_score(teacher, tok, args.prompts)
        _log(f"score: {json.dumps(r['score'])}")
    r["load_average_end"] = os.getloadavg()
    print(json.dumps(r, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
