"""The study's arms: a base recipe plus overrides each, the baseline each is compared with, and the scoring
budget of its `distill eval`.

    from distill.study.arms import ARMS, arm_plan, baseline_of
    recipe, overrides = arm_plan("cda_pair_mean", smoke=False)   # recipes/demo_kd.yaml, {"crr.augment": ...}
    baseline_of("small_cda_pair_mean")                           # "small_kd": plain KD of the same size

In smoke mode (`python -m distill.study --smoke`) every arm moves onto the debug recipe for a few steps, and
the eval onto a handful of prompts: the study's code path in about a minute.
"""

from __future__ import annotations

from distill.errors import UserError

BASE = "recipes/demo_kd.yaml"  # the demo budget; every arm differs from it only in the listed keys
SMALL = "recipes/study/small_kd.yaml"  # 20 of 30 blocks: the real-compression arms
BASELINE = "kd"
SMALL_BASELINE = "small_kd"  # the compressed arms are paired with plain KD of their own size


# The balance weight of the study's arm. The slope falls and perplexity rises with the weight (docs/results.md).
# Over five seeds, 0.03 kept perplexity within 1% of kd's with the slope at 0.42x kd's; 0.3 cost 5.4%.
BALANCE_WEIGHT = 0.03


def _crr(augment: str = "none", teacher: str = "none") -> dict[str, str]:
    return {"crr.augment": augment, "crr.teacher": teacher}


# arm -> (recipe, overrides). The order is the table's.
ARMS: dict[str, tuple[str, dict[str, str]]] = {
    "kd": (BASE, _crr()),
    "cda": (BASE, _crr("both")),
    **{m: (BASE, _crr(teacher=m)) for m in ("pair_mean", "cf_mean", "cf_max", "cf_expmean")},
    **{f"cda_{m}": (BASE, _crr("both", m)) for m in ("pair_mean", "cf_mean", "cf_max", "cf_expmean")},
    # The demo's role reversal with the gender-balance term (loss.alpha_balance, docs/crr.md): with and without
    # it is this arm against cda_pair_mean.
    "cda_pair_mean_balance": (BASE, {**_crr("both", "pair_mean"), "loss.alpha_balance": str(BALANCE_WEIGHT)}),
    # Real compression: a third of the blocks removed, three times the steps. Two arms, because
    # one compressed arm alone would have no baseline of its own size to be compared with.
    "small_kd": (SMALL, _crr()),
    "small_cda_pair_mean": (SMALL, _crr("both", "pair_mean")),
}

PROFESSIONS, PROMPTS_EACH = 136, 8  # the 'professions' prompt set: 8 prompts for each of 136 professions


def scoring_args(prompts_per_profession: int = 1, samples_per_prompt: int = 3) -> list[str]:
    """`distill eval`'s scoring budget: P prompts per profession x K samples, precision auto, every lens."""
    return ["--prompts", "professions", "--max-prompts", str(PROFESSIONS * prompts_per_profession),
            "--samples-per-prompt", str(samples_per_prompt), "--max-new-tokens", "24", "--batch-size", "64",
            "--dtype", "auto", "--lens", "all", "--bios", "project"]


# The demo's scoring budget, defined here only: `make demo` reads it as DEMO_EVAL from
# `python -m distill.study --print-demo-eval-args`, and the study scores with it by default. 136 prompts = 1 per
# profession x 3 samples: at one training run per arm no generation design that fits the demo can detect the
# five-seed effect (power 0.17 at 2 prompts, 0.09 at 1), so the demo buys the samples and the report's
# picture, and leaves the evidence to `make demo-seeds` and the probe (docs/performance.md).
DEMO_EVAL = scoring_args()


def eval_args(prompts_per_profession: int = 1, samples_per_prompt: int = 3) -> list[str]:
    """The study's `distill eval` arguments: the demo's scoring budget (DEMO_EVAL) by default, with the demo's
    held-out text; larger designs come from `distill power` (Makefile)."""
    return [*scoring_args(prompts_per_profession, samples_per_prompt), "--text", "data/tiny_heldout.txt"]


EVAL_ARGS = eval_args()

# Smoke mode: the debug recipe (tiny random teacher, data/tiny_corpus.txt), two steps, a handful of prompts.
SMOKE_BASE = "recipes/debug.yaml"
SMOKE_OVERRIDES = {"train.max_steps": "2", "train.eval_steps": "2", "train.eval_batches": "1",
                   "train.save_steps": "0", "train.log_steps": "1"}
SMOKE_SMALL = {"student.from_teacher_layers": "[0]", "train.max_steps": "3"}
SMOKE_EVAL = ["--prompts", "tests/fixtures/bold_small.json", "--samples-per-prompt", "2", "--max-new-tokens",
              "4", "--batch-size", "16", "--text", "data/tiny_heldout.txt", "--bootstrap", "50"]


def baseline_of(arm: str) -> str:
    """The arm an arm's paired tests compare it with: plain KD of the same student size."""
    return SMALL_BASELINE if ARMS[arm][0] == SMALL else BASELINE


def arm_plan(arm: str, smoke: bool) -> tuple[str, dict[str, str]]:
    """(recipe, overrides) of one arm, in smoke mode moved onto the debug recipe."""
    recipe, over = ARMS[arm]
    if not smoke:
        return recipe, dict(over)
    small = SMOKE_SMALL if recipe == SMALL else {}
    return SMOKE_BASE, {**over, **SMOKE_OVERRIDES, **small}


def parse_arms(spec: str | None) -> list[str]:
    if not spec:
        return list(ARMS)
    arms = [a.strip() for a in spec.replace(" ", ",").split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arm(s) {', '.join(unknown)} in STUDY_ARMS/--arms; choose from {', '.join(ARMS)}")
    bases = [baseline_of(a) for a in arms if baseline_of(a) not in arms]  # paired tests: KD of the same size
    return list(dict.fromkeys(bases + arms))

