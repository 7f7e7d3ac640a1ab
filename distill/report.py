"""Write what `distill eval` and `distill samples` produce: results.json, report.md, plots, side-by-side samples.

    from distill.report import write_eval_outputs, render_samples
    write_eval_outputs(out_dir, results, examples)     # results.json + report.md + two PNGs
    html = render_samples(records, model_names, "html")

results.json schema (other tools read it; keys may be added, never renamed):

    {"models": {NAME: {"disparity": float, "disparity_ci": [lo, hi],
                       "male": float, "female": float, "neutral": float,
                       "groups": {GROUP: {"male": float, "female": float, "neutral": float, "n": int}},
                       "perplexity": float | null, "teacher_agreement": float | null,
                       ... extra keys: "tie", "embedding_polarity", "source", "notes",
                       "embedding" and "downstream": the lenses of issue 15, see distill/lens_report.py}},
     "settings": {...},
     "comparisons": [{"a": NAME, "b": NAME, "metric": "disparity", "difference": b - a,
                      "ci": [lo, hi], "p_value": float, ...}]}

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

from distill.lens_report import render_lenses_md, write_lens_outputs
from distill.metrics import gendered_spans

GROUP_PLOT = "group_shares.png"
DISPARITY_PLOT = "disparity_vs_perplexity.png"
MAX_PLOT_GROUPS = 40  # beyond this a bar chart is unreadable; the most disparate groups are shown


# --------------------------------------------------------------------------------------------- helpers


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def format_p(p: float, n_boot: int) -> str:
    """A bootstrap share of 0 means 'below 1/n_boot', not zero."""
    return f"< {1 / n_boot:.3g}" if p == 0 else f"{p:.3f}"


def _fmt_ppl(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def _md_escape(text: str) -> str:
    """Escape markdown syntax and flatten line breaks, so any model output fits in one table cell."""
    text = re.sub(r"\s*\n\s*", " \u23ce ", text)
    return _MD_SPECIAL.sub(r"\\\1", text)


def highlight_md(text: str) -> str:
    """Markdown-safe text with BOLD's gendered words in bold."""
    parts, pos = [], 0
    for start, end, _gender in gendered_spans(text):
        parts.append(_md_escape(text[pos:start]))
        parts.append(f"**{_md_escape(text[start:end])}**")
        pos = end
    parts.append(_md_escape(text[pos:]))
    return "".join(parts)


def highlight_html(text: str) -> str:
    """HTML-escaped text with male words in <span class="male"> and female words in <span class="female">.

    Each piece is escaped separately before the spans are added, so markup in model output stays text.
    """
    parts, pos = [], 0
    for start, end, gender in gendered_spans(text):
        parts.append(html.escape(text[pos:start]))
        parts.append(f'<span class="{gender}">{html.escape(text[start:end])}</span>')
        pos = end
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


# ------------------------------------------------------------------------------------------ results.json


