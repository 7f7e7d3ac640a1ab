"""bf16 against fp32 on this CPU, at the demo's shapes: is bf16 worth choosing here?

    python -m distill.bench_precision                      # real teacher (make teacher); about 2-3 min, 2 cores
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m distill.bench_precision   # emulate AVX2-only
    python -m distill.bench_precision --tiny               # random 2-layer model, seconds (tests)

Times, in interleaved rounds (round 0 an untimed warm-up, ratio = median over rounds of the per-round ratio):
- matmul_512: 20 products of two 512 x 512 matrices in fp32 against bf16 (GFLOP/s in the JSON);
- student_fwd_bwd: a forward + backward of the demo student (26 of the teacher's 30 blocks, 6 of them
  trainable, batch 8 x 128 tokens) in fp32 against under `torch.autocast("cpu", torch.bfloat16)`, which is
  what accelerate's mixed_precision=bf16 does;
- teacher_forward: the teacher's forward under inference mode with fp32 weights against bf16 weights
  (teacher.dtype);
- generate: greedy decoding of 16 new tokens for 50 prompts (the transfer set's batch) with fp32 against bf16
  weights.
Each ratio is bf16 seconds / fp32 seconds: above 1, bf16 is slower. `distill.precision.BF16_WITHOUT_AMX`
records the decision this figure led to on a CPU with AVX512-BF16 and no AMX.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

from distill.precision import choose, cpu_features

TEACHER = "cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_LAYERS = [*range(22), 26, 27, 28, 29]
DEMO_TRAIN = [20, 21, 22, 23, 24, 25]


def build(tiny: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.models import freeze_except_layers, load_model, student_from_teacher_layers

    if tiny:
        torch.manual_seed(0)
        teacher = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=64))
        layers, train, shape, gen = [0, 2], [1], (2, 16), (4, 4)
    else:
        teacher = load_model(TEACHER, "float32")
        layers, train, shape, gen = DEMO_LAYERS, DEMO_TRAIN, (8, 128), (50, 16)
    teacher.eval().requires_grad_(False)
    student = student_from_teacher_layers(teacher, layers).float().train()
    freeze_except_layers(student, train)
    return teacher, student, shape, gen


def measure(tiny: bool = False, rounds: int = 3, only: tuple = (), verbose: bool = False) -> dict:
    teacher, student, (B, T), (n_gen, n_new) = build(tiny) if only != ("matmul_512",) else (None, None, (1, 1),
                                                                                               (1, 1))
    vocab = teacher.config.vocab_size if teacher is not None else 2
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    prompts = torch.randint(0, vocab, (n_gen, 8), generator=g)
    teachers = {"fp32": teacher, "bf16": _bf16_copy(teacher) if teacher is not None else None}

    def fwd_bwd(kind):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if kind == "bf16" else contextlib.nullcontext()
        with ctx:
            loss = student(input_ids=ids).logits.float().logsumexp(-1).mean()
        loss.backward()
        student.zero_grad(set_to_none=True)

    def teacher_forward(kind):
        with torch.inference_mode():
            teachers[kind](input_ids=ids)

    def generate(kind):
        with torch.inference_mode():
            teachers[kind].generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                    max_new_tokens=n_new, min_new_tokens=n_new,
                                    pad_token_id=teacher.config.eos_token_id or 0)

    mats = {kind: (torch.randn(512, 512).to(dt), torch.randn(512, 512).to(dt))
            for kind, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    def matmul(kind):  # 20 products of 512 x 512: the probe of native vs emulated bf16
        a, b = mats[kind]
        for _ in range(20):
            a @ b

    out = {}
    for name, fn in (("matmul_512", matmul), ("student_fwd_bwd", fwd_bwd), ("teacher_forward", teacher_forward),
                     ("generate", generate)):
        if only and name not in only:
            continue
        times = {"fp32": [], "bf16": []}
        for r in range(rounds + 1):
            for kind in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                t0 = time.perf_counter()
                fn(kind)
                if r > 0:
                    times[kind].append(time.perf_counter() - t0)
                if verbose:
                    print(f"  {name} round {r} {kind}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
        ratio = statistics.median(b / f for b, f in zip(times["bf16"], times["fp32"], strict=True))
        out[name] = {"fp32_s": statistics.median(times["fp32"]), "bf16_s": statistics.median(times["bf16"]),
                     "bf16_over_fp32": ratio, "times_s": times}
    if "matmul_512" in out:
        for kind in ("fp32", "bf16"):
            out["matmul_512"][f"{kind}_gflop_per_s"] = 20 * 2 * 512**3 / out["matmul_512"][f"{kind}_s"] / 1e9
    return {"cpu": cpu_features(), "auto": choose("cpu").name, "auto_reason": choose("cpu").reason,
            "threads": torch.get_num_threads(), "shapes": {"train_batch": [B, T], "generate": [n_gen, n_new]},
            "tiny": tiny, **out}


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench_precision", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="random 2-layer model: seconds, for the tests")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3, after one warm-up)")
    p.add_argument("--only", nargs="*", default=(), help="measure only these (matmul_512, student_fwd_bwd, "
                   "teacher_forward, generate)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from distill.bench_setup import choose_threads

    threads, _ = choose_threads()  # 1 thread on a loaded machine: 2 OpenMP threads then wait on each other
    torch.set_num_threads(threads)
    r = measure(args.tiny, args.rounds, tuple(args.only), verbose=True)
    f = r["cpu"]
    print(f"CPU capability {f['capability']}, AMX {f['amx']}, AVX512-BF16 {f['avx512_bf16']}, "
          f"{r['threads']} threads; auto -> {r['auto']} ({r['auto_reason']})")
    for name in (n for n in ("matmul_512", "student_fwd_bwd", "teacher_forward", "generate") if n in r):
        x = r[name]
        print(f"  {name:16s} fp32 {x['fp32_s']:.3f} s  bf16 {x['bf16_s']:.3f} s  bf16/fp32 {x['bf16_over_fp32']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
