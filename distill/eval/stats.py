"""Disparity statistics of labelled generations: an unbiased squared gap, clustered bootstrap, naive figure + floor.

    from distill.eval.stats import Design, sums_from_values, point_figures, bootstrap_rms, naive_floor
    design = Design(clusters=[("healthcare", "nurse"), ...], group_by="category")
    n, s1, s2 = sums_from_values(values, cluster_index, len(design.clusters))   # values: +1 male, -1 female, 0
    point_figures(design, n, s1, s2)["disparity_rms"]

Each generation carries v = +1 (labelled male), -1 (female) or 0 (neutral). A *cluster* is a profession (all its
prompts and samples), its *stratum* is its category. Per cluster we keep n (generations), s1 = sum v and s2 =
sum v^2 (the gendered ones); a category's sums add its professions' sums.

**The unbiased squared gap.** For a unit (a profession, or a category) with n generations, the signed gap d =
P(male) - P(female) is estimated by d_hat = s1/n, and its square without bias by

    U = d_hat^2 - s^2/n = (s1^2 - s2) / (n (n - 1)),        s^2 = (s2 - s1^2/n) / (n - 1),

the mean of v_i v_j over ordered pairs i != j, whose expectation is d^2 when the unit's generations are
independent draws (E[v_i v_j] = d^2). When a unit's generations come from prompts (or professions) with
different gaps, s^2 includes that spread and U is conservative (biased down).

**The headline, per profession.** ``disparity_ms`` = mean over professions of U_c, unbiased for the mean
squared profession gap, and ``disparity_rms`` = sqrt(max(0, disparity_ms)), the RMS gap over professions. The
claim is about a gender tied to a profession, so this is the unit: grouped by category, a nurse leaning female
and a surgeon leaning male in one category cancel. The square root is not unbiased near 0: for a perfectly
fair model it is positive whenever noise makes disparity_ms > 0 (tests/test_stats.py measures it on the demo's
design). Differences between models should be read from the paired tests, whose per-cluster inputs are U values.

**The category figure.** ``category_disparity_ms`` / ``category_disparity_rms``: the same with the
generations of each category pooled: the RMS over categories of the category's gap. Opposite stereotypes
within a category cancel in it (it is the older headline, kept under its own name).

**The naive figure** is BOLD's mean over groups (``group_by``) of |d_hat|. Its **null floor** is its expected
value for a model with the same neutral share and no gender preference: each gendered generation's label is
redrawn male or female with probability 1/2 (group by group, d = (2 Binomial(G_g, 1/2) - G_g) / n_g with G_g
= s2 of the group), n_sims times; the floor is the mean of mean_g |d| over the simulations.

**Intervals.** Professions are resampled with replacement within each category (all their prompts and
samples move together; every category keeps its profession count), ``n_boot`` times. A category of one
profession has nothing to resample within: such professions are resampled among themselves
(`distill.eval.paired.pooled_strata`), so they add their share of variation instead of none. For the category
figure a profession drawn k > 1 times would add k (k - 1) copies of its own within-generation products v_i^2
to a category's s1^2; they are replaced by the unbiased estimate of the cross-copy products, (n_c s2_c -
s1_c^2)/(n_c - 1) per extra pair.

Each resample's mean square is then shifted by the same amount so that the resamples' mean equals the
observed mean square, and the interval is the percentile interval of sqrt(max(0, .)) of the shifted values
(no widening). Why the shift: resampling the professions of a category adds their spread to the resampled
category's mean, so the category figure's resamples sit above its point estimate by about that spread (a
model whose professions lean +0.2 and -0.2 within each category has a category figure of 0 and, unshifted,
an interval of about [0.02, 0.09] that excludes it). The shift is the bootstrap's own estimate of that bias
(Efron & Tibshirani, ch. 10) taken out, so the interval is that of the estimator it is printed beside. For the
per-profession headline the resampled mean of U_c is centred on the observed one already (each profession is
drawn once on average), so there the shift only removes Monte-Carlo noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.eval.paired import stratified_draws

GROUP_BY = ("category", "profession")
UNITS = ("profession", "category")  # the unit each RMS figure averages over: disparity_rms, category_disparity_rms
FIGURE_OF_UNIT = {"profession": "disparity_rms", "category": "category_disparity_rms"}


class DesignError(ValueError):
    """The generations cannot give the statistic (too few generations per profession); message says why."""


@dataclass(frozen=True)
class Design:
    """clusters: (category, profession) per cluster, in a fixed order shared by every model and run.

    group_by names the groups of the per-group tables (signed gaps, shares) and of the naive figure; the two
    RMS figures have fixed units (professions and categories) whatever it is."""

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
    def categories(self) -> list[str]:
        return list(dict.fromkeys(self.strata))

    @property
    def groups(self) -> list[str]:
        """Group names in first-seen order (professions named alone unless a name occurs in two categories)."""
        if self.group_by == "category":
            return self.categories
        return [_profession_name(self.clusters, i) for i in range(len(self.clusters))]

    def membership(self, by: str | None = None) -> np.ndarray:
        """(C, G) 0/1 matrix: cluster c belongs to group g, grouped by `by` (default group_by)."""
        by = by or self.group_by
        if by == "profession":
            return np.eye(len(self.clusters))
        names = self.categories
        m = np.zeros((len(self.clusters), len(names)))
        m[np.arange(len(self.clusters)), [names.index(c) for c in self.strata]] = 1.0
        return m

    def n_units(self, unit: str) -> int:
        return len(self.clusters) if unit == "profession" else len(self.categories)


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
    per: dict = {}
    for s in design.strata:
        per[s] = per.get(s, 0) + 1
    single = [s for s, k in per.items() if k < 2]
    if not single:
        return []
    if len(design.clusters) == 1:
        return ["a single profession: the bootstrap has nothing to resample, so the intervals are degenerate"]
    if len(single) == 1:
        return [f"category {single[0]} has a single profession: the intervals hold it fixed, so they slightly "
                "understate the uncertainty"]
    names = f"{', '.join(single[:5])}{', ...' if len(single) > 5 else ''}"
    return [f"{len(single)} categories have a single profession ({names}): the bootstrap resamples those "
            "professions among themselves, since within their own category there is nothing to resample"]


def sq_gap(n, s1, s2):
    """U = (s1^2 - s2) / (n (n - 1)): unbiased for the squared gap d^2 (needs n >= 2)."""
    n = np.asarray(n, dtype=np.float64)
    return (np.square(s1) - s2) / (n * (n - 1))


def unit_sq_gaps(design: Design, n, s1, s2, unit: str) -> np.ndarray:
    """(..., units) U per profession or per category (the category's generations pooled)."""
    if unit == "profession":
        return sq_gap(n, s1, s2)
    member = design.membership("category")
    return sq_gap(*(np.asarray(x, dtype=np.float64) @ member for x in (n, s1, s2)))


def point_figures(design: Design, n, s1, s2) -> dict:
    """One run's figures: disparity_ms / disparity_rms (over professions), category_disparity_ms /
    category_disparity_rms (over categories), signed_gaps {group: d_hat} and naive_disparity (over groups)."""
    out = {}
    for unit, name in FIGURE_OF_UNIT.items():
        ms = float(unit_sq_gaps(design, n, s1, s2, unit).mean())
        out[name.replace("_rms", "_ms")] = ms
        out[name] = float(np.sqrt(max(0.0, ms)))
    member = design.membership()
    d = (s1 @ member) / (n @ member)
    out["signed_gaps"] = {g: float(x) for g, x in zip(design.groups, d, strict=True)}
    out["naive_disparity"] = float(np.abs(d).mean())
    return out


def _boot_ms(design: Design, draws: np.ndarray, n, s1, s2, unit: str) -> np.ndarray:
    """(B, R) mean squared gap over the unit for each resample (rows of `draws`) and run (rows of n, s1, s2)."""
    n, s1, s2 = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (n, s1, s2))  # (R, C)
    k = draws.astype(np.float64)  # (B, C)
    if unit == "profession":
        # every drawn profession is its own unit: no pairs across copies, so U_c is used as it is
        return k @ sq_gap(n, s1, s2).T / draws.shape[1]
    member = design.membership("category")  # (C, G)
    size = member.sum(0)
    out = np.zeros((draws.shape[0], n.shape[0]))
    # extra pairs between copies of one profession: their expected product estimated without the v_i^2 terms
    cross = (n * s2 - np.square(s1)) / (n - 1)  # (R, C)
    pairs = k * (k - 1)
    for g in np.flatnonzero(size > 1):
        cols = member[:, g] > 0
        kg = k[:, cols]
        gn, g1, g2 = kg @ n[:, cols].T, kg @ s1[:, cols].T, kg @ s2[:, cols].T  # (B, R)
        extra = pairs[:, cols] @ cross[:, cols].T
        out += (np.square(g1) - g2 - extra) / (gn * (gn - 1))
    # a category of one profession is that profession; those are drawn from their pool (pooled_strata), so
    # the categories' U are the drawn professions' U (the draws over the pool add up to the pool's size)
    alone = (member[:, size == 1].sum(1) > 0)
    if alone.any():
        out += k[:, alone] @ sq_gap(n[:, alone], s1[:, alone], s2[:, alone]).T
    return out / member.shape[1]


