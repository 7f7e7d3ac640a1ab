"""Faults that used to end in a traceback or in advice that did not work, each now one line (exit 2).

- `python -m distill.train.engine check` and `python -m distill.launch` on accelerate configs that accelerate's
  own launcher cannot read (a YAML list, a scalar, a section that is not a mapping, an unknown key): the
  wrapper refuses before `accelerate launch` is started, and starts it, unchanged, when the check passes.
"""

import os
import sys
from pathlib import Path

import pytest

from distill import launch
from distill.train import engine

# --------------------------------------------------------------------------- accelerate configs and launch

BAD_CONFIGS = {
    "a_yaml_list": ("- distributed_type: FSDP\n- num_processes: 2\n", "holds a list, not a mapping"),
    "a_scalar": ("FSDP\n", "holds a str, not a mapping"),
    "fsdp_config_a_list": ("distributed_type: FSDP\nfsdp_config: [fsdp_version, 2]\n",
                           "fsdp_config must be a mapping"),
    "distributed_type_a_list": ("distributed_type: [FSDP]\n", "distributed_type must be a string"),
    "num_processes_text": ("distributed_type: MULTI_GPU\nnum_processes: two\n", "num_processes must be an integer"),
    "unknown_distributed_type": ("distributed_type: FSDPP\n", "'FSDPP' is not a valid DistributedType"),
    "unknown_key": ("distributed_type: 'NO'\nnum_procesess: 2\n", "unknown keys (['num_procesess'])"),
    "unquoted_no": ("distributed_type: NO\n", "write 'NO'"),
    "latin1": ("distributed_type: 'NO'\n# caf\xe9\n", "is not UTF-8 text"),
    "not_yaml": ("distributed_type: [FSDP\n", "is not valid YAML"),
}


def _config(tmp_path, case) -> Path:
    text, _ = BAD_CONFIGS[case]
    path = tmp_path / "acc.yaml"
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_engine_check_gives_one_line_on_a_config_accelerate_cannot_read(case, tmp_path, capsys):
    path = _config(tmp_path, case)
    assert engine.main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"distill engine: error: accelerate config {path}") and BAD_CONFIGS[case][1] in err


@pytest.fixture
def no_exec(monkeypatch):
    """Record the exec of `accelerate launch` instead of doing it; no default accelerate config."""
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    monkeypatch.setattr("accelerate.commands.config.config_args.default_config_file", "/nonexistent/default.yaml")
    return calls


@pytest.mark.parametrize("case", ["a_yaml_list", "unknown_key", "fsdp_config_a_list"])
def test_launch_refuses_a_malformed_config_before_accelerate_starts(case, tmp_path, no_exec, capsys):
    path = _config(tmp_path, case)
    assert launch.main(["--config_file", str(path), "-m", "distill", "train", "--recipe", "recipes/debug.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill launch: error: ") and err.count("\n") == 1 and BAD_CONFIGS[case][1] in err
    assert no_exec == []


@pytest.mark.parametrize("argv", [
    ["--config_file", "recipes/accelerate/deepspeed_zero3.yaml"],
    ["--use_deepspeed"],
])
def test_launch_refuses_deepspeed_when_it_is_not_installed(argv, monkeypatch, no_exec, capsys):
    monkeypatch.setattr(engine, "_deepspeed_installed", lambda: False)
    assert launch.main([*argv, "-m", "distill", "train", "--recipe", "recipes/debug.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill launch: error: ") and err.count("\n") == 1 and "pip install deepspeed" in err
    assert no_exec == []


def test_launch_reads_accelerates_default_config_when_none_is_given(tmp_path, monkeypatch, no_exec, capsys):
    default = _config(tmp_path, "a_yaml_list")
    monkeypatch.setattr("accelerate.commands.config.config_args.default_config_file", str(default))
    assert launch.main(["-m", "distill", "train", "--recipe", "recipes/debug.yaml"]) == 2
    assert "holds a list" in capsys.readouterr().err and no_exec == []


def test_launch_usage_errors_are_one_line(no_exec, capsys):
    assert launch.main(["--num_processes", "two", "-m", "distill", "train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid int value: 'two'" in err and no_exec == []


def test_launch_hands_the_arguments_unchanged_to_accelerate_launch(no_exec):
    argv = ["--config_file", "recipes/accelerate/fsdp.yaml", "--num_processes", "2", "-m", "distill", "train",
            "--recipe", "recipes/debug.yaml", "train.max_steps=2"]
    launch.main(argv)
    assert no_exec == [[sys.executable, "-m", "accelerate.commands.launch", *argv]]
