"""Step memory of the benchmark: the allocator peak of one step in this process, and whole-process peak RSS in
fresh child processes (see `distill.bench.run` for what the keys mean)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path

import torch

from distill.bench.setup import Trainer, build_setup, make_configs, run_child

MEMORY_CONFIGS = ("ce", "kd", "kd_unchunked", "crr")


def unchunked_distill_loss(student_logits, teacher_probs, labels, *, w_kd, w_ce, temperature, kind="forward_kl",
                           beta=0.5, chunk_size=None, reuse_teacher_buffer=False):
    """`losses.distill_loss` written the simple way: kd_loss + ce_loss under plain autograd (no chunks; the
    chunking and buffer-reuse arguments are accepted and ignored)."""
    from distill.train.losses import ce_loss, kd_loss

    ce = ce_loss(student_logits, labels)
    kd = (kd_loss(student_logits, teacher_probs, labels, temperature=temperature, kind=kind, beta=beta)
          if teacher_probs is not None else ce.new_zeros(()))
    total = w_kd * kd + w_ce * ce
    return total, kd.detach(), ce.detach()


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def allocated_peak(fn) -> int:
    """Peak bytes held by torch's CPU allocator while `fn()` runs, above the bytes held when it started."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints a line at start and at stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    cur = peak = 0
    for _, n in events:
        cur += n
        peak = max(peak, cur)
    return peak


def measure_step_memory(trainer: Trainer, cfgs: dict, name: str, batch: dict, rss: bool) -> dict:
    """rss: peak RSS of one step (a fresh child process); else the allocator trace of one step."""
    cfg = cfgs["kd" if name == "kd_unchunked" else name]
    loss_fn = unchunked_distill_loss if name == "kd_unchunked" else None  # None: kd_step's distill_loss
    gc.collect()
    out = {}
    if rss:
        before = _proc_status_kb("VmRSS")
        ok = _reset_peak_rss()
        trainer.step(cfg, batch, loss_fn=loss_fn)
        peak = _proc_status_kb("VmHWM")
        if ok and before is not None and peak is not None:
            out.update(rss_before_mb=before / 1024, rss_peak_mb=peak / 1024, rss_step_mb=(peak - before) / 1024)
    else:
        out["alloc_peak_mb"] = allocated_peak(lambda: trainer.step(cfg, batch, loss_fn=loss_fn)) / 2**20
    return out


def measure_memory(settings: dict, tokenizer_dir: Path, workdir: Path, batch: dict, threads: int,
                   trainer: Trainer | None, cfgs: dict) -> dict:
    """Step working memory (allocator trace) in this process, whole-process RSS in fresh children."""
    per = {}
    if trainer is not None:  # allocator trace: independent of what the process did before
        for name in MEMORY_CONFIGS:
            per[name] = measure_step_memory(trainer, cfgs, name, batch, rss=False)
    batch_path = workdir / "memory_batch.pt"
    torch.save(batch, batch_path)
    spec = {"settings": settings, "tokenizer_dir": str(tokenizer_dir), "workdir": str(workdir),
            "batch_path": str(batch_path), "threads": threads, "rss": True}
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    groups = [["ce"], ["kd"]] if settings["memory_fresh_process_per_config"] else [["ce", "kd"]]
    for names in groups:
        res = run_child({**spec, "configs": names}, workdir, "mem_" + "_".join(names), env)
        for name, vals in res.items():
            per.setdefault(name, {}).update({f"process_{k}": v for k, v in vals.items()})
    return per


def memory_child(spec: dict, tok, batch: dict) -> dict:
    """In a fresh child process: peak RSS of one step of each configuration in spec["configs"]."""
    from accelerate import Accelerator

    workdir = Path(spec["workdir"])
    cfgs = make_configs(spec["settings"], Path(spec["tokenizer_dir"]), workdir)
    names = spec["configs"]
    setup = build_setup(cfgs["kd"], tok, torch.device("cpu"), with_teacher=any(n != "ce" for n in names))
    gc.collect()
    trainer = Trainer(cfgs["kd"], setup, Accelerator(cpu=True))
    trainer.init_optimizer_state()
    return {name: measure_step_memory(trainer, cfgs, name, batch, rss=spec["rss"]) for name in names}
