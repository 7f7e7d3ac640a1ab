"""`distill eval`: score models for generation disparity and utility, and with --lens the other two lenses.

    distill eval --model teacher=gpt2 --model student=out/run/final --prompts professions \
        --text data/heldout.txt --out out/eval
    distill eval --model teacher=T --model 'kd=out/runs/kd_s*/final' --model crr=out/r/crr0,out/r/crr1 ...

`run_eval` reads top to bottom in four steps:

1. `_check_inputs`: validate every argument (including that every profession gets >= 2 generations), load
   every tokenizer (a model dir without one fails here), prompts, held-out text and word vectors.
2. `_score_runs`: only then load the models, one run at a time, the teacher first. Each run generates K
   samples per prompt with the same per-batch seeds (distill.sampling), runs the likelihood probe
   (distill.eval.probe) and the lenses, scores perplexity and teacher agreement (distill.eval.utility), and
   is freed before the next loads. A student whose first blocks are the teacher's own runs those four from the
   teacher's hidden state after them (distill.eval.shared_prefix).
3. `_results`: the generation statistics and paired tests, from the generation records by
   distill.eval.scoring (the same code `distill score` runs on generations.jsonl), plus the probe and lenses.
4. `_write_outputs`: results.json, report.md, generations.jsonl and the plots go into a temporary folder beside
   --out, renamed at the end, so an error never leaves a half-written report.

`run_lenses_only` is `distill eval --lens embedding,downstream` without the generation lens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import UserError
from distill.eval import runtime
from distill.eval.output import lock_out, pick_examples, write_generations, write_report_dir
from distill.eval.polarity import NO_VECTORS, TIE_RULE
from distill.eval.utility import MAX_EVAL_TOKENS, WINDOW, UtilityScorer, load_text, token_stream
from distill.eval.validate import (
    check_bootstrap,
    check_design,
    check_out_dir,
    check_sampling_args,
    input_paths,
    parse_model_runs,
)


@dataclass
class EvalInputs:
    """Everything `distill eval` checked and loaded before any model loads."""

    args: object
    models: list[tuple[str, list[str]]]  # (name, [run path, ...])
    teacher: str
    out: Path
    prompts: list  # the selected prompts
    notes: list[str]
    professions: list  # the probe's (category, profession) pairs; empty with --no-probe
    docs: list[str] | None  # held-out text, None without --text
    tokenizers: dict  # run path -> tokenizer
    lens_plan: object
    vectors: object  # the word vectors of the embedding-weighted polarity, or None

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.models]

    @property
    def paths(self) -> dict[str, list[str]]:
        return dict(self.models)

    def order(self) -> list[tuple[str, int]]:
        """(name, run index) in compute order: the teacher's runs first."""
        paths = self.paths
        first = [(self.teacher, k) for k in range(len(paths[self.teacher]))]
        return first + [(n, k) for n in self.names if n != self.teacher for k in range(len(paths[n]))]


@dataclass
class RunScores:
    """What the model-bound step produced, per (name, run index), and every generation record."""

    runs: dict  # utility, probe and notes of each run
    lens_runs: dict  # (results.json entry, what the paired comparisons need) of each run
    records: list[dict]
    generation: dict  # {"token_slots", "seconds", "tokens_per_second"} of sampling, summed over runs
    seconds: dict  # {model: {part: wall seconds}}, parts: load, generation, probe, embedding, downstream, utility


def run_eval(args) -> int:
    from distill.eval.lenses import run as lenses

    if "generation" not in lenses.parse_lenses(getattr(args, "lens", "generation")):
        return run_lenses_only(args)  # the embedding/downstream lenses without sampling
    inputs = _check_inputs(args)
    lock_out(inputs.out)  # a second eval or score on this --out is refused until this one ends
    device = runtime.device()
    runtime.resolve_dtype(args, device)
    t_start = time.time()
    scores = _score_runs(inputs, device)
    results = _results(inputs, scores, device, t_start)
    _write_outputs(inputs, scores.records, results)
    return 0


# ------------------------------------------------------------------------------------ 1. check the inputs


def _held_out_professions(prompts, notes: list[str]) -> list:
    """The probe's professions: the half that training never probes (`probe_split`), so a run selected on its
    training-time probe is not judged on the same professions; all of them when that half has fewer than 2."""
    from distill.eval.probe import probe_professions, probe_split

    professions = probe_professions(prompts)
    held = probe_split(professions)[1]
    if len(held) >= 2:
        return held
    notes.append(f"the prompt set's {len(professions)} professions leave fewer than 2 outside the training-time "
                 "probe's half: the likelihood probe uses all of them")
    return professions


