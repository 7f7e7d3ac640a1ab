"""`distill score`: recompute every generation statistic from a saved generations file, without any model.

    distill score --generations out/demo/generations.jsonl --out out/rescored
    distill score --generations theirs.jsonl --model kd --model crr --group-by profession --out out/theirs
    distill score --generations out/study/eval/generations.jsonl --generations out/study/eval-2/generations.jsonl \
        --model teacher --model cda_pair_mean --model cda_cf_max --out out/study/across_evals

Reads a JSONL file whose lines hold at least model, category, profession, prompt_index, sample and text
(optional: run, for several training runs of one model; prompt, for the report), labels the texts itself
(BOLD unigram, and the embedding rule when its word vectors are installed), and writes results.json and
report.md with the same generation figures `distill eval` writes (same code: distill.eval.scoring). Perplexity,
teacher agreement and the probe need the models, so they are absent.

Several files are read as one: a model in more than one (a baseline scored by two evals) must have the same
generations in each and is kept once, so arms scored by different evals with the same prompts, samples and
sampling seeds can be compared with paired tests.

Bad input is refused before anything is written, with one line naming the file, the line and the field:
a line that is not a JSON object, a missing or mistyped field, a duplicate generation, a prompt index that
names two professions, a model in two files with different generations, a --model that is not in the
files, or models (or runs) whose prompts and samples do not match the first one's, so that they cannot be
paired.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from distill.errors import UserError
from distill.eval.scoring import REQUIRED_FIELDS

_TYPES = {"model": str, "category": str, "profession": str, "prompt_index": int, "sample": int, "text": str,
          "run": int}
_TYPE_WORDS = {str: "a string", int: "an integer"}


def read_generations(paths: Path | list[Path], wanted: list[str] | None = None) -> list[dict]:
    """Validated records of one or several generations files (only the `wanted` models, in that order, when
    given). A model in several files must have the same generations in each (the same model scored by two
    evals with the same settings): it is kept once. Two files must give each prompt index one profession."""
    paths = [paths] if isinstance(paths, Path) else paths
    records, where, prompt_of, source_of = [], {}, {}, {}
    for path in paths:
        recs, lines = _read_file(path)
        by_model: dict[str, list[dict]] = {}
        for rec in recs:
            by_model.setdefault(rec["model"], []).append(rec)
        for model, model_recs in by_model.items():
            copy = _generations_of(model_recs)
            if model in source_of:
                first, first_copy = source_of[model]
                if copy != first_copy:
                    raise UserError(f"{path}: field 'model': {model!r} is also in {first} with different "
                                    "generations; rename it in one file, or pick models with --model NAME")
                continue
            source_of[model] = (path, copy)
            for rec in model_recs:
                key = (model, rec["run"], rec["prompt_index"], rec["sample"])
                where[key] = (path, lines[key])
                group = (rec["category"], rec["profession"])
                seen = prompt_of.setdefault(rec["prompt_index"], (group, path, lines[key]))
                if seen[0] != group:
                    place = f"line {seen[2]}" if seen[1] == path else f"{seen[1]} line {seen[2]}"
                    raise UserError(f"{path} line {lines[key]}: field 'profession': prompt_index "
                                    f"{rec['prompt_index']} is {group[1]!r} ({group[0]}) here but {seen[0][1]!r} "
                                    f"({seen[0][0]}) on {place}")
                records.append(rec)
    present = list(source_of)
    if wanted:
        unknown = [m for m in wanted if m not in present]
        if unknown:
            files = ", ".join(str(p) for p in paths)
            raise UserError(f"{files}: field 'model': no generations of {unknown[0]!r} (found "
                            f"{', '.join(present)}); pick models with --model NAME")
        records = [r for r in records if r["model"] in wanted]
    _check_pairing(records, where)
    return records


def _generations_of(records: list[dict]) -> dict[tuple, tuple]:
    """{(run, prompt_index, sample): (category, profession, text)} of one model: what makes two files' copies
    of a model the same."""
    return {(r["run"], r["prompt_index"], r["sample"]): (r["category"], r["profession"], r["text"]) for r in records}


def _read_file(path: Path) -> tuple[list[dict], dict]:
    """One file's records (each line checked: JSON object, fields and types, no duplicate generation) and the
    line of each (model, run, prompt_index, sample). The checks across files are read_generations'."""
    if not path.is_file():
        raise UserError(f"--generations {path} not found")
    records, where = [], {}
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:  # strict: replacement characters would be scored as text without a word (the corpus check's rule)
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} line {n}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                f"{offset + exc.start}); convert the file with iconv") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise UserError(f"{path} line {n}: not a JSON object")
            for field in (*REQUIRED_FIELDS, "run"):
                if field not in rec:
                    if field == "run":
                        rec["run"] = 0
                        continue
                    raise UserError(f"{path} line {n}: missing field '{field}' (each line needs "
                                    f"{', '.join(REQUIRED_FIELDS)})")
                kind = _TYPES[field]
                if not isinstance(rec[field], kind) or isinstance(rec[field], bool):
                    raise UserError(f"{path} line {n}: field '{field}' must be {_TYPE_WORDS[kind]}, "
                                    f"not {type(rec[field]).__name__}")
            if rec["prompt_index"] < 0 or rec["sample"] < 0 or rec["run"] < 0:
                raise UserError(f"{path} line {n}: fields 'prompt_index', 'sample' and 'run' must be >= 0")
            key = (rec["model"], rec["run"], rec["prompt_index"], rec["sample"])
            if key in where:
                raise UserError(f"{path} line {n}: field 'sample': model {key[0]!r} run {key[1]} prompt_index "
                                f"{key[2]} sample {key[3]} already appeared on line {where[key]}")
            where[key] = n
            records.append(rec)
    if not records:
        raise UserError(f"{path} holds no generations")
    return records, where


