"""Wall time per step of a multi-command job (the demo), and a table of them at the end.

    python -m distill.timing run --log out/demo_runs/timings.jsonl --name corpus --new -- distill corpus ...
    python -m distill.timing run --log out/demo_runs/timings.jsonl --name "train kd" -- distill train ...
    python -m distill.timing table out/demo_runs/timings.jsonl --json out/demo/timings.json

`run` runs the command after `--` as it is (same terminal, same exit status) and appends one JSON line to the
log: the step's name, its wall seconds, its exit status and the command. `--new` starts a new log (the first
step of a job), so a second demo does not add to the first one's times. `table` prints one line per step and
the total, and writes them as JSON: {"steps": [{"name", "seconds", "exit_code", "command"}], "total_seconds",
"machine": {"cpus", "cpu_capability"}}. The log lives outside the report folder because `distill eval` replaces
that folder whole.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distill.atomic import write_text_atomic


def run_step(log: Path, name: str, command: list[str], new: bool = False) -> int:
    """Run `command`, append its wall time to `log`, return its exit status."""
    if new:
        log.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(command)
    except OSError as exc:
        print(f"distill.timing: cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it finish its own clean-up
        code = proc.wait()
    seconds = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"name": name, "seconds": round(seconds, 1), "exit_code": code, "command": command})
                + "\n")
    return code


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary(steps: list[dict]) -> dict:
    return {"steps": steps, "total_seconds": round(sum(s["seconds"] for s in steps), 1), "machine": _machine()}


def format_table(result: dict) -> str:
    width = max([len("total")] + [len(s["name"]) for s in result["steps"]])
    lines = [f"{'step':<{width}}  {'seconds':>8}"]
    for s in result["steps"]:
        failed = "" if s["exit_code"] == 0 else f"  (exit status {s['exit_code']})"
        lines.append(f"{s['name']:<{width}}  {s['seconds']:>8.1f}{failed}")
    lines.append(f"{'total':<{width}}  {result['total_seconds']:>8.1f}")
    return "\n".join(lines)


def _machine() -> dict:
    """What the times depend on most: the core count and the vector instructions torch uses."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch missing or too old to say: the table is still worth printing
        capability = None
    return {"cpus": os.cpu_count(), "cpu_capability": capability}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m distill.timing", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_run = sub.add_parser("run", help="run the command after `--` and log its wall time")
    p_run.add_argument("--log", required=True, type=Path, help="JSON-lines log the step is appended to")
    p_run.add_argument("--name", required=True, help="the step's name in the table")
    p_run.add_argument("--new", action="store_true", help="start a new log (the job's first step)")
    p_table = sub.add_parser("table", help="print the logged steps and write them as JSON")
    p_table.add_argument("log", type=Path)
    p_table.add_argument("--json", type=Path, help="where to write the table as JSON")
    args = parser.parse_args(argv)

    if args.action == "run":
        if not command:
            parser.error("give the command to time after `--`, e.g. -- distill corpus --recipe R")
        return run_step(args.log, args.name, command, args.new)
    if command:
        parser.error("`table` takes no command after `--`")
    if not args.log.is_file():
        print(f"distill.timing: no step log at {args.log}; the steps write it with "
              "`python -m distill.timing run --log ...`", file=sys.stderr)
        return 2
    result = summary(read_log(args.log))
    print(format_table(result))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
        print(f"(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
