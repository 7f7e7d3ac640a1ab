"""The study's table.md and its plot (`python -m distill.study` writes both; see distill/study/__main__.py).

    from distill.study.table import write_table, write_plot
    write_table(OUT / "table.md", arms, runs, comparisons, command, agreement, runs_tests, primary, family)

The table's first line is the primary comparison (distill.study.primary); each arm's row then gives mean ± sd
over seeds of every FIGURES column and its paired tests against its baseline, all secondary, each p followed
by its Holm-adjusted value.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from distill.eval.lines import format_p
from distill.study import primary as study_primary
from distill.study.arms import BASELINE, SMALL_BASELINE, baseline_of
from distill.study.figures import FIGURES, TABLE_TESTS, figure


def _holm(c: dict, key: str) -> str:
    return f" (Holm {format_p(c[f'{key}_holm'])})" if isinstance(c.get(f"{key}_holm"), (int, float)) else ""


def _test_cell(c: dict) -> str:
    """One test: the difference, its interval, p over professions and runs p, each secondary p followed by its
    Holm-adjusted value; the primary's runs p is labelled instead."""
    ci = f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" if c.get("ci") else ""
    p = f", p {format_p(c['p'])}{_holm(c, 'p')}" if isinstance(c.get("p"), (int, float)) else ""
    runs = ""
    if isinstance(c.get("p_runs"), (int, float)):
        runs = f", runs p {format_p(c['p_runs'])}" + (" (primary)" if c.get("primary") else _holm(c, "p_runs"))
    return f"{c['metric']}: {c['diff']:+.3f}{ci}{p}{runs}"


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def write_table(path: Path, arms: list[str], runs: list[dict], comparisons: dict[str, list[dict]],
                command: str, agreement: dict | None = None, runs_tests: dict[str, dict] | None = None,
                primary: dict | None = None, family: int | None = None) -> None:
    from distill.eval.paired import runs_permutation_floor

    n = len({r["seed"] for r in runs})
    secondary = (f"Every other test is secondary: each p is followed by its Holm-adjusted value over all {family} "
                 "secondary p values the study reports (results.json), and only those adjusted values may be read "
                 "against 0.05." if family is not None else "")
    lines = [study_primary.primary_line(primary), ""] if family is not None else []
    lines += [f"Made by `{command}`. Mean ± sd over seeds (n per arm in the second column); paired test against "
             f"plain KD of the same size (`{BASELINE}`; `{SMALL_BASELINE}` for the compressed arms) from the "
             "scorer (arm - baseline, [95% CI], p over professions; runs p: exact permutation over training "
             f"runs, the only p that includes training noise; {runs_permutation_floor(n, n):.2g} is its floor with {n} runs "
             f"per arm), and the probe's slope on the teacher tested the same way over runs. {secondary}".rstrip(), "",
             "| arm | n | " + " | ".join(label.replace("|", "\\|") for label, _, _ in FIGURES)
             + (" | vs baseline (paired) |" if family is None else
                " | vs baseline (paired; secondary, Holm-adjusted p in parentheses) |"),
             "|---|---|" + "---|" * (len(FIGURES) + 1)]
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        cells = [_mean_sd([v for r in mine if (v := figure(r["figures"], col)) is not None]) for col in FIGURES]
        tests = [_test_cell(c) for c in comparisons.get(arm, []) if c["metric"] in TABLE_TESTS]
        slope = (runs_tests or {}).get(arm)
        if slope and tests:
            tests.append(_test_cell(slope))
        if tests and baseline_of(arm) != BASELINE:
            tests[0] = f"vs {baseline_of(arm)}: {tests[0]}"
        lines.append(f"| {arm} | {len(mine)} | " + " | ".join(cells) + " | " + ("; ".join(tests) or "—") + " |")
    for base, a in (agreement or {}).items():
        lines += ["", f"`{base}` was scored by {len(a['evals'])} evals ({', '.join(a['evals'])}); its per-run "
                  f"figures differ between them by at most {a['max_abs_diff']:.2g} (0: the scorer reproduced "
                  "itself, so tests from different evals share one baseline)."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, arms: list[str], runs: list[dict]) -> None:
    """Disparity against perplexity: a dot per run and each arm's mean ± sd as a diamond with error bars, one
    panel per student size (arms grouped by their baseline), because compression moves perplexity far more than
    any arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = list(dict.fromkeys(baseline_of(a) for a in arms))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1.5, 4.5), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, baseline in zip(axes[0], panels, strict=True):
        for i, arm in enumerate(arms):
            if baseline_of(arm) != baseline:
                continue
            pts = [(figure(r["figures"], FIGURES[4]), figure(r["figures"], FIGURES[0])) for r in runs
                   if r["arm"] == arm]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if not pts:
                continue
            xs, ys = np.array(pts).T
            color = cmap(i % 20)
            ax.scatter(xs, ys, color=color, s=22, alpha=0.6)
            ax.errorbar(xs.mean(), ys.mean(), xerr=xs.std(ddof=1) if len(xs) > 1 else None,
                        yerr=ys.std(ddof=1) if len(ys) > 1 else None, fmt="D", color=color, ms=6, capsize=3,
                        label=arm)
        ax.set_title(f"arms paired with {baseline}", fontsize=10)
        ax.set_xlabel("perplexity (held-out text)")
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("disparity_rms (dots: runs; diamonds: mean ± sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