def _check_inputs(args) -> EvalInputs:
    """Everything that can be wrong with the input, before any model loads."""
    from distill.eval.lenses import run as lenses
    from distill.eval.polarity import load_minilm_vectors
    from distill.eval.prompts import load_prompts, select_prompts
    from distill.models import load_tokenizer

    if args.prompts is None:
        raise UserError("--prompts is required by the generation lens (or pass --lens embedding,downstream)")
    check_sampling_args(args)
    check_bootstrap(args)
    models = parse_model_runs(args.model)
    names = [n for n, _ in models]
    teacher = args.teacher or names[0]
    if teacher not in names:
        raise UserError(f"--teacher {teacher!r} is not one of the --model names {names}")
    out = Path(args.out).expanduser()
    check_out_dir(out, args.overwrite, input_paths(args, models))
    all_prompts = load_prompts(args.prompts)
    prompts = select_prompts(all_prompts, args.max_prompts, args.group_by, args.seed)
    notes = check_design(prompts, args.samples_per_prompt, args.group_by)
    professions = [] if getattr(args, "no_probe", False) else _held_out_professions(all_prompts, notes)
    docs = load_text(args.text) if args.text else None
    tokenizers = {path: load_tokenizer(path) for _, runs in models for path in runs}
    labels = lenses.run_labels(models)
    lens_plan = lenses.plan_lenses(args, {labels[p]: tokenizers[p] for p in labels}, {labels[p]: p for p in labels})
    vectors = load_minilm_vectors()
    if vectors is None:
        notes.append(NO_VECTORS)
    if docs is None:
        notes.append("no --text given: perplexity and teacher agreement are null")
    elif len(token_stream(tokenizers[dict(models)[teacher][0]], docs)) < 2:
        raise UserError(f"--text {args.text!r} is too short: it gives fewer than 2 tokens")
    return EvalInputs(args, models, teacher, out, prompts, notes, professions, docs, tokenizers, lens_plan, vectors)


# ------------------------------------------------------------------------------ 2. score one run at a time


def _score_runs(inputs: EvalInputs, device) -> RunScores:
    """Load each run in turn (the teacher's first), score it, free it."""
    from distill.eval.lenses import run as lenses
    from distill.eval.probe import probe_model
    from distill.eval.shared_prefix import shared_prefix_forward
    from distill.models import load_model

    args, paths, order = inputs.args, inputs.paths, inputs.order()
    later = [paths[n][j] for n, j in order[1:]]  # the runs that may start from the first one's hidden states
    cfg = runtime.sampling_config(args)
    utility = None
    if inputs.docs is not None:
        utility = UtilityScorer(inputs.docs, inputs.tokenizers[paths[inputs.teacher][0]])
    scores = RunScores({}, {}, [], {"token_slots": 0, "seconds": 0.0, "tokens_per_second": None}, {})
    shared = None
    for step, (name, k) in enumerate(order, 1):
        path = paths[name][k]
        label = name if len(paths[name]) == 1 else f"{name} run {k}"
        seconds = scores.seconds.setdefault(name, {})
        runtime.log(f"[{step}/{len(order)}] {label}: loading {path} on {device}")
        with runtime.timed(seconds, "load"):
            model = load_model(path, args.dtype).to(device).eval()
        lenses.check_layer(model, inputs.lens_plan.layer)
        forward, shared = shared_prefix_forward(model, path, label, shared, later, inputs.lens_plan.layer)
        tok = inputs.tokenizers[path]
        before = seconds.get("generation", 0.0)
        with runtime.timed(seconds, "generation"):
            scores.records += _generate(inputs, model, tok, cfg, name, k, label)
        _count_generation(scores.generation, seconds["generation"] - before,
                          len(inputs.prompts) * args.samples_per_prompt * args.max_new_tokens)
        run: dict = {"source": path, "notes": [], "perplexity": None, "teacher_agreement": None}
        if inputs.professions:
            with runtime.timed(seconds, "probe"):
                run["probe"] = probe_model(model, tok, inputs.professions, device=device, forward=forward)
        scores.lens_runs[(name, k)] = lenses.score_model(inputs.lens_plan, model, tok, device, seconds, forward)
        if utility is not None:
            with runtime.timed(seconds, "utility"):
                figures = utility.score(model, tok, device, is_teacher=(name == inputs.teacher and k == 0),
                                        forward=forward)
            run["notes"] += figures.pop("notes")
            run.update(figures)
        del model
        runtime.release_memory()
        scores.runs[(name, k)] = run
    return scores


