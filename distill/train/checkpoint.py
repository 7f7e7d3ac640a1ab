"""Run directories, atomic checkpoints, exact resume, and the final Hugging Face export.

Layout of `output_dir`:
    recipe.yaml                the resolved recipe of the run
    metrics.jsonl              one JSON line per logged step
    checkpoints/step-00000100/ model.safetensors, optimizer.pt, scheduler.pt, trainer_state.json, rng-<rank>.pt
    final/                     save_pretrained safetensors + tokenizer + README.md model card
    .distill                   marker: this folder is a distill run (--overwrite replaces nothing else)
    .lock                      while a process trains here: its PID, under an exclusive flock (rundir.py)

A checkpoint is written into `checkpoints/.tmp-step-N/` and renamed when complete (a rename is atomic), so a
kill mid-write leaves the previous checkpoint as the latest. Resume restores weights, optimizer, schedule,
every process's RNG streams and the data position, so the continued run is bitwise the uninterrupted one.
Before it loads anything, resume reads every file of the checkpoint: a truncated or corrupted one is named,
and the previous intact checkpoint is used instead (said on stdout), or `--resume-from step-N` picks one.
metrics.jsonl is cut back to the checkpoint's step, so no step is logged twice. A resume may change only
RESUMABLE_KEYS of the recipe; recipe.yaml takes the new values at the first new checkpoint.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from distill import rundir
from distill.atomic import atomic_dir, write_text_atomic
from distill.errors import UserError

_STEP_PREFIX = "step-"


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = _complete_checkpoints(run_dir)
    return done[-1] if done else None


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


def check_resume_recipe(run_dir: Path, cfg) -> list[str]:
    """Refuse a resume whose recipe differs from the run's in a key outside RESUMABLE_KEYS; returns the
    resumable keys that did change (the caller says so)."""
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return []
    try:
        old = yaml.safe_load(saved.read_text())
        old_flat = flat_keys(old) if isinstance(old, dict) else None
    except (yaml.YAMLError, UnicodeDecodeError):
        old_flat = None
    if old_flat is not None:
        from distill.config import config_from_dict

        try:  # through the current defaults: a key added to the recipe since the run started is not a change
            old_flat = flat_keys(config_dict(config_from_dict(old)))
        except UserError:
            pass  # a key since renamed or removed: compare as written
    if old_flat is None:
        raise UserError(f"{saved} is not a readable recipe, so the resume cannot be checked against the run; "
                        "restore it, or start a new run")
    new_flat = flat_keys(config_dict(cfg))
    changed = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))
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


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, accelerator, student, optimizer, scheduler, sampler, state: dict,
         keep: int, engine: str = "ddp") -> Path:
    root = Path(run_dir) / "checkpoints"
    # Not atomic_dir: every process writes into this folder, so its name must not depend on the process.
    tmp, final = root / f".tmp-{_STEP_PREFIX}{step:08d}", root / f"{_STEP_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        if engine != "ddp":  # every process writes its shards
            save_sharded_state(tmp, student, optimizer, engine)
        if accelerator.is_main_process:
            if engine == "ddp":
                save_model(accelerator.unwrap_model(student), str(tmp / "model.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({**state, "sampler": sampler.state_dict()}))
        torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    except (OSError, RuntimeError, SafetensorError) as exc:  # safetensors wraps an OS error in its own type
        # weights plus Adam's two moments: the size of a checkpoint when there is no earlier one to measure
        estimate = 3 * sum(q.numel() * q.element_size() for q in student.parameters())
        raise _write_failure(exc, tmp, root, step, estimate) from exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in root.iterdir() if p.name.startswith(_STEP_PREFIX))[:-keep]:
            shutil.rmtree(old)
        commit_run(run_dir)
    accelerator.wait_for_everyone()
    return final


def _write_failure(exc: BaseException, tmp: Path, root: Path, step: int, estimate: int = 0) -> UserError:
    """One line for a checkpoint that could not be written (disk full above all); the half-written folder
    is removed and the previous checkpoint, untouched, is named."""
    written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else 0
    shutil.rmtree(tmp, ignore_errors=True)
    previous = latest_checkpoint(root.parent)
    need = sum(f.stat().st_size for f in previous.rglob("*") if f.is_file()) if previous else max(written, estimate)
    free = shutil.disk_usage(root).free if root.exists() else 0
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < need or any(
        sign in text for sign in ("inline_container", "file write failed", "No space left", "code: 28"))
    cause = (f"the disk is full ({free / 2**20:.1f} MiB free; a checkpoint needs about {need / 2**20:.1f} MiB)"
             if full else text)
    if previous:
        then = (f"the previous checkpoint {previous} is intact. Free space (or lower train.keep_checkpoints), then "
                "--resume")
    else:  # --resume would answer "nothing to resume", and a plain rerun "already holds a run"
        then = ("no checkpoint was written before it, so there is nothing to resume. Free space, then start the run "
                "again with --overwrite")
    return UserError(f"could not write checkpoint step {step} under {root}: {cause}; {then}")


def _find_checkpoint(run_dir: Path, name: str) -> Path:
    """`--resume-from`: 'step-N', 'N' or the folder name."""
    root = Path(run_dir) / "checkpoints"
    done = _complete_checkpoints(run_dir)
    digits = name.removeprefix(_STEP_PREFIX)
    if digits.isdigit():
        path = root / f"{_STEP_PREFIX}{int(digits):08d}"
        if path in done:
            return path
    have = ", ".join(p.name for p in done) or "none"
    raise UserError(f"--resume-from {name}: no such complete checkpoint in {root} (have: {have})")


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_STEP_PREFIX) and (p / "trainer_state.json").is_file())


def checkpoint_problem(path: Path, rank: int, num_processes: int, engine: str = "ddp") -> str | None:
    """None if every file this process will read from checkpoint `path` is complete, else what is wrong.

    Each file is read in full (safetensors checks its header against the file size, torch's zip reader its
    records), so a truncated or corrupted file is found before any model loads.
    """
    from safetensors.torch import load_file

    files = [("trainer_state.json", lambda f: json.loads(f.read_text())["sampler"]),
             ("model.safetensors", lambda f: load_file(str(f))),
             ("optimizer.pt", lambda f: torch.load(f, weights_only=True, map_location="cpu")),
             ("scheduler.pt", lambda f: torch.load(f, weights_only=True, map_location="cpu"))]
    if engine != "ddp":  # model and optimizer live in sharded/ or deepspeed/, read by their engine's loader
        files = [entry for entry in files if entry[0] not in ("model.safetensors", "optimizer.pt")]
    for name, read in files:
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        try:
            read(f)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, SafetensorError,
                __import__("pickle").UnpicklingError) as exc:
            return f"{f} is damaged or truncated ({(str(exc).strip() or type(exc).__name__).splitlines()[0][:120]})"
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        written = len(list(path.glob("rng-*.pt")))
        if 0 < written < num_processes and all((path / f"rng-{r}.pt").is_file() for r in range(written)):
            return (f"{path} was written by {written} process(es), not {num_processes}; resume with the process "
                    "count of the run")
        return f"{rng_file} (this process's random state) is missing"
    try:
        torch.load(rng_file, weights_only=True)
    except (OSError, RuntimeError, EOFError, __import__("pickle").UnpicklingError) as exc:
        return f"{rng_file} is damaged or truncated ({str(exc).strip().splitlines()[0][:120]})"
    return None


def choose_checkpoint(run_dir: Path, resume_from: str | None, rank: int = 0, num_processes: int = 1,
                      engine: str = "ddp") -> Path:
    """The checkpoint to resume: `resume_from` if given, else the newest intact one. Falling back past a
    damaged checkpoint is said on stdout; a damaged `resume_from`, or no intact checkpoint, is refused."""
    if resume_from:
        path = _find_checkpoint(run_dir, resume_from)
        problem = checkpoint_problem(path, rank, num_processes, engine)
        if problem:
            raise UserError(f"cannot resume from {path.name}: {problem}")
        return path
    done = _complete_checkpoints(run_dir)
    damaged = []
    for path in reversed(done):
        problem = checkpoint_problem(path, rank, num_processes, engine)
        if problem is None:
            if damaged:
                print(f"note: {damaged[0]}; resuming from the previous intact checkpoint {path.name} instead "
                      f"(pass --resume-from {path.name} to choose it explicitly)")
            return path
        if "process(es)" in problem:  # not damage: every checkpoint of the run has the same process count
            raise UserError(problem)
        damaged.append(problem)
    raise UserError(f"no intact checkpoint to resume in {Path(run_dir) / 'checkpoints'}: "
                    + (damaged[0] if damaged else "none is complete") + "; start a new run with --overwrite")


def load_latest(run_dir: Path, accelerator, student, optimizer, scheduler, sampler, path: Path | None = None,
                engine: str = "ddp") -> dict:
    """Restore checkpoint `path` (default: the newest) and cut metrics.jsonl back to its step, so steps
    logged after it by a killed run are not logged twice."""
    path = path or choose_checkpoint(run_dir, None, accelerator.process_index, accelerator.num_processes, engine)
    if engine == "ddp":
        load_model(accelerator.unwrap_model(student), str(path / "model.safetensors"), device=str(accelerator.device))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    else:
        load_sharded_state(path, student, optimizer, engine)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = json.loads((path / "trainer_state.json").read_text())
    sampler.load_state_dict(state.pop("sampler"))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise UserError(f"{rng_file} (this process's random state) is missing; resume from another checkpoint "
                        "with --resume-from")
    _set_rng_state(torch.load(rng_file, weights_only=True))
    if accelerator.is_main_process:
        truncate_log(Path(run_dir) / "metrics.jsonl", state["step"])
    return state


def truncate_log(log: Path, step: int) -> int:
    """Keep the records of steps <= `step` (and drop a line cut short by a kill); returns lines dropped."""
    if not log.is_file():
        return 0
    lines = log.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text_atomic(log, "".join(ln + "\n" for ln in kept))
    return len(lines) - len(kept)


def save_final(run_dir: Path, cfg, student, tokenizer, metrics: dict, setup) -> Path:
    """`final/`: loadable with AutoModelForCausalLM / AutoTokenizer, plus a model card with recipe and metrics.

    A write that fails (disk full, a file system gone read-only) is retried in a temporary folder, and the
    one-line error says where the model was left."""
    final = Path(run_dir) / "final"
    try:
        with atomic_dir(final) as tmp:
            _write_final(tmp, cfg, student, tokenizer, metrics, setup)
    except (OSError, RuntimeError, SafetensorError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        try:
            import tempfile

            rescue = Path(tempfile.mkdtemp(prefix="distill-final-"))
            _write_final(rescue, cfg, student, tokenizer, metrics, setup)
            where = f"the model was written to {rescue} instead"
        except (OSError, RuntimeError, SafetensorError):
            latest = latest_checkpoint(run_dir)
            where = f"nothing was written; the last checkpoint is {latest}" if latest else "nothing was written"
        raise UserError(f"could not write the final model to {final} ({text}); {where}") from exc
    commit_run(run_dir)
    return final


def _write_final(folder: Path, cfg, student, tokenizer, metrics: dict, setup) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    student.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(cfg, metrics, setup))


def model_card(cfg, metrics: dict, setup) -> str:
    from distill.models import count_parameters

    teacher = cfg.teacher.name_or_path or f"random {cfg.teacher.config.get('model_type')} (debug)"
    layers = cfg.student.from_teacher_layers
    student_desc = (f"the teacher's blocks {list(layers)} with its embeddings, final norm and LM head"
                    if layers is not None else (cfg.student.name_or_path or "a random-initialised config"))
    method = ("plain knowledge distillation" if cfg.crr.augment == "none" and cfg.crr.teacher == "none" else
              f"counterfactual role reversal (augment={cfg.crr.augment}, teacher={cfg.crr.teacher})")
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    recipe = yaml.safe_dump(config_dict(cfg), sort_keys=False)
    return f"""---
