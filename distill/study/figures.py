"""The scorer's results.json read for the study: each training run's figures, the paired tests of an arm
against its baseline, and the probe slope's test over training runs.

    from distill.study.figures import FIGURES, figure, run_figures
    figures = run_figures(results, "kd", 0)        # the first run (seed order) of the arm `kd`
    figure(figures, FIGURES[0])                    # its disparity_rms, or None where the scorer left it out

The scorer's contract: `--model NAME=DIR1,DIR2,...` gives one model several training runs, whose per-run
figures are under `seeds`; per-model figures `disparity_rms`, `disparity_rms_ci`, `probe{...}`; comparisons
`{a, b, metric, diff, ci, p, p_runs}`.
"""

from __future__ import annotations

import math
import statistics

from distill.study.arms import BASELINE, baseline_of

# (label, key in the scorer's per-run figures, nested key or None): the table's columns, in order
FIGURES = [
    ("disparity_rms", "disparity_rms", None),
    ("naive |d|", "naive_disparity", None),
    ("probe rms log-ratio", "probe", "rms_logratio"),
    ("probe slope on teacher", "probe", "slope_on_teacher"),
    ("perplexity", "perplexity", None),
    ("agreement", "teacher_agreement", None),
    ("embedding effect size", "embedding_effect_size", None),
    ("downstream TPR-gap rms", "downstream_tpr_gap_rms", None),
]


def run_figures(results: dict, arm: str, index: int) -> dict:
    """The scorer's figures for one training run: the index-th entry of its arm's `seeds` (runs are passed in
    seed order), or the arm's own figures when it has a single run; plus that run's two other lenses
    (`embedding_effect_size`, `downstream_tpr_gap_rms`), which the scorer keeps per lens, not per seed."""
    model = results.get("models", {}).get(arm, {})
    seeds = model.get("seeds")
    figures = dict(seeds[index]) if seeds else dict(model)
    for key, lens, field in (("embedding_effect_size", "embedding", "combined_effect_size"),
                             ("downstream_tpr_gap_rms", "downstream", "tpr_gap_rms")):
        block = model.get(lens)
        if isinstance(block, dict):
            one = block["runs"][index] if seeds and block.get("runs") else block
            if one.get(field) is not None:
                figures[key] = one[field]
    return figures


def figure(fig: dict, column: tuple[str, str, str | None]) -> float | None:
    """One FIGURES column of a run's figures, or None where the scorer left it out (or NaN)."""
    _, key, sub = column
    v = fig.get(key)
    if sub is not None:
        v = v.get(sub) if isinstance(v, dict) else None
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


TABLE_TESTS = ("disparity_rms", "probe_rms_logratio")  # the paired tests the table shows (all are in results)


def baseline_comparisons(results: dict, arm: str, base: str = BASELINE) -> list[dict]:
    """The scorer's comparisons between `arm` and its baseline, oriented as arm - baseline (the scorer's diff is
    b - a, in the order the models were given)."""
    out = []
    for c in results.get("comparisons", []):
        pair = (c.get("a"), c.get("b"))
        if pair not in ((base, arm), (arm, base)):
            continue
        sign = 1.0 if pair[0] == base else -1.0
        ci = c.get("ci")
        out.append({"metric": c["metric"], "a": base, "b": arm, "diff": sign * c["diff"],
                    "ci": (ci if sign > 0 else [-ci[1], -ci[0]]) if ci else None, "p": c.get("p"),
                    "p_runs": c.get("p_runs")})
    return out


def slope_runs_test(runs: list[dict], arm: str) -> dict | None:
    """The probe's slope on the teacher, arm - baseline over training runs: mean difference and the exact
    permutation p over the runs (the scorer tests the probe within its trained models only; the slope's spread
    over seeds is what says an effect holds across training). None for a baseline or with too few runs."""
    from distill.eval.paired import runs_permutation_p

    base = baseline_of(arm)
    if arm == base:
        return None
    values = [[v for r in runs if r["arm"] == a and (v := figure(r["figures"], FIGURES[3])) is not None]
              for a in (base, arm)]
    p = runs_permutation_p(*values)
    if p is None:
        return None
    return {"metric": "probe_slope_on_teacher", "a": base, "b": arm,
            "diff": statistics.fmean(values[1]) - statistics.fmean(values[0]), "p_runs": p}


