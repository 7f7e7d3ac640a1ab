"""Power of the paired per-profession test, by simulation: what a design can detect, known before it is run.

    from distill.eval.power import simulation_model, power_of, detectable_difference
    model = simulation_model(professions=136, gap=0.07, share=0.5)
    power_of(model, n=6, runs=1, delta=0.03)["power"]       # 6 generations per profession, 1 run per arm
    detectable_difference(model, n=6, runs=1)                # the smallest difference with 80% power

`distill power` (distill/eval/power_command.py) asks these questions of a finished eval or of this model.

**The model.** A baseline arm A has a gap d_c = P(male) - P(female) per profession c and a gendered share s_c =
P(male) + P(female) (so |d_c| <= s_c). A design scores C professions with n generations each (prompts per
profession x samples per prompt) and R training runs per arm; each run's gaps are the arm's plus N(0, run_sd)
per profession (training noise). A run's generations of profession c are n independent draws: gendered with
probability s_c, male among those with probability (s_c + d_c) / (2 s_c). Every prompt of a profession has the
profession's gap, so only n = prompts x samples enters; more prompts and fewer samples is the safer way to
reach an n, since real prompts differ.

**The difference.** To detect a disparity_rms difference delta, arm A keeps the shape of its gaps at RMS
max(r, delta) (r: its own RMS; a fair A gets gaps of alternating sign) and arm B has the same gaps scaled to
an RMS delta lower: B is A with delta of its disparity removed, the question a debiasing method asks.

**The tests**, as `distill.eval.scoring` runs them: the sign-flip test over professions of D_c = mean over
runs of U_c(B) - U_c(A) (U the unbiased squared gap), with `n_flips` random sign vectors shared by every
simulation (or all 2^C when C <= 12), and, with R >= 2, the exact permutation test of the runs' disparity_rms
between arms. Power is the share of `sims` simulations with p <= alpha. The simulation draws A and B
independently; real arms scored with the same sampling seeds are positively correlated, which helps a paired
test, so these figures err on the side of too little power.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from distill.eval.paired import _flip_signs, runs_permutation_floor
from distill.eval.stats import sq_gap

ALPHA, TARGET = 0.05, 0.80
EVAL_SIMS = 300  # simulations per power figure in every eval's report line (a bisection of about 10 of them)
N_FLIPS = 1000  # sign vectors per sign-flip p: resolution 0.001, enough to compare with alpha 0.05
BISECT_STEPS = 10


@dataclass(frozen=True)
class SimModel:
    """A baseline arm: per-profession gaps and gendered shares, and the sd of a run's gaps around them."""

    gaps: np.ndarray
    shares: np.ndarray
    run_sd: float = 0.0

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.gaps))))


def simulation_model(professions: int, gap: float, share: float, run_sd: float = 0.0) -> SimModel:
    """Professions of one gendered share whose gaps are +gap and -gap in turn (RMS gap: `gap`)."""
    signs = np.where(np.arange(professions) % 2 == 0, 1.0, -1.0)
    return SimModel(np.clip(gap * signs, -share, share), np.full(professions, float(share)), float(run_sd))


def model_from_sums(n, s1, s2) -> SimModel:
    """A model estimated from one arm's per-run, per-profession sums (arrays (R, C) or (C,)).

    Shares: each profession's pooled gendered share. Gaps: the observed d_hat_c shrunk so that their RMS is
    the unbiased estimate sqrt(max(0, mean U)) (the raw d_hat overstate the spread by their sampling noise).
    run_sd: with R >= 2, sqrt(max(0, mean_c of the between-run variance of d_hat_c minus its sampling variance)).
    """
    n, s1, s2 = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (n, s1, s2))
    tn, t1, t2 = n.sum(0), s1.sum(0), s2.sum(0)
    d_hat = t1 / tn
    r = float(np.sqrt(max(0.0, sq_gap(n, s1, s2).mean())))
    spread = float(np.sqrt(np.mean(np.square(d_hat))))
    gaps = d_hat * (r / spread) if spread > 0 else np.zeros_like(d_hat)
    run_sd = 0.0
    if n.shape[0] >= 2:
        d = s1 / n
        sampling = ((s2 - np.square(s1) / n) / (n - 1) / n).mean(0)
        run_sd = float(np.sqrt(max(0.0, float(np.mean(d.var(0, ddof=1) - sampling)))))
    shares = t2 / tn
    return SimModel(np.clip(gaps, -shares, shares), shares, run_sd)


