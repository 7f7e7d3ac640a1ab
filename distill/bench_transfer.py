"""Transfer-set sampling speed: transformers' sampler (the code before issue 12) against the shared one.

    python -m distill.bench_transfer                        # real teacher (make teacher): 40 sequences, ~3 min
    python -m distill.bench_transfer --sequences 40 --max-new-tokens 32 --batch-size 20 --rounds 2

Both paths sample the same seed prompts (data/seed_prompts.txt, in the transfer set's order) with the demo's
settings (top-k 50, top-p 0.95, temperature 1), in the precision `auto` picks for this CPU, interleaved in
rounds (after an untimed warm-up batch):
- before: `model.generate(do_sample=True, top_k, top_p)`, transformers' warpers, which sort the whole
  vocabulary for top-p and draw over all of it at every step (what transfer.py did before issue 12);
- after: `transfer.sample_continuations`, i.e. `generate.sample_batches` with `TopKTopPSampler`.
Reported: generated tokens/s (EOS counted where a row stops early, so both count the tokens they produced)
and sequences/s of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from distill.generate import batch_seed, prepare_tokenizer
from distill.precision import choose, cpu_features
from distill.transfer import parse_transfer_config, read_seed_prompts, sample_continuations

TEACHER = "cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf"


def before(model, tokenizer, prompts, tcfg, seed: int) -> int:
    """The pre-issue-12 loop: transformers' own sampler. Returns the generated (non-pad) token count."""
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


def after(model, tokenizer, prompts, tcfg, seed: int) -> int:
    _, _, new = sample_continuations(model, tokenizer, prompts, tcfg, seed, show_progress=False)
    return sum(new)


def measure(sequences: int, max_new_tokens: int, batch_size: int, rounds: int, teacher: str = TEACHER) -> dict:
    from distill.models import load_model_and_tokenizer

    precision = choose("cpu")
    model, tok = load_model_and_tokenizer(teacher, precision.dtype)
    model.eval()
    prompts = read_seed_prompts("data/seed_prompts.txt")
    prompts = [prompts[i % len(prompts)] for i in range(sequences)]
    tcfg = parse_transfer_config({"max_new_tokens": max_new_tokens, "batch_size": batch_size, "top_k": 50,
                                  "top_p": 0.95})
    warm = parse_transfer_config({"max_new_tokens": 4, "batch_size": batch_size})
    before(model, tok, prompts[:batch_size], warm, 0)
    after(model, tok, prompts[:batch_size], warm, 0)
    res = {"before": [], "after": []}
    for r in range(rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            t0 = time.perf_counter()
            n = (before if name == "before" else after)(model, tok, prompts, tcfg, r)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench_transfer", description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from distill.bench_setup import choose_threads

    torch.set_num_threads(choose_threads()[0])
    r = measure(args.sequences, args.max_new_tokens, args.batch_size, args.rounds, args.teacher)
    print(f"CPU capability {r['cpu']['capability']}, {r['precision']} ({r['precision_reason']}), {r['threads']} "
          f"threads; {r['sequences']} sequences x {r['max_new_tokens']} new tokens, batch {r['batch_size']}")
    for k in ("before", "after"):
        print(f"  {k:6s} {r['tokens_per_s'][k]:.1f} tokens/s, {r['sequences_per_s'][k]:.3f} sequences/s")
    print(f"  after / before: {r['after_over_before']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
