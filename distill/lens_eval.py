"""`distill eval --lens ...`: the embedding and downstream lenses inside the eval command (issue 15).

    distill eval --model teacher=T --model kd=K --model crr=C --prompts professions --lens all --bios project --out out/eval
    distill eval --model teacher=T --model crr=C --lens embedding,downstream --out out/lenses   # no generation

`plan_lenses` checks everything the lenses read (word lists and templates against every model's tokenizer,
the biographies, the split) before any model loads; `score_model` runs both lenses on one loaded model and
returns its results.json entries plus what the paired comparisons need; `lens_comparisons` compares every pair
of models on the same words, templates and test biographies. `run_lenses_only` is `distill eval` without
the generation lens: the same validation, one model at a time, results.json + report.md + the lenses plot.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill import lens_downstream as ld
from distill import lens_embedding as le
from distill.errors import UserError

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
    bios: ld.Bios | None
    test: np.ndarray | None
    layer: int
    seed: int
    n_boot: int

    def settings(self) -> dict:
        out = {"lenses": list(self.lenses), "lens_layer": self.layer}
        if self.spec is not None:
            out["embedding_tests"] = [t.name for t in self.spec.tests]
            out["embedding_templates"] = len(self.spec.templates)
            out["embedding_permutations"] = N_PERMUTATIONS
        if self.bios is not None:
            out.update({"bios": self.bios.source, "bios_train": int((~self.test).sum()),
                        "bios_test": int(self.test.sum()), "bios_split": "given" if self.bios.splits else "seeded"})
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
    return LensPlan(lenses, spec, bios, test, layer, args.seed, args.bootstrap)


def check_layer(model, layer: int) -> None:
    n = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
    if not -(n + 1) <= layer <= n:
        raise UserError(f"--lens-layer {layer} is out of range for a model with {n} layers (use 0..{n} or -1 for the last)")


def score_model(plan: LensPlan, model, tok, device=None) -> tuple[dict, dict]:
    """({"embedding": ..., "downstream": ...} for results.json, private data for the paired comparisons)."""
    import sys

    entry, private = {}, {}
    if plan.spec is not None:
        n = len(plan.spec.words()) * len(plan.spec.templates)
        print(f"  embedding lens: {n} sentences", file=sys.stderr, flush=True)
        reps = le.word_representations(model, tok, plan.spec, layer=plan.layer, device=device)
        entry["embedding"] = le.embedding_lens(reps, plan.spec, n_perm=N_PERMUTATIONS, seed=plan.seed)
        private["assoc"] = le.associations_for(reps, plan.spec)
    if plan.bios is not None:
        print(f"  downstream lens: {len(plan.bios.texts)} biographies, probe", file=sys.stderr, flush=True)
        feats = ld.bio_features(model, tok, plan.bios.texts, layer=plan.layer, device=device)
        res = ld.downstream_lens(feats, plan.bios, plan.test, seed=plan.seed, n_boot=plan.n_boot)
        private["pred"] = res.pop("_predictions")
        entry["downstream"] = res
    return entry, private


def lens_comparisons(plan: LensPlan, private: dict[str, dict], names: list[str]) -> list[dict]:
    """Every pair of models in the order given, for each lens that ran: b - a with its paired interval and p."""
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if plan.spec is not None:
                c = le.paired_embedding_comparison(private[a]["assoc"], private[b]["assoc"], plan.n_boot, plan.seed)
                out.append({"a": a, "b": b, "metric": "embedding_effect_size", "lens": "embedding", **c})
            if plan.bios is not None:
                c = ld.paired_downstream_comparison(private[a]["pred"], private[b]["pred"], plan.bios, plan.test,
                                                    plan.n_boot, plan.seed)
                out.append({"a": a, "b": b, "metric": "tpr_gap_rms", "lens": "downstream", **c})
    return out


def summary_lines(results: dict, comparisons: bool = True) -> list[str]:
    """Console lines: one per model and lens, then (unless comparisons=False) the lens comparisons."""
    lines = []
    for name, m in results["models"].items():
        e, d = m.get("embedding"), m.get("downstream")
        if e:
            lo, hi = e["combined_ci"]
            lines.append(f"{name}: embedding effect size {e['combined_effect_size']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                         f"p {e['combined_p']:.3g}")
        if d:
            lo, hi = d["tpr_gap_rms_ci"]
            lines.append(f"{name}: downstream TPR-gap RMS {d['tpr_gap_rms']:.3f} [{lo:.3f}, {hi:.3f}], "
                         f"accuracy {d['accuracy']:.3f}")
    for c in results["comparisons"] if comparisons else []:
        if c.get("lens") in ("embedding", "downstream"):
            lo, hi = c["ci"]
            lines.append(f"{c['metric']}: {c['b']} - {c['a']} = {c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                         f"p = {c['p_value']:.3g}")
    return lines


# ---------------------------------------------------------------------------------- eval without generation


def run_lenses_only(args) -> int:
    """`distill eval --lens embedding|downstream` (no generation): validate, score each model, write DIR."""
    from distill.evaluation import _check_out_dir, _device, _log, _release_memory, _replace_dir, parse_models
    from distill.lens_report import write_lens_outputs
    from distill.models import load_model, load_tokenizer

    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, not {args.bootstrap}")
    models = parse_models(args.model)
    names = [n for n, _ in models]
    out = Path(args.out).expanduser()
    _check_out_dir(out, args.overwrite)
    tokenizers = {name: load_tokenizer(path) for name, path in models}
    plan = plan_lenses(args, tokenizers, dict(models))

    device, t0 = _device(), time.time()
    per_model, private = {}, {}
    for step, (name, path) in enumerate(models, 1):
        _log(f"[{step}/{len(models)}] {name}: loading {path} on {device}")
        model = load_model(path, args.dtype).to(device).eval()
        check_layer(model, plan.layer)
        entry, private[name] = score_model(plan, model, tokenizers[name], device)
        per_model[name] = {"source": path, "notes": [], **entry}
        del model
        _release_memory()
    settings = {**plan.settings(), "seed": args.seed, "bootstrap": args.bootstrap, "device": str(device),
                "seconds": round(time.time() - t0, 1), "notes": []}
    results = {"models": per_model, "settings": settings, "comparisons": lens_comparisons(plan, private, names)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_lens_outputs(tmp, results, standalone=True)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(summary_lines(results)))
    print(f"wrote {out}/results.json, report.md and lenses.png")
    return 0