def arm_gaps(model: SimModel, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(A's gaps, B's gaps): A at RMS max(r, delta) with the model's shape, B the same shape delta lower."""
    r = model.rms
    shape = model.gaps / r if r > 0 else np.where(np.arange(len(model.gaps)) % 2 == 0, 1.0, -1.0)
    top = max(r, delta)
    return (np.clip(shape * top, -model.shares, model.shares),
            np.clip(shape * (top - delta), -model.shares, model.shares))


def _draw_u(rng, gaps, shares, n, runs: int, sims: int, run_sd: float) -> np.ndarray:
    """(sims, runs, C) unbiased squared gaps U of simulated runs."""
    shape = (sims, runs, len(gaps))
    d = np.broadcast_to(gaps, shape)
    if run_sd > 0:
        d = d + run_sd * rng.standard_normal(shape)
    d = np.clip(d, -shares, shares)
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), (len(gaps),))
    gendered = rng.binomial(n, shares, size=shape)
    male_share = np.divide(shares + d, 2 * shares, out=np.full(shape, 0.5), where=shares > 0)
    male = rng.binomial(gendered, np.clip(male_share, 0.0, 1.0))
    return sq_gap(n, 2.0 * male - gendered, gendered.astype(np.float64))


def sign_flip_ps(diffs: np.ndarray, n_flips: int = N_FLIPS, seed: int = 0) -> np.ndarray:
    """The sign-flip p (distill.eval.paired.sign_flip_p) of each row of diffs (sims, C), vectorised."""
    signs, exact = _flip_signs(diffs.shape[1], n_flips, seed)
    observed = np.abs(diffs.mean(1))
    flipped = np.abs(diffs @ signs.T) / diffs.shape[1]  # (sims, flips)
    tol = 1e-12 * np.maximum(1.0, np.abs(diffs).max(1))
    hits = (flipped >= (observed - tol)[:, None]).sum(1)
    return hits / len(signs) if exact else (1 + hits) / (1 + len(signs))


