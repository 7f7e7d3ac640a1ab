"""A paired comparison of two models over clusters (professions): effect, bootstrap interval, sign-flip p.

    from distill.eval.paired import paired_test
    res = paired_test(a_per_profession, b_per_profession, strata=categories)
    res["diff"], res["ci"], res["p"]           # b - a, its 95% interval, two-sided p

The inputs are one number per cluster for each model, measured on the same clusters (same prompts, same
seeds): e.g. each profession's unbiased squared gender gap, or its squared probe log ratio. Nothing here
knows about gender or models, so any per-cluster figure of two systems can be compared (the lenses reuse it).

* **diff** = t(mean_c b_c) - t(mean_c a_c), with t the identity unless `transform` is given (sqrt of the
  clamped mean turns mean squared gaps into RMS gaps). t must be non-decreasing, so the sign of diff is the
  sign of mean_c (b_c - a_c), which is what the test is about.
* **p**: sign-flip test of H0 "the per-cluster differences D_c = b_c - a_c are symmetric about 0", which holds
  when the two models are exchangeable on every cluster (e.g. both fair, or equally biased, with independent
  samples). Statistic T = |mean_c D_c|; reference distribution: T over random sign vectors s in {-1, +1}^C,
  all 2^C of them when C <= EXACT_MAX, else n_flips random ones. p = (1 + #{T_s >= T}) / (1 + n_flips)
  (exact enumeration: #{T_s >= T} / 2^C), so p is never 0. Calibrated in tests/test_stats.py: on simulated
  fair-vs-fair data its false-positive rate at 0.05 is 5% +- 2%.
* **ci**: percentile interval of diff over a bootstrap of clusters, stratified by `strata` when given (each
  stratum keeps its cluster count); both models see the same draws (paired). No widening: it may exclude
  the point estimate when t clamps near 0, and the report then says so.

Across training runs rather than clusters, `runs_permutation_p` is the exact permutation test of two arms'
per-run figures (unpaired: any split of the pooled runs), and `runs_permutation_floor` its smallest p.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

EXACT_MAX = 12  # up to 2^12 = 4096 sign vectors are enumerated; beyond, n_flips random ones


@functools.lru_cache(maxsize=8)
def _flip_signs(n: int, n_flips: int, seed: int) -> tuple[np.ndarray, bool]:
    """(S, n) matrix of +-1 rows and whether it is the complete enumeration (cached: simulations reuse it)."""
    if n <= EXACT_MAX:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n))), True
    rng = np.random.default_rng([seed, n])
    return rng.integers(0, 2, size=(n_flips, n)).astype(np.float64) * 2.0 - 1.0, False


def sign_flip_p(diffs: np.ndarray, n_flips: int = 4000, seed: int = 0) -> float:
    """Two-sided sign-flip p-value of mean(diffs) = 0 (see the module docstring for the formula)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("sign_flip_p needs a non-empty 1-d array of per-cluster differences")
    observed = abs(d.mean())
    signs, exact = _flip_signs(len(d), n_flips, seed)
    flipped = np.abs(signs @ d) / len(d)
    # a relative tolerance: sums of the same numbers in another order must count as ties, not as smaller
    hits = int(np.sum(flipped >= observed - 1e-12 * max(1.0, np.abs(d).max())))
    return hits / len(signs) if exact else (1 + hits) / (1 + len(signs))


POOLED = ("pooled strata of one cluster",)  # the label singleton strata share (a tuple: never a user's label)


def pooled_strata(strata: Sequence) -> list:
    """The strata the bootstrap resamples within: a stratum of one cluster has nothing to resample (its
    cluster would be drawn every time, so it adds no variation and a design of such strata gets a zero-width
    interval); such clusters are pooled into one stratum and resampled among themselves. A lone singleton
    stays fixed (design_notes says so)."""
    strata = list(strata)
    size: dict = {}
    for s in strata:
        size[s] = size.get(s, 0) + 1
    if sum(k == 1 for k in size.values()) < 2:
        return strata
    return [POOLED if size[s] == 1 else s for s in strata]