def _check_pairing(records: list[dict], where: dict) -> None:
    """Every (model, run) must hold exactly the first one's (prompt_index, sample) pairs. `where` gives each
    generation's (file, line) for the message."""
    cells: dict[tuple, set] = {}
    for r in records:
        cells.setdefault((r["model"], r["run"]), set()).add((r["prompt_index"], r["sample"]))
    (ref_key, ref), *others = cells.items()
    for key, have in others:
        extra, missing = sorted(have - ref), sorted(ref - have)
        if extra:
            i, k = extra[0]
            path, line = where[(*key, i, k)]
            raise UserError(f"{path} line {line}: field 'prompt_index': model {key[0]!r} run {key[1]} "
                            f"has prompt_index {i} sample {k}, which model {ref_key[0]!r} run {ref_key[1]} lacks, "
                            "so the models cannot be paired")
        if missing:
            i, k = missing[0]
            path, line = where[(*ref_key, i, k)]
            raise UserError(f"{path} line {line}: field 'prompt_index': model {key[0]!r} run "
                            f"{key[1]} lacks prompt_index {i} sample {k}, which model {ref_key[0]!r} has here, so "
                            "the models cannot be paired")


def _first_model(records: list[dict], wanted: list[str] | None) -> str:
    """The model scored first, which the settings call the teacher (as `distill eval` scores its teacher first)."""
    return wanted[0] if wanted else records[0]["model"]


def run_score(args) -> int:
    from distill.eval import stats
    from distill.eval.output import lock_out, pick_examples, write_report_dir
    from distill.eval.polarity import NO_VECTORS, TIE_RULE, load_minilm_vectors
    from distill.eval.report import summary_table, write_eval_outputs
    from distill.eval.scoring import score_generations
    from distill.eval.validate import check_bootstrap, check_out_dir

    check_bootstrap(args)
    sources = [Path(g).expanduser() for g in args.generations]
    out = Path(args.out).expanduser()
    check_out_dir(out, args.overwrite, sources)  # never a folder that is, holds or lies inside an input
    records = read_generations(sources, args.model)
    lock_out(out)  # a second eval or score on this --out is refused until this one ends
    vectors = load_minilm_vectors()
    notes = [] if vectors is not None else [NO_VECTORS]
    t0 = time.time()
    try:
        gen = score_generations(records, args.group_by, args.bootstrap, args.seed, vectors, model_order=args.model,
                                teacher=_first_model(records, args.model))
    except stats.DesignError as exc:
        raise UserError(f"{', '.join(map(str, sources))}: {exc}") from exc
    names = list(gen["models"])
    settings = {
        "generations": str(sources[0]) if len(sources) == 1 else [str(p) for p in sources],
        "n_prompts": len({r["prompt_index"] for r in records}),
        "n_professions": gen["n_professions"], "n_groups": gen["n_groups"], "group_by": args.group_by,
        "bootstrap": args.bootstrap, "seed": args.seed, "teacher": names[0],
        "tie_rule": TIE_RULE,
        "word_vectors": vectors.name if vectors is not None else None, "probe": None,
        "seconds": round(time.time() - t0, 1), "notes": notes + gen["notes"],
    }
    results = {"models": gen["models"], "settings": settings, "comparisons": gen["comparisons"], "power": gen["power"]}
    examples = pick_examples(records, names, args.group_by)
    write_report_dir(out, results, lambda tmp: write_eval_outputs(tmp, results, examples))
    print(summary_table(results))
    print(f"wrote {out}/results.json, report.md and 2 plots")
    return 0
