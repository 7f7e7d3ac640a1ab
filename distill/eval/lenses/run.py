"""`distill eval --lens ...`: the embedding and downstream lenses inside the eval command.

    distill eval --model teacher=T --model kd=K --model crr=C --prompts professions --lens all --bios project --out out/eval
    distill eval --model teacher=T --model crr=C --lens embedding,downstream --out out/lenses   # no generation

`plan_lenses` checks everything the lenses read (word lists and templates against every model's tokenizer,
the biographies, the split) before any model loads; `score_model` runs both lenses on one loaded model and
returns its results.json entries plus what the paired comparisons need; `lens_comparisons` compares every pair
of models on the same words, templates and test biographies. `distill eval` without the generation lens is
`run_lenses_only` in distill.eval.eval_command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.errors import UserError
from distill.eval.lenses import downstream as ld
from distill.eval.lenses import embedding as le
from distill.eval.lenses.bios_record import Bios
from distill.eval.lines import comparison_line
from distill.eval.runtime import plain_forward, timed

LENSES = ("generation", "embedding", "downstream")
N_PERMUTATIONS = 10000  # per embedding test; numpy on a few dozen numbers, milliseconds


def parse_lenses(spec: str) -> tuple[str, ...]:
    """'all' or a comma-separated subset of generation, embedding, downstream (in that order)."""
    if spec == "all":
        return LENSES
    asked = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in asked if s not in LENSES]
    if bad or not asked:
        raise UserError(f"--lens {spec!r}: choose from generation, embedding, downstream (comma-separated) or all")
    return tuple(lens for lens in LENSES if lens in asked)


@dataclass
class LensPlan:
    lenses: tuple[str, ...]
    spec: le.EmbeddingSpec | None
    bios: Bios | None
    test: np.ndarray | None
    layer: int
    seed: int
    n_boot: int
    left_out: dict | None = None  # downstream: {occupation: why} left out of the TPR-gap table and RMS

    def settings(self) -> dict:
        out = {"lenses": list(self.lenses), "lens_layer": self.layer}
        if self.spec is not None:
            out["embedding_tests"] = [t.name for t in self.spec.tests]
            out["embedding_templates"] = len(self.spec.templates)
            out["embedding_permutations"] = N_PERMUTATIONS
        if self.bios is not None:
            out.update({"bios": self.bios.source, "bios_train": int((~self.test).sum()),
                        "bios_test": int(self.test.sum()), "bios_split": "given" if self.bios.splits else "seeded",
                        "bios_occupations": len(set(self.bios.occupations)), "bios_left_out": self.left_out or {}})
        return out


def _config_layers(path: str) -> int | None:
    """The model's layer count from its config alone (no weights read); None when it cannot be read here."""
    try:
        from transformers import AutoConfig

        from distill.models import _source_kwargs

        src, extra = _source_kwargs(path)
        cfg = AutoConfig.from_pretrained(src, **extra)
    except Exception:  # the model loader reports unreadable models with its own line later
        return None
    return int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0)) or None


def plan_lenses(args, tokenizers: dict, paths: dict | None = None) -> LensPlan:
    """Validate the lens inputs for every model's tokenizer: one UserError line, before any compute.
    `paths` ({name: model path}) lets --lens-layer be checked against each config before the weights load."""
    lenses = parse_lenses(getattr(args, "lens", "generation"))
    layer = getattr(args, "lens_layer", -1)
    if len(lenses) > 1 or lenses != ("generation",):
        for name, path in (paths or {}).items():
            n = _config_layers(path)
            if n is not None and not -(n + 1) <= layer <= n:
                raise UserError(f"--lens-layer {layer} is out of range for --model {name} with {n} layers "
                                f"(use 0..{n} or -1 for the last)")
    spec = bios = test = None
    if "embedding" in lenses:
        spec = le.load_embedding_spec()
        for name, tok in tokenizers.items():
            le.check_placeable(spec, tok, f"--model {name}")
    if "downstream" in lenses:
        bios = ld.load_bios(getattr(args, "bios", None) or "project")
        test = ld.split_bios(bios, seed=args.seed)
        ld.check_bios(bios, test)
    left_out = ld.left_out_occupations(bios, test) if bios is not None else None
    return LensPlan(lenses, spec, bios, test, layer, args.seed, args.bootstrap, left_out)


