"""A training run's directory over its life: checked, started, committed or abandoned.

    run_lifecycle.check_output_dir(run_dir, resume=False, overwrite=False)   # before any compute
    aside = run_lifecycle.start_run(run_dir, cfg, resume=False, overwrite=True)
    ... ckpt.save(...); run_lifecycle.commit_run(run_dir)   # at the first checkpoint or the final model
    run_lifecycle.abandon_run(run_dir, aside)                 # a failure before that

Layout of `output_dir`:
    recipe.yaml                the resolved recipe of the run
    metrics.jsonl              one JSON line per logged step
    checkpoints/step-00000100/ written by `checkpoint.save`
    final/                     written by `export.save_final`
    .distill                   marker: this folder is a distill run (--overwrite replaces nothing else)
    .lock                      while a process trains here: its PID, under an exclusive flock (rundir.py)

A resume may change only RESUMABLE_KEYS of the recipe; recipe.yaml takes the new values at the first new
checkpoint. The folder rules shared with eval and score (marker, lock, moving a replaced run aside) live in
`distill.rundir`; this module holds what only a training run needs on top of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from distill import rundir
from distill.atomic import write_text_atomic
from distill.errors import UserError
from distill.train.checkpoint import latest_checkpoint


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# Keys a resumed run may change: how long it runs, how often it logs, evaluates and saves, where it reports.
# Anything else (model, data, loss, optimiser, seed) would make the continued run another experiment.
RESUMABLE_KEYS = frozenset({
    "output_dir", "description", "report_to", "train.max_steps", "train.log_steps", "train.eval_steps",
    "train.eval_batches", "train.save_steps", "train.keep_checkpoints", "train.compile", "data.num_proc",
    "loss.chunk_size",  # speed only: the KD term is summed in chunks of this many tokens
})
_PENDING_RECIPE = ".recipe.pending.yaml"


def check_output_dir(run_dir: Path, *, resume: bool, overwrite: bool, protected_paths=(),
                     discard_replaced: bool = False) -> None:
    """Refuse, before any compute, to mix two runs in one directory or to replace what is not a run.

    A run that an interrupted --overwrite set aside (`.replaced-<pid>/`) is named by every refusal, and a
    new --overwrite deletes it only with `discard_replaced` (the user's explicit `--discard-replaced`)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if discard_replaced and not overwrite:
        raise UserError("--discard-replaced goes with --overwrite (it deletes the run an interrupted --overwrite "
                        "set aside); add --overwrite, or drop --discard-replaced")
    note = rundir.replaced_note(run_dir)
    if resume:
        rundir.check_no_overlap(run_dir, protected_paths, what="output_dir")
        if latest_checkpoint(run_dir) is None:
            raise UserError(f"nothing to resume: {run_dir} has no complete checkpoint (train.save_steps writes "
                            f"them){note}")
        rundir.check_writable(run_dir, "output_dir")
        return
    holds_files = run_dir.is_dir() and any(p.name != rundir.LOCK for p in run_dir.iterdir())
    if holds_files and not overwrite:
        step = _last_logged_step(run_dir)
        what = f"a run (logged up to step {step})" if step is not None else "files"
        raise UserError(
            f"output_dir {run_dir} already holds {what}; pass --resume to continue it, --overwrite to replace it, "
            f"or set output_dir=... to a new directory{note}"
        )
    if note and not discard_replaced:
        kept = rundir.replaced_runs(run_dir)[0]
        raise UserError(f"--overwrite would delete {kept}, the run an earlier --overwrite of {run_dir} set aside "
                        f"and did not finish replacing: restore it with `python -m distill.rundir restore "
                        f"{run_dir}`, or pass --discard-replaced as well to delete it")
    rundir.prepare_output_dir(run_dir, "run", overwrite, protected_paths, what="output_dir")


def _last_logged_step(run_dir: Path) -> int | None:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        try:
            return json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill
    return None


def saved_recipe_keys(run_dir: Path) -> dict | None:
    """The dotted keys of run_dir/recipe.yaml, read through today's defaults (a key added to the recipes since
    the run started is not a change; one since renamed or removed is compared as written). None when the
    file is missing or unreadable."""
    try:
        old = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(old, dict):
        return None
    from distill.config import config_from_dict

    try:
        return flat_keys(config_dict(config_from_dict(old)))
    except UserError:
        return flat_keys(old)


def recipe_changes(old_flat: dict, cfg) -> list[str]:
    """The dotted keys in which `cfg` differs from a run's saved keys (`saved_recipe_keys`), sorted."""
    new_flat = flat_keys(config_dict(cfg))
    return sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))


