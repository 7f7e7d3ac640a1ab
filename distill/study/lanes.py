"""Training the study's runs in parallel lanes: `python -m distill.study --lanes N`.

On a small CPU, N runs with cores/N threads each, every lane pinned to its own cores, finish sooner than the
same runs one after another on all cores: every parallel region of a run waits for its slowest thread, and
on a shared machine that thread is often descheduled (figures in docs/study.md). On a GPU the lanes share
the device; leave N at 1 there.

Each run is a `distill train` subprocess whose output goes to OUT/logs/ARM_sSEED.log (interleaved progress
bars would be unreadable); the study prints a line as each run starts and ends. A failed run does not stop the
others; the study then names the failed runs' logs, and a rerun resumes (finished runs are kept).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from distill.errors import UserError
from distill.hardware import usable_cores

POLL_SECONDS = 2.0


def check_lanes(lanes: int, in_process: bool) -> None:
    cores = len(usable_cores())
    if lanes < 1:
        raise UserError(f"--lanes/STUDY_LANES must be at least 1, got {lanes}")
    if lanes > cores:
        raise UserError(f"--lanes {lanes} is more than the {cores} cores this process may use; "
                        f"give at most {cores} (one thread per lane)")
    if lanes > 1 and in_process:
        raise UserError("--lanes above 1 runs each training as its own process; drop --in-process")


def lane_cores(lanes: int) -> list[list[int]]:
    """Lane i's cores: an equal, disjoint share of the usable cores (the remainder goes unused)."""
    cores = usable_cores()
    per = len(cores) // lanes
    return [cores[i * per:(i + 1) * per] for i in range(lanes)]


DISTILL = (sys.executable, "-m", "distill")


def _start(command: list[str], cores: list[int], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
    pin = (lambda: os.sched_setaffinity(0, cores)) if hasattr(os, "sched_setaffinity") else None
    with open(log_path, "w", encoding="utf-8") as log:  # the child keeps its own handle
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)


def run_in_lanes(jobs: list[tuple[str, list[str]]], lanes: int, log_dir: Path, say,
                 program: tuple[str, ...] = DISTILL) -> None:
    """Run `distill ARGV` (`program` + argv) for each (name, argv) of `jobs`, at most `lanes` at a time, each
    lane on its own cores. Raises UserError naming the failed runs' logs after every job has ended."""
    log_dir.mkdir(parents=True, exist_ok=True)
    queue, free = list(jobs), list(range(lanes))
    cores = lane_cores(lanes)
    active: dict[int, tuple[str, subprocess.Popen, float, Path]] = {}
    failed: list[str] = []
    done = 0
    while queue or active:
        while queue and free:
            lane = free.pop(0)
            name, argv = queue.pop(0)
            log_path = log_dir / f"{name}.log"
            say(f"[lane {lane}, cores {','.join(map(str, cores[lane]))}] start {name}: {' '.join(argv)} "
                f"(log {log_path})")
            active[lane] = (name, _start([*program, *argv], cores[lane], log_path), time.time(), log_path)
        time.sleep(POLL_SECONDS)
        for lane, (name, proc, t0, log_path) in list(active.items()):
            if proc.poll() is None:
                continue
            done += 1
            minutes = (time.time() - t0) / 60
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {log_path})"
            say(f"[{done}/{len(jobs)}] {name} {status} in {minutes:.1f} min on lane {lane}")
            if proc.returncode != 0:
                failed.append(str(log_path))
            del active[lane]
            free.append(lane)
    if failed:
        raise UserError(f"{len(failed)} training run(s) failed: see {', '.join(failed)}; "
                        "rerun the study to resume (finished runs are kept)")
