"""Run directories, atomic checkpoints, exact resume, and the final Hugging Face export.

Layout of `output_dir`:
    recipe.yaml                the resolved recipe of the run
    metrics.jsonl              one JSON line per logged step
    checkpoints/step-00000100/ model.safetensors, optimizer.pt, scheduler.pt, trainer_state.json, rng-<rank>.pt
    final/                     save_pretrained safetensors + tokenizer + README.md model card

A checkpoint is written into `checkpoints/.tmp-step-N/` and renamed when complete (a rename is atomic), so a
kill mid-write leaves the previous checkpoint as the latest. Resume restores weights, optimizer, schedule,
every process's RNG streams and the data position, so the continued run is bitwise the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_model, save_model

from distill.errors import UserError

_STEP_PREFIX = "step-"


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith(_STEP_PREFIX) and (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def check_output_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any compute, to mix two runs in one directory."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    holds_run = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise UserError(f"nothing to resume: {run_dir} has no complete checkpoint (train.save_steps writes them)")
        return
    if holds_run and not overwrite:
        step = _last_logged_step(run_dir)
        what = f"a run (logged up to step {step})" if step is not None else "files"
        raise UserError(
            f"output_dir {run_dir} already holds {what}; pass --resume to continue it, --overwrite to replace it, "
            "or set output_dir=... to a new directory"
        )


def _last_logged_step(run_dir: Path) -> int | None:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]).get("step") if lines else None


def start_run(run_dir: Path, cfg, *, resume: bool, overwrite: bool) -> None:
    """Called once all inputs loaded fine: only now may an --overwrite'd run be removed."""
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_dump(config_dict(cfg), sort_keys=False)
    saved = run_dir / "recipe.yaml"
    if resume and saved.is_file() and saved.read_text() != recipe:
        old, new = yaml.safe_load(saved.read_text()), config_dict(cfg)
        old_flat, new_flat = flat_keys(old), flat_keys(new)
        changed = sorted(k for k in new_flat if old_flat.get(k) != new_flat[k])
        print(f"note: resuming with a changed recipe ({', '.join(changed)})")
    saved.write_text(recipe)


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
    tmp, final = root / f".tmp-{_STEP_PREFIX}{step:08d}", root / f"{_STEP_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if engine != "ddp":  # every process writes its shards
        save_sharded_state(tmp, student, optimizer, engine)
    if accelerator.is_main_process:
        if engine == "ddp":
            save_model(accelerator.unwrap_model(student), str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "sampler": sampler.state_dict()}))
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in root.iterdir() if p.name.startswith(_STEP_PREFIX))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_latest(run_dir: Path, accelerator, student, optimizer, scheduler, sampler, engine: str = "ddp") -> dict:
    path = latest_checkpoint(run_dir)
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
        raise UserError(f"{path} was written by fewer processes; resume with the process count of the run")
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return state


def save_final(run_dir: Path, cfg, student, tokenizer, metrics: dict, setup) -> Path:
    """`final/`: loadable with AutoModelForCausalLM / AutoTokenizer, plus a model card with recipe and metrics."""
    final, tmp = Path(run_dir) / "final", Path(run_dir) / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(cfg, metrics, setup))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


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
