"""Reading an accelerate config file the way accelerate's launcher will, with one line for what it would refuse.

    from distill.accelerate_config import read_accelerate_config
    data = read_accelerate_config("recipes/accelerate/fsdp.yaml")   # {"distributed_type": "FSDP", ...}

Its own module because both the launcher wrapper (`distill.launch`) and the engine check
(`python -m distill.train.engine check`) read configs, and the wrapper also runs the engine's checks.
"""

from __future__ import annotations

from pathlib import Path

from distill.errors import UserError

_SECTIONS = ("fsdp_config", "deepspeed_config", "megatron_lm_config", "dynamo_config", "fp8_config",
             "parallelism_config", "mpirun_config")
_INTS = ("num_processes", "num_machines", "machine_rank", "main_process_port")
_STRINGS = ("distributed_type", "compute_environment", "mixed_precision")


def read_accelerate_config(path: str | Path) -> dict:
    """The accelerate config at `path` as a mapping, refused in one line where accelerate's launcher would stop
    with a traceback: not a file, not UTF-8, not YAML, not a mapping, a section that is not a mapping, a setting of
    the wrong type (a list for distributed_type, text for num_processes), or anything accelerate's own loader
    rejects (an unknown key, an unknown distributed_type)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"accelerate config {p} does not exist; see recipes/accelerate/")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"accelerate config {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); see recipes/accelerate/") from None
    except yaml.YAMLError as exc:
        raise UserError(f"accelerate config {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"accelerate config {p} holds a {type(data).__name__}, not a mapping of keys such as "
                        "distributed_type: FSDP; start from one in recipes/accelerate/")
    for key in _SECTIONS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise UserError(f"accelerate config {p}: {key} must be a mapping of keys, not "
                            f"{type(data[key]).__name__} {data[key]!r}; see recipes/accelerate/")
    for key in _INTS:
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int)):
            raise UserError(f"accelerate config {p}: {key} must be an integer, not {data[key]!r}")
    for key in _STRINGS:
        if data.get(key) is not None and not isinstance(data[key], str):
            hint = " (YAML reads an unquoted NO as false: write 'NO')" if isinstance(data[key], bool) else ""
            raise UserError(f"accelerate config {p}: {key} must be a string as in recipes/accelerate/, not "
                            f"{data[key]!r}{hint}")
    try:
        from accelerate.commands.config.config_args import load_config_from_file

        load_config_from_file(str(p))
    except Exception as exc:  # whatever accelerate's launcher would raise on this file, as one line
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise UserError(f"accelerate config {p} is refused by accelerate's launcher: {first}") from None
    return data
