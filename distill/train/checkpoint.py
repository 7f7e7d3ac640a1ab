"""Atomic checkpoints and exact resume.

    ckpt.save(run_dir, step, accelerator, student, optimizer, scheduler, sampler, state, keep=2)
    path = ckpt.choose_checkpoint(run_dir, resume_from=None)     # the newest intact one, checked file by file
    state = ckpt.load_latest(run_dir, accelerator, student, optimizer, scheduler, sampler, path=path)

A checkpoint, `checkpoints/step-00000100/`, holds model.safetensors, optimizer.pt, scheduler.pt,
trainer_state.json and rng-<rank>.pt. It is written into `checkpoints/.tmp-step-N/` and renamed when complete
(a rename is atomic), so a kill mid-write leaves the previous checkpoint as the latest. Resume restores weights,
optimizer, schedule, every process's RNG streams and the data position, so the continued run is bitwise the
uninterrupted one. Before it loads anything, resume reads every file of the checkpoint: a truncated or
corrupted one is named, and the previous intact checkpoint is used instead (said on stdout), or
`--resume-from step-N` picks one. metrics.jsonl is cut back to the checkpoint's step, so no step is logged
twice. The run directory around the checkpoints is `run_lifecycle`'s; the exported model is `export`'s.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from distill.atomic import write_text_atomic
from distill.errors import UserError

_STEP_PREFIX = "step-"


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = _complete_checkpoints(run_dir)
    return done[-1] if done else None


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
    """Write checkpoint `step` (every process calls this) and keep the newest `keep`. The caller then commits
    the run (`run_lifecycle.commit_run`): the checkpoint is what makes a replaced run safe to delete."""
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
