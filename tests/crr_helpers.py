"""The hand-written gender-swap cases shared by tests/test_crr_lexicon.py and tests/test_crr_tokens.py."""

from __future__ import annotations

from pathlib import Path

CASES = Path(__file__).resolve().parent / "counterfactual_cases.tsv"


def read_cases() -> list[tuple[str, str, str]]:
    """(category, original, expected swap) for every case in tests/counterfactual_cases.tsv."""
    rows = []
    for line in CASES.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            cat, original, expected = line.split("\t")
            rows.append((cat, original, expected))
    return rows
