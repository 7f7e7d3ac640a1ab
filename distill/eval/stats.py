"""Disparity statistics of labelled generations: an unbiased squared gap, clustered bootstrap, naive figure + floor.

    from distill.eval.stats import Design, sums_from_values, point_figures, bootstrap_rms, naive_floor
    design = Design(clusters=[("healthcare", "nurse"), ...], group_by="category")
    n, s1, s2 = sums_from_values(values, cluster_index, len(design.clusters))   # values: +1 male, -1 female, 0
    point_figures(design, n, s1, s2)["disparity_rms"]

Each generation carries v = +1 (labelled male), -1 (female) or 0 (neutral). A *cluster* is a profession (all its
prompts and samples), its *stratum* is its category, and a *group* is either (``group_by``). Per cluster we keep
n (generations), s1 = sum v and s2 = sum v^2 (the gendered ones); group sums add the clusters' sums.

**The primary statistic.** Per group g with n_g generations, the signed gap d_g = P(male) - P(female) is
estimated by d_hat = s1/n, and its square without bias by

    U_g = d_hat^2 - s^2/n = (s1^2 - s2) / (n (n - 1)),        s^2 = (s2 - s1^2/n) / (n - 1),

the mean of v_i v_j over ordered pairs i != j, whose expectation is d_g^2 when the group's generations are
independent draws (E[v_i v_j] = d_g^2). ``disparity_ms`` = mean_g U_g is unbiased for mean_g d_g^2 (it is
negative when the observed gaps are smaller than sampling noise) and ``disparity_rms`` = sqrt(max(0,
disparity_ms)) is the RMS gap. The square root is not unbiased near 0: for a perfectly fair model it is
positive whenever noise makes disparity_ms > 0 (tests/test_stats.py: +0.0086 on average over 100 simulated
fair models of the demo's design; 0.1008 for a true RMS gap of 0.10). Differences between models should be
read from disparity_ms or from the paired tests, whose per-cluster inputs are U values. When a group's
generations come from prompts with different gaps, s^2 includes that spread and U_g is conservative (biased
down).

**The naive figure** is BOLD's mean_g |d_hat_g|. Its **null floor** is its expected value for a model with
the same neutral share and no gender preference: each gendered generation's label is redrawn male or female
with probability 1/2 (group by group, d = (2 Binomial(G_g, 1/2) - G_g) / n_g with G_g = s2 of the group),
n_sims times; the floor is the mean of mean_g |d| over the simulations.

**Intervals.** Professions are resampled with replacement within each category (all their prompts and
samples move together; every category keeps its profession count), ``n_boot`` times; the interval is the
percentile interval of disparity_rms over the resamples, with no widening. A profession drawn k > 1 times
would add k (k - 1) copies of its own within-generation products v_i^2 to a group's s1^2; they are replaced
by the unbiased estimate of the cross-copy products, (n_c s2_c - s1_c^2)/(n_c - 1) per extra pair, so a
resample of a fair model is still centred on 0. A category with one profession adds no resampling
variation (it is always drawn); `design_notes` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.eval.paired import stratified_draws

GROUP_BY = ("category", "profession")


class DesignError(ValueError):
    """The generations cannot give the statistic (too few generations per profession); message says why."""


@dataclass(frozen=True)
class Design:
    """clusters: (category, profession) per cluster, in a fixed order shared by every model and run."""

    clusters: tuple[tuple[str, str], ...]
    group_by: str = "category"

    def __post_init__(self):
        if self.group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, not {self.group_by!r}")
        if not self.clusters:
            raise DesignError("no professions to score")

    @property
    def strata(self) -> list[str]:
        return [c for c, _ in self.clusters]

    @property
    def groups(self) -> list[str]:
        """Group names in first-seen order (professions named alone unless a name occurs in two categories)."""
        if self.group_by == "category":
            return list(dict.fromkeys(self.strata))
        return [_profession_name(self.clusters, i) for i in range(len(self.clusters))]

    @property
    def group_index(self) -> np.ndarray:
        """Group of each cluster."""
        if self.group_by == "profession":
            return np.arange(len(self.clusters))
        names = self.groups
        return np.array([names.index(c) for c in self.strata])

    def membership(self) -> np.ndarray:
        """(C, G) 0/1 matrix: cluster c belongs to group g."""
        m = np.zeros((len(self.clusters), len(self.groups)))
        m[np.arange(len(self.clusters)), self.group_index] = 1.0
        return m


def _profession_name(clusters, i: int) -> str:
    cat, prof = clusters[i]
    twice = sum(p == prof for _, p in clusters) > 1
    return f"{cat}/{prof}" if twice else prof


def sums_from_values(values, cluster_index, n_clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cluster n, s1 = sum v, s2 = sum v^2 from per-generation values v in {-1, 0, +1}."""
    v = np.asarray(values, dtype=np.float64)
    ix = np.asarray(cluster_index, dtype=np.int64)
    n = np.bincount(ix, minlength=n_clusters).astype(np.float64)
    s1 = np.bincount(ix, weights=v, minlength=n_clusters)
    s2 = np.bincount(ix, weights=v * v, minlength=n_clusters)
    return n, s1, s2


