"""Faults that used to end in a traceback or in advice that did not work, each now one line (exit 2).

- `python -m distill.train.engine check` and `python -m distill.launch` on accelerate configs that accelerate's
  own launcher cannot read (a YAML list, a scalar, a section that is not a mapping, an unknown key): the
  wrapper refuses before `accelerate launch` is started, and starts it, unchanged, when the check passes.
- a transfer-set cache_dir that cannot be written: refused before any model loads, unless it already holds the
  recipe's finished set, which is then read from there; a damaged set in the cache is named and rebuilt.
- a full disk at the first checkpoint: the advice is what works (no checkpoint exists, so not --resume).
- the study's --out at a training run, inside a model's final/, or at a report: refused, nothing added.
"""

import errno
import os
import sys
from pathlib import Path

import pytest
from bad_input_helpers import (
    assert_one_error_line,
    fail_writes_under,
    no_leftovers,
    run_cli,
    snapshot,
    tiny_model_run,
)

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


# --------------------------------------------------------------------------- a transfer set's cache_dir

CORPUS = ["data.path=null", "data.transfer_set.num_sequences=4", "data.transfer_set.max_new_tokens=3",
          "data.transfer_set.seed_prompts=data/seed_prompts.txt"]


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model loaded before the cache folder was checked")

    for name in ("load_tokenizer", "build_random_model", "load_model", "load_model_and_tokenizer"):
        monkeypatch.setattr(f"distill.models.{name}", refuse)


@pytest.mark.parametrize("command", ["corpus", "train"])
@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_a_cache_dir_that_cannot_be_written_is_refused_before_any_model(command, err, tmp_path, monkeypatch,
                                                                        no_models, capsys):
    cache = tmp_path / "ro" / "cache"
    (cache / "other-set").mkdir(parents=True)  # what a shared cache holds: nothing of this recipe
    fail_writes_under(monkeypatch, tmp_path / "ro", err)
    before = snapshot(tmp_path)
    extra = [f"output_dir={tmp_path / 'run'}"] if command == "train" else []
    assert run_cli(command, "--recipe", "recipes/debug.yaml", *CORPUS, f"data.transfer_set.cache_dir={cache}",
                   *extra) == 2
    assert_one_error_line(capsys, command, f"data.transfer_set.cache_dir {cache} cannot be written",
                          os.strerror(err), "holds no finished transfer set of this recipe")
    assert not (tmp_path / "run").exists()
    assert snapshot(tmp_path) == before


def test_a_read_only_cache_that_holds_the_set_is_read_from_there(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    argv = ["corpus", "--recipe", "recipes/debug.yaml", *CORPUS, f"data.transfer_set.cache_dir={cache}"]
    assert run_cli(*argv) == 0  # built while the folder could be written
    capsys.readouterr()
    fail_writes_under(monkeypatch, cache, errno.EROFS)
    before = snapshot(cache)
    assert run_cli(*argv) == 0
    assert "reusing transfer set" in capsys.readouterr().out
    assert snapshot(cache) == before


@pytest.mark.parametrize("damage, why", [
    ("truncated", "train.jsonl has 20 bytes"),
    ("flipped_byte", "heldout.jsonl does not match its checksum"),
    ("no_checksums", "it has no checksums.json"),
    ("manifest_garbage", "manifest.json has"),
])
def test_a_damaged_transfer_set_is_named_and_built_again(damage, why, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["corpus", "--recipe", "recipes/debug.yaml", *CORPUS, f"data.transfer_set.cache_dir={cache}"]
    assert run_cli(*argv) == 0
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    good = snapshot(folder)
    if damage == "truncated":
        (folder / "train.jsonl").write_bytes((folder / "train.jsonl").read_bytes()[:20])
    elif damage == "flipped_byte":
        data = bytearray((folder / "heldout.jsonl").read_bytes())
        data[12] ^= 1
        (folder / "heldout.jsonl").write_bytes(bytes(data))
    elif damage == "no_checksums":
        (folder / "checksums.json").unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    capsys.readouterr()
    assert run_cli(*argv) == 0
    out = capsys.readouterr().out
    assert f"transfer set {folder} is damaged ({why}" in out and "building it again" in out
    rebuilt = snapshot(folder)
    assert {k: v for k, v in rebuilt.items() if k not in ("manifest.json", "checksums.json")} == \
        {k: v for k, v in good.items() if k not in ("manifest.json", "checksums.json")}, "the same set, rebuilt"
    assert run_cli(*argv) == 0 and "reusing transfer set" in capsys.readouterr().out


# --------------------------------------------------------------------------- a full disk at the first checkpoint

TRAIN = ["train.eval_steps=0", "train.log_steps=1", "train.max_steps=4", "train.save_steps=2"]


def _disk_full_at_first_checkpoint(monkeypatch):
    from distill.train import checkpoint as ckpt

    def full(model, filename, *a, **k):  # what safetensors raises when the disk is full
        raise ckpt.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                   '"No space left on device" })')

    monkeypatch.setattr(ckpt, "save_model", full)


@pytest.mark.parametrize("earlier_run", [False, True])
def test_disk_full_at_the_first_checkpoint_advises_what_works(earlier_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={run}"]
    if earlier_run:  # the failing run is an --overwrite of a finished one, which comes back
        assert run_cli(*argv, "train.max_steps=1", "train.save_steps=0") == 0
        argv.append("--overwrite")
    capsys.readouterr()
    with monkeypatch.context() as m:
        _disk_full_at_first_checkpoint(m)
        assert run_cli(*argv) == 2
    line = assert_one_error_line(capsys, "train", "could not write checkpoint step 2", "the disk is full",
                                 "nothing to resume", "start the run again with --overwrite")
    assert "then --resume" not in line and "needs about 0.0 MiB" not in line  # sized from the model, not 0
    assert run_cli("train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={run}", "--resume") == 2
    assert_one_error_line(capsys, "train", "nothing to resume")  # what --resume would have answered
    assert run_cli("train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={run}", "--overwrite") == 0
    assert (run / "final" / "config.json").is_file() and no_leftovers(run) == []


# --------------------------------------------------------------------------- the study's --out


@pytest.mark.parametrize("where, needle", [
    ("the_run", "is a training run of distill"),
    ("inside_final", "which is a model folder"),
    ("a_report", "is a report of distill"),
])
def test_the_study_refuses_an_out_in_another_output_or_a_model(where, needle, tmp_path, capsys):
    from distill.study import __main__ as study

    final = tiny_model_run(tmp_path)
    report = tmp_path / "report"
    report.mkdir()
    (report / ".distill").write_text('{"tool": "distill", "kind": "report"}\n')
    (report / "results.json").write_text("{}")
    out = {"the_run": final.parent, "inside_final": final / "study", "a_report": report}[where]
    before = snapshot(tmp_path)
    assert study.main(["--smoke", "--in-process", "--seeds", "1", "--arms", "kd", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("distill study")]
    assert len(lines) == 1 and lines[0].startswith("distill study: error: --out") and needle in lines[0], err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before
