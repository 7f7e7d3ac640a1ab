"""One-line wordings of a paired comparison, shared by the console (`distill eval`, `distill score`, the lens
lines) and report.md.

    from distill.eval.lines import comparison_line
    comparison_line(c)   # 'disparity_rms: student - teacher = -0.012 [-0.030, +0.004], sign-flip p over
                         #  professions = 0.210'
"""

from __future__ import annotations


def format_p(p: float | None) -> str:
    """p to 3 decimals (never 0: sign-flip p-values count the observed split), or n/a."""
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


UNIT_PLURAL = {"profession": "professions", "category": "categories"}


def over_words(c: dict) -> str:
    """' over professions' / ' over categories': what a comparison's sign-flip p flips signs over."""
    unit = c.get("unit")
    return f" over {UNIT_PLURAL.get(unit, unit)}" if unit else ""


def predictions_differ_text(c: dict) -> str | None:
    """'k of n' test biographies the two probes classify differently, for a downstream comparison; else None."""
    return None if c.get("predictions_differ") is None else f"{c['predictions_differ']:.3g} of {c['n_test']}"


def comparison_line(c: dict) -> str:
    lo, hi = c["ci"]
    runs = "" if c.get("p_runs") is None else f", runs p = {format_p(c['p_runs'])}"
    differ = predictions_differ_text(c)  # the downstream lens's resolution between the pair
    differ = "" if differ is None else f"; {differ} test predictions differ"
    return (f"{c['metric']}: {c['b']} - {c['a']} = {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
            f"sign-flip p{over_words(c)} = {format_p(c['p'])}{runs}{differ}")
