"""The training loop: `fit` runs `kd_step` until train.max_steps, with logging, validation and checkpoints.

    result = fit(cfg, setup, accelerator, run_dir, resume=False)   # a FitResult

Per step: the sampler's micro-batches -> `step.kd_step` (targets, forward, loss, backward, clip, optimizer)
-> log every train.log_steps -> `validate` every train.eval_steps (and the fairness probe with it, also once
at step 0, before the first update) -> checkpoint every train.save_steps. No Trainer subclass and no
callbacks. A non-finite loss or gradient norm stops the run with TrainingDiverged, naming the step and the last
good checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from distill.config import Config
from distill.errors import TrainingDiverged
from distill.train import checkpoint as ckpt
from distill.train import engine as eng
from distill.train import run_lifecycle
from distill.train.data import BlockSampler
from distill.train.fairness import build_fairness_probe, probe_memo
from distill.train.losses import distill_loss, shift_labels
from distill.train.setup import Setup, make_optimizer, make_scheduler
from distill.train.step import StepDiverged, StepStats, kd_step
from distill.train.targets import teacher_targets


@dataclass
class FitResult:
    """What `fit` leaves to the command: the model to export and the figures of its model card."""

    state: dict  # "step" (the last step taken) and "tokens_seen"
    last: dict  # the last metrics.jsonl record with the latest validation and probe figures merged in
    student: torch.nn.Module  # as prepared by accelerate (and compiled): accelerator.unwrap_model gives the model
    teacher_probe: dict | None  # the fairness probe's figures for the teacher; None without the probe


def fit(cfg: Config, setup: Setup, accelerator: Accelerator, run_dir: Path, resume) -> FitResult:
    """Train to train.max_steps. `resume`: False, True (the newest intact checkpoint) or a checkpoint folder."""
    student, optimizer = eng.prepare_student(accelerator, cfg, setup.student, setup.engine,
                                             functools.partial(make_optimizer, cfg))
    scheduler = make_scheduler(cfg, optimizer)
    if cfg.train.compile:  # after prepare, so a DDP wrapper is compiled with it; unwrap_model removes both
        student = torch.compile(student)
    sampler = BlockSampler(len(setup.train_blocks), cfg.train.batch_size, cfg.train.grad_accum,
                           accelerator.num_processes, accelerator.process_index, cfg.seed)
    state = {"step": 0, "tokens_seen": 0}
    if resume:
        state = ckpt.load_latest(run_dir, accelerator, student, optimizer, scheduler, sampler,
                                 path=resume if isinstance(resume, Path) else None, engine=setup.engine)
        accelerator.print(f"resuming from step {state['step']} ({run_dir / 'checkpoints'})")

    log_file = run_dir / "metrics.jsonl"
    if accelerator.is_main_process and not resume:
        log_file.write_text("")
    fairness = build_fairness_probe(cfg, setup.teacher, setup.tokenizer, probe_memo(cfg, accelerator))
    if fairness is not None and state["step"] == 0:  # the untrained student: where the offset starts
        at_start = fairness.measure_start(student, _cut_of(cfg), setup.teacher)
        student.train()
        teacher = {f"teacher_{k}": v for k, v in fairness.teacher_figures.items()}
        if accelerator.is_main_process:
            _write_record(accelerator, log_file, None, {"step": 0, **at_start, **teacher,
                                                        "teacher_probe_seconds": fairness.teacher_seconds}, at_start)
    bar = tqdm(total=cfg.train.max_steps, initial=state["step"], desc="distill", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window = {"t0": time.perf_counter(), "tokens": 0}
    last = {}
    while state["step"] < cfg.train.max_steps:
        batches = [{**setup.train_blocks[idx], "blocks": idx} for idx in sampler.next_step()]
        try:
            stats = kd_step(cfg, setup, student, optimizer, scheduler, accelerator, batches)
        except StepDiverged as exc:
            raise TrainingDiverged(diverged_message(exc.value, state["step"] + 1, run_dir, exc.what)) from exc
        state["step"] += 1
        state["tokens_seen"] += stats.n_tokens
        window["tokens"] += stats.n_tokens
        bar.update(1)

        step = state["step"]
        if step % cfg.train.log_steps == 0 or step == cfg.train.max_steps:
            last = _log_record(cfg, setup, accelerator, stats, state, window, scheduler, sampler)
            window = {"t0": time.perf_counter(), "tokens": 0}
            bar.set_postfix(loss=f"{last['loss']:.3f}", kd=f"{last['kd']:.3f}", ce=f"{last['ce']:.3f}")
        validated = {}
        if cfg.train.eval_steps and step % cfg.train.eval_steps == 0 or step == cfg.train.max_steps:
            validated = validate(cfg, setup, student, accelerator)
            if fairness is not None:
                validated.update(_probe(fairness, student, setup))
        if accelerator.is_main_process and (last.get("step") == step or validated):
            _write_record(accelerator, log_file, bar, {**(last if last.get("step") == step else {"step": step}),
                                                       **validated}, validated)
        last.update(validated)
        if cfg.train.save_steps and step % cfg.train.save_steps == 0 and step < cfg.train.max_steps:
            ckpt.save(run_dir, step, accelerator, student, optimizer, scheduler, sampler, state,
                      keep=cfg.train.keep_checkpoints, engine=setup.engine)
            if accelerator.is_main_process:
                run_lifecycle.commit_run(run_dir)
    bar.close()
    if isinstance(setup.teacher, eng.LockstepTeacher):  # what keeping a sharded teacher in step cost
        from distill.models import count_parameters

        print(f"process {accelerator.process_index}: {setup.teacher.forwards} teacher forwards, "
              f"{setup.teacher.joined} one-token forwards joined for other processes; holds "
              f"{eng.local_numel(setup.teacher)} of the teacher's {count_parameters(setup.teacher)} parameters",
              flush=True)
    return FitResult(state, last, student, fairness.teacher_figures if fairness is not None else None)


def diverged_message(value: float, step: int, run_dir: Path, what: str = "loss") -> str:
    latest = ckpt.latest_checkpoint(run_dir)
    keep = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
    return (f"{what} became {value} at step {step}; training stopped and nothing was saved for that step; "
            f"{keep}. Lower train.lr or raise train.warmup_steps, then --resume")


def _log_record(cfg: Config, setup: Setup, accelerator: Accelerator, stats: StepStats, state: dict, window: dict,
                scheduler, sampler: BlockSampler) -> dict:
    """The metrics.jsonl record of this step: global token means of the loss terms, throughput, schedule."""
    n, sums = stats.n_tokens, stats.sums.all_reduced(accelerator)
    kd, ce, cos, balance = (x.item() / n for x in (sums.kd, sums.ce, sums.cos, sums.balance))
    swapped = sums.swapped.item() / sampler.global_batch
    elapsed = time.perf_counter() - window["t0"]
    return {
        "step": state["step"],
        "loss": cfg.loss.alpha_kd * kd + cfg.loss.alpha_ce * ce + cfg.loss.alpha_cos * cos
        + cfg.loss.alpha_balance * balance,
        "kd": kd, "ce": ce, "cos": cos, "balance": balance,
        "lr": scheduler.get_last_lr()[0], "grad_norm": stats.grad_norm,
        "tokens_per_s": window["tokens"] / max(elapsed, 1e-9), "tokens_seen": state["tokens_seen"],
        "epoch": sampler.epoch,
        "swapped_share": swapped,
        "teacher_changed_share": stats.changed_share,
        **({"teacher_topk_mass": stats.topk_mass, "teacher_cache_hit_share": setup.target_cache.hit_share}
           if setup.target_cache is not None else {}),
        "cf_exact": stats.cf_exact, "cf_aligned": stats.cf_aligned,
    }


def _write_record(accelerator: Accelerator, log_file: Path, bar, record: dict, validated: dict) -> None:
    with log_file.open("a") as f:
        f.write(json.dumps(record) + "\n")
    accelerator.log(record, step=record["step"])
    if validated:
        line = f"step {record['step']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in validated.items() if isinstance(v, (int, float)))
        (bar.write if bar is not None else tqdm.write)(line)


def _cut_of(cfg: Config) -> list[int] | None:
    """The teacher blocks a student is cut from: then its starting weights are the same in every run."""
    layers = cfg.student.from_teacher_layers
    return list(layers) if layers is not None else None


def _probe(fairness, student, setup: Setup) -> dict:
    """The fairness probe's figures for the student (every process runs it: a sharded student needs all)."""
    figures = fairness.measure(student, setup.teacher)
    student.train()
    return figures


