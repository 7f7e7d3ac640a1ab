"""The probe's picture: each student's per-profession log P(male)/P(female) against the teacher's.

    from distill.eval.probe_plot import write_probe_scatter, probe_scatter_md
    paths = write_probe_scatter(out_dir, results)   # [out_dir/probe_scatter.png], or [] without a teacher
    lines = probe_scatter_md(results)               # the report.md link and how to read it, or []

One panel per student, one point per profession (the mean over the model's runs). The fitted line is the least
squares line of the student on the teacher; its slope is `slope_on_teacher` of distill.eval.probe (1: the
teacher's stereotype kept whole, 0: removed; with several runs the mean of the runs' slopes, which equals the
slope through the runs' mean points because every run is fitted on the same teacher ratios). The dashed
identity line is a student equal to the teacher; the x = 0 and y = 0 lines split male-leaning from
female-leaning professions. All panels share their axes, so a flatter cloud reads as a flatter line.

`draw_slope_panel` is the lenses plot's fourth panel: the slope of each student, its runs as small dots.
The scatter is left out (no file, no link) when the eval has no teacher probe or no student probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.eval.probe import probe_summary

PROBE_SCATTER = "probe_scatter.png"
N_LABELLED = 2  # the teacher's most male- and most female-leaning professions are named in each panel


def scatter_data(results: dict) -> tuple[str, list[str], np.ndarray, dict[str, np.ndarray]] | None:
    """(teacher name, professions, teacher ratios, {student: ratios}) over the professions every model was
    probed on; None when there is no teacher probe or no student probe to plot against it."""
    models = results.get("models", {})
    teacher = (results.get("settings") or {}).get("teacher")
    ratios = {n: (m.get("probe") or {}).get("logratio") for n, m in models.items()}
    if teacher not in models or not ratios.get(teacher):
        return None
    students = [n for n in models if n != teacher and ratios.get(n)]
    if not students:
        return None
    profs = [p for p in ratios[teacher] if all(p in ratios[s] for s in students)]
    if len(profs) < 2:
        return None
    t = np.array([ratios[teacher][p] for p in profs], dtype=np.float64)
    return teacher, profs, t, {s: np.array([ratios[s][p] for p in profs], dtype=np.float64) for s in students}


def probe_scatter_figure(results: dict):
    """The matplotlib figure (one axes per student), or None; the caller saves and closes it."""
    data = scatter_data(results)
    if data is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher, profs, t, students = data
    lim = 1.08 * max(float(np.max(np.abs(t))), max(float(np.max(np.abs(s))) for s in students.values()), 1e-6)
    width = max(6.0, 4.2 * len(students) + 0.6)
    fig, axes = plt.subplots(1, len(students), figsize=(width, 4.8), squeeze=False, sharex=True, sharey=True,
                             layout="constrained")
    order = np.argsort(t)
    labelled = set(order[:N_LABELLED].tolist()) | set(order[-N_LABELLED:].tolist())
    for j, (ax, (name, s)) in enumerate(zip(axes[0], students.items(), strict=True)):
        fit = probe_summary(s, t)
        slope = fit["slope_on_teacher"]
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.plot([-lim, lim], [-lim, lim], linestyle="--", color="grey", linewidth=1, label="student = teacher")
        ax.scatter(t, s, s=14, alpha=0.6, color=f"C{j + 1}", edgecolors="none")
        if slope is not None:
            xs = np.array([-lim, lim])
            ax.plot(xs, s.mean() + slope * (xs - t.mean()), color=f"C{j + 1}", linewidth=2,
                    label=f"least squares, slope {slope:.2f}")
        for i in sorted(labelled):
            ax.annotate(profs[i].split("/")[-1].replace("_", " "), (t[i], s[i]), fontsize=6, alpha=0.8,
                        xytext=(2, 2), textcoords="offset points")
        r = fit.get("r_on_teacher")
        ax.set_title(f"{name}: slope on the teacher {_num(slope)} (r {_num(r)})", fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{teacher}: log P(male)/P(female)", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("student: log P(male)/P(female)", fontsize=8)
    fig.suptitle(f"Likelihood probe: each student against the teacher, one point per profession ({len(profs)})",
                 fontsize=10)
    return fig


def write_probe_scatter(out_dir: Path, results: dict) -> list[Path]:
    fig = probe_scatter_figure(results)
    if fig is None:
        return []
    import matplotlib.pyplot as plt

    path = Path(out_dir) / PROBE_SCATTER
    fig.savefig(path, dpi=110, bbox_inches="tight")  # equal aspect: keep the axis labels inside
    plt.close(fig)
    return [path]


def probe_scatter_md(results: dict) -> list[str]:
    """report.md lines for the scatter, or [] when write_probe_scatter writes none."""
    if scatter_data(results) is None:
        return []
    return ["", f"![probe: each student against the teacher]({PROBE_SCATTER})", "",
            "One point per profession. A student that kept the teacher's stereotype lies on the dashed identity "
            "line (slope 1); one that removed it lies flat on y = 0 (slope 0). Points above y = 0 lean male."]


def draw_slope_panel(ax, results: dict) -> bool:
    """Each student's probe slope on the teacher (its runs as small dots), the teacher at 1 by definition;
    False when no model has one."""
    models, teacher = results["models"], (results.get("settings") or {}).get("teacher")
    names = list(models)
    any_point = False
    for j, name in enumerate(names):
        probe = models[name].get("probe") or {}
        if name == teacher and probe:
            ax.plot([j], [1.0], marker="o", markerfacecolor="none", color=f"C{j}")
            continue
        slope = probe.get("slope_on_teacher")
        if slope is None:
            continue
        runs = [(r.get("probe") or {}).get("slope_on_teacher") for r in models[name].get("seeds", [])]
        runs = [x for x in runs if x is not None]
        if len(runs) > 1:
            ax.plot([j] * len(runs), runs, ".", color=f"C{j}", alpha=0.5)
        ax.plot([j], [slope], "o", color=f"C{j}")
        any_point = True
    ax.axhline(0, color="black", linewidth=0.6)
    ax.axhline(1, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    return any_point


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"