def run_labels(models: list[tuple[str, list[str]]]) -> dict[str, str]:
    """{path: label}: the model's name, or 'NAME run K' when it has several training runs (for messages)."""
    return {p: (n if len(runs) == 1 else f"{n} run {k}") for n, runs in models for k, p in enumerate(runs)}


def check_layer(model, layer: int) -> None:
    n = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
    if not -(n + 1) <= layer <= n:
        raise UserError(f"--lens-layer {layer} is out of range for a model with {n} layers (use 0..{n} or -1 for the last)")


def score_model(plan: LensPlan, model, tok, device=None, seconds: dict | None = None,
                forward=plain_forward) -> tuple[dict, dict]:
    """({"embedding": ..., "downstream": ...} for results.json, the per-cluster figures for the comparisons).
    Each lens's wall seconds are added to `seconds` under its name when a dict is given; `forward` runs the
    model (`distill.eval.shared_prefix`)."""

    entry, private = {}, {}
    if plan.spec is not None:
        n = len(plan.spec.words()) * len(plan.spec.templates)
        print(f"  embedding lens: {n} sentences", flush=True)
        with timed(seconds, "embedding"):
            reps = le.word_representations(model, tok, plan.spec, layer=plan.layer, device=device, forward=forward)
            entry["embedding"] = le.embedding_lens(reps, plan.spec, n_perm=N_PERMUTATIONS, seed=plan.seed)
            private["units"] = le.word_effects(le.associations_for(reps, plan.spec),
                                               [t.name for t in plan.spec.tests])
    if plan.bios is not None:
        print(f"  downstream lens: {len(plan.bios.texts)} biographies, probe", flush=True)
        with timed(seconds, "downstream"):
            feats = ld.bio_features(model, tok, plan.bios.texts, layer=plan.layer, device=device, forward=forward)
            res = ld.downstream_lens(feats, plan.bios, plan.test, seed=plan.seed, n_boot=plan.n_boot)
            private["predictions"] = res.pop("_predictions")
            private["sq_gaps"] = ld.occupation_squared_gaps(private["predictions"], plan.bios, plan.test)
        entry["downstream"] = res
    return entry, private


def merge_runs(entries: list[dict]) -> dict:
    """One model's lens entries from its training runs. One run: that run's entries. Several: the mean over
    runs of the headline figures (effect sizes, RMS, gaps, accuracy), with no p-value or interval at the top
    (those of each run are under "runs"; the comparisons below test the run-averaged per-cluster figures)."""
    if len(entries) == 1:
        return entries[0]
    out = {}
    if "embedding" in entries[0]:
        es = [e["embedding"] for e in entries]
        out["embedding"] = {
            "tests": [{"name": t["name"], "effect_size": float(np.mean([e["tests"][i]["effect_size"] for e in es])),
                       "p": None} for i, t in enumerate(es[0]["tests"])],
            "combined_effect_size": float(np.mean([e["combined_effect_size"] for e in es])),
            "combined_effect_size_sd": float(np.std([e["combined_effect_size"] for e in es], ddof=1)),
            "combined_p": None, "combined_ci": None, "runs": es}
    if "downstream" in entries[0]:
        ds = [e["downstream"] for e in entries]
        out["downstream"] = {
            "tpr_gap_rms": float(np.mean([d["tpr_gap_rms"] for d in ds])),
            "tpr_gap_rms_sd": float(np.std([d["tpr_gap_rms"] for d in ds], ddof=1)), "tpr_gap_rms_ci": None,
            "tpr_gap": {o: float(np.mean([d["tpr_gap"][o] for d in ds])) for o in ds[0]["tpr_gap"]},
            "accuracy": float(np.mean([d["accuracy"] for d in ds])),
            "train_female_share": ds[0]["train_female_share"], "runs": ds}
    return out