@torch.no_grad()
def validate(cfg: Config, setup: Setup, student, accelerator: Accelerator) -> dict:
    """Validation: student CE (and perplexity) and plain KD against the teacher, token-weighted."""
    if setup.val_blocks is None:
        return {}
    student.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # ce, kd, tokens
    bs = cfg.train.batch_size
    n = min(len(setup.val_blocks), cfg.train.eval_batches * bs * accelerator.num_processes)
    # Every process runs the same number of rounds (sharded models need all of them in every forward); a process
    # past the end scores one block with weight 0.
    rounds = -(-n // (bs * accelerator.num_processes))
    for r in range(rounds):
        start = (r * accelerator.num_processes + accelerator.process_index) * bs
        weight = 1.0 if start < n else 0.0
        ids = setup.val_blocks[start : min(start + bs, n)]["input_ids"] if weight else setup.val_blocks[0:1]["input_ids"]
        ids = ids.to(accelerator.device)
        labels = shift_labels(ids)
        with accelerator.autocast():
            target = teacher_targets(setup.teacher, ids, mode="none", temperature=cfg.loss.temperature,
                                     vocab_rows=setup.vocab_rows)
            logits = student(input_ids=ids, use_cache=False).logits[..., : setup.vocab_rows]
        _, kd, ce = distill_loss(logits, target.probs, labels, w_kd=0.0, w_ce=0.0,
                                 temperature=cfg.loss.temperature, kind=cfg.loss.divergence,
                                 beta=cfg.loss.jsd_beta, chunk_size=cfg.loss.chunk_size)
        sums += weight * torch.stack([ce.double(), kd.double(), (labels != -100).sum().double()])
    eng.drain(setup.teacher)
    student.train()
    ce, kd, tokens = accelerator.reduce(sums, "sum").tolist()
    if tokens == 0:
        return {}
    return {"val_ce": ce / tokens, "val_ppl": math.exp(min(ce / tokens, 50.0)), "val_kd": kd / tokens}
