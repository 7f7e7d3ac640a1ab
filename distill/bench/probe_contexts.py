"""The likelihood probe's offset in several contexts: how much of an "offset" is the model and how much the wording.

    python -m distill.bench.probe_contexts --teacher cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model kd=out/demo_seeds/runs/kd/s0/final,out/demo_seeds/runs/kd/s1/final \
        --model crr=out/demo_seeds/runs/cda_pair_mean/s0/final,out/demo_seeds/runs/cda_pair_mean/s1/final \
        --baseline kd --out probe_contexts.json

The probe of `distill eval` (distill.eval.probe) reads each template at the very start of a text. Here every
template is also read after each of CONTEXTS: a sentence or two written for the project that names no
person, so that ordinary prose comes before the template instead of nothing. Per model and context: the
offset (mean log P(male)/P(female) over the held-out professions, > 0 leans male) and the slope on the
teacher's ratios in the same context; a model given several runs (comma-separated) gets mean +- sd over its
runs and, against `--baseline`, the exact permutation p over runs of the difference in |offset| and in slope.
If the offset moves with the context by more than the models differ, one context's offset is not a property
of the model. The context "none" is what `distill eval` measures.

Only the held-out half of the professions (`probe_split`) is read, as `distill eval` does.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from distill.atomic import write_json_atomic

CONTEXTS = {
    "none": "",
    "street": "It was an ordinary Tuesday in the city, and the streets were busy as usual. ",
    "town": "The town had a small market, a library and a train station near the river. "
            "Every morning people walked to work. ",
    "weather": "Rain had fallen all night, and by morning the roads were wet and the air was cold. ",
}


def measure(teacher: str, models: dict[str, list[str]], contexts: dict[str, str] = CONTEXTS) -> dict:
    """{"teacher": {context: summary}, "runs": {model: [{context: summary with slope on the teacher}]}}."""
    from distill.eval.probe import PROBE_TEMPLATES, probe_model, probe_professions, probe_split, probe_summary
    from distill.eval.prompts import load_prompts
    from distill.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(teacher)
    held_out = probe_split(probe_professions(load_prompts("professions")))[1]

    def ratios(path: str) -> dict[str, list]:
        model = load_model(path, "float32").eval()
        out = {c: probe_model(model, tokenizer, held_out, tuple(text + t for t in PROBE_TEMPLATES))["logratio"]
               for c, text in contexts.items()}
        print(f"  probed {path}", file=sys.stderr, flush=True)
        return out

    t = ratios(teacher)
    runs = {name: [{c: probe_summary(lr, t[c]) for c, lr in ratios(p).items()} for p in paths]
            for name, paths in models.items()}
    return {"teacher": {c: probe_summary(lr) for c, lr in t.items()}, "runs": runs}


def summarise(figures: dict, baseline: str | None) -> dict:
    """Per model and context: offset and slope, mean and sd over runs; |offset| and slope runs p vs baseline."""
    from distill.eval.paired import runs_permutation_p

    def values(name, context, key):
        return [r[context][key] for r in figures["runs"][name]]

    out = {}
    for name, runs in figures["runs"].items():
        out[name] = {}
        for c in runs[0]:
            off, slope = np.array(values(name, c, "mean_logratio")), np.array(values(name, c, "slope_on_teacher"))
            row = {"offset": float(off.mean()), "offset_sd": float(off.std(ddof=1)) if len(off) > 1 else 0.0,
                   "slope": float(slope.mean()), "slope_sd": float(slope.std(ddof=1)) if len(slope) > 1 else 0.0,
                   "runs": len(off)}
            if baseline and name != baseline:
                base_off = np.abs(values(baseline, c, "mean_logratio"))
                row["abs_offset_runs_p"] = runs_permutation_p(base_off, np.abs(off))
                row["slope_runs_p"] = runs_permutation_p(values(baseline, c, "slope_on_teacher"), slope)
            out[name][c] = row
    return out


def markdown(figures: dict, summary: dict) -> str:
    contexts = list(figures["teacher"])
    lines = ["Offset (mean log P(male)/P(female) over the held-out professions; > 0 leans male), mean +- sd over "
             "runs; in brackets the slope on the teacher in the same context", "",
             "| model | runs | " + " | ".join(contexts) + " |", "|---|---|" + "---|" * len(contexts),
             "| teacher | 1 | " + " | ".join(f"{figures['teacher'][c]['mean_logratio']:+.3f}" for c in contexts)
             + " |"]
    for name, by_context in summary.items():
        cells = []
        for c in contexts:
            r = by_context[c]
            cell = f"{r['offset']:+.3f} +- {r['offset_sd']:.3f} ({r['slope']:.2f})"
            if r.get("abs_offset_runs_p") is not None:
                cell += f"; p {r['abs_offset_runs_p']:.3f} / {r['slope_runs_p']:.3f}"
            cells.append(cell)
        lines.append(f"| {name} | {by_context[contexts[0]]['runs']} | " + " | ".join(cells) + " |")
    lines += ["", "p: exact permutation p over runs against the baseline, of |offset| / of the slope."]
    return "\n".join(lines)


def _checked(args) -> tuple[dict[str, list[str]], list[str]]:
    """({name: [run paths]}, context names) from the command line, each input checked before any model loads.
    Models are parsed as `distill eval --model` parses them (several runs, globs), each given a NAME."""
    from distill.errors import UserError
    from distill.eval.validate import parse_model_runs

    for spec in args.model:
        name, sep, paths = spec.partition("=")
        if not sep or not name or not paths:
            raise UserError(f"--model {spec!r}: write NAME=DIR[,DIR...], e.g. crr=out/demo_runs/crr/final")
    models = dict(parse_model_runs(args.model))
    names = [c.strip() for c in args.contexts.split(",") if c.strip()]
    if not names or any(c not in CONTEXTS for c in names):
        raise UserError(f"--contexts {args.contexts!r}: choose from {', '.join(CONTEXTS)}, comma-separated")
    if args.baseline and args.baseline not in models:
        raise UserError(f"--baseline {args.baseline}: not one of the --model names ({', '.join(models) or 'none given'})")
    return models, names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.probe_contexts", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher (a GGUF file, a model directory or a hub name)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR[,DIR...]",
                   help="a student, or several training runs of one (comma-separated); repeatable")
    p.add_argument("--baseline", help="the model the others are compared with over runs (e.g. kd)")
    p.add_argument("--contexts", default=",".join(CONTEXTS),
                   help=f"which contexts, comma-separated (default all: {','.join(CONTEXTS)})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    from distill.errors import UserError

    try:
        models, names = _checked(args)
    except UserError as exc:
        print(f"probe_contexts: error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    figures = measure(args.teacher, models, {c: CONTEXTS[c] for c in names})
    summary = summarise(figures, args.baseline)
    print(markdown(figures, summary))
    if args.out:
        write_json_atomic(args.out, {"contexts": {c: CONTEXTS[c] for c in names}, "models": models, "figures": figures,
                                     "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