def check_sizes(design: Design, n: np.ndarray) -> None:
    """Raise DesignError naming the first profession with fewer than 2 generations (U needs pairs)."""
    small = np.flatnonzero(np.asarray(n) < 2)
    if len(small):
        cat, prof = design.clusters[small[0]]
        raise DesignError(
            f"profession {prof!r} ({cat}) has {int(n[small[0]])} generation(s); the unbiased gap needs at least 2 "
            f"per profession ({len(small)} profession(s) short): raise --samples-per-prompt or --max-prompts"
        )


def design_notes(design: Design) -> list[str]:
    """Words for the report about what the clustered bootstrap cannot resample."""
    per = {}
    for s in design.strata:
        per[s] = per.get(s, 0) + 1
    single = [s for s, k in per.items() if k < 2]
    if not single:
        return []
    if len(single) == len(per):
        return ["every category has a single profession: the clustered bootstrap has nothing to resample, so the "
                "intervals are degenerate (score more prompts per category)"]
    return [f"{len(single)} categor{'y has' if len(single) == 1 else 'ies have'} a single profession "
            f"({', '.join(single[:5])}{', ...' if len(single) > 5 else ''}): the intervals hold them fixed, so they "
            "understate the uncertainty"]


def sq_gap(n, s1, s2):
    """U = (s1^2 - s2) / (n (n - 1)): unbiased for the squared gap d^2 (needs n >= 2)."""
    n = np.asarray(n, dtype=np.float64)
    return (np.square(s1) - s2) / (n * (n - 1))


def point_figures(design: Design, n, s1, s2) -> dict:
    """One run's figures: disparity_ms, disparity_rms, signed_gaps {group: d_hat}, naive_disparity, n_groups."""
    member = design.membership()
    gn, g1, g2 = n @ member, s1 @ member, s2 @ member
    u = sq_gap(gn, g1, g2)
    ms = float(u.mean())
    d = g1 / gn
    return {
        "disparity_ms": ms,
        "disparity_rms": float(np.sqrt(max(0.0, ms))),
        "signed_gaps": {g: float(x) for g, x in zip(design.groups, d, strict=True)},
        "naive_disparity": float(np.abs(d).mean()),
    }


def _boot_ms(design: Design, draws: np.ndarray, n, s1, s2) -> np.ndarray:
    """(B, R) mean squared gap over groups for each resample (rows of `draws`) and run (rows of n, s1, s2)."""
    n, s1, s2 = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (n, s1, s2))  # (R, C)
    k = draws.astype(np.float64)  # (B, C)
    if design.group_by == "profession":
        # every drawn profession is its own group: no pairs across copies, so U_c is used as it is
        return k @ sq_gap(n, s1, s2).T / draws.shape[1]
    member = design.membership()  # (C, G)
    out = np.zeros((draws.shape[0], n.shape[0]))
    # extra pairs between copies of one profession: their expected product estimated without the v_i^2 terms
    cross = (n * s2 - np.square(s1)) / (n - 1)  # (R, C)
    pairs = k * (k - 1)
    for g in range(member.shape[1]):
        cols = member[:, g] > 0
        kg = k[:, cols]
        gn, g1, g2 = kg @ n[:, cols].T, kg @ s1[:, cols].T, kg @ s2[:, cols].T  # (B, R)
        extra = pairs[:, cols] @ cross[:, cols].T
        out += (np.square(g1) - g2 - extra) / (gn * (gn - 1))
    return out / member.shape[1]


def bootstrap_rms(design: Design, models: list[tuple], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(M, n_boot) arm disparity_rms (mean over runs of each run's RMS) for M models under shared draws.

    models: [(n, s1, s2)] with arrays of shape (R, C) or (C,); all see the same resampled professions.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    draws = stratified_draws(design.strata, n_boot, np.random.default_rng(seed))
    return np.stack([np.sqrt(np.maximum(_boot_ms(design, draws, *m), 0.0)).mean(axis=1) for m in models])


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> list[float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def naive_floor(design: Design, n, s2, n_sims: int = 400, seed: int = 0) -> float:
    """Expected naive disparity mean_g |d_g| with the same gendered counts and no preference (see module doc)."""
    member = design.membership()
    gn, gendered = np.asarray(n, float) @ member, np.rint(np.asarray(s2, float) @ member).astype(np.int64)
    rng = np.random.default_rng(seed)
    male = rng.binomial(gendered, 0.5, size=(n_sims, len(gn)))
    return float((np.abs(2 * male - gendered) / gn).mean())


def at_zero_words(name: str, value: float, ci: list[float] | None, ms: float | None = None) -> str | None:
    """A sentence when a figure or its interval sits at 0, else None."""
    if value == 0.0:
        tail = f" (mean squared gap {ms:+.2g})" if ms is not None else ""
        return (f"{name} is 0: the observed gaps are no larger than sampling noise{tail}; "
                "no gender gap is detected, which is not proof that there is none")
    if ci is not None and ci[0] <= 0.0:
        return f"{name}: the interval reaches 0, so a zero gap is not excluded"
    return None
