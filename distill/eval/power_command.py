"""`distill power`: which design detects a disparity_rms difference with 80% power, and what it costs.

    distill power --eval out/demo --delta 0.03                      # a finished eval's baseline and rate
    distill power --gap 0.07 --share 0.5 --tokens-per-second 200 \\
        --prompts-per-profession 2 --samples-per-prompt 3 --runs 1,5 --delta 0.03 --max-new-tokens 24

The baseline arm comes from a finished eval (its results.json: the baseline model's per-profession gaps and
gendered shares under `power.model`, the sampling rate under `settings.generation`, and its design), or from
the scorer's own simulation model (`--professions`, `--gap`, `--share`, `--run-sd`: distill.eval.power). For
every design of the grid (prompts per profession x samples per prompt x runs per arm) it simulates the power
of both paired tests at alpha 0.05 for a difference `--delta` (distill.eval.power.power_of, `--sims` draws)
and prices it:

    minutes = professions x prompts x samples x max_new_tokens x models / tokens_per_second / 60
              + train_minutes x 2 x runs,        models = 2 x runs + --other-models (the teacher: 1)

then prints the cheapest design whose `--test` reaches 80% power and, when none does within
`--budget-minutes`, the most powerful design that fits and the difference it detects with 80% power.
`--test runs` is the study's primary comparison (the permutation test over training runs, which needs 4 runs
per arm to reach 0.05 at all); `--test professions` (default) is the test every eval report's power line is
about.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.errors import UserError
from distill.eval import power

# the grid when not given (distill/cli.py's help says so); 'professions' has 8 prompts per profession
DEFAULT_PROMPTS, DEFAULT_SAMPLES, DEFAULT_RUNS = "1,2,4,8", "1,2,3,4", "1,2,3,4,5"
DEFAULT_NEW_TOKENS = 30  # distill eval's --max-new-tokens default


@dataclass
class Baseline:
    """The baseline arm and the price of sampling: what every design is simulated and priced with."""

    model: power.SimModel
    source: str  # "simulation model" or the eval folder
    tokens_per_second: float
    max_new_tokens: int
    own: tuple[int, int, int] | None = None  # the eval's own (prompts, samples, runs), when read from one


@dataclass
class Design:
    prompts: int
    samples: int
    runs: int
    models: int
    minutes: float
    power: float
    power_runs: float | None

    @property
    def n(self) -> int:
        return self.prompts * self.samples

    def power_of(self, test: str) -> float:
        return self.power if test == "professions" else (self.power_runs or 0.0)

    def words(self) -> str:
        return (f"{self.prompts} prompt{'s' * (self.prompts > 1)} x {self.samples} sample{'s' * (self.samples > 1)} "
                f"per profession, {self.runs} run{'s' * (self.runs > 1)} per arm ({self.models} models scored, "
                f"{self.minutes:.0f} min)")


def _grid(spec: str, flag: str) -> list[int]:
    try:
        values = sorted({int(x) for x in spec.replace(" ", "").split(",") if x})
    except ValueError:
        raise UserError(f"{flag} {spec!r} must be comma-separated whole numbers, e.g. 1,2,4") from None
    if not values or values[0] < 1:
        raise UserError(f"{flag} {spec!r} must list whole numbers of at least 1")
    return values


def _positive(value, flag: str, allow_zero: bool = False) -> None:
    if value is not None and not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise UserError(f"{flag} must be {'at least 0' if allow_zero else 'above 0'}, got {value}")


def check_args(args) -> tuple[list[int], list[int], list[int]]:
    """Everything about the numbers that can be wrong, before any file is read."""
    if not (math.isfinite(args.delta) and args.delta > 0):
        raise UserError(f"--delta must be a disparity_rms difference above 0, got {args.delta}")
    _positive(args.budget_minutes, "--budget-minutes")
    _positive(args.tokens_per_second, "--tokens-per-second")
    _positive(args.train_minutes, "--train-minutes", allow_zero=True)
    _positive(args.other_models, "--other-models", allow_zero=True)
    _positive(args.max_new_tokens, "--max-new-tokens")
    if args.sims < 50:
        raise UserError(f"--sims must be at least 50 (power to about +-0.06), got {args.sims}")
    if args.eval is not None and any(x is not None for x in (args.gap, args.share, args.professions, args.run_sd)):
        raise UserError("pass either --eval DIR or the simulation model (--professions, --gap, --share, --run-sd), "
                        "not both")
    if args.json is not None:
        path = Path(args.json)
        if path.exists() and not args.overwrite:
            raise UserError(f"--json {path} exists; pass --overwrite to replace it")
        if not path.parent.is_dir():
            raise UserError(f"--json {path}: folder {path.parent} does not exist")
    return (_grid(args.prompts_per_profession or DEFAULT_PROMPTS, "--prompts-per-profession"),
            _grid(args.samples_per_prompt or DEFAULT_SAMPLES, "--samples-per-prompt"),
            _grid(args.runs or DEFAULT_RUNS, "--runs"))


def simulated_baseline(args) -> Baseline:
    if args.gap is None or args.share is None:
        raise UserError("pass --eval DIR (a finished distill eval) or the simulation model: --gap G --share S "
                        "[--professions 136 --run-sd 0]")
    professions = 136 if args.professions is None else args.professions
    if professions < 2:
        raise UserError(f"--professions must be at least 2, got {professions}")
    if not 0 < args.share <= 1:
        raise UserError(f"--share (P(male) + P(female) per profession) must be in (0, 1], got {args.share}")
    if not 0 <= args.gap <= args.share:
        raise UserError(f"--gap (the RMS of P(male) - P(female)) must be in [0, --share {args.share}], got {args.gap}")
    _positive(args.run_sd, "--run-sd", allow_zero=True)
    if args.tokens_per_second is None:
        raise UserError("the simulation model has no measured sampling rate: pass --tokens-per-second R "
                        "(an eval's results.json has it under settings.generation.tokens_per_second)")
    model = power.simulation_model(professions, args.gap, args.share, args.run_sd or 0.0)
    return Baseline(model, "simulation model", args.tokens_per_second, args.max_new_tokens or DEFAULT_NEW_TOKENS)


def eval_baseline(args) -> Baseline:
    """The baseline model, the rate and the design of a finished eval's results.json."""
    folder = Path(args.eval)
    path = folder / "results.json"
    if not path.is_file():
        raise UserError(f"--eval {folder}: no results.json there; pass the folder a finished `distill eval` wrote")
    try:
        results = json.loads(path.read_text())
        settings = results["settings"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a distill eval results.json (no settings); rerun `distill eval`") from None
    try:
        model = power.model_from_record((results.get("power") or {})["model"])
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{path} has no per-profession gaps of a baseline model (power.model: written by distill eval "
                        f"and distill score since they simulate power); rescore it with `distill score --generations "
                        f"{folder / 'generations.jsonl'} --out DIR` and pass --eval DIR --tokens-per-second R") from None
    rate = args.tokens_per_second or (settings.get("generation") or {}).get("tokens_per_second")
    if not rate:
        raise UserError(f"{path} has no sampling rate (settings.generation.tokens_per_second: `distill score` and "
                        "evals before it was recorded have none); pass --tokens-per-second R")
    tokens = args.max_new_tokens or int(settings.get("max_new_tokens") or DEFAULT_NEW_TOKENS)
    return Baseline(model, str(folder), float(rate), tokens, _own_design(results, len(model.gaps)))


def _own_design(results: dict, professions: int) -> tuple[int, int, int] | None:
    """The eval's (prompts per profession, samples per prompt, runs per arm); `distill score` records no samples
    per prompt, so there they are the generations per profession over the prompts."""
    settings, block = results["settings"], results["power"]
    try:
        prompts = max(1, round(int(settings["n_prompts"]) / professions))
        samples = settings.get("samples_per_prompt")
        if samples is None:
            samples = round(int(str(block["generations_per_profession"]).split("-")[0]) / prompts)
        return prompts, max(1, int(samples)), int(block.get("runs") or 1)
    except (KeyError, TypeError, ValueError):
        return None


def price(base: Baseline, prompts: int, samples: int, runs: int, other_models: int,
          train_minutes: float) -> tuple[int, float]:
    """(models scored, minutes): sampling every model's generations at the rate, plus training 2 x runs."""
    models = 2 * runs + other_models
    slots = len(base.model.gaps) * prompts * samples * base.max_new_tokens * models
    return models, slots / base.tokens_per_second / 60 + train_minutes * 2 * runs


def design_cells(grid: tuple[list[int], list[int], list[int]]) -> list[tuple[int, int, int]]:
    """(prompts, samples, runs) of every design of the grid with at least 2 generations per profession."""
    prompts, samples, runs = grid
    cells = [(p, k, r) for r in runs for p in prompts for k in samples if p * k >= 2]
    if not cells:
        raise UserError("no design of the grid has 2 generations per profession (the unbiased gap needs pairs): "
                        "raise --prompts-per-profession or --samples-per-prompt")
    return cells


def simulate(base: Baseline, grid: tuple[list[int], list[int], list[int]], delta: float, sims: int, seed: int,
             other_models: int, train_minutes: float, progress: bool = True) -> list[Design]:
    """Every design of the grid with at least 2 generations per profession, its power at delta and its price.

    Power depends on the design only through (generations per profession, runs), so each pair is simulated
    once, all with the same seed: designs differ in their parameters, not in their luck."""
    from tqdm.auto import tqdm

    cells = design_cells(grid)
    pairs = sorted({(p * k, r) for p, k, r in cells})
    found = {}
    for n, r in tqdm(pairs, desc="power", unit="design", disable=not progress):
        found[(n, r)] = power.power_of(base.model, n, r, delta, sims=sims, seed=seed)
    out = []
    for p, k, r in cells:
        models, minutes = price(base, p, k, r, other_models, train_minutes)
        got = found[(p * k, r)]
        out.append(Design(p, k, r, models, minutes, got["power"], got["power_runs"]))
    return out


def choose(designs: list[Design], test: str, budget: float) -> tuple[Design | None, Design | None]:
    """(the cheapest design reaching 80% power, or None; the most powerful design within the budget when the
    cheapest does not fit, or None). Ties go to more prompts and fewer samples: real prompts differ, so they
    buy more than the simulation, where only their product counts, says."""
    def order(d: Design):
        return (d.minutes, -d.prompts)

    reaching = sorted((d for d in designs if d.power_of(test) >= power.TARGET), key=order)
    cheapest = reaching[0] if reaching else None
    if cheapest is not None and cheapest.minutes <= budget:
        return cheapest, None
    fits = [d for d in designs if d.minutes <= budget]
    if not fits:
        return cheapest, None
    return cheapest, max(fits, key=lambda d: (d.power_of(test), d.n * d.runs, -d.minutes, d.prompts))


def _fmt_power(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(designs: list[Design], own: tuple[int, int, int] | None) -> str:
    head = ("prompts", "samples", "runs", "gens/prof", "models", "minutes", "power (professions)", "power (runs)")
    rows = [head]
    for d in designs:
        mark = " *" if own == (d.prompts, d.samples, d.runs) else ""
        rows.append((str(d.prompts), str(d.samples), str(d.runs), str(d.n), str(d.models), f"{d.minutes:.1f}",
                     _fmt_power(d.power), _fmt_power(d.power_runs) + mark))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _test_words(test: str) -> str:
    return "sign-flip test over professions" if test == "professions" else "permutation test over training runs"


def run_power(args) -> int:
    grid = check_args(args)
    base = eval_baseline(args) if args.eval is not None else simulated_baseline(args)
    if base.own is not None:  # the eval's own design is a row of every grid not given in full
        grid = tuple(g if given else sorted({*g, x}) for g, x, given in
                     zip(grid, base.own, (args.prompts_per_profession, args.samples_per_prompt, args.runs), strict=True))
    design_cells(grid)  # refused here, before anything is printed
    limit = power.max_difference(base.model)
    if args.delta >= limit:
        raise UserError(f"--delta {args.delta} is not below {limit:.3f}, the largest disparity_rms difference the "
                        "baseline's gendered shares allow")
    m = base.model
    print(f"baseline ({base.source}): {len(m.gaps)} professions, RMS gap {m.rms:.3f}, mean gendered share "
          f"{float(m.shares.mean()):.2f}, run sd {m.run_sd:.3f}")
    print(f"detect a disparity_rms difference of {args.delta:g} at alpha {power.ALPHA}, {args.sims} simulations per "
          f"design; cost at {base.tokens_per_second:g} tokens/s x {base.max_new_tokens} new tokens per sample"
          + (f" + {args.train_minutes:g} min per training run" if args.train_minutes else ""))
    sys.stdout.flush()  # the header before the progress bar on stderr
    designs = simulate(base, grid, args.delta, args.sims, args.seed, args.other_models, args.train_minutes)
    print(table(designs, base.own))
    if base.own is not None:
        print("(* the eval's own design)")
    cheapest, fallback = choose(designs, args.test, args.budget_minutes)
    test = _test_words(args.test)
    detect = None
    if cheapest is not None:
        print(f"cheapest design with 80% power ({test}): {cheapest.words()}, power "
              f"{cheapest.power_of(args.test):.2f}" + (" (over the budget)" if fallback else ""))
    else:
        print(f"no design of this grid reaches 80% power for a difference of {args.delta:g} ({test})")
    if fallback is None and (cheapest is None or cheapest.minutes > args.budget_minutes):
        print(f"no design of this grid fits the {args.budget_minutes:g}-minute budget")
    if fallback is not None:
        detect = power.detectable_difference(m, fallback.n, fallback.runs, sims=args.sims, seed=args.seed,
                                             test=args.test)
        said = ("cannot detect any difference with 80% power" if detect is None else
                f"detects a disparity_rms difference of {detect:.3f} or more with 80% power")
        print(f"largest design within {args.budget_minutes:g} minutes: {fallback.words()}, power "
              f"{fallback.power_of(args.test):.2f} at {args.delta:g}; it {said}")
    if args.json is not None:
        _write_json(Path(args.json), args, base, designs, cheapest, fallback, detect)
        print(f"wrote {args.json}")
    return 0


def _write_json(path: Path, args, base: Baseline, designs, cheapest, fallback, detect) -> None:
    def row(d: Design | None):
        return None if d is None else {**asdict(d), "generations_per_profession": d.n}

    m = base.model
    doc = {"source": base.source, "professions": len(m.gaps), "baseline_rms": m.rms,
           "gendered_share": float(m.shares.mean()), "run_sd": m.run_sd, "delta": args.delta, "alpha": power.ALPHA,
           "target": power.TARGET, "test": args.test, "sims": args.sims, "seed": args.seed,
           "tokens_per_second": base.tokens_per_second, "max_new_tokens": base.max_new_tokens,
           "other_models": args.other_models, "train_minutes": args.train_minutes,
           "budget_minutes": args.budget_minutes, "designs": [row(d) for d in designs], "cheapest": row(cheapest),
           "within_budget": None if fallback is None else {**row(fallback), "detectable_difference": detect}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
