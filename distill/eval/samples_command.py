"""`distill samples`: the same prompts through several models, shown side by side in one .md or .html file.

    distill samples --model a=gpt2 --model b=out/run/final --prompts professions --max-prompts 12 --out s.html
    distill samples --from-eval out/demo --max-prompts 14 --out out/demo/samples.html   # no model loads

With --from-eval the file shows the samples a finished `distill eval` wrote (distill/eval/samples_from_eval.py).
Otherwise every argument and the --out file are checked and every tokenizer is loaded before any model; then
each model, one at a time, samples with the sampler and seeds `distill eval` uses and is freed before the
next loads. The file is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

from distill.errors import UserError
from distill.eval import runtime
from distill.eval.samples_report import SAMPLES_DEFAULT_PROMPTS, out_file, write_samples
from distill.eval.validate import check_out_file, check_sampling_args, input_paths, parse_models
from distill.rundir import lock_output


def run_samples(args) -> int:
    if getattr(args, "from_eval", None) is not None:
        from distill.eval.samples_from_eval import run_from_eval

        return run_from_eval(args)
    from distill.eval.prompts import group_names, load_prompts, select_prompts
    from distill.eval.samples_report import render_samples
    from distill.models import load_tokenizer

    _model_args(args)
    check_sampling_args(args)
    out, fmt = out_file(args)
    models = parse_models(args.model)
    check_out_file(out, getattr(args, "overwrite", False), input_paths(args, models))
    group_by = getattr(args, "group_by", "category")
    limit = args.max_prompts if args.max_prompts is not None else SAMPLES_DEFAULT_PROMPTS
    prompts = select_prompts(load_prompts(args.prompts), limit, group_by, args.seed)
    groups = group_names(prompts, group_by)
    tokenizers = {name: load_tokenizer(path) for name, path in models}
    # beside the file (its folder is the user's): a second `distill samples` on this --out is refused
    lock_output(out, "--out", lock_file=out.parent / f".{out.name}.lock")
    if args.max_prompts is None:
        runtime.log(f"showing {len(prompts)} prompts (pass --max-prompts N for another number)")

    generations = _generate(args, models, tokenizers, [p.text for p in prompts])
    names = [n for n, _ in models]
    records = [{"prompt": p.text, "group": g, "texts": {n: generations[n][i] for n in names}}
               for i, (p, g) in enumerate(zip(prompts, groups, strict=True))]
    write_samples(out, render_samples(records, names, fmt, runtime.settings(args, prompts, len(set(groups)))))
    print(f"wrote {out}: {len(prompts)} prompts x {args.samples_per_prompt} samples x {len(names)} models")
    return 0


def _model_args(args) -> None:
    """Sampling needs --model and --prompts (the parser cannot require them: --from-eval needs neither), and the
    sampling flags left out take their usual defaults (the parser leaves them None; see distill/cli.py)."""
    if not args.model:
        raise UserError("give --model NAME=PATH (repeatable) with --prompts SPEC, or --from-eval DIR")
    if args.prompts is None:
        raise UserError("--model needs --prompts SPEC (e.g. --prompts professions)")
    for dest, default in getattr(args, "sampling_defaults", {}).items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, default)


def _generate(args, models, tokenizers, texts: list[str]) -> dict[str, list[list[str]]]:
    """Each model's samples, one model loaded at a time."""
    from distill.models import load_model
    from distill.sampling import generate_samples

    device, cfg = runtime.device(), runtime.sampling_config(args)
    runtime.resolve_dtype(args, device)
    generations = {}
    for step, (name, path) in enumerate(models, 1):
        runtime.log(f"[{step}/{len(models)}] {name}: loading {path} on {device}")
        model = load_model(path, args.dtype).to(device).eval()
        generations[name] = generate_samples(model, tokenizers[name], texts, cfg, desc=f"{name}: generate")
        del model
        runtime.release_memory()
    return generations