library_name: transformers
tags: [distillation, debiasing, counterfactual-role-reversal]
---
# Distilled student

Distilled with `distill` from **{teacher}** by {method}.
Student: {student_desc}; {count_parameters(setup.student) / 1e6:.1f}M parameters,
{setup.student.config.num_hidden_layers} layers.
{cfg.description}

Load it with `AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)`.
Score it with `distill eval --model student=PATH --prompts professions --out DIR`.

## Final training metrics

| metric | value |
|---|---|
{rows}

## Recipe

```yaml
{recipe}```
"""



# ------------------------------------------------------------------ sharded state (FSDP2, DeepSpeed ZeRO-3)
# A sharded checkpoint holds `sharded/` (torch.distributed.checkpoint: each process writes its own shards of the
# student and its optimizer state) or `deepspeed/` (DeepSpeed's own layout) instead of model.safetensors and
# optimizer.pt; scheduler, trainer state and RNG files are the same as above. It resumes under the same engine.


def save_sharded_state(directory: Path, student, optimizer, engine: str) -> None:
    """Write the student's and optimizer's shards into `directory`; every process must call this."""
    if engine == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        student = getattr(student, "_orig_mod", student)  # train.compile: keys as without it
        model_sd, optim_sd = get_state_dict(student, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(Path(directory) / "sharded"))
    elif engine == "deepspeed":
        student.save_checkpoint(str(Path(directory) / "deepspeed"), tag="state")
    else:
        raise ValueError(f"no sharded state for engine {engine!r}")


def load_sharded_state(path: Path, student, optimizer, engine: str) -> None:
    """Read back what `save_sharded_state` wrote (same engine, same process count); every process calls this."""
    sub = {"fsdp": "sharded", "deepspeed": "deepspeed"}.get(engine)
    if sub is None or not (Path(path) / sub).is_dir():
        raise UserError(f"{path} holds no {engine} state; resume with the accelerate config that wrote it")
    if engine == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        student = getattr(student, "_orig_mod", student)
        model_sd, optim_sd = get_state_dict(student, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(Path(path) / sub))
        set_state_dict(student, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        student.load_checkpoint(str(Path(path) / sub), tag="state", load_module_strict=True,
                                load_optimizer_states=True, load_lr_scheduler_states=False)
