"""Which of the study's `distill eval` folders score which arms, and one merged view of them.

A study scores its runs with `distill eval`, one eval for everything the first time (OUT/eval/). Adding arms
to a finished study then costs only the new arms: the next eval (OUT/eval-2/, OUT/eval-3/, ...) scores the
teacher, the new arms and their baselines again, so every paired test still compares models scored in one
eval on the same prompts and sampling seeds. Because the scorer is deterministic, a baseline scored in two
evals must get the same figures; `baseline_agreement` measures that, and the table prints it.

An arm counts as scored by an eval when that eval holds the arm and its baseline with exactly the planned run
folders, settings equal to the study's, and no file in those runs is newer than the eval (a retrained run is
scored again). `score` finds those evals and runs the one new eval for the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.errors import UserError
from distill.study.arms import EVAL_ARGS, SMOKE_EVAL, baseline_of

# `distill eval` flag -> its key in results.json's settings: what must match for two evals to be comparable
SETTING_OF_FLAG = {"--prompts": "prompts", "--max-prompts": "max_prompts", "--samples-per-prompt":
                   "samples_per_prompt", "--max-new-tokens": "max_new_tokens", "--batch-size": "batch_size",
                   "--text": "text", "--bootstrap": "bootstrap", "--seed": "seed"}


def expected_settings(eval_args: list[str]) -> dict[str, str]:
    """The settings an eval run with `eval_args` records, as strings (results.json stores numbers)."""
    pairs = dict(zip(eval_args[::2], eval_args[1::2], strict=True))
    return {SETTING_OF_FLAG[flag]: value for flag, value in pairs.items() if flag in SETTING_OF_FLAG}


def _eval_index(name: str) -> int | None:
    """eval -> 1, eval-N -> N, anything else -> None."""
    if name == "eval":
        return 1
    number = name.removeprefix("eval-")
    return int(number) if name.startswith("eval-") and number.isdigit() else None


def eval_dirs(out: Path) -> list[Path]:
    """OUT/eval, OUT/eval-2, OUT/eval-3, ... that hold a results.json, in the order they were made."""
    found = [d for d in out.glob("eval*") if _eval_index(d.name) and (d / "results.json").is_file()]
    return sorted(found, key=lambda d: _eval_index(d.name))


def next_eval_dir(out: Path) -> Path:
    """A folder past every existing eval, so a new eval never replaces one (also after one was deleted)."""
    last = max((i for d in out.glob("eval*") if (i := _eval_index(d.name))), default=0)
    return out / ("eval" if last == 0 else f"eval-{last + 1}")


def _newest_file(folder: Path) -> float:
    return max((f.stat().st_mtime for f in folder.rglob("*") if f.is_file()), default=float("inf"))


def scores_arm(results: dict, results_mtime: float, arm: str, final_dirs: list[str],
               newest: dict[str, float]) -> bool:
    """Whether this eval scored `arm` with exactly these runs, each unchanged since (`newest`: run folder ->
    its newest file's mtime)."""
    model = results.get("models", {}).get(arm)
    if not model:
        return False
    sources = [s.get("source") for s in model.get("seeds") or []] or [model.get("source")]
    if [str(s) for s in sources] != final_dirs:
        return False
    return all(newest[d] <= results_mtime for d in final_dirs)


def assign_evals(out: Path, arms: list[str], runs: list[dict], baseline_of, eval_args: list[str]):
    """({arm: eval dir that scored it and its baseline}, [arms no eval scores], {eval dir: its results.json})
    from OUT/eval*."""
    want = expected_settings(eval_args)
    dirs_of = {arm: [r["final_dir"] for r in runs if r["arm"] == arm] for arm in arms}
    newest = {r["final_dir"]: _newest_file(Path(r["final_dir"])) for r in runs}  # once per run, not per eval
    assigned: dict[str, Path] = {}
    loaded: dict[Path, dict] = {}
    for d in eval_dirs(out):
        path = d / "results.json"
        results = loaded[d] = json.loads(path.read_text())
        settings = {k: str(v) for k, v in results.get("settings", {}).items()}
        if any(settings.get(k) != v for k, v in want.items()):
            continue  # scored with another budget: not comparable
        mtime = path.stat().st_mtime
        for arm in arms:
            base = baseline_of(arm)
            if all(scores_arm(results, mtime, a, dirs_of[a], newest) for a in {arm, base}):
                assigned[arm] = d  # the latest eval wins: it holds the newest scoring of the arm
    return assigned, [a for a in arms if a not in assigned], loaded


def eval_models(missing: list[str], baseline_of) -> list[str]:
    """The arms one new eval must score: the missing ones and, for their paired tests, their baselines."""
    return list(dict.fromkeys(m for arm in missing for m in (baseline_of(arm), arm)))


AGREEMENT_FIGURES = ("disparity_rms", "perplexity")  # agreement depends on which model is the teacher


def baseline_agreement(evals: dict[Path, dict], baselines: list[str]) -> dict[str, dict]:
    """For a baseline scored by several evals: the largest difference of its per-run figures between them
    (0 when the scorer reproduced itself, as it should)."""
    out = {}
    for base in baselines:
        scored = [(d, r["models"][base]) for d, r in evals.items() if base in r.get("models", {})]
        if len(scored) < 2:
            continue
        per_run = [[s.get(k) for s in (m.get("seeds") or [m]) for k in AGREEMENT_FIGURES] for _, m in scored]
        diffs = [abs(a - b) for row in per_run[1:] for a, b in zip(per_run[0], row, strict=True)
                 if isinstance(a, (int, float)) and isinstance(b, (int, float))]
        out[base] = {"evals": [str(d) for d, _ in scored], "max_abs_diff": max(diffs, default=0.0)}
    return out


def check_reusable(missing: list[str], out: Path) -> None:
    if missing:
        raise UserError(f"no eval under {out}/eval* scores arm(s) {', '.join(missing)} with the runs of these "
                        "seeds; pass the arms and seeds of an earlier study, or run without --reuse-eval")


def score(runs: list[dict], arms: list[str], out: Path, smoke: bool, run, teacher: str | None,
          reuse: bool, eval_argv: list[str] | None = None) -> tuple[dict[str, dict], dict[str, Path], dict]:
    """({arm: results.json of the eval that scored it}, {arm: that eval's folder}, baseline agreement).

    Arms an earlier eval under OUT already scored are not scored again; the rest go into one new `distill eval`
    with the teacher and their baselines. With `reuse`, nothing is scored."""
    extra = SMOKE_EVAL if smoke else (eval_argv or EVAL_ARGS)
    assigned, missing, evals = assign_evals(out, arms, runs, baseline_of, extra)
    if reuse:
        check_reusable(missing, out)
    elif missing:
        eval_dir = next_eval_dir(out)
        head = ["--model", f"teacher={teacher}"] if teacher else []
        models = eval_models(missing, baseline_of)
        grouped = [f"{arm}=" + ",".join(r["final_dir"] for r in runs if r["arm"] == arm) for arm in models]
        argv = ["eval", *head, *(x for m in grouped for x in ("--model", m)), *extra, "--out", str(eval_dir),
                "--overwrite"]
        if run(argv) != 0:
            raise UserError("distill eval failed (see above); the trained runs are kept under " + str(out / "runs"))
        assigned.update({arm: eval_dir for arm in models})
        evals[eval_dir] = json.loads((eval_dir / "results.json").read_text())
    evals = {d: evals[d] for d in dict.fromkeys(assigned.values())}  # only the evals the table draws on
    agreement = baseline_agreement(evals, [a for a in arms if a == baseline_of(a)])
    return {arm: evals[d] for arm, d in assigned.items()}, assigned, agreement

