"""Write what `distill eval` and `distill score` produce: results.json, report.md and plots (side-by-side samples:
distill/eval/samples_report.py).

    from distill.eval.report import write_eval_outputs
    write_eval_outputs(out_dir, results, examples)     # results.json + report.md + two PNGs

results.json schema (other tools read it; keys may be added, never renamed; formulas in distill/eval/stats.py,
distill/eval/probe.py and distill/eval/paired.py):

    {"models": {NAME: {"disparity_rms": float, "disparity_rms_ci": [lo, hi], "disparity_ms": float,
                                                                 # the headline: RMS gap over professions
                       "disparity_rms_words": str | null,      # said when the figure or its interval is at 0
                       "category_disparity_rms": float, "category_disparity_rms_ci": [lo, hi],
                       "category_disparity_ms": float,         # the same with each category's generations pooled
                       "signed_gaps": {GROUP: P(male) - P(female)},
                       "naive_disparity": float, "naive_floor": float,
                       "male": float, "female": float, "neutral": float, "tie": float,
                       "groups": {GROUP: {"male": float, "female": float, "neutral": float, "n": int}},
                       "probe": {"rms_logratio", "mean_logratio", "sd_logratio",
                                 students also "slope_on_teacher", "r_on_teacher", "logratio": {PROF: x}},
                       "perplexity": float | null, "teacher_agreement": float | null, "runs": int,
                       "seeds": [per-run figures] and "seeds_sd": {figure: sd}   (only with several runs),
                       ... extra keys: "embedding_polarity" (same figures, embedding rule), "source", "notes",
                       "embedding" and "downstream": the other two lenses (distill/eval/lenses/report.py)}},
     "settings": {...},
     "comparisons": [{"a": NAME, "b": NAME, "metric": "disparity_rms" | "category_disparity_rms" |
                      "embedding_disparity_rms" | "embedding_category_disparity_rms" | "probe_rms_logratio",
                      "unit": "profession" | "category" (what the sign-flip p flips over), "diff": b - a,
                      "ci": [lo, hi], "p": float, "n": units, "diff_mean": mean per-unit difference,
                      "p_runs": float | null}],
     "power": {"detectable_difference": float | null, "words": str, "baseline": NAME, ...,
               "model": {"professions": [CAT/PROF], "gaps": [...], "shares": [...], "run_sd": float}}}
                                                 # distill.eval.power: this design's 80%-power difference, and
                                                 # the baseline model `distill power --eval DIR` simulates

`distill score` writes the same file without perplexity, agreement and probe.

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path

from distill.eval.cost import render_cost_md
from distill.eval.lenses.report import render_lenses_md, write_lens_outputs
from distill.eval.lines import UNIT_PLURAL, comparison_line, format_p
from distill.eval.output import write_results_json
from distill.eval.probe_plot import probe_scatter_md, write_probe_scatter
from distill.eval.samples_report import highlight_md
from distill.eval.samples_report import md_escape as _md_escape

GROUP_PLOT = "group_shares.png"
DISPARITY_PLOT = "disparity_vs_perplexity.png"
MAX_PLOT_GROUPS = 40  # beyond this a bar chart is unreadable; the most disparate groups are shown


# --------------------------------------------------------------------------------------------- helpers


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _with_sd(m: dict, key: str, digits: int = 3) -> str:
    """A figure, with +- its spread over runs when the model has several."""
    text = _fmt(m.get(key), digits)
    sd = m.get("seeds_sd", {}).get(key)
    return text if sd is None else f"{text} +- {sd:.{digits}f}"


def model_label(name: str, m: dict) -> str:
    return name if m.get("runs", 1) == 1 else f"{name} ({m['runs']} runs)"


def power_line(results: dict) -> str | None:
    """The eval's one line on power (distill.eval.power), or None for results written before it existed."""
    return (results.get("power") or {}).get("words")


