"""`distill train`: the recipe -> checks -> `setup.build` -> `loop.fit` -> the exported student.

    distill train --recipe recipes/debug.yaml
    accelerate launch --num_processes 2 --cpu -m distill train --recipe recipes/debug.yaml

Everything that can be checked without a model (recipe, inputs, output directory, resume) is checked before
anything is written; the run directory is locked for the run's duration.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from distill.config import Config, describe, load_config
from distill.config_checks import check_block_size
from distill.rundir import RunLock
from distill.train import checkpoint as ckpt
from distill.train import engine as eng
from distill.train import export
from distill.train import run_lifecycle as lifecycle
from distill.train.curves import plot_training
from distill.train.loop import fit
from distill.train.setup import Setup, build


def _cpu_only_multiprocess() -> bool:
    """Several processes on a machine without CUDA: run them as MULTI_CPU (gloo) workers.

    accelerate's `--cpu` launcher starts a single process unless MPI is installed; `accelerate launch
    --multi_gpu --num_processes N` starts N torchrun workers, which accelerate treats as CPU workers only
    when told to, so we tell it here.
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _mixed_precision(choice: str) -> str:
    """train.mixed_precision, `auto` resolved by `distill.precision` for the device accelerate will pick."""
    from distill.precision import resolve_mixed_precision

    return resolve_mixed_precision(choice, "cpu" if _cpu_only_multiprocess() else None)[0]


def precision_line(cfg: Config, accelerator, teacher) -> str:
    """The plan's precision line: what runs in which precision, and why (the capability that decided)."""
    from distill.precision import choose

    mp = accelerator.mixed_precision
    student = "fp32" if mp == "no" else f"{mp} autocast"
    teacher_dtype = str(next(teacher.parameters()).dtype).removeprefix("torch.")
    auto = "auto" in (cfg.train.mixed_precision, cfg.teacher.dtype)
    why = choose(accelerator.device).reason if auto else "both set explicitly"
    return (f"precision: student {student} (train.mixed_precision={cfg.train.mixed_precision}), teacher "
            f"{teacher_dtype} (teacher.dtype={cfg.teacher.dtype}); {why}")


def _check_before_writing(cfg: Config, run_dir: Path, resume: bool, overwrite: bool,
                          discard_replaced: bool = False) -> None:
    """Everything that can be checked without a model, before anything is written."""
    from distill.inputs import check_train_inputs

    eng.check_environment()  # before accelerate builds a DeepSpeed plugin (an ImportError when it is missing)
    inputs = check_train_inputs(cfg)
    if cfg.data.transfer_set is not None:  # its cache folder: writable, or the set is already there
        from distill.train.transfer_cache import check_cache_dir

        check_cache_dir(cfg)
    for role in ("teacher", "student"):  # a random model's positions are known before it is built
        if getattr(cfg, role).config is not None:
            check_block_size(cfg.data.block_size, getattr(cfg, role).config, f"{role}.config")
    lifecycle.check_output_dir(run_dir, resume=resume, overwrite=overwrite, protected_paths=inputs,
                          discard_replaced=discard_replaced)
    if resume:
        changed = lifecycle.check_resume_recipe(run_dir, cfg)
        if changed:
            print(f"note: resuming with a changed recipe ({', '.join(changed)})")


class _NoPaddingWarning:
    """Drops transformers' "input_ids may be padded" warning. Training blocks are packed text and never padded;
    transformers guesses padding from a pad id that GPT-2-style tokenizers share with EOS, which packed blocks hold
    between documents, so the warning is wrong here, and it was the one stray stderr line of a run."""

    def filter(self, record) -> bool:
        return "input_ids may be padded" not in record.getMessage()


_NO_PADDING_WARNING = _NoPaddingWarning()


def main(args) -> int:
    """`distill train` (cli.py parses the arguments)."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.modeling_utils").addFilter(_NO_PADDING_WARNING)  # once: filters are a set
    if args.help_recipe:
        for key, default, help_text in describe():
            print(f"{key:28s} {default:12s} {help_text}")
        return 0
    cfg = load_config(args.recipe, args.overrides)
    run_dir = Path(cfg.output_dir)
    resume_from = getattr(args, "resume_from", None)
    resume = args.resume or bool(resume_from)
    _check_before_writing(cfg, run_dir, resume, args.overwrite, getattr(args, "discard_replaced", False))
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.train.mixed_precision),
                              log_with=cfg.report_to or None, project_dir=str(run_dir), cpu=_cpu_only_multiprocess())
    lock = RunLock(run_dir).acquire() if accelerator.is_main_process else None
    aside, started = None, False
    try:
        if lock is not None and lock.stale_pid:
            print(f"note: {lock.path} was left by process {lock.stale_pid}, which is gone; taking it over")
        start = (ckpt.choose_checkpoint(run_dir, resume_from, accelerator.process_index, accelerator.num_processes,
                                        eng.engine_of(accelerator)) if resume else False)
        set_seed(cfg.seed)
        setup = build(cfg, accelerator)
        if accelerator.is_main_process:
            aside = lifecycle.start_run(run_dir, cfg, resume=resume, overwrite=args.overwrite)
            started = True
            _print_plan(cfg, setup, accelerator)
        accelerator.wait_for_everyone()
        if cfg.report_to:
            # trackers take flat scalar hyperparameters: dotted keys, anything else as text
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in lifecycle.flat_keys(lifecycle.config_dict(cfg)).items()}
            accelerator.init_trackers(run_dir.name, config=hparams)
        result = fit(cfg, setup, accelerator, run_dir, resume=start)
        accelerator.wait_for_everyone()
        student = accelerator.unwrap_model(result.student)
        if setup.engine in eng.SHARDED:  # gathered by every process, written by the main one as a plain model
            state = eng.full_state_dict(accelerator, result.student, setup.engine)
            student = eng.plain_model(student, state) if accelerator.is_main_process else None
        if accelerator.is_main_process:
            teacher_probe = {f"teacher_{k}": v for k, v in (result.teacher_probe or {}).items()}
            final = export.save_final(run_dir, cfg, student, setup.tokenizer, {**result.last, **teacher_probe},
                                      setup)
            lifecycle.commit_run(run_dir)
            plot = plot_training(run_dir, result.teacher_probe)
            accelerator.print(f"done: {result.state['step']} steps; student written to {final}"
                              + (f"; probe curves in {plot}" if plot else ""))
        # every process tears the process group down together, once the main one has written the student: a
        # worker that destroys its group and exits while a peer still holds the connection is a shutdown race
        accelerator.wait_for_everyone()
        accelerator.end_training()
    except BaseException:
        if started:  # before this run's first checkpoint, a replaced run comes back (see lifecycle.start_run)
            lifecycle.abandon_run(run_dir, aside if aside is not None and aside.exists() else None)
        raise
    finally:
        if lock is not None:
            lock.release()
    return 0


def _print_plan(cfg: Config, setup: Setup, accelerator) -> None:
    from distill.models import count_parameters

    st = setup.data_stats
    trainable = sum(p.numel() for p in setup.student.parameters() if p.requires_grad)
    print(
        f"teacher {count_parameters(setup.teacher) / 1e6:.1f}M params ({setup.teacher.config.num_hidden_layers} "
        f"layers) -> student {count_parameters(setup.student) / 1e6:.1f}M ({setup.student.config.num_hidden_layers}"
        f" layers, {trainable / 1e6:.1f}M trainable); vocab {setup.vocab_rows}"
        + (f"; its first {setup.prefix_depth} blocks are the teacher's own, run once per step (in the teacher)"
           if setup.prefix_depth else "") + "\n"
        f"data: {st.train_documents} documents ({st.swapped_documents} gender-swapped) -> {st.train_blocks} blocks "
        f"of {st.block_size} tokens; {st.validation_blocks} validation blocks\n"
        f"loss: {cfg.loss.alpha_kd} x T^2 {cfg.loss.divergence} (T={cfg.loss.temperature}) + {cfg.loss.alpha_ce} "
        f"x CE + {cfg.loss.alpha_cos} x cos"
        + (f" + {cfg.loss.alpha_balance} x gender balance" if cfg.loss.alpha_balance else "")
        + (f"; teacher top-{cfg.loss.teacher_top_k} targets, cached per block" if cfg.loss.teacher_top_k else "")
        + f"; crr: augment={cfg.crr.augment}, teacher={cfg.crr.teacher}\n"
        f"{cfg.train.max_steps} steps x {cfg.train.batch_size} x {cfg.train.grad_accum} accum x "
        f"{accelerator.num_processes} processes on {accelerator.device} ({accelerator.mixed_precision})\n"
        + precision_line(cfg, accelerator, setup.teacher)
    )

