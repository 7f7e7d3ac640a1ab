"""What the eval-side commands share at run time: the device, the weights' dtype, the sampling settings, the
settings block of a report, progress lines on stderr, and freeing a model before the next one loads."""

from __future__ import annotations

import gc
import sys
import time
from contextlib import contextmanager


def plain_forward(module, **inputs):
    """The ordinary call of a model: the default `forward` of the code that scores a loaded model (the probe,
    the lenses, perplexity), which `distill.eval.shared_prefix` replaces for a student that shares the teacher's
    first blocks."""
    return module(**inputs)


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def release_memory() -> None:
    """Call after `del model`: collect the freed weights and return cached GPU blocks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def timed(seconds: dict | None, part: str):
    """Add the wall seconds of the block to seconds[part] (a no-op without a dict): what each part of an eval
    costs, so the report can set it against what it adds to the evidence."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if seconds is not None:
            seconds[part] = round(seconds.get(part, 0.0) + time.perf_counter() - t0, 2)


def part_seconds(by_model: dict[str, dict[str, float]]) -> dict:
    """{"total": {part: seconds over every model}, "by_model": {model: {part: seconds}}} for results.json."""
    total: dict[str, float] = {}
    for parts in by_model.values():
        for part, s in parts.items():
            total[part] = round(total.get(part, 0.0) + s, 2)
    return {"total": total, "by_model": by_model}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sampling_config(args):
    from distill.sampling import SamplingConfig

    return SamplingConfig(
        samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        top_k=args.top_k, top_p=args.top_p, temperature=args.sampling_temperature, seed=args.seed,
    )


def settings(args, prompts, n_groups: int) -> dict:
    return {
        "prompts": args.prompts, "n_prompts": len(prompts), "n_groups": n_groups,
        "group_by": getattr(args, "group_by", "category"), "max_prompts": args.max_prompts,
        "samples_per_prompt": args.samples_per_prompt, "max_new_tokens": args.max_new_tokens,
        "top_k": args.top_k, "top_p": args.top_p, "sampling_temperature": args.sampling_temperature,
        "seed": args.seed, "batch_size": args.batch_size,
        "dtype": args.dtype, "dtype_reason": getattr(args, "dtype_reason", "set explicitly"),
    }


def resolve_dtype(args, device) -> None:
    """--dtype auto -> the dtype `distill.precision` picks for `device`; the reason goes into the report."""
    from distill.precision import resolve_dtype

    args.dtype, args.dtype_reason = resolve_dtype(args.dtype, device)
    print(f"weights in {args.dtype} ({args.dtype_reason})")