def _count_generation(gen: dict, seconds: float, slots: int) -> None:
    """Add one run's sampling to the eval's rate. Slots are prompts x samples x --max-new-tokens: the budget,
    whether or not a sample stopped early, which is what a design with those settings would cost again."""
    gen["token_slots"] += slots
    gen["seconds"] = round(gen["seconds"] + seconds, 2)
    gen["tokens_per_second"] = round(gen["token_slots"] / gen["seconds"], 1) if gen["seconds"] > 0 else None


def _generate(inputs: EvalInputs, model, tok, cfg, name: str, k: int, label: str) -> list[dict]:
    """Run k of model `name`: K samples per prompt, one record per generation."""
    from distill.sampling import generate_samples

    path = inputs.paths[name][k]
    rows = generate_samples(model, tok, [p.text for p in inputs.prompts], cfg, desc=f"{label}: generate")
    return [{"model": name, "run": k, "source": path, "prompt_index": i, "prompt": p.text, "category": p.category,
             "profession": p.profession, "sample": j, "text": text}
            for i, (p, row) in enumerate(zip(inputs.prompts, rows, strict=True)) for j, text in enumerate(row)]


# ---------------------------------------------------------------------------------- 3. the statistics


def _results(inputs: EvalInputs, scores: RunScores, device, t_start: float) -> dict:
    """results.json (pure numpy from here on): generation statistics, the probe, the lenses, paired comparisons."""
    from distill.eval.lenses import run as lenses
    from distill.eval.probe import PROBE_TEMPLATES
    from distill.eval.scoring import probe_comparisons, score_generations

    args, names, paths, runs = inputs.args, inputs.names, inputs.paths, scores.runs
    gen = score_generations(scores.records, args.group_by, args.bootstrap, args.seed, inputs.vectors,
                            model_order=names, teacher=inputs.teacher)
    per_model = {n: _merge_runs([runs[(n, k)] for k in range(len(paths[n]))], gen["models"][n]) for n in names}
    comparisons = gen["comparisons"]
    if inputs.professions:
        lrs = {n: np.mean([runs[(n, k)]["probe"]["logratio"] for k in range(len(paths[n]))], axis=0) for n in names}
        _add_probe(per_model, runs, paths, inputs.teacher, lrs, inputs.professions)
        comparisons += probe_comparisons(names, lrs, [c for c, _ in inputs.professions], args.bootstrap, args.seed)
    for n in names:  # the embedding and downstream lenses, and their paired comparisons
        per_model[n].update(lenses.merge_runs([scores.lens_runs[(n, k)][0] for k in range(len(paths[n]))]))
    comparisons += lenses.lens_comparisons(
        inputs.lens_plan, {n: [scores.lens_runs[(n, k)][1] for k in range(len(paths[n]))] for n in names}, names)
    settings = runtime.settings(args, inputs.prompts, gen["n_groups"])
    settings.update(inputs.lens_plan.settings())
    settings.update({
        "teacher": inputs.teacher, "bootstrap": args.bootstrap, "text": args.text, "device": str(device),
        "n_professions": gen["n_professions"], "perplexity_window": WINDOW, "max_eval_tokens": MAX_EVAL_TOKENS,
        "tie_rule": TIE_RULE,
        "word_vectors": inputs.vectors.name if inputs.vectors is not None else None,
        "probe": ({"templates": list(PROBE_TEMPLATES), "n_professions": len(inputs.professions),
                   "professions": "the held-out half (distill.eval.probe.probe_split) unless a note says otherwise"}
                  if inputs.professions else None),
        "seconds": round(time.time() - t_start, 1), "notes": inputs.notes + gen["notes"],
        "generation": scores.generation,  # what `distill power` prices designs with
        "part_seconds": runtime.part_seconds(scores.seconds),  # set against what each part adds to the evidence
    })
    return {"models": per_model, "settings": settings, "comparisons": comparisons, "power": gen["power"]}


# ------------------------------------------------------------------------------------------- 4. write


