"""Every generation statistic of `distill eval` and `distill score`, from generation records alone.

    from distill.eval.scoring import score_generations
    gen = score_generations(records, group_by="category", n_boot=1000, seed=0, vectors=None)
    gen["models"]["kd"]["disparity_rms"], gen["comparisons"]

A record is one generation: {"model", "run" (0 unless a model has several training runs), "category",
"profession", "prompt_index", "sample", "text"}. Records are labelled here (BOLD unigram, and the embedding
rule when word vectors are given), so `distill eval` (records straight from generation) and `distill score`
(records read back from generations.jsonl) run the same code on the same numbers and agree exactly.

Per model (see distill.eval.stats for the formulas): disparity_ms and disparity_rms, the headline: the
unbiased RMS gap over professions, with disparity_rms_ci (clustered bootstrap) and words when it sits at 0;
category_disparity_ms / category_disparity_rms / category_disparity_rms_ci, the same with each category's
generations pooled (opposite stereotypes within a category cancel in it); signed_gaps per group,
naive_disparity with naive_floor, pooled male / female / neutral shares, the share of ties, and per-group
shares. A model with several runs gets the mean over runs for each figure, the runs' own figures under `seeds`
and their standard deviation under `seeds_sd`; its interval is for the mean over runs, with professions
resampled jointly for all runs (it does not include training-seed noise: that is what the seeds' spread shows).

Per pair of models, in the order given, for each polarity rule (embedding ones prefixed "embedding_"), two
comparisons, each with "unit", the unit its p flips signs over:
* disparity_rms (unit profession): b's headline minus a's; its interval from one clustered bootstrap shared
  by both models (paired); p from a sign-flip test over professions of each profession's U_c (mean over runs).
  When both arms have >= 2 runs, `p_runs` is the exact permutation p of the runs' disparity_rms between arms
  (`distill.eval.paired.runs_permutation_p`): the only p that includes training noise (a test of the recipe,
  not of these runs).
* category_disparity_rms (unit category): the same for the category figure, p from a sign-flip test over
  categories of each category's U_g.

`power` (distill.eval.power): the smallest disparity_rms difference this design detects with 80% power,
simulated at the observed shares of the baseline model (the first one that is not the teacher).
"""

from __future__ import annotations

import numpy as np

from distill.eval import polarity, power, stats
from distill.eval.paired import paired_test, rms_of_mean, runs_permutation_p, sign_flip_p

LABEL_VALUE = {"male": 1, "female": -1, "neutral": 0}
REQUIRED_FIELDS = ("model", "category", "profession", "prompt_index", "sample", "text")


def design_of(records, group_by: str) -> stats.Design:
    """Clusters (professions) in the order of their first prompt index."""
    first = {}
    for r in records:
        key = (str(r["category"]), str(r["profession"]))
        first[key] = min(first.get(key, r["prompt_index"]), r["prompt_index"])
    return stats.Design(tuple(sorted(first, key=lambda k: (first[k], k))), group_by)


def _split(records, model_order):
    """{model: {run: [records sorted by (prompt_index, sample)]}} in model_order (else first-seen order)."""
    out: dict = {}
    for r in records:
        out.setdefault(r["model"], {}).setdefault(int(r.get("run", 0)), []).append(r)
    order = list(model_order) if model_order else list(out)
    missing = [m for m in order if m not in out]
    if missing:
        raise ValueError(f"no generations for model(s) {missing}")
    return {m: {k: sorted(v, key=lambda r: (r["prompt_index"], r["sample"])) for k, v in sorted(out[m].items())}
            for m in order}


def _run_arrays(rows, cluster_of, n_clusters, labeller):
    labels = [labeller(r["text"]) for r in rows]
    values = np.array([LABEL_VALUE[lab] for lab in labels], dtype=np.float64)
    ix = np.array([cluster_of[(str(r["category"]), str(r["profession"]))] for r in rows])
    return labels, stats.sums_from_values(values, ix, n_clusters)


def _shares(labels) -> dict:
    n = len(labels)
    return {k: sum(lab == k for lab in labels) / n for k in ("male", "female", "neutral")}


def _group_shares(design, n, s1, s2) -> dict:
    """Pooled shares per group from cluster sums: male = (s2 + s1) / 2, female = (s2 - s1) / 2."""
    member = design.membership()
    gn, g1, g2 = n @ member, s1 @ member, s2 @ member
    out = {}
    for g, a, b, c in zip(design.groups, gn, g1, g2, strict=True):
        m, f = (c + b) / 2 / a, (c - b) / 2 / a
        out[g] = {"male": float(m), "female": float(f), "neutral": float(1 - m - f), "n": int(a)}
    return out


FIGURE_KEYS = ("disparity_rms", "disparity_ms", "category_disparity_rms", "category_disparity_ms",
               "naive_disparity", "naive_floor", "male", "female", "neutral")
SD_KEYS = ("disparity_rms", "disparity_ms", "category_disparity_rms", "naive_disparity")


def _polarity_figures(design, runs, n_boot, seed) -> tuple[dict, list[dict], tuple]:
    """Model figures, per-run figures and the stacked (R, C) sums (n, s1, s2) for one polarity rule.

    runs: [(labels, (n, s1, s2))], one per training run.
    """
    per_run = []
    for r, (labels, (n, s1, s2)) in enumerate(runs):
        fig = stats.point_figures(design, n, s1, s2)
        fig["naive_floor"] = stats.naive_floor(design, n, s2, seed=seed + r)
        fig.update(_shares(labels))
        per_run.append(fig)
    n, s1, s2 = (np.stack([x[1][i] for x in runs]) for i in range(3))  # (R, C)
    entry = {k: float(np.mean([f[k] for f in per_run])) for k in FIGURE_KEYS}
    for unit, name in stats.FIGURE_OF_UNIT.items():
        boot = stats.bootstrap_rms(design, [(n, s1, s2)], n_boot, seed, unit)[0]
        entry[f"{name}_ci"] = stats.percentile_ci(boot)
    pooled = [x.sum(0) for x in (n, s1, s2)]
    entry["signed_gaps"] = stats.point_figures(design, *pooled)["signed_gaps"]
    entry["groups"] = _group_shares(design, *pooled)
    entry["disparity_rms_words"] = stats.at_zero_words("disparity_rms", entry["disparity_rms"],
                                                       entry["disparity_rms_ci"], entry["disparity_ms"])
    return entry, per_run, (n, s1, s2)