def stratified_draws(strata: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, C) multiplicities: how often each cluster is drawn when every stratum's clusters are
    resampled with replacement, keeping the stratum's size; strata of one cluster are pooled first
    (`pooled_strata`)."""
    strata = pooled_strata(strata)
    n = len(strata)
    members: dict = {}
    for i, s in enumerate(strata):
        members.setdefault(s, []).append(i)
    picks = np.concatenate([np.asarray(ix)[rng.integers(0, len(ix), size=(n_boot, len(ix)))]
                            for ix in members.values()], axis=1)  # (n_boot, n) drawn cluster indices
    flat = (picks + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p values (None entries are skipped and stay None).

    Sorted ascending, the i-th smallest of m is multiplied by (m - i) (i from 0), capped at 1, and each
    adjusted value is at least the one before it, so the order is kept. Rejecting where the adjusted p <= alpha
    keeps the chance of any false rejection in the family <= alpha, whatever the dependence between tests.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    strata: Sequence | None = None,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 2000,
    n_flips: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Compare per-cluster values of two models on the same clusters: {diff, ci, p, n, diff_mean}.

    a, b: one value per cluster (same order). strata: optional stratum label per cluster for the bootstrap.
    transform: non-decreasing map applied to each model's mean before differencing (default identity).
    diff_mean is mean_c (b_c - a_c), the quantity the sign-flip test is about.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_test needs two equal-length non-empty 1-d arrays, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_test: per-cluster values must be finite")
    if strata is not None and len(strata) != len(a):
        raise ValueError(f"{len(strata)} strata labels for {len(a)} clusters")
    t = transform or (lambda x: x)
    rng = np.random.default_rng(seed)
    draws = stratified_draws(strata if strata is not None else [0] * len(a), n_boot, rng)
    n = len(a)
    boot = t(draws @ b / n) - t(draws @ a / n)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return {
        "diff": float(t(np.array(b.mean())) - t(np.array(a.mean()))),
        "ci": [float(lo), float(hi)],
        "p": sign_flip_p(b - a, n_flips, seed),
        "n": n,
        "diff_mean": float((b - a).mean()),
    }


def rms_of_mean(m: np.ndarray) -> np.ndarray:
    """sqrt(max(0, m)): mean squared gaps -> RMS gap, clamped at 0 (non-decreasing, as paired_test needs)."""
    return np.sqrt(np.maximum(m, 0.0))


def runs_permutation_p(a, b) -> float | None:
    """Exact two-sided permutation p of mean(b) - mean(a) over all splits of the pooled runs; None unless
    both arms have >= 2 runs (with 1 run per arm no split can be told from noise)."""
    if len(a) < 2 or len(b) < 2:
        return None
    pooled = np.array(list(a) + list(b), dtype=np.float64)
    observed = abs(np.mean(b) - np.mean(a))
    hits = total = 0
    for pick in itertools.combinations(range(len(pooled)), len(b)):
        mask = np.zeros(len(pooled), bool)
        mask[list(pick)] = True
        total += 1
        hits += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12
    return hits / total


def runs_permutation_floor(n_a: int, n_b: int) -> float:
    """The smallest p `runs_permutation_p` can give with n_a + n_b runs.

    The test counts the splits (b's n_b runs chosen from the pooled n_a + n_b) whose |mean(b) - mean(a)|
    reaches the observed one, out of all C(n_a + n_b, n_b). At best only the observed split does, and with
    equal arms its mirror (the arms swapped, itself a split of the same sizes) reaches the same |difference|,
    so the floor is 2 / C(2n, n); with unequal arms the swapped split has other sizes and is not among the
    splits, so the floor is 1 / C(n_a + n_b, n_a)."""
    return (2 if n_a == n_b else 1) / math.comb(n_a + n_b, n_a)
