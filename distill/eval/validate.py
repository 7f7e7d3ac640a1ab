"""What `distill eval`, `distill samples` and `distill score` check before any model loads.

Every argument, the --model specs (one or several runs per model), the --out target (never one of the inputs,
and --overwrite replaces only what distill wrote) and the prompt design (every profession gets >= 2
generations). Each failure is one UserError line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distill.errors import UserError


def check_sampling_args(args) -> None:
    checks = [
        (args.samples_per_prompt >= 1, f"--samples-per-prompt must be >= 1, not {args.samples_per_prompt}"),
        (args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, not {args.max_new_tokens}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, not {args.batch_size}"),
        (args.top_k >= 0, f"--top-k must be >= 0 (0 turns it off), not {args.top_k}"),
        (0 < args.top_p <= 1, f"--top-p must be in (0, 1], not {args.top_p}"),
        (args.sampling_temperature > 0, f"--sampling-temperature must be > 0, not {args.sampling_temperature}"),
        (args.max_prompts is None or args.max_prompts >= 1, f"--max-prompts must be >= 1, not {args.max_prompts}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def check_bootstrap(args) -> None:
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, not {args.bootstrap}")


def parse_model_runs(specs: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, [path, ...])] from --model values.

    'NAME=PATH' labels a model; 'NAME=DIR1,DIR2,...' or 'NAME=GLOB' (e.g. out/kd_s*/final) gives one model
    several training runs (seeds), scored run by run; a bare path is one run named after itself.
    """
    parsed, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and "/" not in name and os.sep not in name:
            if not name.strip() or not path.strip():
                raise UserError(f"--model {spec!r}: NAME=PATH needs both a name and a path")
            name, path = name.strip(), path.strip()
            if name in seen:
                raise UserError(f"--model name {name!r} is used twice; give each model its own NAME=")
            paths = _expand_runs(spec, path)
        else:
            paths = [spec]
            p = Path(spec.rstrip("/"))
            name = p.stem if spec.endswith(".gguf") else (p.name or spec)
            base, i = name, 2
            while name in seen:
                name, i = f"{base}-{i}", i + 1
        seen.add(name)
        parsed.append((name, paths))
    return parsed


def _expand_runs(spec: str, value: str) -> list[str]:
    import glob

    paths = []
    for part in (x.strip() for x in value.split(",")):
        if not part:
            raise UserError(f"--model {spec!r}: an empty path between commas")
        if any(ch in part for ch in "*?["):
            hits = sorted(glob.glob(os.path.expanduser(part)))
            if not hits:
                raise UserError(f"--model {spec!r}: the pattern {part!r} matches nothing")
            paths.extend(hits)
        else:
            paths.append(part)
    if len(set(paths)) != len(paths):
        raise UserError(f"--model {spec!r}: a run is listed twice")
    return paths


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """[(name, path)]: one run per model (for `distill samples`)."""
    out = []
    for name, paths in parse_model_runs(specs):
        if len(paths) > 1:
            raise UserError(f"--model {name}: shows one run per model; give NAME=DIR (several runs are for eval)")
        out.append((name, paths[0]))
    return out


def input_paths(args, models) -> list[Path]:
    """The local inputs of eval/samples (models, --text, --prompts, --bios): --out may not be, contain or lie
    inside any of them."""
    paths = [Path(p).expanduser() for _, runs in models for p in ([runs] if isinstance(runs, str) else runs)
             if Path(p).expanduser().exists()]
    bios = getattr(args, "bios", None)
    for spec in (getattr(args, "text", None), args.prompts, None if bios == "project" else bios):
        if spec and Path(spec).expanduser().exists():
            paths.append(Path(spec).expanduser())
    return paths


def check_out_dir(out: Path, overwrite: bool, protected=()) -> None:
    from distill.rundir import prepare_output_dir

    prepare_output_dir(out, "report", overwrite, protected, what="--out")


_SAMPLES_SIGNATURES = ("# Side-by-side samples", "<title>Side-by-side samples</title>")


def check_out_file(out: Path, overwrite: bool, protected=()) -> None:
    """`samples --out FILE`: --overwrite replaces only a file `distill samples` wrote."""
    from distill.rundir import check_no_overlap, check_writable

    check_no_overlap(out, protected, what="--out")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .md or .html file")
    if out.exists():
        if not overwrite:
            raise UserError(f"--out {out} already exists; pass --overwrite to replace it, or choose another file")
        try:
            with open(out, encoding="utf-8") as f:
                head = f.read(4096)
        except (OSError, UnicodeDecodeError):
            head = ""
        if not any(sig in head for sig in _SAMPLES_SIGNATURES):
            raise UserError(f"--out {out} was not written by distill samples, so --overwrite will not replace it; "
                            "remove it yourself or choose another file")
    check_writable(out, "--out")


def check_design(prompts, samples_per_prompt: int, group_by: str) -> list[str]:
    """Before any compute: every profession needs >= 2 generations (UserError otherwise); notes for the rest."""
    from distill.eval import stats

    per: dict[tuple[str, str], int] = {}
    for p in prompts:
        key = (p.category, p.profession)
        per[key] = per.get(key, 0) + samples_per_prompt
    design = stats.Design(tuple(per), group_by)
    try:
        stats.check_sizes(design, np.array(list(per.values()), dtype=float))
    except stats.DesignError as exc:
        raise UserError(str(exc)) from exc
    return stats.design_notes(design)
