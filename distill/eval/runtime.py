"""What the eval-side commands share at run time: the device, the weights' dtype, the sampling settings, the
settings block of a report, progress lines on stderr, and freeing a model before the next one loads."""

from __future__ import annotations

import gc
import sys


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def release_memory() -> None:
    """Call after `del model`: collect the freed weights and return cached GPU blocks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