def _write_outputs(inputs: EvalInputs, records: list[dict], results: dict) -> None:
    """The report folder, whole or not at all, then the summary on stdout."""
    from distill.eval.lenses.run import summary_lines
    from distill.eval.report import summary_table, write_eval_outputs

    examples = pick_examples(records, inputs.names, inputs.args.group_by)

    def write(tmp: Path) -> None:
        write_eval_outputs(tmp, results, examples)
        write_generations(tmp / "generations.jsonl", records)

    write_report_dir(inputs.out, results, write)
    print(summary_table(results))
    print("\n".join(summary_lines(results, comparisons=False)))
    plan = inputs.lens_plan
    extra = " and the lenses plot" if plan.spec is not None or plan.bios is not None else ""
    print(f"wrote {inputs.out}/results.json, report.md, generations.jsonl, 2 plots{extra}")


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
    from distill.eval.probe import probe_summary

    keys = ("rms_logratio", "mean_logratio", "sd_logratio", "slope_on_teacher", "r_on_teacher")

    def by_profession(ratios) -> dict[str, float]:
        return {f"{c}/{p}": float(x) for (c, p), x in zip(professions, ratios, strict=True)}

    for name, entry in per_model.items():
        ref = None if name == teacher else lrs[teacher]
        figs = [probe_summary(runs[(name, k)]["probe"]["logratio"], ref) for k in range(len(paths[name]))]
        probe = {k: _mean_or_none([f[k] for f in figs]) for k in keys if k in figs[0]}
        probe["logratio"] = by_profession(lrs[name])
        entry["probe"] = probe
        for k, (seed, f) in enumerate(zip(entry.get("seeds", []), figs, strict=False)):
            # Each run's own ratios too: a later reader can then set them against a teacher scored elsewhere.
            seed["probe"] = {**f, "logratio": by_profession(runs[(name, k)]["probe"]["logratio"])}
        if "seeds" in entry:
            entry["seeds_sd"]["probe_rms_logratio"] = float(np.std([f["rms_logratio"] for f in figs], ddof=1))


# ---------------------------------------------------------------------------------- eval without generation


def run_lenses_only(args) -> int:
    """`distill eval --lens embedding|downstream` (no generation): validate, score each model, write DIR."""
    from distill.eval.lenses.report import write_lens_outputs
    from distill.eval.lenses.run import (
        check_layer,
        lens_comparisons,
        merge_runs,
        plan_lenses,
        run_labels,
        score_model,
        summary_lines,
    )
    from distill.eval.shared_prefix import shared_prefix_forward
    from distill.models import load_model, load_tokenizer

    check_bootstrap(args)
    models = parse_model_runs(args.model)
    names = [n for n, _ in models]
    out = Path(args.out).expanduser()
    check_out_dir(out, args.overwrite, input_paths(args, models))
    tokenizers = {path: load_tokenizer(path) for _, runs in models for path in runs}
    labels = run_labels(models)
    plan = plan_lenses(args, {labels[p]: tokenizers[p] for p in labels}, {labels[p]: p for p in labels})
    lock_out(out)

    device, t0 = runtime.device(), time.time()
    order = [(name, path) for name, runs in models for path in runs]
    per_model, private = {}, {}
    entries: dict[str, list[dict]] = {}
    seconds: dict[str, dict] = {}
    later, shared = [p for _, p in order[1:]], None  # the runs that may start from the first one's hidden states
    for step, (name, path) in enumerate(order, 1):
        runtime.log(f"[{step}/{len(order)}] {name}: loading {path} on {device}")
        with runtime.timed(seconds.setdefault(name, {}), "load"):
            model = load_model(path, args.dtype).to(device).eval()
        check_layer(model, plan.layer)
        forward, shared = shared_prefix_forward(model, path, labels[path], shared, later, plan.layer)
        entry, priv = score_model(plan, model, tokenizers[path], device, seconds[name], forward)
        entries.setdefault(name, []).append(entry)
        private.setdefault(name, []).append(priv)
        del model
        runtime.release_memory()
    for name, runs in models:
        per_model[name] = {"source": runs[0] if len(runs) == 1 else runs, "runs": len(runs), "notes": [],
                           **merge_runs(entries[name])}
    settings = {**plan.settings(), "seed": args.seed, "bootstrap": args.bootstrap, "device": str(device),
                "seconds": round(time.time() - t0, 1), "part_seconds": runtime.part_seconds(seconds), "notes": []}
    results = {"models": per_model, "settings": settings, "comparisons": lens_comparisons(plan, private, names)}

    write_report_dir(out, results, lambda tmp: write_lens_outputs(tmp, results, standalone=True))
    print("\n".join(summary_lines(results)))
    print(f"wrote {out}/results.json, report.md and lenses.png")
    return 0