def check_resume_recipe(run_dir: Path, cfg) -> list[str]:
    """Refuse a resume whose recipe differs from the run's in a key outside RESUMABLE_KEYS; returns the
    resumable keys that did change (the caller says so)."""
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return []
    old_flat = saved_recipe_keys(run_dir)
    if old_flat is None:
        raise UserError(f"{saved} is not a readable recipe, so the resume cannot be checked against the run; "
                        "restore it, or start a new run")
    new_flat = flat_keys(config_dict(cfg))
    changed = recipe_changes(old_flat, cfg)
    fixed = [k for k in changed if k not in RESUMABLE_KEYS]
    if fixed:
        shown = ", ".join(f"{k} ({old_flat.get(k)!r} -> {new_flat.get(k)!r})" for k in fixed[:4])
        more = f" and {len(fixed) - 4} more" if len(fixed) > 4 else ""
        raise UserError(f"--resume with a recipe that differs from the run's in {shown}{more}; a resumed run may "
                        f"only change {', '.join(sorted(RESUMABLE_KEYS))}. Resume with the run's recipe "
                        f"({saved}) or start a new run")
    return changed


def start_run(run_dir: Path, cfg, *, resume: bool, overwrite: bool) -> Path | None:
    """Called once all inputs loaded fine. Returns the folder the replaced run was moved into (or None).

    --overwrite: the old run's entries move aside, to be deleted at this run's first checkpoint
    (`commit_run`) or moved back if it fails before that. --resume with changed resumable keys: the new
    recipe waits in a pending file and replaces recipe.yaml only at the first checkpoint, so a run that
    stops (a NaN, a kill) leaves the recipe that produced its checkpoints.
    """
    if overwrite:  # check_output_dir let a set-aside run through only with --discard-replaced
        rundir.discard_replaced(run_dir)
    aside = rundir.set_aside(run_dir) if overwrite and run_dir.exists() else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_marker(run_dir, "run")
        recipe = yaml.safe_dump(config_dict(cfg), sort_keys=False)
        saved = run_dir / "recipe.yaml"
        if resume and saved.is_file():
            if saved.read_text() != recipe:
                write_text_atomic(run_dir / _PENDING_RECIPE, recipe)
        else:
            write_text_atomic(saved, recipe)
    except BaseException:  # a full disk here: the replaced run comes back before the error is reported
        abandon_run(run_dir, aside)
        raise
    return aside


def commit_run(run_dir: Path) -> None:
    """This run has a checkpoint or its final model: drop a replaced run, adopt a pending recipe."""
    rundir.discard_replaced(run_dir)
    pending = Path(run_dir) / _PENDING_RECIPE
    if pending.is_file():
        os.replace(pending, Path(run_dir) / "recipe.yaml")


def abandon_run(run_dir: Path, aside: Path | None) -> None:
    """The run failed before its first checkpoint: put a replaced run back, forget a pending recipe."""
    (Path(run_dir) / _PENDING_RECIPE).unlink(missing_ok=True)
    if aside is not None and aside.is_dir():
        rundir.restore_replaced(run_dir, aside)


def flat_keys(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: the dotted keys of the recipe."""
    out = {}
    for k, v in d.items():
        out.update(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
