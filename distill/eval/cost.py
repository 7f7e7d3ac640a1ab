"""What each part of an eval cost, set against what it adds to the evidence: report.md's cost table.

    from distill.eval.cost import cost_rows, render_cost_md
    rows = cost_rows(results)   # [{"part", "seconds", "share", "metric", "comparison", "diff", "half_width", "p"}]

Seconds come from `settings.part_seconds` (wall time summed over every model and run). The evidence of a part
is the paired comparison it contributes between the last two models scored (the two students of a demo), or
between the first two when only two models are scored: its difference, the half-width of its 95% interval
(the smallest difference it could resolve, roughly) and its p. Generation also carries the eval's detectable
difference at 80% power. A part with no comparison (loading, utility) is shown with its seconds only: it is
spent whatever the evidence, or it buys a utility figure rather than a fairness one.
"""

from __future__ import annotations

PARTS = (  # (part, the comparison metric it contributes, what it is)
    ("load", None, "loading each model"),
    ("generation", "disparity_rms", "generation disparity (the paper's metric)"),
    ("probe", "probe_rms_logratio", "likelihood probe (deterministic)"),
    ("embedding", "embedding_effect_size", "embedding association lens"),
    ("downstream", "tpr_gap_rms_unbiased", "downstream classification lens"),
    ("utility", None, "perplexity and teacher agreement"),
)


def _pair(results: dict) -> tuple[str, str] | None:
    names = list(results.get("models", {}))
    if len(names) < 2:
        return None
    return (names[-2], names[-1]) if len(names) > 2 else (names[0], names[1])


def cost_rows(results: dict) -> list[dict]:
    """One row per part that ran, in compute order."""
    total = results.get("settings", {}).get("part_seconds", {}).get("total", {})
    if not total:
        return []
    spent = sum(total.values())
    pair = _pair(results)
    found = {c["metric"]: c for c in results.get("comparisons", [])
             if pair is not None and (c["a"], c["b"]) == pair}
    detectable = (results.get("power") or {}).get("detectable_difference")
    rows = []
    for part, metric, what in PARTS:
        if part not in total:
            continue
        c = found.get(metric)
        row = {"part": part, "what": what, "seconds": total[part], "share": total[part] / spent if spent else None,
               "metric": metric if c else None, "comparison": f"{pair[1]} - {pair[0]}" if c else None,
               "diff": c["diff"] if c else None, "p": c.get("p") if c else None,
               "half_width": (c["ci"][1] - c["ci"][0]) / 2 if c and c.get("ci") else None}
        if part == "generation":
            row["detectable"] = detectable
        rows.append(row)
    return rows


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def render_cost_md(results: dict) -> list[str]:
    rows = cost_rows(results)
    if not rows:
        return []
    pair = next((r["comparison"] for r in rows if r["comparison"]), "none")
    lines = ["", "## What each part cost and what it bought", "",
             "Wall seconds summed over every model scored; the evidence is each part's paired comparison "
             f"({pair}): its difference, the half-width of its 95% interval, and its p.", "",
             "| part | seconds | share | comparison metric | difference | CI half-width | p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = r["metric"] or "-"
        if r.get("detectable") is not None:
            metric += f" (detects {r['detectable']:.3f} at 80% power)"
        lines.append(f"| {r['part']}: {r['what']} | {r['seconds']:.1f} | {_num(r['share'], '.0%')} | {metric} | "
                     f"{_num(r['diff'], '+.3f')} | {_num(r['half_width'], '.3f')} | {_num(r['p'], '.2g')} |")
    return lines