def runs_permutation_ps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact two-sided permutation p (distill.eval.paired.runs_permutation_p) of each row: a, b (sims, R)."""
    pooled = np.concatenate([a, b], axis=1)
    k, total = b.shape[1], pooled.shape[1]
    splits = list(itertools.combinations(range(total), k))
    weights = np.full((total, len(splits)), -1.0 / a.shape[1])
    for q, pick in enumerate(splits):
        weights[list(pick), q] = 1.0 / k
    stat = np.abs(pooled @ weights)
    observed = np.abs(b.mean(1) - a.mean(1))
    return (stat >= (observed - 1e-12)[:, None]).mean(1)


def power_of(model: SimModel, n, runs: int, delta: float, alpha: float = ALPHA, sims: int = 400,
             seed: int = 0, n_flips: int = N_FLIPS) -> dict:
    """{"power": the sign-flip test's, "power_runs": the runs permutation test's (None with 1 run per arm)}.

    n: generations per profession, one number or one per profession."""
    rng = np.random.default_rng(seed)
    gaps_a, gaps_b = arm_gaps(model, delta)
    u_a = _draw_u(rng, gaps_a, model.shares, n, runs, sims, model.run_sd)
    u_b = _draw_u(rng, gaps_b, model.shares, n, runs, sims, model.run_sd)
    p = sign_flip_ps(u_b.mean(1) - u_a.mean(1), n_flips, seed)
    out = {"power": float(np.mean(p <= alpha)), "power_runs": None}
    if runs >= 2:
        rms = [np.sqrt(np.maximum(u.mean(2), 0.0)) for u in (u_a, u_b)]  # (sims, R): each run's disparity_rms
        out["power_runs"] = float(np.mean(runs_permutation_ps(*rms) <= alpha))
    return out


def max_difference(model: SimModel) -> float:
    """The largest disparity_rms difference the model's shares allow (B fair, A at every profession's limit)."""
    return float(min(0.999, np.sqrt(np.mean(np.square(model.shares)))))


TESTS = {"professions": "power", "runs": "power_runs"}  # --test -> the key of power_of's answer


def runs_test_possible(runs: int, alpha: float = ALPHA) -> bool:
    """Whether the runs permutation test can reach alpha at all: its smallest p with R + R runs is
    2 / C(2R, R) (0.33 at 2, 0.10 at 3, 0.029 at 4), so below 4 runs per arm it never rejects at 0.05."""
    return runs >= 2 and runs_permutation_floor(runs, runs) <= alpha


def detectable_difference(model: SimModel, n, runs: int, alpha: float = ALPHA, target: float = TARGET,
                          sims: int = 400, seed: int = 0, test: str = "professions") -> float | None:
    """The smallest delta whose power reaches `target` (bisection, same seed at every step, so the steps
    share their random draws); None when even the largest difference the shares allow does not.

    test: "professions" (the sign-flip test over professions) or "runs" (the permutation test over runs)."""
    key = TESTS[test]
    if test == "runs" and not runs_test_possible(runs, alpha):
        return None
    hi = max_difference(model)
    if power_of(model, n, runs, hi, alpha, sims, seed)[key] < target:
        return None
    lo = 0.0
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if power_of(model, n, runs, mid, alpha, sims, seed)[key] >= target:
            hi = mid
        else:
            lo = mid
    return hi


def eval_detectable(sums: tuple, seed: int = 0, sims: int = EVAL_SIMS, professions=None) -> dict:
    """The power line of an eval: the baseline arm's (n, s1, s2) arrays (R, C) -> its design, the model
    estimated from it, the detectable difference at 80% power and alpha 0.05, and the sentence.

    professions: the clusters' names; with them the estimated model goes under "model" (what `distill power
    --eval DIR` simulates other designs with)."""
    n = np.atleast_2d(np.asarray(sums[0], dtype=np.float64))
    model = model_from_sums(*sums)
    runs, per = n.shape[0], n[0].astype(np.int64)
    mdd = detectable_difference(model, per, runs, sims=sims, seed=seed)
    design = (f"{len(per)} professions x {_count(per)} generations, {runs} run{'s' if runs > 1 else ''} per arm; "
              f"simulated at the baseline's shares: RMS gap {model.rms:.3f}, gendered share "
              f"{float(np.mean(model.shares)):.2f}, run sd {model.run_sd:.3f}")
    if mdd is None:
        words = (f"this eval cannot detect any disparity_rms difference with 80% power at alpha 0.05 ({design}): "
                 "score more professions, prompts, samples or runs (`distill power`)")
    else:
        words = f"this eval detects a disparity_rms difference of {mdd:.3f} or more with 80% power ({design})"
    return {"detectable_difference": mdd, "power": TARGET, "alpha": ALPHA, "sims": sims, "professions": len(per),
            "generations_per_profession": _count(per), "runs": runs, "baseline_rms": model.rms,
            "gendered_share": float(np.mean(model.shares)), "run_sd": model.run_sd, "words": words,
            **({"model": model_record(model, professions)} if professions is not None else {})}


def model_record(model: SimModel, professions) -> dict:
    """The model as results.json keeps it: one gap and one gendered share per named profession."""
    return {"professions": [str(p) for p in professions], "gaps": [round(float(g), 6) for g in model.gaps],
            "shares": [round(float(s), 6) for s in model.shares], "run_sd": model.run_sd}


def model_from_record(record: dict) -> SimModel:
    """The inverse of model_record (raises KeyError/ValueError on a malformed record)."""
    gaps, shares = (np.asarray(record[k], dtype=np.float64) for k in ("gaps", "shares"))
    if gaps.shape != shares.shape or gaps.ndim != 1 or len(gaps) < 2:
        raise ValueError("gaps and shares must be equal-length lists of at least 2 professions")
    return SimModel(gaps, shares, float(record.get("run_sd") or 0.0))


def _count(per: np.ndarray) -> str:
    lo, hi = int(per.min()), int(per.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"
