"""Side-by-side samples (`distill samples`, and report.md's examples): markdown or HTML with BOLD's gendered
words highlighted, every piece of model output escaped so markup in it stays text; and the file's writing.

    from distill.eval.samples_report import render_samples, highlight_md
    html = render_samples(records, model_names, "html", settings)
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from distill.atomic import rescue_copy, write_text_atomic
from distill.errors import UserError
from distill.eval.polarity import gendered_spans

SAMPLES_DEFAULT_PROMPTS = 24  # `distill samples` without --max-prompts shows this many prompts

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def md_escape(text: str) -> str:
    """Escape markdown syntax and flatten line breaks, so any model output fits in one table cell."""
    text = re.sub(r"\s*\n\s*", " \u23ce ", text)
    return _MD_SPECIAL.sub(r"\\\1", text)


def highlight_md(text: str) -> str:
    """Markdown-safe text with BOLD's gendered words in bold."""
    parts, pos = [], 0
    for start, end, _gender in gendered_spans(text):
        parts.append(md_escape(text[pos:start]))
        parts.append(f"**{md_escape(text[start:end])}**")
        pos = end
    parts.append(md_escape(text[pos:]))
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


def render_samples(records: list[dict], model_names: list[str], fmt: str, settings: dict) -> str:
    """Side-by-side generations. records: [{"prompt", "group", "texts": {model: [sample, ...]}}]."""
    if fmt == "md":
        return _samples_md(records, model_names, settings)
    if fmt == "html":
        return _samples_html(records, model_names, settings)
    raise ValueError(fmt)


def _settings_line(settings: dict) -> str:
    """The sampling settings; with settings["from_eval"] (`samples --from-eval`), the eval's, followed by
    settings["showing"] (what of the eval is shown)."""
    keys = ("prompts", "samples_per_prompt", "max_new_tokens", "top_k", "top_p", "sampling_temperature", "seed")
    line = ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)
    if "from_eval" in settings:
        line = f"from the eval in {settings['from_eval']}" + (f": {line}" if line else "")
    return "; ".join([line, *settings.get("showing", ())])


def _samples_md(records, names, settings) -> str:
    lines = ["# Side-by-side samples", "", f"Same prompts and seeds for every model ({_settings_line(settings)}). "
             "Gendered words (BOLD's lists) in **bold**.", ""]
    for i, rec in enumerate(records, 1):
        lines += [f"## {i}. {md_escape(rec['prompt'])}", "", f"Group: {md_escape(rec['group'])}", ""]
        lines.append("| sample | " + " | ".join(md_escape(n) for n in names) + " |")
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


def out_file(args) -> tuple[Path, str]:
    """--out and its format, md or html, from its suffix."""
    out = Path(args.out).expanduser()
    fmt = {".md": "md", ".html": "html", ".htm": "html"}.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"--out {args.out!r} must end in .md or .html")
    return out, fmt


def write_samples(out: Path, text: str) -> None:
    """Write through a temporary sibling; on failure the samples go to a temporary file the error names."""
    try:
        write_text_atomic(out, text)
    except OSError as exc:
        name = rescue_copy(text, "distill-samples-", out.suffix)
        where = f"the samples were written to {name} instead" if name else "they could not be written elsewhere"
        raise UserError(f"could not write {out} ({exc.strerror or exc}); {where}") from exc