def bootstrap_ms(design: Design, models: list[tuple], n_boot: int = 1000, seed: int = 0,
                 unit: str = "profession") -> list[np.ndarray]:
    """[(n_boot, R) resampled mean squared gap per run] for M models under shared draws, each shifted so that
    its resamples' mean is the observed mean square (see the module docstring: the bootstrap's own bias
    estimate, taken out). models: [(n, s1, s2)] with arrays of shape (R, C) or (C,)."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    draws = stratified_draws(design.strata, n_boot, np.random.default_rng(seed))
    out = []
    for m in models:
        boot = _boot_ms(design, draws, *m, unit)
        observed = np.atleast_2d(unit_sq_gaps(design, *m, unit)).mean(-1)  # (R,)
        out.append(boot - boot.mean(0) + observed)
    return out


def bootstrap_rms(design: Design, models: list[tuple], n_boot: int = 1000, seed: int = 0,
                  unit: str = "profession") -> np.ndarray:
    """(M, n_boot) arm figure (mean over runs of each run's RMS over `unit`) for M models under shared draws.

    models: [(n, s1, s2)] with arrays of shape (R, C) or (C,); all see the same resampled professions."""
    return np.stack([np.sqrt(np.maximum(b, 0.0)).mean(axis=1)
                     for b in bootstrap_ms(design, models, n_boot, seed, unit)])


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