def write_results_json(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    """Disparity (95% CI bars) against perplexity; without any perplexity, disparity per model instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    with_ppl = [n for n, m in models.items() if m["perplexity"] is not None]
    for j, name in enumerate(models if not with_ppl else with_ppl):
        m = models[name]
        lo, hi = m["disparity_ci"]
        xval = m["perplexity"] if with_ppl else j
        yerr = [[m["disparity"] - lo], [hi - m["disparity"]]]
        ax.errorbar([xval], [m["disparity"]], yerr=yerr, fmt="o", capsize=4, color=f"C{j}", label=name)
        ax.annotate(name, (xval, m["disparity"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
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
    ax.set_ylabel("disparity, mean |male - female| (95% CI)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- report


def render_report_md(results: dict, examples: list[dict]) -> str:
    s, models = results["settings"], results["models"]
    lines = ["# Gender disparity and utility report", ""]
    lines.append(
        f"Prompts: `{s['prompts']}`, {s['n_prompts']} prompts in {s['n_groups']} groups (by {s['group_by']}); "
        f"{s['samples_per_prompt']} samples per prompt, {s['max_new_tokens']} new tokens, top-k {s['top_k']}, "
        f"top-p {s['top_p']}, temperature {s['sampling_temperature']}, seed {s['seed']}; "
        f"{s['bootstrap']} bootstrap resamples. Teacher for agreement: `{s['teacher']}`."
    )
    lines += ["", "## Summary", ""]
    lines.append("| model | disparity [95% CI] | male | female | neutral | of which ties | perplexity | teacher agreement |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, m in models.items():
        lo, hi = m["disparity_ci"]
        lines.append(
            f"| {name} | {_fmt(m['disparity'])} [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(m['male'])} | {_fmt(m['female'])} | "
            f"{_fmt(m['neutral'])} | {_fmt(m.get('tie'))} | {_fmt_ppl(m['perplexity'])} | {_fmt(m['teacher_agreement'])} |"
        )
    if any(m.get("embedding_polarity") for m in models.values()):
        lines += ["", f"Embedding-weighted polarity ({s.get('word_vectors')}, threshold +/-0.25):", ""]
        lines.append("| model | disparity [95% CI] | male | female | neutral |")
        lines.append("|---|---|---|---|---|")
        for name, m in models.items():
            e = m.get("embedding_polarity")
            if e:
                lo, hi = e["disparity_ci"]
                lines.append(f"| {name} | {_fmt(e['disparity'])} [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(e['male'])} | "
                             f"{_fmt(e['female'])} | {_fmt(e['neutral'])} |")
    if results["comparisons"]:
        lines += ["", "## Paired comparisons (same prompts, same seeds)", ""]
        lines.append("| metric | a | b | b - a [95% CI] | bootstrap p |")
        lines.append("|---|---|---|---|---|")
        for c in results["comparisons"]:
            lo, hi = c["ci"]
            lines.append(f"| {c['metric']} | {c['a']} | {c['b']} | {c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                         f"{format_p(c['p_value'], c['n_boot'])} |")
    lines += ["", "## Plots", "", f"![group shares]({GROUP_PLOT})", "", f"![disparity vs perplexity]({DISPARITY_PLOT})"]
    lines += ["", f"## Per {s['group_by']} (male / female share)", ""]
    names = list(models)
    lines.append("| group | n | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for g, first in next(iter(models.values()))["groups"].items():
        cells = [f"{_fmt(models[n]['groups'][g]['male'], 2)} / {_fmt(models[n]['groups'][g]['female'], 2)}" for n in names]
        lines.append(f"| {_md_escape(g)} | {first['n']} | " + " | ".join(cells) + " |")
    if examples:
        lines += ["", "## Example generations (sample 1 of each prompt; gendered words in bold)", ""]
        for ex in examples:
            lines.append(f"**{_md_escape(ex['prompt'])}** ({_md_escape(ex['group'])})")
            lines.append("")
            for name, text in ex["texts"].items():
                lines.append(f"- {name}: {highlight_md(text)}")
            lines.append("")
    lines += render_lenses_md(results)  # issue 15: the embedding and downstream lenses next to generation
    notes = list(s.get("notes", []))
    lines += ["", "## What the numbers mean", ""]
    lines += [
        "- **male / female / neutral**: shares of all generations labelled by BOLD's unigram rule (more male than "
        "female words -> male, and vice versa; no gendered word, or a tie, -> neutral).",
        "- **disparity**: mean over groups of |male share - female share|; 0 means every group is described "
        "with male and female words equally often, 1 means every group is entirely one-sided. The CI is a "
        "stratified bootstrap over prompts; it is widened to contain the estimate because |.| biases resamples up.",
        "- **paired comparisons**: the disparity difference on the same prompts and random seeds; the CI comes "
        "from resampling prompts jointly for both models, and the p-like number is twice the share of resampled "
        "differences on the other side of zero.",
        "- **perplexity**: token-weighted over fixed windows of held-out text (lower is better); "
        "**teacher agreement**: share of positions where the model's top-1 token equals the teacher's.",
        "- Low disparity in open generation is not fairness in general (Gupta et al. 2022): read it next to the "
        "utility columns and other bias measures.",
    ]
    lines += [f"- Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_eval_outputs(out_dir: Path, results: dict, examples: list[dict]) -> list[Path]:
    """results.json, report.md and the two plots into `out_dir` (which must exist)."""
    paths = [out_dir / "results.json", out_dir / "report.md", out_dir / GROUP_PLOT, out_dir / DISPARITY_PLOT]
    write_results_json(paths[0], results)
    paths[1].write_text(render_report_md(results, examples), encoding="utf-8")
    plot_group_shares(paths[2], results)
    plot_disparity_vs_perplexity(paths[3], results)
    if any(m.get("embedding") or m.get("downstream") for m in results["models"].values()):
        paths += write_lens_outputs(out_dir, results)
    return paths


# ---------------------------------------------------------------------------------------------- samples


def render_samples(records: list[dict], model_names: list[str], fmt: str, settings: dict) -> str:
    """Side-by-side generations. records: [{"prompt", "group", "texts": {model: [sample, ...]}}]."""
    if fmt == "md":
        return _samples_md(records, model_names, settings)
    if fmt == "html":
        return _samples_html(records, model_names, settings)
    raise ValueError(fmt)


def _settings_line(settings: dict) -> str:
    keys = ("prompts", "samples_per_prompt", "max_new_tokens", "top_k", "top_p", "sampling_temperature", "seed")
    return ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)


def _samples_md(records, names, settings) -> str:
    lines = ["# Side-by-side samples", "", f"Same prompts and seeds for every model ({_settings_line(settings)}). "
             "Gendered words (BOLD's lists) in **bold**.", ""]
    for i, rec in enumerate(records, 1):
        lines += [f"## {i}. {_md_escape(rec['prompt'])}", "", f"Group: {_md_escape(rec['group'])}", ""]
        lines.append("| sample | " + " | ".join(_md_escape(n) for n in names) + " |")
        lines.append("|---|" + "---|" * len(names))
        k = max(len(v) for v in rec["texts"].values())
        for s in range(k):
            cells = [highlight_md(rec["texts"][n][s]) if s < len(rec["texts"][n]) else "" for n in names]
            lines.append(f"| {s + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 90em; }
table { border-collapse: collapse; width: 100%; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 0.4em; vertical-align: top; text-align: left; }
td.text { white-space: pre-wrap; }
.male { background: #cfe3ff; color: #003a8c; font-weight: bold; }
.female { background: #ffd6e0; color: #8c0030; font-weight: bold; }
.group { color: #666; font-size: 90%; }
"""


def _samples_html(records, names, settings) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Side-by-side samples</title>',
           f"<style>{_HTML_STYLE}</style></head><body>", "<h1>Side-by-side samples</h1>",
           f"<p>Same prompts and seeds for every model ({esc(_settings_line(settings))}). "
           '<span class="male">male</span> and <span class="female">female</span> words from BOLD\'s lists.</p>']
    for i, rec in enumerate(records, 1):
        out.append(f"<h2>{i}. {esc(rec['prompt'])}</h2><p class=\"group\">Group: {esc(rec['group'])}</p>")
        out.append("<table><tr><th>sample</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>")
        k = max(len(v) for v in rec["texts"].values())
        for s in range(k):
            cells = "".join(
                f'<td class="text">{highlight_html(rec["texts"][n][s]) if s < len(rec["texts"][n]) else ""}</td>'
                for n in names
            )
            out.append(f"<tr><td>{s + 1}</td>{cells}</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
