"""The study's one primary comparison, declared before any model is scored, and Holm's adjustment of the rest.

    from distill.study import primary as study_primary
    primary = study_primary.declare(arms, baseline_of, previous=None, scored_before=False)  # before training
    study_primary.fill(primary, runs)                       # after scoring: estimate, runs p, the runs' values
    family = study_primary.adjust_secondary(comparisons, runs_tests, primary)   # adds p_holm / p_runs_holm

**Primary**: crr (`cda_pair_mean`, the demo's recipes/demo_crr.yaml) against plain KD (`kd`) on the headline
disparity_rms, over training runs: the estimate is the mean of crr's per-run disparity_rms minus kd's, the p
the exact permutation test over the runs (distill.eval.paired.runs_permutation_p), the only test that counts
training noise. A study without crr declares its first arm against that arm's baseline instead, and says so.
The declaration is written into OUT/results.json before the first run trains, with the time; a study resumed
after an eval already exists says that its declaration came after scoring (`declared_before_scoring`), unless
an earlier declaration of the same comparison is on file, which it keeps.

**Secondary**: every other p the study reports (each scorer comparison of an arm with its baseline, its p over
professions and p_runs, the probe slope's runs test), one family, Holm-adjusted (distill.eval.paired.holm),
which keeps the chance of any false rejection among them at 0.05 whatever their dependence.
"""

from __future__ import annotations

import statistics
import time

PRIMARY_ARM = "cda_pair_mean"  # recipes/demo_crr.yaml: the demo's crr student
ALPHA = 0.05
METRIC = "disparity_rms"
TEST = "exact two-sided permutation test over training runs (runs p)"
DECLARED_KEYS = ("a", "b", "metric", "test")  # what must match for an earlier declaration to stand


def declare(arms: list[str], baseline_of, previous: dict | None, scored_before: bool) -> dict | None:
    """The primary comparison of a study of these arms, not yet filled; None when no arm has a baseline."""
    if PRIMARY_ARM in arms:
        b, why = PRIMARY_ARM, "crr (cda_pair_mean, recipes/demo_crr.yaml) against plain KD: the study's question"
    else:
        b = next((arm for arm in arms if arm != baseline_of(arm)), None)
        if b is None:
            return None
        why = f"{PRIMARY_ARM} (crr) is not in this study: its first arm against its baseline instead"
    entry = {"a": baseline_of(b), "b": b, "metric": METRIC, "test": TEST, "alpha": ALPHA, "why": why,
             "declared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "declared_before_scoring": not scored_before,
             "estimate": None, "p": None, "floor": None, "runs": None, "established": None}
    if previous and all(previous.get(k) == entry[k] for k in DECLARED_KEYS):
        entry["declared_at"] = previous.get("declared_at", entry["declared_at"])
        entry["declared_before_scoring"] = bool(previous.get("declared_before_scoring"))
    return entry


def fill(primary: dict | None, runs: list[dict], value) -> None:
    """Put the estimate, the runs p, its floor and each run's figure into the declared entry.

    value(run) -> the run's disparity_rms or None (a run the scorer gave no figure)."""
    from distill.eval.paired import runs_permutation_floor, runs_permutation_p

    if primary is None:
        return
    per_arm = {arm: [v for r in runs if r["arm"] == arm and (v := value(r)) is not None]
               for arm in (primary["a"], primary["b"])}
    a, b = per_arm[primary["a"]], per_arm[primary["b"]]
    primary["runs"] = per_arm
    primary["estimate"] = statistics.fmean(b) - statistics.fmean(a) if a and b else None
    p = runs_permutation_p(a, b)
    primary["p"] = None if p is None else float(p)
    primary["floor"] = runs_permutation_floor(len(a), len(b)) if min(len(a), len(b)) >= 2 else None
    primary["established"] = bool(primary["p"] is not None and primary["p"] <= primary["alpha"])


def is_primary(c: dict, arm: str, primary: dict | None) -> bool:
    """Whether comparison c (of `arm` against its baseline) carries the primary test in its p_runs."""
    return primary is not None and arm == primary["b"] and c.get("a") == primary["a"] and c.get("metric") == METRIC


def adjust_secondary(comparisons: dict[str, list[dict]], runs_tests: dict[str, dict], primary: dict | None) -> int:
    """Holm-adjust every p of the study but the primary's, in place: each p gets p_holm, each p_runs
    p_runs_holm; the primary's p_runs is marked `primary` instead. Returns the family's size."""
    from distill.eval.paired import holm

    slots = []  # (dict, key) of every secondary p
    for arm, tests in comparisons.items():
        for c in tests:
            c.pop("primary", None)
            for key in ("p", "p_runs"):
                if not isinstance(c.get(key), (int, float)):
                    continue
                if key == "p_runs" and is_primary(c, arm, primary):
                    c["primary"] = True
                    continue
                slots.append((c, key))
    slots += [(t, "p_runs") for t in runs_tests.values() if isinstance(t.get("p_runs"), (int, float))]
    for (c, key), adjusted in zip(slots, holm([c[key] for c, key in slots]), strict=True):
        c[f"{key}_holm"] = adjusted
    return len(slots)


def primary_line(primary: dict | None) -> str:
    """The table's first line: the declared comparison, its estimate and runs p, and whether it holds."""
    if primary is None:
        return "No primary comparison: this study has no arm with a baseline."
    label = f"crr (`{primary['b']}`) - `{primary['a']}`" if primary["b"] == PRIMARY_ARM else \
        f"`{primary['b']}` - `{primary['a']}`"
    when = "before any model was scored" if primary["declared_before_scoring"] else \
        "after an earlier eval of this study had scored (no declaration was on file)"
    head = f"**Primary comparison** (declared in results.json at {primary['declared_at']}, {when}): {label}, " \
           f"{primary['metric']}, mean over training runs"
    n = {k: len(v) for k, v in (primary.get("runs") or {}).items()}
    if primary.get("p") is None:
        est = "n/a" if primary.get("estimate") is None else f"{primary['estimate']:+.3f}"
        return f"{head}: {est}; no runs p: the permutation test needs at least 2 runs per arm (4 to reach 0.05)."
    verdict = "established" if primary["established"] else "not established"
    return (f"{head}: {primary['estimate']:+.3f}, exact permutation p over {n[primary['b']]} + {n[primary['a']]} runs "
            f"= {primary['p']:.3g} (its floor {primary['floor']:.2g}); at alpha {primary['alpha']}: {verdict}.")