def summary_table(results: dict) -> str:
    """The plain-text table `distill eval` and `distill score` print."""
    head = ("model", "disparity_rms [95% CI]", "by category", "naive (floor)", "male", "female", "neutral", "probe rms", "slope",
            "perplexity", "agreement")
    rows = [head]
    for name, m in results["models"].items():
        lo, hi = m["disparity_rms_ci"]
        probe = m.get("probe") or {}
        rows.append((model_label(name, m), f"{_with_sd(m, 'disparity_rms')} [{lo:.3f}, {hi:.3f}]",
                     _fmt(m.get("category_disparity_rms")),
                     f"{m['naive_disparity']:.3f} ({m['naive_floor']:.3f})", f"{m['male']:.3f}", f"{m['female']:.3f}",
                     f"{m['neutral']:.3f}", _fmt(probe.get("rms_logratio")), _fmt(probe.get("slope_on_teacher")),
                     _fmt_ppl(m.get("perplexity")), _fmt(m.get("teacher_agreement"))))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [comparison_line(c) for c in results["comparisons"]]
    lines += [f"{name}: {m['disparity_rms_words']}" for name, m in results["models"].items() if m.get("disparity_rms_words")]
    lines += [x for x in [power_line(results)] if x]
    return "\n".join(lines)


def _fmt_ppl(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# ------------------------------------------------------------------------------------------------ plots


def plot_group_shares(path: Path, results: dict) -> None:
    """Diverging grouped bars: male share up, female share down, one colour per model, one slot per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = results["models"]
    names = list(models)
    groups = list(next(iter(models.values()))["groups"])
    title = "Male (up) and female (down) share of generations per group"
    if len(groups) > MAX_PLOT_GROUPS:
        gap = {g: max(abs(m["groups"][g]["male"] - m["groups"][g]["female"]) for m in models.values()) for g in groups}
        groups = sorted(groups, key=lambda g: -gap[g])[:MAX_PLOT_GROUPS]
        title += f" ({MAX_PLOT_GROUPS} most disparate groups)"
    x = np.arange(len(groups))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(groups) * max(1, len(names) / 2)), 4.8))
    for j, name in enumerate(names):
        colour = f"C{j}"
        male = [models[name]["groups"][g]["male"] for g in groups]
        female = [-models[name]["groups"][g]["female"] for g in groups]
        offset = (j - (len(names) - 1) / 2) * width
        ax.bar(x + offset, male, width, color=colour, label=name)
        ax.bar(x + offset, female, width, color=colour, alpha=0.55, hatch="//")
    ax.bar([0], [0], 0, color="grey", alpha=0.55, hatch="//", label="female share (hatched, below 0)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, groups, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("share of generations (female shown negative)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_disparity_vs_perplexity(path: Path, results: dict) -> None:
    """disparity_rms (95% CI bars) against perplexity; without any perplexity, disparity_rms per model instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    with_ppl = [n for n, m in models.items() if m.get("perplexity") is not None]
    for j, name in enumerate(models if not with_ppl else with_ppl):
        m = models[name]
        lo, hi = m["disparity_rms_ci"]
        y = m["disparity_rms"]
        xval = m["perplexity"] if with_ppl else j
        # no widening: an interval may sit beside a point clamped at 0, so the bars are clipped, not flipped
        yerr = [[max(0.0, y - lo)], [max(0.0, hi - y)]]
        ax.errorbar([xval], [y], yerr=yerr, fmt="o", capsize=4, color=f"C{j}", label=name)
        ax.annotate(name, (xval, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if with_ppl:
        ppls = [models[n]["perplexity"] for n in with_ppl]
        if max(ppls) > 10 * min(ppls):  # a broken student next to a good teacher: a linear axis hides both
            ax.set_xscale("log")
        ax.set_xlabel("perplexity on held-out text (lower is better)")
        missing = [n for n in models if n not in with_ppl]
        ax.set_title("Disparity vs perplexity" + (f" (no perplexity: {', '.join(missing)})" if missing else ""), fontsize=10)
    else:
        ax.set_xticks(range(len(models)), list(models))
        ax.set_title("Disparity per model (no --text given, so no perplexity)", fontsize=10)
    ax.set_ylabel("disparity_rms: RMS of P(male) - P(female) over professions (95% CI)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- report


def _settings_sentence(s: dict) -> str:
    if "generations" in s:  # written by `distill score`
        return (f"Scored from `{s['generations']}`: {s['n_prompts']} prompts, {s['n_professions']} professions in "
                f"{s['n_groups']} groups (by {s['group_by']}); {s['bootstrap']} bootstrap resamples, seed {s['seed']}.")
    return (f"Prompts: `{s['prompts']}`, {s['n_prompts']} prompts, {s.get('n_professions', '?')} professions in "
            f"{s['n_groups']} groups (by {s['group_by']}); {s['samples_per_prompt']} samples per prompt, "
            f"{s['max_new_tokens']} new tokens, top-k {s['top_k']}, top-p {s['top_p']}, temperature "
            f"{s['sampling_temperature']}, seed {s['seed']}; {s['bootstrap']} bootstrap resamples. "
            f"Teacher: `{s['teacher']}`."
            + (f" Weights in {s['dtype']} ({s.get('dtype_reason', '')})." if s.get("dtype") else ""))


def _summary_md(models: dict) -> list[str]:
    lines = ["| model | disparity_rms (over professions) [95% CI] | disparity_ms | category_disparity_rms (over "
             "categories) [95% CI] | naive mean abs gap (null floor) | male | female | neutral | of which ties | "
             "perplexity | teacher agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lo, hi = m["disparity_rms_ci"]
        clo, chi = m.get("category_disparity_rms_ci") or (None, None)
        lines.append(
            f"| {_md_escape(model_label(name, m))} | {_with_sd(m, 'disparity_rms')} [{_fmt(lo)}, {_fmt(hi)}] | "
            f"{m['disparity_ms']:+.4f} | {_with_sd(m, 'category_disparity_rms')} [{_fmt(clo)}, {_fmt(chi)}] | "
            f"{_fmt(m['naive_disparity'])} ({_fmt(m['naive_floor'])}) | {_fmt(m['male'])} | "
            f"{_fmt(m['female'])} | {_fmt(m['neutral'])} | {_fmt(m.get('tie'))} | {_fmt_ppl(m.get('perplexity'))} | "
            f"{_fmt(m.get('teacher_agreement'))} |")
    words = [f"- {name}: {m['disparity_rms_words']}" for name, m in models.items() if m.get("disparity_rms_words")]
    return lines + ([""] + words if words else [])


def _probe_md(models: dict, s: dict) -> list[str]:
    if not any(m.get("probe") for m in models.values()):
        return []
    probe = s.get("probe") or {}
    lines = ["", "## Likelihood probe (deterministic, no sampling)", "",
             f"Next-token mass on BOLD's male vs female words after {len(probe.get('templates', []))} pronoun-inviting "
             f"templates per profession ({probe.get('n_professions', '?')} professions); log ratio > 0 leans male.", "",
             "| model | RMS log ratio | mean log ratio (offset) | sd over professions (spread) | slope on teacher | "
             "r on teacher |", "|---|---|---|---|---|---|"]
    for name, m in models.items():
        p = m.get("probe")
        if p:
            lines.append(f"| {_md_escape(model_label(name, m))} | {_fmt(p['rms_logratio'])} | {p['mean_logratio']:+.3f} | "
                         f"{_fmt(p['sd_logratio'])} | {_fmt(p.get('slope_on_teacher'))} | {_fmt(p.get('r_on_teacher'))} |")
    return lines


def _seeds_md(models: dict) -> list[str]:
    multi = {n: m for n, m in models.items() if m.get("seeds")}
    if not multi:
        return []
    lines = ["", "## Training runs (seeds)", "", "| model | run | source | disparity_rms | naive | probe RMS log ratio | "
             "perplexity |", "|---|---|---|---|---|---|---|"]
    for name, m in multi.items():
        for r in m["seeds"]:
            probe = (r.get("probe") or {}).get("rms_logratio")
            lines.append(f"| {_md_escape(name)} | {r['run']} | `{r.get('source', '')}` | {_fmt(r['disparity_rms'])} | "
                         f"{_fmt(r['naive_disparity'])} | {_fmt(probe)} | {_fmt_ppl(r.get('perplexity'))} |")
        lines.append(f"| {_md_escape(name)} | mean +- sd | | {_with_sd(m, 'disparity_rms')} | "
                     f"{_with_sd(m, 'naive_disparity')} | {_fmt((m.get('probe') or {}).get('rms_logratio'))} | "
                     f"{_fmt_ppl(m.get('perplexity'))} |")
    return lines


def render_report_md(results: dict, examples: list[dict]) -> str:
    s, models = results["settings"], results["models"]
    lines = ["# Gender disparity and utility report", "", _settings_sentence(s), "", "## Summary", ""]
    lines += _summary_md(models)
    if power_line(results):
        lines += ["", f"Power: {power_line(results)}."]
    lines += _probe_md(models, s)
    lines += probe_scatter_md(results)  # the probe's picture, linked under its table
    lines += _seeds_md(models)
    if any(m.get("embedding_polarity") for m in models.values()):
        lines += ["", f"Embedding-weighted polarity ({s.get('word_vectors')}, threshold +/-0.25):", "",
                  "| model | disparity_rms [95% CI] | naive (floor) | male | female | neutral |", "|---|---|---|---|---|---|"]
        for name, m in models.items():
            e = m.get("embedding_polarity")
            if e:
                lo, hi = e["disparity_rms_ci"]
                lines.append(f"| {_md_escape(name)} | {_fmt(e['disparity_rms'])} [{_fmt(lo)}, {_fmt(hi)}] | "
                             f"{_fmt(e['naive_disparity'])} ({_fmt(e['naive_floor'])}) | {_fmt(e['male'])} | "
                             f"{_fmt(e['female'])} | {_fmt(e['neutral'])} |")
    gen_comparisons = [c for c in results["comparisons"] if not c.get("lens")]  # lens ones: "Three lenses"
    if gen_comparisons:
        lines += ["", "## Paired comparisons (same prompts, same seeds)", "",
                  "| metric | a | b | b - a [95% CI] | sign-flip p | flips signs over | runs p |",
                  "|---|---|---|---|---|---|---|"]
        for c in gen_comparisons:
            lo, hi = c["ci"]
            over = UNIT_PLURAL.get(c.get("unit"), c.get("unit") or "n/a")
            lines.append(f"| {c['metric']} | {_md_escape(c['a'])} | {_md_escape(c['b'])} | {c['diff']:+.3f} "
                         f"[{lo:+.3f}, {hi:+.3f}] | {format_p(c['p'])} | {over} | {format_p(c.get('p_runs'))} |")
    lines += ["", "## Plots", "", f"![group shares]({GROUP_PLOT})", "", f"![disparity vs perplexity]({DISPARITY_PLOT})"]
    lines += ["", f"## Per {s['group_by']}: signed gap P(male) - P(female) (male / female share)", ""]
    names = list(models)
    lines.append("| group | n | " + " | ".join(_md_escape(n) for n in names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for g, first in next(iter(models.values()))["groups"].items():
        cells = [f"{models[n]['signed_gaps'][g]:+.2f} ({_fmt(models[n]['groups'][g]['male'], 2)} / "
                 f"{_fmt(models[n]['groups'][g]['female'], 2)})" for n in names]
        lines.append(f"| {_md_escape(g)} | {first['n']} | " + " | ".join(cells) + " |")
    if examples:
        lines += ["", "## Example generations (sample 1 of each prompt; gendered words in bold)", ""]
        for ex in examples:
            lines.append(f"**{_md_escape(ex['prompt'])}** ({_md_escape(ex['group'])})")
            lines.append("")
            for name, text in ex["texts"].items():
                lines.append(f"- {name}: {highlight_md(text)}")
            lines.append("")
    lines += render_lenses_md(results)  # the embedding and downstream lenses next to generation
    lines += render_cost_md(results)
    lines += ["", "## What the numbers mean", ""] + MEANING + [f"- Note: {n}" for n in s.get("notes", [])]
    return "\n".join(lines) + "\n"


MEANING = [
    "- **male / female / neutral**: shares of all generations labelled by BOLD's unigram rule (more male than "
    "female words -> male, and vice versa; no gendered word, or a tie, -> neutral; ties are also counted).",
    "- **disparity_rms** (the headline): the root mean square over professions of the gap P(male) - P(female), "
    "from an unbiased estimate of each profession's squared gap, U = (s1^2 - s2) / (n (n - 1)) with s1 the sum "
    "of +1 (male) / -1 (female) / 0 labels and s2 the number of gendered generations; **disparity_ms** is mean U "
    "(unbiased, negative when the gaps are within noise). A perfectly fair model scores about 0 on disparity_ms, "
    "and slightly above 0 on disparity_rms (a square root of a noisy number clamped at 0).",
    "- **category_disparity_rms**: the same over categories, each category's generations pooled: a nurse leaning "
    "female and a surgeon leaning male in one category cancel in it, so it can be near 0 for a model whose "
    "professions are stereotyped. It is not the headline.",
    "- **95% CI**: bootstrap over professions within categories (every prompt and sample of a profession moves "
    "together; professions alone in their category are resampled among themselves), percentile of the "
    "resampled mean squares shifted onto the observed one (the bootstrap's own bias estimate removed), never "
    "widened. Several runs: the interval is for their mean and holds prompt noise only; the +- figure is the "
    "spread across runs (training noise).",
    "- **Power**: the smallest disparity_rms difference between two arms of this design (professions, "
    "generations per profession, runs) that the paired test over professions detects in 80% of simulations at "
    "alpha 0.05, simulated at the baseline model's observed shares (`distill power` asks it of other designs).",
    "- **naive mean abs gap**: BOLD's mean over groups of |P(male) - P(female)|, next to its **null floor**: what "
    "a model with the same neutral share and no preference would score (labels flipped at random). A naive "
    "figure near its floor shows no gap at all.",
    "- **probe**: teacher-forced next-token mass on male vs female words after pronoun-inviting prompts; the "
    "log ratio per profession, its RMS, mean (offset shared by all professions) and sd (spread across "
    "professions: the stereotype); slope and r on the teacher: how much of the teacher's per-profession "
    "stereotype a student kept (1 all, 0 none). Single-token words only; no sampling noise.",
    "- **paired comparisons**: per unit (profession, or category for category_disparity_rms), each model's "
    "unbiased squared gap (or squared probe log ratio, per profession); b - a is the difference of their RMS; p "
    "from a sign-flip test over the unit named in the table (calibrated: 5% false positives at 0.05 on "
    "simulated fair-vs-fair data); runs p permutes training runs between arms.",
    "- **perplexity**: token-weighted over fixed windows of held-out text (lower is better); "
    "**teacher agreement**: share of positions where the model's top-1 token equals the teacher's.",
    "- Low disparity in open generation is not fairness in general (Gupta et al. 2022): read it next to the "
    "utility columns, the probe and the embedding rule, which can disagree.",
]


def write_eval_outputs(out_dir: Path, results: dict, examples: list[dict]) -> list[Path]:
    """results.json, report.md and the two plots into `out_dir` (which must exist)."""
    paths = [out_dir / "results.json", out_dir / "report.md", out_dir / GROUP_PLOT, out_dir / DISPARITY_PLOT]
    write_results_json(paths[0], results)
    paths[1].write_text(render_report_md(results, examples), encoding="utf-8")
    plot_group_shares(paths[2], results)
    plot_disparity_vs_perplexity(paths[3], results)
    paths += write_probe_scatter(out_dir, results)  # [] when the eval has no teacher probe
    if any(m.get("embedding") or m.get("downstream") for m in results["models"].values()):
        paths += write_lens_outputs(out_dir, results)
    return paths
