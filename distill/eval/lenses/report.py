"""report.md section and plot for the three lenses: generation, embedding association, downstream.

    from distill.eval.lenses.report import render_lenses_md, plot_lenses
    md = "\n".join(render_lenses_md(results))      # the "Three lenses" section of report.md
    plot_lenses(out_dir / LENS_PLOT, results)       # one figure: the three lenses and the probe's slope

results.json keys read here, per model: "embedding" ({"tests": [{"name", "effect_size", "p", ...}],
"combined_effect_size", "combined_p", "combined_ci"}), "downstream" ({"tpr_gap_rms", "tpr_gap_rms_ci",
"tpr_gap": {occupation: gap}, "accuracy", ...}) and, for the generation lens, its disparity with interval.
"""

from __future__ import annotations

from pathlib import Path

from distill.eval.lines import predictions_differ_text
from distill.eval.output import write_results_json

LENS_PLOT = "lenses.png"
# The generation lens's headline under either scorer: the unbiased RMS gap when present, else the mean |gap|.
GENERATION_KEYS = (("disparity_rms", "disparity_rms_ci"), ("disparity", "disparity_ci"))


def generation_figure(m: dict) -> tuple[float, list[float]] | None:
    for value, ci in GENERATION_KEYS:
        if isinstance(m.get(value), (int, float)) and m.get(ci):
            return float(m[value]), list(m[ci])
    return None


