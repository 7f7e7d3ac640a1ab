"""Which blocks to drop: the untrained student of every contiguous cut, on the fairness probe and perplexity.

    python -m distill.bench.cuts --drop 4                      # the demo teacher, every window of 4 blocks
    python -m distill.bench.cuts --drop 10 --starts 10-20 --text data/tiny_corpus.txt

A student made of the teacher's blocks starts where the cut leaves it: removing blocks shifts the last hidden
state, and with it the balance of "he" against "she" at every context, before any training. This command
measures that start for each window of `--drop` consecutive blocks, on the training-time probe (the
validation half of the professions, `distill.train.fairness`; never the half `distill eval` probes) and on
the perplexity of a text, so a recipe can pick the cut that starts closest to the teacher at a perplexity
it accepts. One markdown table on stdout (and --out as JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from distill.atomic import write_json_atomic
from distill.fetch_teacher import DEFAULT_TEACHER_GGUF as TEACHER


def _starts(spec: str | None, n_layers: int, drop: int) -> list[int]:
    last = n_layers - drop
    if spec is None:
        return list(range(1, last + 1))  # block 0 stays: without it the embeddings feed a block never trained on them
    lo, _, hi = spec.partition("-")
    starts = list(range(int(lo), int(hi or lo) + 1))
    bad = [s for s in starts if not 0 <= s <= last]
    if bad:
        raise SystemExit(f"cuts: error: --starts {spec}: a cut of {drop} blocks starts at 0..{last} on this {n_layers}-block teacher")
    return starts


def scan(teacher, tokenizer, drop: int, starts: list[int], docs: list[str], templates: int, on_row=None) -> list[dict]:
    """One row per cut: kept blocks, probe figures on the validation professions, perplexity on `docs`;
    `on_row(row)` sees each as it is measured."""
    from tqdm import tqdm

    from distill.eval.probe import PROBE_TEMPLATES, probe_model
    from distill.eval.utility import UtilityScorer
    from distill.models import num_layers, student_from_teacher_layers
    from distill.train.fairness import figures, validation_professions

    professions = validation_professions("professions")
    tmpl = PROBE_TEMPLATES[:templates]
    teacher_res = probe_model(teacher, tokenizer, professions, tmpl)
    utility = UtilityScorer(docs, tokenizer)
    rows = [{"cut": "none (teacher)", "dropped": [], **figures(teacher_res, teacher_res["logratio"]),
             **_ppl(utility, teacher, tokenizer, True)}]
    if on_row:
        on_row(rows[0])
    n = num_layers(teacher.config)
    for start in tqdm(starts, desc="cuts", unit="cut"):
        dropped = list(range(start, start + drop))
        student = student_from_teacher_layers(teacher, [i for i in range(n) if i not in dropped]).eval()
        res = probe_model(student, tokenizer, professions, tmpl)
        rows.append({"cut": f"{dropped[0]}-{dropped[-1]}", "dropped": dropped,
                     **figures(res, teacher_res["logratio"]), **_ppl(utility, student, tokenizer, False)})
        if on_row:
            on_row(rows[-1])
        del student
    return rows


def _ppl(utility, model, tokenizer, is_teacher: bool) -> dict:
    s = utility.score(model, tokenizer, device=next(model.parameters()).device, is_teacher=is_teacher)
    return {"perplexity": s["perplexity"], "teacher_agreement": s["teacher_agreement"]}


def _first_chars(docs: list[str], limit: int) -> list[str]:
    kept, total = [], 0
    for doc in docs:
        if kept and total + len(doc) > limit:
            break
        kept.append(doc)
        total += len(doc)
    return kept


HEADER = ("| dropped blocks | offset | offset - teacher's | spread | slope on teacher | template sd | perplexity | "
          "top-1 agreement |\n|---|---|---|---|---|---|---|---|")


def table_row(row: dict, teacher_offset: float) -> str:
    agree = "-" if row["teacher_agreement"] is None else f"{row['teacher_agreement']:.3f}"
    return (f"| {row['cut']} | {row['probe_offset']:+.3f} | {row['probe_offset'] - teacher_offset:+.3f} | "
            f"{row['probe_spread']:.3f} | {row['probe_slope']:.3f} | {row['probe_template_sd']:.3f} | "
            f"{row['perplexity']:.2f} | {agree} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.cuts", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=TEACHER, help=f"teacher model (default {TEACHER}; `make teacher`)")
    p.add_argument("--drop", type=int, default=4, help="consecutive blocks removed (default 4, the demo's cut)")
    p.add_argument("--starts", help="first dropped block, a range like 10-20 (default: every start but 0)")
    p.add_argument("--text", default="data/tiny_corpus.txt",
                   help="text for perplexity: a file, a folder of .txt, or a datasets name (default the "
                   "project's small corpus)")
    p.add_argument("--text-chars", type=int, default=8000,
                   help="perplexity on the text's first documents up to this many characters (default 8000)")
    p.add_argument("--templates", type=int, default=16, help="probe templates used, the first N (2..16)")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if not Path(args.teacher).exists() and args.teacher == TEACHER:
        print(f"cuts: error: teacher {args.teacher} not found; run `make teacher` first", file=sys.stderr)
        return 2
    import torch

    from distill.eval.utility import load_text
    from distill.models import load_model_and_tokenizer, num_layers

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    teacher, tokenizer = load_model_and_tokenizer(args.teacher, "float32")
    teacher.eval()
    starts = _starts(args.starts, num_layers(teacher.config), args.drop)
    print(HEADER, flush=True)

    def show(row: dict) -> None:  # a row as soon as it is measured: a long scan is readable while it runs
        print(table_row(row, show.teacher_offset if row["dropped"] else row["probe_offset"]), flush=True)
        if not row["dropped"]:
            show.teacher_offset = row["probe_offset"]

    rows = scan(teacher, tokenizer, args.drop, starts, _first_chars(load_text(args.text), args.text_chars),
                args.templates, on_row=show)
    print(f"({len(starts)} cuts of {args.drop} blocks, untrained; probe over the validation professions with "
          f"{args.templates} templates; fp32; {time.perf_counter() - t0:.0f} s)")
    if args.out:
        write_json_atomic(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
