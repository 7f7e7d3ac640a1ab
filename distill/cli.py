"""The `distill` command: train, eval, score, power, samples, corpus, swap, bench.

    distill train --recipe recipes/debug.yaml train.max_steps=20
    accelerate launch --num_processes 2 -m distill train --recipe recipes/debug.yaml
    distill eval --model teacher=gpt2 --model out/run/final --prompts professions --out out/eval
    distill power --eval out/eval --delta 0.03
    echo "He thanked his mother." | distill swap

Each command's work lives in its own module, imported only when that command runs, so `distill --help` and
`distill swap` start fast. A `UserError` anywhere becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys

from distill.errors import UserError

EPILOG = "Run `distill COMMAND --help` for the options of one command. Docs: README.md."


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="distil a teacher into a student from a YAML recipe",
        description="Distil a teacher into a student. Writes OUTPUT_DIR/metrics.jsonl, checkpoints and final/.",
        epilog="Example: distill train --recipe recipes/debug.yaml train.max_steps=50 loss.temperature=2",
    )
    p.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted recipe overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--resume-from", default=None, metavar="step-N",
                   help="continue from this checkpoint (e.g. step-200) instead of the newest intact one")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the distill run in output_dir (only a run: a folder with its .distill marker)")
    p.add_argument("--discard-replaced", action="store_true",
                   help="with --overwrite: also delete the run an interrupted --overwrite set aside in "
                   "output_dir/.replaced-PID/ (otherwise refused; `python -m distill.rundir restore DIR` restores it)")
    p.add_argument("--help-recipe", action="store_true", help="list every recipe key with its default and exit")


def _add_model_args(p, what: str, prompts_required: bool = True, prompts_note: str = "",
                    model_required: bool = True) -> None:
    p.add_argument("--model", action="append", required=model_required, metavar="M",
                   help=f"model to {what}: hub id, local dir, .gguf file, or NAME=PATH to label it; NAME=DIR1,DIR2 or "
                   "NAME='GLOB' scores several training runs of one arm (eval only); repeatable")
    p.add_argument("--prompts", required=prompts_required, metavar="SPEC",
                   help="'professions' (the project's prompts in data/), a BOLD-format JSON file, or a hub dataset"
                   + prompts_note)
    p.add_argument("--max-prompts", type=int, default=None, metavar="N", help="use at most N prompts (spread over groups)")
    p.add_argument("--samples-per-prompt", type=int, default=4, metavar="K", help="generations per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=30, metavar="L", help="tokens generated per sample (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for prompt selection and sampling (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts generated together (default 32)")
    p.add_argument("--group-by", default="category", choices=("category", "profession"),
                   help="prompt groups: the disparity is a mean over them (default category)")
    p.add_argument("--top-k", type=int, default=40, help="sampling top-k (default 40, BOLD's setting)")
    p.add_argument("--top-p", type=float, default=0.95, help="sampling top-p (default 0.95, BOLD's setting)")
    p.add_argument("--sampling-temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype; auto (default): bfloat16 where the hardware runs it natively (CUDA with "
                   "bf16, a CPU with AMX), else float32; the report says which and why")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score models for generation disparity and utility",
        description="Generate from profession prompts, score gender polarity and disparity (with bootstrap CIs), "
        "perplexity and teacher agreement; writes DIR/results.json, report.md and plots.",
        epilog="Example: distill eval --model teacher=gpt2 --model student=out/run/final --prompts professions "
        "--text data/heldout.txt --out out/eval",
    )
    _add_model_args(p, "score", prompts_required=False, prompts_note=" (needed by the generation lens)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--lens", default="all", metavar="LENSES",
                   help="generation, embedding, downstream (comma-separated) or all (default all: what the demo runs)")
    p.add_argument("--bios", default="project", metavar="SPEC",
                   help="downstream lens data: a JSONL file (text, occupation, gender[, split]), a hub dataset, "
                   "or 'project' (the small set in data/lenses/, default)")
    p.add_argument("--lens-layer", type=int, default=-1, metavar="L",
                   help="hidden layer for the embedding and downstream lenses (0 = token embeddings, default -1 = last)")
    p.add_argument("--text", default=None, metavar="FILE", help="held-out text (txt/jsonl file or dataset) for perplexity")
    p.add_argument("--teacher", default=None, metavar="NAME",
                   help="which --model is the teacher for agreement (default: the first)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in DIR")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the likelihood probe (next-token male/female mass after profession prompts)")


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="recompute the generation statistics from a saved generations.jsonl (no model needed)",
        description="Label the generations of a JSONL file (fields model, category, profession, prompt_index, "
        "sample, text; optional run) and write DIR/results.json and report.md with every generation statistic.",
        epilog="Example: distill score --generations out/demo/generations.jsonl --out out/rescored",
    )
    p.add_argument("--generations", required=True, action="append", metavar="FILE",
                   help="generations.jsonl written by distill eval (repeatable: several evals read as one; a model "
                   "in more than one must have the same generations in each)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--model", action="append", default=None, metavar="NAME",
                   help="score only these models of the file(s), in this order (repeatable; default all)")
    p.add_argument("--group-by", default="category", choices=("category", "profession"),
                   help="groups of the disparity (default category, as distill eval)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and sign flips (default 0, as eval)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in DIR")


def _add_power(sub) -> None:
    p = sub.add_parser(
        "power",
        help="power and cost of eval designs for a disparity_rms difference (simulated; no model needed)",
        description="For a grid of prompts per profession x samples per prompt x training runs per arm: the power "
        "to detect a disparity_rms difference at alpha 0.05 and the cost in minutes at a measured sampling rate; "
        "prints the cheapest design with 80% power, or the largest within the budget and what it detects.",
        epilog="Examples: distill power --eval out/demo --delta 0.03; distill power --gap 0.07 --share 0.5 "
        "--tokens-per-second 200 --prompts-per-profession 2 --samples-per-prompt 3 --runs 1,5 --delta 0.05",
    )
    p.add_argument("--eval", default=None, metavar="DIR", help="a finished `distill eval` folder: its baseline "
                   "model's per-profession gaps and shares, its sampling rate and settings")
    p.add_argument("--professions", type=int, default=None, metavar="C",
                   help="simulation model: professions scored (default 136, the project's)")
    p.add_argument("--gap", type=float, default=None, metavar="G",
                   help="simulation model: the baseline's RMS gap P(male) - P(female) over professions")
    p.add_argument("--share", type=float, default=None, metavar="S",
                   help="simulation model: every profession's gendered share P(male) + P(female)")
    p.add_argument("--run-sd", type=float, default=None, metavar="SD",
                   help="simulation model: sd of a training run's per-profession gaps around its arm's (default 0)")
    p.add_argument("--delta", type=float, default=0.03, help="disparity_rms difference to detect (default 0.03)")
    p.add_argument("--test", default="professions", choices=("professions", "runs"),
                   help="the test that must reach 80%% power: professions (default: the sign-flip test of every "
                   "eval's power line) or runs (the permutation test over runs, the study's primary; >= 4 runs per arm)")
    p.add_argument("--prompts-per-profession", default=None, metavar="LIST",
                   help="grid, comma-separated (default 1,2,4,8; 'professions' has 8 per profession)")
    p.add_argument("--samples-per-prompt", default=None, metavar="LIST", help="grid (default 1,2,3,4)")
    p.add_argument("--runs", default=None, metavar="LIST", help="training runs per arm, grid (default 1,2,3,4,5)")
    p.add_argument("--tokens-per-second", type=float, default=None, metavar="R",
                   help="sampling rate (default: the eval's measured settings.generation.tokens_per_second)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="L",
                   help="tokens per sample (default: the eval's, else 30)")
    p.add_argument("--other-models", type=int, default=1, metavar="M",
                   help="models scored besides the two arms' runs (default 1: the teacher)")
    p.add_argument("--train-minutes", type=float, default=0.0, metavar="T",
                   help="minutes per training run, counted 2 x runs times (default 0: scoring only)")
    p.add_argument("--budget-minutes", type=float, default=180.0, metavar="B", help="time budget (default 180)")
    p.add_argument("--sims", type=int, default=400, help="simulations per design (default 400: power +-0.02)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every design and the answer as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json FILE")


# How `distill samples` samples. They default to None in the samples parser, which tells a flag the user gave
# from one left out: with --from-eval the eval's own samples are shown, so a given one is refused there (all
# but --samples-per-prompt, which picks how many to show); the model-loading path puts the usual defaults
# (args.sampling_defaults) back.
_SAMPLING_DESTS = ("samples_per_prompt", "max_new_tokens", "top_k", "top_p", "sampling_temperature", "seed",
                   "group_by", "batch_size", "dtype")


def _add_samples(sub) -> None:
    p = sub.add_parser(
        "samples",
        help="side-by-side generations of several models on the same prompts and seeds",
        epilog="Examples: distill samples --model a=gpt2 --model b=out/run/final --prompts professions --out s.html; "
        "distill samples --from-eval out/demo --out out/demo/samples.html",
    )
    _add_model_args(p, "sample from", prompts_required=False, prompts_note=" (needed with --model)",
                    model_required=False)
    p.add_argument("--from-eval", default=None, metavar="DIR",
                   help="show the generations a `distill eval --out DIR` wrote (DIR/generations.jsonl) instead of "
                   "sampling: no model loads. Its models in its order (run 0 of a model with several runs); "
                   "--max-prompts N of its prompts, chosen as from --prompts with the eval's --group-by and --seed; "
                   "the first K of each prompt's samples (--samples-per-prompt K, default all of the eval's, at most "
                   "4). Not with --model, --prompts or the other sampling flags (the eval's settings are shown)")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.md or FILE.html (24 prompts unless --max-prompts)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    p.set_defaults(sampling_defaults={d: p.get_default(d) for d in _SAMPLING_DESTS},
                   **dict.fromkeys(_SAMPLING_DESTS))


def _add_corpus(sub) -> None:
    p = sub.add_parser(
        "corpus",
        help="build (or reuse) the teacher-written transfer set of a recipe",
        epilog="Example: distill corpus --recipe recipes/demo_kd.yaml",
    )
    p.add_argument("--recipe", required=True, help="YAML recipe with data.transfer_set")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted recipe overrides")


def _add_swap(sub) -> None:
    p = sub.add_parser(
        "swap",
        help="print the gender-swapped counterfactual of stdin, line by line",
        epilog="Example: echo 'She gave him her book.' | distill swap",
    )
    p.add_argument("--lexicon", default=None, help="word-pair file (default: data/lexicon/word_pairs.tsv)")
    p.add_argument("--names", default=None, help="name-pair file (default: data/lexicon/name_pairs.tsv)")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure step time, memory and throughput ratios; writes out/bench.json")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, a few repeats: checks that every key is written")
    p.add_argument("--out", default="out/bench.json", help="where to write the JSON (default out/bench.json)")
    p.add_argument("--compile", action="store_true",
                   help="also time a KD step with train.compile (torch.compile of the student; adds the compile time)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Distil causal LMs with counterfactual role reversal, and score their gender disparity.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_score, _add_power, _add_samples, _add_corpus, _add_swap, _add_bench):
        add(sub)
    return parser


def _dispatch(args) -> int | None:
    # Imports stay inside each branch: torch/transformers load only for the commands that need them.
    if args.command == "train":
        from distill.train.command import main as run
    elif args.command == "eval":
        from distill.eval.eval_command import run_eval as run
    elif args.command == "score":
        from distill.eval.score_command import run_score as run
    elif args.command == "power":
        from distill.eval.power_command import run_power as run
    elif args.command == "samples":
        from distill.eval.samples_command import run_samples as run
    elif args.command == "corpus":
        from distill.train.transfer import main as run
    elif args.command == "swap":
        from distill.crr.swap_command import swap_main as run
    elif args.command == "bench":
        from distill.bench.run import main as run
    else:
        raise AssertionError(args.command)
    return run(args)


def _close_progress_bars() -> None:
    """End an open tqdm bar's line, so the error line that follows starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # Overrides may come after flags (`train --recipe R --resume a.b=1`), which argparse's positional
    # matching does not allow: collect the leftover key=value words here.
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    if not faulthandler.is_enabled():
        # a process killed by a signal (a C++ abort in gloo or a kernel) prints where its Python threads were,
        # not only the launcher's "Signal 6" line
        faulthandler.enable()
    from distill.errors import guarded_stdout, report
    from distill.rundir import command_locks

    try:
        with command_locks(), guarded_stdout():  # the output locks a command takes end with it
            code = _dispatch(args)
    except (UserError, OSError) as exc:  # bad input, or a write that failed (a full disk): one line
        _close_progress_bars()
        sys.exit(report(f"distill {args.command}", exc))
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
