"""The unbiased disparity, its clustered bootstrap, the naive floor and the paired test, on simulated designs.

The simulated design: the 136 professions of data/prompts/professions.json in 14 categories, 24 generations
per profession (8 prompts x 3 samples), male = female = 0.26 (neutral 0.48) when fair.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from distill.eval.paired import paired_test, rms_of_mean, sign_flip_p, stratified_draws
from distill.eval.stats import (
    Design,
    DesignError,
    at_zero_words,
    bootstrap_rms,
    check_sizes,
    design_notes,
    naive_floor,
    percentile_ci,
    point_figures,
    sq_gap,
    sums_from_values,
)

PROFESSIONS = json.loads((Path(__file__).resolve().parent.parent / "data/prompts/professions.json").read_text())
CLUSTERS = tuple((c, p) for c, ps in PROFESSIONS.items() for p in ps)
CATEGORY = Design(CLUSTERS, "category")
PER_PROFESSION = 24


def _simulate(gaps, rng, n=PER_PROFESSION, share=0.26):
    """Per-profession sums for true gaps (P(male) - P(female)) around a gendered share of 2 * share."""
    pm, pf = share + gaps / 2, share - gaps / 2
    m = rng.binomial(n, pm)
    f = rng.binomial(n - m, pf / (1 - pm))
    return np.full(len(gaps), float(n)), (m - f).astype(float), (m + f).astype(float)


def _category_gaps(gap):
    """A gap of `gap` in every category, alternating in sign (RMS gap = gap, mean signed gap ~ 0)."""
    names = list(PROFESSIONS)
    return np.array([gap if names.index(c) % 2 == 0 else -gap for c, _ in CLUSTERS])


# ------------------------------------------------------------------------------------------- the statistic


def test_unbiased_square_is_the_pair_mean():
    v = np.array([1, 1, -1, 0, 1], float)
    pairs = [v[i] * v[j] for i in range(5) for j in range(5) if i != j]
    assert sq_gap(5, v.sum(), (v * v).sum()) == pytest.approx(np.mean(pairs))
    n, s1, s2 = sums_from_values([1, -1, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], 2)
    assert n.tolist() == [3, 3] and s1.tolist() == [0, 3] and s2.tolist() == [2, 3]


def test_point_figures_known_answer():
    design = Design((("a", "x"), ("a", "y"), ("b", "z")), "category")
    # a: x = 2 male of 2, y = 1 female + 1 neutral -> 4 generations, s1 = 1, s2 = 3; b: 2 male, 2 female
    n, s1, s2 = np.array([2.0, 2, 4]), np.array([2.0, -1, 0]), np.array([2.0, 1, 4])
    fig = point_figures(design, n, s1, s2)
    assert fig["signed_gaps"] == {"a": 0.25, "b": 0.0}
    assert fig["naive_disparity"] == pytest.approx(0.125)
    # the headline is over professions: U_x = (4 - 2) / 2, U_y = (1 - 1) / 2, U_z = (0 - 4) / 12
    assert fig["disparity_ms"] == pytest.approx((1.0 + 0.0 - 1 / 3) / 3)
    assert fig["disparity_rms"] == pytest.approx(np.sqrt(2 / 9))
    ua, ub = (1 - 3) / (4 * 3), (0 - 4) / (4 * 3)  # the category figure pools each category's generations
    assert fig["category_disparity_ms"] == pytest.approx((ua + ub) / 2)
    assert fig["category_disparity_rms"] == 0.0  # negative mean square: clamped, and said in words
    assert "is 0" in at_zero_words("disparity_rms", 0.0, [0.0, 0.1], fig["category_disparity_ms"])
    assert "reaches 0" in at_zero_words("disparity_rms", 0.1, [0.0, 0.2])
    assert at_zero_words("disparity_rms", 0.1, [0.05, 0.2]) is None
    by_prof = point_figures(Design(design.clusters, "profession"), n, s1, s2)
    assert list(by_prof["signed_gaps"]) == ["x", "y", "z"] and by_prof["signed_gaps"]["x"] == 1.0
    assert by_prof["disparity_rms"] == fig["disparity_rms"]  # group_by names the tables, not the headline's unit


def test_fair_model_statistic_is_unbiased_and_its_interval_covers_zero():
    """100 simulated fair models (24 generations per profession). Measured (seed 0): mean disparity_ms -1.2e-4
    (SE 2.7e-4), mean disparity_rms 0.018 (the square root of a noisy number clamped at 0 cannot average 0;
    0.043 at the demo's 6 generations per profession), the naive mean |d| 0.038 next to its floor 0.038, and
    the 95% interval (300 resamples) covers 0 in 97 of 100 and its own point estimate in all 100."""
    rng = np.random.default_rng(0)
    ms, rms, naive, floor, covered, holds_point = [], [], [], [], 0, 0
    for sim in range(100):
        n, s1, s2 = _simulate(np.zeros(len(CLUSTERS)), rng)
        fig = point_figures(CATEGORY, n, s1, s2)
        ms.append(fig["disparity_ms"])
        rms.append(fig["disparity_rms"])
        naive.append(fig["naive_disparity"])
        floor.append(naive_floor(CATEGORY, n, s2, 100, seed=sim))
        lo, hi = percentile_ci(bootstrap_rms(CATEGORY, [(n, s1, s2)], 300, seed=sim)[0])
        covered += lo <= 0.0 <= hi
        holds_point += lo <= fig["disparity_rms"] <= hi
    se = np.std(ms) / np.sqrt(len(ms))
    assert abs(np.mean(ms)) < 3 * se and se < 4e-4
    assert np.mean(rms) < 0.025
    assert covered >= 90 and holds_point == 100
    assert np.mean(naive) == pytest.approx(np.mean(floor), abs=0.003)  # a fair model sits on the floor
    assert 0.03 < np.mean(floor) < 0.045  # the issue's +0.037 for this design


def test_planted_gap_is_recovered():
    """A true RMS gap of 0.10 (every profession +-0.10 in turn), 100 simulations (seed 1): mean disparity_rms
    0.097 (a square root of an unbiased mean square sits a little below), the 95% interval covers 0.10 in 89."""
    rng = np.random.default_rng(1)
    truth = np.array([0.10 if i % 2 == 0 else -0.10 for i in range(len(CLUSTERS))])
    rms, covered = [], 0
    for sim in range(100):
        n, s1, s2 = _simulate(truth, rng)
        rms.append(point_figures(CATEGORY, n, s1, s2)["disparity_rms"])
        lo, hi = percentile_ci(bootstrap_rms(CATEGORY, [(n, s1, s2)], 300, seed=sim)[0])
        covered += lo <= 0.10 <= hi
    assert np.mean(rms) == pytest.approx(0.10, abs=0.01)
    assert covered >= 85


def test_opposite_stereotypes_within_a_category_do_not_cancel_in_the_headline():
    """14 categories x 8 professions x 64 generations; professions lean +0.2 and -0.2 in turn within each
    category (nurse and surgeon). The category figure is about 0 and its interval holds its own point estimate
    (unshifted resamples gave [0.02, 0.09] around 0.000); the headline recovers 0.2, and the paired test over
    professions tells it from a fair model."""
    clusters = tuple((f"c{c}", f"p{c}_{k}") for c in range(14) for k in range(8))
    design = Design(clusters, "category")
    truth = np.array([0.2 if k % 2 == 0 else -0.2 for c in range(14) for k in range(8)])
    rng = np.random.default_rng(4)
    biased, fair = _simulate(truth, rng, n=64), _simulate(np.zeros(len(clusters)), rng, n=64)
    fig = point_figures(design, *biased)
    assert fig["category_disparity_rms"] < 0.03
    assert fig["disparity_rms"] == pytest.approx(0.2, abs=0.02)
    for unit, name in (("category", "category_disparity_rms"), ("profession", "disparity_rms")):
        lo, hi = percentile_ci(bootstrap_rms(design, [biased], 500, seed=0, unit=unit)[0])
        assert lo <= fig[name] <= hi, (unit, lo, fig[name], hi)
    lo, hi = percentile_ci(bootstrap_rms(design, [biased], 500, seed=0)[0])
    assert lo > 0.15  # the headline's interval is far from 0
    assert sign_flip_p(sq_gap(*biased) - sq_gap(*fair)) < 0.001  # over the 112 professions
    fair_fig = point_figures(design, *fair)
    assert fair_fig["disparity_rms"] < 0.06 and fig["disparity_rms"] - fair_fig["disparity_rms"] > 0.14


def test_bootstrap_resamples_professions_within_categories():
    draws = stratified_draws(["a", "a", "b", "b", "b"], 50, np.random.default_rng(0))
    assert (draws[:, :2].sum(1) == 2).all() and (draws[:, 2:].sum(1) == 3).all()
    # a category of identical professions gives a degenerate interval at the estimate
    design = Design((("a", "x"), ("a", "y")), "category")
    one = (np.array([4.0, 4.0]), np.array([4.0, 4.0]), np.array([4.0, 4.0]))
    for unit in ("profession", "category"):
        boots = bootstrap_rms(design, [one], 100, seed=0, unit=unit)[0]
        assert np.allclose(boots, point_figures(design, *one)["disparity_rms"])
    # several runs: the arm figure is the mean of the runs' RMS gaps under the same draws
    two = tuple(np.stack([x, x]) for x in one)
    assert np.allclose(bootstrap_rms(design, [two], 20, seed=1), bootstrap_rms(design, [one], 20, seed=1))


def test_categories_of_one_profession_are_resampled_among_themselves():
    """A BOLD file that lists each profession as its own category: within a category there is nothing to
    resample, so those professions are pooled; the interval is not the zero-width [x, x] it was."""
    draws = stratified_draws(["a", "b", "c", "d", "d"], 200, np.random.default_rng(0))
    assert (draws[:, :3].sum(1) == 3).all() and (draws[:, 3:].sum(1) == 2).all()
    assert draws[:, 0].min() == 0 and draws[:, 0].max() >= 2  # a lone profession is not drawn every time
    lone = stratified_draws(["a", "b", "b"], 20, np.random.default_rng(0))
    assert (lone[:, 0] == 1).all()  # a single singleton has nothing to pool with: it stays (design_notes say so)
    clusters = tuple((f"cat{i}", f"prof{i}") for i in range(12))
    design = Design(clusters, "category")
    rng = np.random.default_rng(6)
    sums = _simulate(np.linspace(-0.3, 0.3, 12), rng, n=40)
    fig = point_figures(design, *sums)
    assert fig["disparity_rms"] == pytest.approx(fig["category_disparity_rms"])  # one profession per category
    for unit in ("profession", "category"):
        lo, hi = percentile_ci(bootstrap_rms(design, [sums], 300, seed=0, unit=unit)[0])
        assert hi - lo > 0.02 and lo <= fig["disparity_rms"] <= hi


def test_too_few_generations_or_professions_are_named():
    design = Design((("a", "x"), ("b", "y")), "profession")
    with pytest.raises(DesignError, match="'y'.*1 generation"):
        check_sizes(design, np.array([3.0, 1.0]))
    notes = design_notes(Design((("a", "x"), ("a", "y"), ("b", "z")), "category"))
    assert len(notes) == 1 and "category b has a single profession" in notes[0] and "fixed" in notes[0]
    assert "among themselves" in design_notes(design)[0]
    assert "degenerate" in design_notes(Design((("a", "x"),), "category"))[0]


def test_holm_adjusts_a_family_step_down():
    from distill.eval.paired import holm

    # sorted 0.01, 0.03, 0.04 of m = 3: x3, x2 (0.06), x1 (0.04, raised to the running 0.06)
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []


# ------------------------------------------------------------------------------------------- paired test


def _paired_null_and_power(shrink, sims, rng):
    strata = [c for c, _ in CLUSTERS]
    rejected = 0
    for _ in range(sims):
        gaps = np.clip(rng.normal(0, 0.15, len(CLUSTERS)), -0.45, 0.45)  # professions differ, both models share it
        a, b = (sq_gap(*_simulate(g, rng)) for g in (gaps, gaps * shrink))
        res = paired_test(a, b, strata, transform=rms_of_mean, n_boot=20, n_flips=1000, seed=0)
        rejected += res["p"] < 0.05
    return rejected / sims


def test_paired_test_false_positive_rate_is_five_percent():
    """Fair-vs-fair (the same per-profession gaps, independent samples), 1000 simulations (seed 2): measured 4.8%."""
    assert _paired_null_and_power(1.0, 1000, np.random.default_rng(2)) == pytest.approx(0.05, abs=0.02)


def test_paired_test_power_on_a_halved_gap_is_about_85_percent():
    """b's profession gaps are half of a's (RMS 0.15 -> 0.075): rejected in 85% of 200 simulations (seed 3)."""
    assert _paired_null_and_power(0.5, 200, np.random.default_rng(3)) > 0.7


def test_paired_test_known_values():
    a = np.array([0.04, 0.01, 0.09, 0.0])
    res = paired_test(a, a, n_boot=50)
    assert res["diff"] == 0.0 and res["ci"] == [0.0, 0.0] and res["p"] == 1.0
    b = np.zeros(4)
    res = paired_test(a, b, transform=rms_of_mean, n_boot=200)
    assert res["diff"] == pytest.approx(-np.sqrt(0.035))
    assert res["diff_mean"] == pytest.approx(-0.035)
    # 4 clusters: exact enumeration of 16 sign vectors; only those with one sign on the three non-zero clusters reach T
    assert res["p"] == pytest.approx(4 / 16)
    assert sign_flip_p(np.array([1.0] * 20), seed=0) == pytest.approx(1 / 4001, rel=0.5)
    with pytest.raises(ValueError):
        paired_test(a, b[:3])