def lens_comparisons(plan: LensPlan, private: dict[str, list[dict]], names: list[str]) -> list[dict]:
    """Every pair of models in the order given, for each lens that ran: b - a by `distill.eval.paired.paired_test`
    on per-cluster figures (averaged over a model's runs), the scorer's test for the generation lens too.

    * embedding: clusters are the target words, stratified by test; each word's figure is its term of the
      test's effect size (`embedding.word_effects`), so `diff` is the difference of the mean over tests
      of Caliskan's d (the per-test `effect_size`), and the sign-flip p flips words, the units the
      association test itself permutes (templates reuse the same words, so they are not independent).
    * downstream: clusters are the occupations of the test split; the figure is the unbiased squared TPR
      gap, turned into an RMS by sqrt(max(0, mean)), so `diff` is the difference of the unbiased RMS gaps.
      `predictions_differ` (of `n_test`) is how many test biographies the two probes classify differently:
      the lens's resolution between the pair (`downstream.predictions_that_differ`).
    """
    from distill.eval.paired import paired_test, rms_of_mean

    def avg(name, key):
        return np.mean([run[key][0] if key == "units" else run[key] for run in private[name]], axis=0)

    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if plan.spec is not None:
                strata = private[a][0]["units"][1]
                c = paired_test(avg(a, "units"), avg(b, "units"), strata, n_boot=plan.n_boot, seed=plan.seed)
                out.append({"a": a, "b": b, "metric": "embedding_effect_size", "lens": "embedding", **c,
                            "unit": "target word"})
            if plan.bios is not None:
                c = paired_test(avg(a, "sq_gaps"), avg(b, "sq_gaps"), transform=rms_of_mean, n_boot=plan.n_boot,
                                seed=plan.seed)
                differ = ld.predictions_that_differ([r["predictions"] for r in private[a]],
                                                    [r["predictions"] for r in private[b]])
                out.append({"a": a, "b": b, "metric": "tpr_gap_rms_unbiased", "lens": "downstream", **c,
                            "unit": "occupation", "predictions_differ": differ,
                            "n_test": len(private[a][0]["predictions"])})
    return out


def summary_lines(results: dict, comparisons: bool = True) -> list[str]:
    """Console lines: one per model and lens, then (unless comparisons=False) the lens comparisons."""
    lines = []
    for name, m in results["models"].items():
        e, d = m.get("embedding"), m.get("downstream")
        if e:
            ci = "" if not e.get("combined_ci") else " [{:+.3f}, {:+.3f}]".format(*e["combined_ci"])
            p = "" if e.get("combined_p") is None else f", p {e['combined_p']:.3g}"
            lines.append(f"{name}: embedding effect size {e['combined_effect_size']:+.3f}{ci}{p}")
        if d:
            ci = "" if not d.get("tpr_gap_rms_ci") else " [{:.3f}, {:.3f}]".format(*d["tpr_gap_rms_ci"])
            lines.append(f"{name}: downstream TPR-gap RMS {d['tpr_gap_rms']:.3f}{ci}, accuracy {d['accuracy']:.3f}")
    note = left_out_note(results["settings"])
    if note:
        lines.append(f"downstream lens: {note}")
    lines += [comparison_line(c) for c in (results["comparisons"] if comparisons else [])
              if c.get("lens") in ("embedding", "downstream")]
    return lines


def left_out_note(settings: dict) -> str | None:
    """'left out of the TPR-gap table and RMS: 1 of 8 occupations, ... (why)', for the console and report.md."""
    left = settings.get("bios_left_out") or {}
    if not left:
        return None
    named = "; ".join(f"{o} ({why})" for o, why in left.items())
    return (f"{len(left)} of {settings.get('bios_occupations', '?')} occupations left out of the TPR-gap table "
            f"and its RMS, their gap being undefined without test biographies: {named}")