def _f(x, fmt: str = "+.3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ci(ci, fmt: str) -> str:
    """' [lo, hi]', or '' when there is none (a model with several runs shows the mean of its runs)."""
    return "" if not ci else f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def render_lenses_md(results: dict) -> list[str]:
    """Markdown lines: one table per model with the three lenses, the per-test and per-occupation tables,
    the lens comparisons, and how to read a disagreement."""
    models = results["models"]
    if not any(m.get("embedding") or m.get("downstream") for m in models.values()):
        return []
    s = results["settings"]
    lines = ["", "## Three lenses", "", f"![three lenses]({LENS_PLOT})", ""]
    lines += _overview_table(models)
    lines += _embedding_tests_table(models, s)
    lines += _downstream_table(models, s)
    lines += _comparisons_table(results["comparisons"])
    lines += ["", "Reading the lenses: each asks a different question of the same model (what it writes, how its "
              "representations place gendered words, what a classifier built on it learns), and the paper behind "
              "this project found that less polarised generations did not make the other two fairer. A drop in "
              "one lens with no change in another is a finding, not an error: report both."]
    return lines


def _overview_table(models: dict) -> list[str]:
    """One row per model: the headline figure of each lens."""
    lines = ["| model | generation disparity [95% CI] | embedding effect size [95% CI] (p) | "
             "downstream TPR-gap RMS [95% CI] | probe accuracy |", "|---|---|---|---|---|"]
    for name, m in models.items():
        g = generation_figure(m)
        gen = "not run" if g is None else f"{g[0]:.3f} [{g[1][0]:.3f}, {g[1][1]:.3f}]"
        e, d = m.get("embedding"), m.get("downstream")
        emb = "not run" if not e else f"{e['combined_effect_size']:+.3f}{_ci(e.get('combined_ci'), '+.3f')}" + (
            "" if e.get("combined_p") is None else f" (p {e['combined_p']:.2g})")
        down = "not run" if not d else f"{d['tpr_gap_rms']:.3f}{_ci(d.get('tpr_gap_rms_ci'), '.3f')}"
        acc = "n/a" if not d else f"{d['accuracy']:.3f}"
        lines.append(f"| {name} | {gen} | {emb} | {down} | {acc} |")
    return lines


def _embedding_tests_table(models: dict, s: dict) -> list[str]:
    """Per association test and model: Caliskan's d, its p and the CEAT effect size."""
    names = list(models)
    first_e = next((m["embedding"] for m in models.values() if m.get("embedding")), None)
    if not first_e:
        return []
    lines = ["", f"Embedding association tests (Caliskan's d on template-averaged associations, two-sided "
             f"permutation p; CEAT = random-effects over {s.get('embedding_templates')} templates; layer "
             f"{s.get('lens_layer', -1)}). Positive d = the stereotype.", ""]
    lines.append("| test | " + " | ".join(f"{n}: d (p) / CEAT" for n in names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for i, t in enumerate(first_e["tests"]):
        cells = []
        for n in names:
            e = models[n].get("embedding")
            r = e["tests"][i] if e else None
            cells.append("n/a" if r is None else f"{r['effect_size']:+.2f} ({_f(r.get('p'), '.2g')}) / "
                         f"{_f(r.get('ceat_effect_size'), '+.2f')}")
        lines.append(f"| {t['name']} | " + " | ".join(cells) + " |")
    return lines


def _downstream_table(models: dict, s: dict) -> list[str]:
    """Per occupation and model: the TPR gap; then the unbiased mean squared gap per model."""
    names = list(models)
    first_d = next((m["downstream"] for m in models.values() if m.get("downstream")), None)
    if not first_d:
        return []
    lines = ["", f"Downstream TPR gap per occupation (female - male, test split of `{s.get('bios')}`; "
             "train female share in brackets). Correlation of the gap with the train female share: "
             + ", ".join(f"{n} {_f((models[n].get('downstream') or {}).get('gap_vs_female_share_r'), '+.2f')}"
                         for n in names) + ".", ""]
    lines.append("| occupation (train female share) | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for occ in first_d["tpr_gap"]:
        share = first_d["train_female_share"][occ]
        cells = [_f((models[n].get("downstream") or {}).get("tpr_gap", {}).get(occ)) for n in names]
        lines.append(f"| {occ} ({share:.2f}) | " + " | ".join(cells) + " |")
    from distill.eval.lenses.run import left_out_note

    note = left_out_note(s)
    if note:
        lines += ["", note[0].upper() + note[1:] + "."]
    lines.append("")
    lines.append("Unbiased mean squared gap (mean over occupations of gap^2 - Var(gap): the RMS's noise floor removed): "
                 + ", ".join(f"{n} {_f((models[n].get('downstream') or {}).get('tpr_gap_ms_unbiased'), '+.4f')}"
                             for n in names) + ".")
    return lines


def _comparisons_table(comparisons: list[dict]) -> list[str]:
    """The paired comparisons of the embedding and downstream lenses."""
    comps = [c for c in comparisons if c.get("lens") in ("embedding", "downstream")]
    if not comps:
        return []
    lines = ["", "Lens comparisons (b - a on the same words and templates, or the same test biographies; "
             "paired bootstrap interval over the clusters and sign-flip p, as for the generation lens):", ""]
    lines.append("| lens | metric | a | b | b - a [95% CI] | sign-flip p | cluster | test predictions that differ |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in comps:
        differ = predictions_differ_text(c) or "–"
        lines.append(f"| {c['lens']} | {c['metric']} | {c['a']} | {c['b']} | {c['diff']:+.3f} "
                     f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | {c['p']:.3g} | {c.get('unit', '')} | {differ} |")
    if any(c.get("predictions_differ") == 0 for c in comps):
        lines += ["", "A downstream pair with 0 test predictions that differ has equal TPR gaps because the probe "
                      "cannot tell the two models apart there, not because they are equally fair."]
    return lines


def plot_lenses(path: Path, results: dict) -> None:
    """Four panels side by side: one point per model with its 95% interval for generation disparity, embedding
    combined effect size (0 = no association) and downstream TPR-gap RMS; then the likelihood probe's slope on
    the teacher (distill.eval.probe_plot.draw_slope_panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.eval.probe_plot import draw_slope_panel

    models = results["models"]
    names = list(models)
    panels = [
        ("generation: gender disparity", lambda m: generation_figure(m)),
        ("embedding: combined effect size d",
         lambda m: (m["embedding"]["combined_effect_size"], m["embedding"].get("combined_ci")) if m.get("embedding") else None),
        ("downstream: TPR-gap RMS",
         lambda m: (m["downstream"]["tpr_gap_rms"], m["downstream"].get("tpr_gap_rms_ci")) if m.get("downstream") else None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14.5, 3.8))
    for ax, (title, get) in zip(axes[:3], panels, strict=True):
        any_point = False
        for j, name in enumerate(names):
            got = get(models[name])
            if got is None:
                continue
            v, ci = got
            lo, hi = ci if ci else (v, v)  # several runs: the mean of the runs, without an interval
            # an interval that excludes its estimate (no widening) is drawn from the estimate to the far end
            err = [[max(0.0, v - lo)], [max(0.0, hi - v)]]
            ax.errorbar([j], [v], yerr=err, fmt="o", capsize=4, color=f"C{j}")
            any_point = True
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(title if any_point else title + " (not run)", fontsize=9)
    title = "probe: slope on the teacher (1 kept, 0 removed)"
    axes[3].set_title(title if draw_slope_panel(axes[3], results) else title + " (not run)", fontsize=9)
    fig.suptitle("Three lenses, one point per model (95% intervals), and the probe's slope", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_lens_outputs(out_dir: Path, results: dict, standalone: bool = False) -> list[Path]:
    """The lenses plot; with standalone=True (no generation lens) also results.json and a report.md of its own."""
    paths = [out_dir / LENS_PLOT]
    plot_lenses(paths[0], results)
    if standalone:
        write_results_json(out_dir / "results.json", results)
        s = results["settings"]
        head = ["# Bias lenses report", "",
                f"Lenses: {', '.join(s['lenses'])}; seed {s['seed']}; {s['bootstrap']} bootstrap resamples."]
        (out_dir / "report.md").write_text("\n".join(head + render_lenses_md(results)) + "\n", encoding="utf-8")
        paths += [out_dir / "results.json", out_dir / "report.md"]
    return paths
