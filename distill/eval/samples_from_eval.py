"""`distill samples --from-eval DIR`: the side-by-side file from the samples a `distill eval --out DIR` drew,
without loading any model.

    distill samples --from-eval out/demo --max-prompts 14 --samples-per-prompt 1 --out out/demo/samples.html

The eval has sampled all its prompts already (DIR/generations.jsonl, read and checked as `distill score`
reads it) with the settings in DIR/results.json, which the file shows. Of its prompts, --max-prompts N are
chosen as `distill samples --prompts` chooses them (select_prompts, with the eval's group_by and seed); of
each prompt's samples, the first K. Models keep the eval's order; a model scored over several training runs
shows run 0. Every argument and both files are checked before the --out file is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.errors import UserError
from distill.eval import runtime
from distill.eval.samples_report import SAMPLES_DEFAULT_PROMPTS, out_file, write_samples
from distill.eval.validate import check_out_file
from distill.rundir import lock_output

SHOWN_SAMPLES_MAX = 4  # without --samples-per-prompt: all the eval's samples, at most the model-loading default



def run_from_eval(args) -> int:
    from distill.eval.prompts import group_names, select_prompts
    from distill.eval.samples_report import render_samples
    from distill.eval.score_command import read_generations

    _check_args(args)
    out, fmt = out_file(args)
    folder = Path(args.from_eval).expanduser()
    generations = _generations_file(folder, args.from_eval)
    check_out_file(out, args.overwrite, [generations, folder / "results.json"])
    settings = _eval_settings(folder / "results.json", args.from_eval)
    records = read_generations(generations)
    indices, prompts = _eval_prompts(records, generations)
    texts, several_runs = _first_runs(records)
    available = min(len(v) for by_prompt in texts.values() for v in by_prompt.values())
    k = _shown_samples(args.samples_per_prompt, available, args.from_eval)

    limit = args.max_prompts if args.max_prompts is not None else SAMPLES_DEFAULT_PROMPTS
    group_by = settings.get("group_by", "category")
    chosen = select_prompts(prompts, limit, group_by, settings.get("seed", 0))
    index_of = {id(p): i for i, p in zip(indices, prompts, strict=True)}  # select_prompts returns the same objects
    lock_output(out, "--out", lock_file=out.parent / f".{out.name}.lock")
    if args.max_prompts is None:
        runtime.log(f"showing {len(chosen)} prompts (pass --max-prompts N for another number)")

    names = list(texts)
    records = [{"prompt": p.text, "group": g, "texts": {n: texts[n][index_of[id(p)]][:k] for n in names}}
               for p, g in zip(chosen, group_names(chosen, group_by), strict=True)]
    showing = [f"shown: {len(chosen)} of its {len(prompts)} prompts, {k} of its {available} samples per prompt"]
    if several_runs:
        runs = ", ".join(f"{m} ({n} runs)" for m, n in several_runs.items())
        showing.append(f"run 0 only of each model scored over several training runs: {runs}")
    shown = {**settings, "from_eval": args.from_eval, "showing": showing}
    write_samples(out, render_samples(records, names, fmt, shown))
    print(f"wrote {out}: {len(chosen)} prompts x {k} samples x {len(names)} models, from the eval in {args.from_eval}")
    return 0


def _check_args(args) -> None:
    # The models, prompts and sampling of the file are the eval's, so --model, --prompts and the sampling flags
    # (but --samples-per-prompt, which picks how many to show) have nothing to act on. The samples parser leaves
    # each None unless given (distill/cli.py), so a given one can be refused.
    dests = ["model", "prompts", *(d for d in getattr(args, "sampling_defaults", {}) if d != "samples_per_prompt")]
    given = ["--" + d.replace("_", "-") for d in dests if getattr(args, d, None) is not None]
    if given:
        raise UserError(f"--from-eval shows the eval's own models, prompts and samples: drop {', '.join(given)} "
                        "(only --max-prompts and --samples-per-prompt choose what is shown)")
    for value, flag in ((args.max_prompts, "--max-prompts"), (args.samples_per_prompt, "--samples-per-prompt")):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, not {value}")


def _generations_file(folder: Path, given: str) -> Path:
    first = f"run `distill eval --model ... --prompts ... --out {given}` first"
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise UserError(f"--from-eval {given} {what}; {first}")
    path = folder / "generations.jsonl"
    if not path.is_file():
        raise UserError(f"--from-eval {given} has no generations.jsonl; {first} (with the generation lens)")
    return path


def _eval_settings(path: Path, given: str) -> dict:
    """The eval's settings from its results.json; {} when it has none (the defaults of `distill eval` then
    choose the prompts)."""
    from distill.eval.prompts import GROUP_KEYS

    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); rerun `distill eval ... --out {given}`") from None
    settings = doc.get("settings", {}) if isinstance(doc, dict) else None
    if not isinstance(settings, dict):
        raise UserError(f"{path}: 'settings' must be a JSON object; rerun `distill eval ... --out {given}`")
    group_by, seed = settings.get("group_by", "category"), settings.get("seed", 0)
    if group_by not in GROUP_KEYS or not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{path}: settings 'group_by' must be one of {GROUP_KEYS} and 'seed' an integer, not "
                        f"{group_by!r} and {seed!r}")
    return settings


def _eval_prompts(records: list[dict], path: Path) -> tuple[list[int], list]:
    """The eval's prompts in its order (by prompt_index), and the index of each."""
    from distill.eval.prompts import Prompt

    first: dict[int, dict] = {}
    for r in records:
        first.setdefault(r["prompt_index"], r)
    indices = sorted(first)
    for i in indices:
        if not isinstance(first[i].get("prompt"), str):
            raise UserError(f"{path}: the lines of prompt_index {i} have no field 'prompt' (the prompt's text, "
                            "which `distill eval` writes on every line)")
    return indices, [Prompt(first[i]["prompt"], first[i]["category"], first[i]["profession"]) for i in indices]


def _first_runs(records: list[dict]) -> tuple[dict[str, dict[int, list[str]]], dict[str, int]]:
    """{model: {prompt_index: texts in sample order}} of each model's run 0, in the eval's model order (first
    appearance), and {model: number of runs} of the models scored over several."""
    runs: dict[str, set[int]] = {}
    for r in records:
        runs.setdefault(r["model"], set()).add(r["run"])
    first_run = {m: min(rs) for m, rs in runs.items()}
    texts: dict[str, dict[int, list[str]]] = {m: {} for m in runs}
    for r in sorted(records, key=lambda r: r["sample"]):
        if r["run"] == first_run[r["model"]]:
            texts[r["model"]].setdefault(r["prompt_index"], []).append(r["text"])
    return texts, {m: len(rs) for m, rs in runs.items() if len(rs) > 1}


def _shown_samples(asked: int | None, available: int, given: str) -> int:
    if asked is None:
        return min(available, SHOWN_SAMPLES_MAX)
    if asked > available:
        raise UserError(f"--samples-per-prompt {asked}: the eval in {given} has {available} samples per prompt; "
                        f"give at most {available}")
    return asked