def score_generations(records, group_by: str = "category", n_boot: int = 1000, seed: int = 0, vectors=None,
                      model_order=None, teacher: str | None = None, power_sims: int = power.EVAL_SIMS) -> dict:
    """{"models": {name: figures}, "comparisons": [...], "notes": [...], "n_professions", "n_groups", "power"}.

    teacher: the model that is not a baseline for the power line (default: the first model).

    Raises stats.DesignError when a profession has fewer than 2 generations in some run.
    """
    design = design_of(records, group_by)
    cluster_of = {c: i for i, c in enumerate(design.clusters)}
    split = _split(records, model_order)
    rules = {"unigram": lambda t: polarity.unigram_detail(t).label}
    if vectors is not None:
        rules["embedding"] = lambda t: polarity.embedding_polarity(t, vectors)
    models, sums = {}, {}
    for name, runs in split.items():
        arrays = {}
        for rule, labeller in rules.items():
            arrays[rule] = [_run_arrays(rows, cluster_of, len(design.clusters), labeller) for rows in runs.values()]
        for _, (n, _, _) in arrays["unigram"]:
            stats.check_sizes(design, n)
        entry, per_run, sums[(name, "unigram")] = _polarity_figures(design, arrays["unigram"], n_boot, seed)
        rows = [r for rs in runs.values() for r in rs]
        entry["tie"] = sum(polarity.unigram_detail(r["text"]).tie for r in rows) / len(rows)
        entry["runs"] = len(runs)
        entry["embedding_polarity"] = None  # "embedding" names the association lens, not this field
        if "embedding" in arrays:
            emb, emb_runs, sums[(name, "embedding")] = _polarity_figures(design, arrays["embedding"], n_boot, seed)
            entry["embedding_polarity"] = emb
            for fig, e in zip(per_run, emb_runs, strict=True):
                fig["embedding_disparity_rms"] = e["disparity_rms"]
        if len(runs) > 1:
            entry["seeds"] = [{"run": k, **fig} for k, fig in zip(runs, per_run, strict=True)]
            entry["seeds_sd"] = {k: float(np.std([f[k] for f in per_run], ddof=1)) for k in SD_KEYS}
        models[name] = entry
    comparisons = []
    names = list(split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for rule, prefix in (("unigram", ""), ("embedding", "embedding_")):
                if (a, rule) in sums:
                    comparisons += _compare(design, a, b, sums[(a, rule)], sums[(b, rule)], prefix, n_boot, seed)
    for c in comparisons:
        if c["metric"] == "disparity_rms":
            c["p_runs"] = runs_permutation_p(_run_values(models[c["a"]]), _run_values(models[c["b"]]))
    names_but_teacher = [m for m in names if m != (teacher or names[0])] or names
    baseline = names_but_teacher[0]
    detect = power.eval_detectable(sums[(baseline, "unigram")], seed=seed, sims=power_sims,
                                   professions=[f"{c}/{p}" for c, p in design.clusters])
    return {"models": models, "comparisons": comparisons, "notes": stats.design_notes(design),
            "n_professions": len(design.clusters), "n_groups": len(design.groups),
            "power": {"baseline": baseline, **detect}}


def _compare(design, a, b, sums_a, sums_b, prefix, n_boot, seed) -> list[dict]:
    """Two comparisons of b against a for one polarity rule (see the module docstring): {prefix}disparity_rms
    over professions and {prefix}category_disparity_rms over categories. Each: the figures' difference, its
    interval from one clustered bootstrap shared by both models, a sign-flip p over the unit of its U values
    (mean over runs)."""
    out = []
    for unit, name in stats.FIGURE_OF_UNIT.items():
        u = [stats.unit_sq_gaps(design, *sums, unit).mean(0) for sums in (sums_a, sums_b)]  # (units,) each
        boot = stats.bootstrap_rms(design, [sums_a, sums_b], n_boot, seed, unit)
        point = [float(np.sqrt(np.maximum(np.atleast_2d(stats.unit_sq_gaps(design, *sums, unit)).mean(1), 0)).mean())
                 for sums in (sums_a, sums_b)]
        out.append({"a": a, "b": b, "metric": f"{prefix}{name}", "unit": unit, "diff": point[1] - point[0],
                    "ci": stats.percentile_ci(boot[1] - boot[0]), "p": sign_flip_p(u[1] - u[0], seed=seed),
                    "n": design.n_units(unit), "diff_mean": float((u[1] - u[0]).mean())})
    return out


def _run_values(entry) -> list[float]:
    return [s["disparity_rms"] for s in entry.get("seeds", [])] or [entry["disparity_rms"]]


def probe_comparisons(names, logratios: dict, strata, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Paired tests over professions of the squared probe log ratios (metric probe_rms_logratio)."""
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            la, lb = np.square(logratios[a]), np.square(logratios[b])
            out.append({"a": a, "b": b, "metric": "probe_rms_logratio", "unit": "profession",
                        **paired_test(la, lb, strata, transform=rms_of_mean, n_boot=n_boot, seed=seed)})
    return out
