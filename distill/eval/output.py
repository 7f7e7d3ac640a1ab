"""Writing a report: a folder whole or not at all, the generations file, and the examples for report.md."""

from __future__ import annotations

import json
from pathlib import Path

from distill.atomic import atomic_dir, rescue_copy
from distill.errors import UserError
from distill.rundir import held_lock, lock_output, write_marker

N_EXAMPLES = 6


def write_generations(path: Path, records: list[dict]) -> None:
    """generations.jsonl: one generation per line with its unigram label (what `distill score` reads)."""
    from distill.eval.polarity import unigram_polarity

    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps({**rec, "unigram": unigram_polarity(rec["text"])}, ensure_ascii=False) + "\n")


def write_results_json(path: Path, results: dict) -> None:
    """results.json: indented, UTF-8 kept as is (report.py's docstring has the schema)."""
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def lock_out(out: Path) -> None:
    """Lock the report folder (--out/.lock, `rundir.lock_output`) from before the models load until the
    command ends: a second eval or score on the same --out is refused with this process's PID."""
    lock_output(out, "--out")


def write_report_dir(out: Path, results: dict, write) -> None:
    """Write a report folder whole or not at all: `write(tmp)` fills a temporary sibling that gets the report
    marker and is then renamed onto `out`. A failed write is one line, and results.json goes to a temporary
    file that the line names. `distill eval`, `distill score` and the lens-only eval all write through here."""
    try:
        with atomic_dir(out) as tmp:
            write_marker(tmp, "report")
            write(tmp)
            lock = held_lock(out)
            if lock is not None:  # the new folder keeps this process's lock through the rename
                lock.carry_into(tmp)
    except OSError as exc:
        raise UserError(f"could not write the report to {out} ({exc.strerror or exc}); "
                        f"{_rescue_results(results)}") from exc


def _rescue_results(results: dict) -> str:
    """After a failed write at the end: the results go to a temporary file, and the message says which."""
    name = rescue_copy(json.dumps(results, indent=1), "distill-results-", ".json")
    return f"results.json was written to {name} instead" if name else \
        "the results could not be written anywhere else either"


def pick_examples(records: list[dict], names: list[str], group_by: str) -> list[dict]:
    """Up to N_EXAMPLES prompts for report.md (sample 0 of run 0), preferring ones where some model used a
    gendered word."""
    from distill.eval.polarity import gendered_spans

    first: dict[int, dict] = {}
    for r in records:
        if r.get("run", 0) == 0 and r["sample"] == 0:
            first.setdefault(r["prompt_index"], {})[r["model"]] = r
    idx = sorted(i for i, row in first.items() if all(n in row for n in names))

    def record(i):
        r0 = first[i][names[0]]
        return {"prompt": r0.get("prompt", ""), "group": r0[group_by], "texts": {n: first[i][n]["text"] for n in names}}

    hits = [i for i in idx if any(gendered_spans(first[i][n]["text"]) for n in names)]
    rest = [i for i in idx if i not in set(hits)]
    return [record(i) for i in sorted((hits[:4] + rest)[:N_EXAMPLES])]
