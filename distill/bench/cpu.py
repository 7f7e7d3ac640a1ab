"""CPU benchmarks (any machine): bf16 against fp32, the transfer-set sampler, `make demo` sizing.

    python -m distill.bench.cpu precision            # bf16 vs fp32 at the demo's shapes (real teacher)
    python -m distill.bench.cpu sampler              # transfer-set sampling: transformers' sampler vs ours
    python -m distill.bench.cpu demo                 # per-component CPU-seconds of `make demo`
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m distill.bench.cpu ...   # as an AVX2-only CPU

All three need the real teacher (`make teacher`), except `precision --tiny` (a random 3-layer model, seconds,
for the tests). Each uses 1 thread on a loaded machine (`distill.bench.setup.choose_threads`).

## precision

    python -m distill.bench.cpu precision                  # minutes (README: Hardware and precision)
    python -m distill.bench.cpu precision --only matmul_512 --rounds 5     # seconds
    python -m distill.bench.cpu precision --tiny           # a random 3-layer model, seconds (tests)

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

## sampler

    python -m distill.bench.cpu sampler                        # 40 sequences, minutes
    python -m distill.bench.cpu sampler --sequences 40 --max-new-tokens 32 --batch-size 20 --rounds 2

Both paths sample the same seed prompts (data/seed_prompts.txt, in the transfer set's order) with the demo's
settings (top-k 50, top-p 0.95, temperature 1), in the precision `auto` picks for this CPU, interleaved in
rounds (after an untimed warm-up batch):
- before: `model.generate(do_sample=True, top_k, top_p)`, transformers' warpers, which sort the whole
  vocabulary for top-p and draw over all of it at every step (what transfer.py once did);
- after: `transfer.sample_continuations`, i.e. `distill.sampling.sample_batches` with `TopKTopPSampler`.
Reported: generated tokens/s (EOS counted where a row stops early, so both count the tokens they produced)
and sequences/s of each, and their ratio.

## demo

    python -m distill.bench.cpu demo                                        # native precision (auto), minutes
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m distill.bench.cpu demo    # as an AVX2-only CPU

Short runs of each piece on the real teacher (`make teacher`), in the precision `auto` picks:
- transfer: `transfer.sample_continuations` of `--sequences` seed prompts at the demo recipes' batch size;
- train_kd / train_crr: optimizer steps of recipes/demo_kd.yaml and recipes/demo_crr.yaml as `train.loop.fit` runs
  them (`distill.bench.setup.Trainer`, i.e. `train.step.kd_step`), on blocks of data/tiny_corpus.txt (the same shapes as the transfer set's);
- score: `distill.sampling.generate_samples` with the Makefile's eval settings (3 samples x 24 new tokens, batch 64)
  for `--prompts` profession prompts, on the teacher (the students cost 26/30 of it).
Each reports wall seconds and process CPU seconds (user + system) per unit. On a shared machine the wall time
is inflated by other jobs; CPU seconds are less so, and CPU seconds / cores is a lower bound on the wall time
of a machine with that many free cores. Threads: 1 under load (see `distill.bench.setup.choose_threads`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

from distill.fetch_teacher import DEFAULT_TEACHER_GGUF as TEACHER
from distill.precision import choose, cpu_features
from distill.sampling import batch_seed, prepare_tokenizer
from distill.train.transfer import parse_transfer_config, read_seed_prompts, sample_continuations

# --------------------------------------------------------------------------------------------------------------
# precision: bf16 against fp32

DEMO_RECIPE = "recipes/demo_kd.yaml"  # the precision bench times the demo's own student: its cut, its trained blocks


def precision_models(tiny: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.models import freeze_except_layers, load_model, student_from_teacher_layers

    if tiny:
        torch.manual_seed(0)
        teacher = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=64))
        layers, train, shape, gen = [0, 2], [1], (2, 16), (4, 4)
    else:
        from distill.config import load_config

        demo = load_config(DEMO_RECIPE).student
        teacher = load_model(TEACHER, "float32")
        layers, train, shape, gen = demo.from_teacher_layers, demo.train_layers, (8, 128), (50, 16)
    teacher.eval().requires_grad_(False)
    student = student_from_teacher_layers(teacher, layers).float().train()
    freeze_except_layers(student, train)
    return teacher, student, shape, gen


def measure_precision(tiny: bool = False, rounds: int = 3, only: tuple = (), verbose: bool = False) -> dict:
    teacher, student, (B, T), (n_gen, n_new) = precision_models(tiny) if only != ("matmul_512",) else (None, None, (1, 1),
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


def precision_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.cpu precision")
    p.add_argument("--tiny", action="store_true", help="random 2-layer model: seconds, for the tests")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3, after one warm-up)")
    p.add_argument("--only", nargs="*", default=(), help="measure only these (matmul_512, student_fwd_bwd, "
                   "teacher_forward, generate)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from distill.bench.setup import choose_threads

    threads, _ = choose_threads()  # 1 thread on a loaded machine: 2 OpenMP threads then wait on each other
    torch.set_num_threads(threads)
    r = measure_precision(args.tiny, args.rounds, tuple(args.only), verbose=True)
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

# --------------------------------------------------------------------------------------------------------------
# sampler: transformers' sampler against distill.sampling.sample_batches

def sample_before(model, tokenizer, prompts, tcfg, seed: int) -> int:
    """The old loop: transformers' own sampler. Returns the generated (non-pad) token count."""
    prepare_tokenizer(tokenizer)
    n = 0
    for b, start in enumerate(range(0, len(prompts), tcfg.batch_size)):
        enc = tokenizer(prompts[start:start + tcfg.batch_size], return_tensors="pt", padding=True)
        with torch.random.fork_rng(), torch.inference_mode():
            torch.manual_seed(batch_seed(seed, b))
            out = model.generate(**enc, do_sample=True, max_new_tokens=tcfg.max_new_tokens, top_k=tcfg.top_k,
                                 top_p=tcfg.top_p, temperature=tcfg.sampling_temperature,
                                 pad_token_id=tokenizer.pad_token_id)
        n += int((out[:, enc["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum())
    return n


def sample_after(model, tokenizer, prompts, tcfg, seed: int) -> int:
    _, _, new = sample_continuations(model, tokenizer, prompts, tcfg, seed, show_progress=False)
    return sum(new)


def measure_sampler(sequences: int, max_new_tokens: int, batch_size: int, rounds: int, teacher: str = TEACHER) -> dict:
    from distill.models import load_model_and_tokenizer

    precision = choose("cpu")
    model, tok = load_model_and_tokenizer(teacher, precision.dtype)
    model.eval()
    prompts = read_seed_prompts("data/seed_prompts.txt")
    prompts = [prompts[i % len(prompts)] for i in range(sequences)]
    tcfg = parse_transfer_config({"max_new_tokens": max_new_tokens, "batch_size": batch_size, "top_k": 50,
                                  "top_p": 0.95})
    warm = parse_transfer_config({"max_new_tokens": 4, "batch_size": batch_size})
    sample_before(model, tok, prompts[:batch_size], warm, 0)
    sample_after(model, tok, prompts[:batch_size], warm, 0)
    res = {"before": [], "after": []}
    for r in range(rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            t0 = time.perf_counter()
            n = (sample_before if name == "before" else sample_after)(model, tok, prompts, tcfg, r)
            dt = time.perf_counter() - t0
            res[name].append({"tokens": n, "s": dt, "tokens_per_s": n / dt, "sequences_per_s": sequences / dt})
            print(f"  round {r} {name}: {n} tokens in {dt:.1f} s ({n / dt:.1f} tokens/s)", file=sys.stderr,
                  flush=True)
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in res.items()}
    seqs = {k: statistics.median(x["sequences_per_s"] for x in v) for k, v in res.items()}
    return {"cpu": cpu_features(), "precision": precision.name, "precision_reason": precision.reason,
            "threads": torch.get_num_threads(), "sequences": sequences, "max_new_tokens": max_new_tokens,
            "batch_size": batch_size, "tokens_per_s": med, "sequences_per_s": seqs,
            "after_over_before": med["after"] / med["before"], "rounds": res}


def sampler_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.cpu sampler")
    p.add_argument("--sequences", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from distill.bench.setup import choose_threads

    torch.set_num_threads(choose_threads()[0])
    r = measure_sampler(args.sequences, args.max_new_tokens, args.batch_size, args.rounds, args.teacher)
    print(f"CPU capability {r['cpu']['capability']}, {r['precision']} ({r['precision_reason']}), {r['threads']} "
          f"threads; {r['sequences']} sequences x {r['max_new_tokens']} new tokens, batch {r['batch_size']}")
    for k in ("before", "after"):
        print(f"  {k:6s} {r['tokens_per_s'][k]:.1f} tokens/s, {r['sequences_per_s'][k]:.3f} sequences/s")
    print(f"  after / before: {r['after_over_before']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0

# --------------------------------------------------------------------------------------------------------------
# demo: per-component rates of `make demo`

def _clock():
    t = os.times()
    return time.perf_counter(), t.user + t.system


def _since(start) -> dict:
    wall, cpu = _clock()
    return {"wall_s": wall - start[0], "cpu_s": cpu - start[1]}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_transfer(teacher, tok, sequences: int, max_new_tokens: int, batch_size: int) -> dict:
    from distill.train.transfer import parse_transfer_config, read_seed_prompts, sample_continuations

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

    from distill.bench.setup import Trainer
    from distill.config import load_config
    from distill.precision import resolve_mixed_precision
    from distill.train.setup import build

    cfg = load_config(recipe, ["data.transfer_set=null", "data.path=data/tiny_corpus.txt"])
    accelerator = Accelerator(cpu=True, mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision, "cpu")[0])
    setup = build(cfg, accelerator)
    trainer = Trainer(cfg, setup, accelerator)
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
    from distill.eval.prompts import load_prompts, select_prompts
    from distill.sampling import SamplingConfig, generate_samples

    prompts = [p.text for p in select_prompts(load_prompts("professions"), n_prompts, "category", 0)]
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=24, batch_size=64, seed=0)
    start = _clock()
    generate_samples(teacher, tok, prompts, cfg, progress=False)
    t = _since(start)
    return {**t, "prompts": len(prompts), "samples_per_prompt": 3, "max_new_tokens": 24,
            "cpu_s_per_prompt": t["cpu_s"] / len(prompts), "wall_s_per_prompt": t["wall_s"] / len(prompts)}


def demo_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.cpu demo")
    p.add_argument("--sequences", type=int, default=20, help="transfer-set sequences (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="transfer-set tokens per sequence (default 48)")
    p.add_argument("--batch-size", type=int, default=20, help="transfer-set batch (default 20)")
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per recipe (default 2)")
    p.add_argument("--prompts", type=int, default=32, help="profession prompts scored (default 32)")
    p.add_argument("--only", nargs="*", default=("transfer", "train_kd", "train_crr", "score"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from distill.bench.setup import choose_threads
    from distill.models import load_model_and_tokenizer

    torch.set_num_threads(choose_threads()[0])
    prec = choose("cpu")
    r = {"cpu": cpu_features(), "precision": prec.name, "precision_reason": prec.reason,
         "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()}
    _log(f"CPU capability {r['cpu']['capability']}; {prec.name} ({prec.reason}); {r['threads']} threads")
    if {"transfer", "score"} & set(args.only):
        teacher, tok = load_model_and_tokenizer(TEACHER, "auto")
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

COMMANDS = {"precision": precision_main, "sampler": sampler_main, "demo": demo_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m distill.bench.cpu {{{','.join(COMMANDS)}}} [options]  (see --help of each)",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
