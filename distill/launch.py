"""`python -m distill.launch`: `accelerate launch`, after a one-line check of what it is asked to launch.

    python -m distill.launch --config_file recipes/accelerate/fsdp.yaml -m distill train --recipe recipes/debug.yaml
    make launch CONFIG=recipes/accelerate/fsdp.yaml RECIPE=recipes/debug.yaml

accelerate's launcher reads its config file and imports the engine's package before any distill code runs, so
a config that is not a mapping, a key it does not know, or a DeepSpeed config without DeepSpeed installed stops
it with a traceback of its own, which distill cannot catch. This wrapper parses the arguments with the
launcher's own parser, reads the config with the launcher's own loader (the file named by --config_file, else
accelerate's default config when there is one), applies the checks of `python -m distill.train.engine check`
to the engine that results (the file's choice, or --use_deepspeed / --use_fsdp), and only then hands every
argument, unchanged, to `accelerate launch`. A problem is one line (`distill launch: error: ...`, exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys

from distill.accelerate_config import read_accelerate_config
from distill.errors import UserError


def _launcher_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """(the launcher's parsed arguments, the options given explicitly): accelerate's own parser, whose usage
    errors become one line."""
    from accelerate.commands.launch import launch_command_parser

    def fail(message):
        raise UserError(f"accelerate launch: {message}")

    parser = launch_command_parser()
    parser.error = fail
    args = parser.parse_args(argv)
    bare = launch_command_parser()
    bare.error = fail
    for action in bare._actions:  # a second parse without defaults: what the command line itself says
        action.default = argparse.SUPPRESS
    return args, vars(bare.parse_args(argv))


def check_launch(argv: list[str]) -> str:
    """The engine `accelerate launch argv` will start distill under ('ddp', 'fsdp', 'deepspeed'), or one
    UserError line saying what to install or set."""
    from accelerate.commands.config.config_args import default_config_file

    from distill.train.engine import check_request

    args, given = _launcher_args(argv)
    config = args.config_file or (default_config_file if os.path.isfile(default_config_file) else None)
    data = read_accelerate_config(config) if config else {}
    kind = str(data.get("distributed_type", "NO")).upper()
    if given.get("use_deepspeed"):
        kind = "DEEPSPEED"
    elif given.get("use_fsdp"):
        kind = "FSDP"
    engine = "deepspeed" if kind == "DEEPSPEED" else "fsdp" if kind == "FSDP" else "ddp"
    fsdp = data.get("fsdp_config") or {}
    check_request(engine, given.get("fsdp_version", fsdp.get("fsdp_version")),
                  given.get("fsdp_auto_wrap_policy", fsdp.get("fsdp_auto_wrap_policy")))
    return engine


def main(argv: list[str] | None = None) -> int:
    """Check, then replace this process with `accelerate launch argv` (the same arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m distill.launch [accelerate launch options] -m distill train --recipe R [key=value ...]")
        return 0 if argv else 2
    from distill.errors import report

    try:
        check_launch(argv)
        sys.stdout.flush()
    except (UserError, OSError) as exc:
        return report("distill launch", exc)
    os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", *argv])
    return 0  # not reached: execv does not return


if __name__ == "__main__":
    raise SystemExit(main())
