"""Nothing lost when two commands meet on one output, or after a killed `--overwrite`.

Every command that writes an output takes the lock `distill train` takes (rundir.RunLock): a second one on
the same output is refused in one line naming the first one's PID. The first one is played here by a
RunLock this test process holds on another open file description (flock conflicts between descriptions as
between processes), so nothing depends on timing. A killed `--overwrite` is played by a run that stops before
its first checkpoint while the clean-up that puts the old run back is switched off, which leaves what a
SIGKILL leaves: the old run in `.replaced-<pid>/`, the new run's first files beside it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input_helpers import (
    assert_one_error_line,
    generations_file,
    nan_loss_at,
    no_leftovers,
    run_cli,
    snapshot,
    tiny_model_run,
)

from distill.rundir import RunLock
from distill.study import __main__ as study
from distill.train import run_lifecycle, transfer_cache

FIXTURE = Path(__file__).parent / "fixtures" / "bold_small.json"
FAST = ["--max-prompts", 2, "--samples-per-prompt", 2, "--max-new-tokens", 2, "--batch-size", 2]
TRAIN = ["train.eval_steps=0", "train.log_steps=1", "train.max_steps=4", "train.save_steps=2"]
CORPUS = ["data.path=null", "data.transfer_set.num_sequences=4", "data.transfer_set.max_new_tokens=3",
          "data.transfer_set.seed_prompts=data/seed_prompts.txt"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_run(tmp_path_factory.mktemp("models"))


# ------------------------------------------------------------------ a second command on a locked output


def _held_case(case, tmp_path, model_dir):
    """(argv, the lock the first command would hold, the folder to watch)."""
    if case in ("eval", "lens_only_eval", "score"):
        out = tmp_path / "rep"
        if case == "eval":
            argv = ["eval", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--lens", "generation", "--out", out,
                    *FAST]
        elif case == "lens_only_eval":
            argv = ["eval", "--model", f"s={model_dir}", "--lens", "downstream", "--out", out]
        else:
            argv = ["score", "--generations", generations_file(tmp_path / "g.jsonl"), "--out", out]
        return argv, RunLock(out, "--out"), out
    if case == "samples":
        out = tmp_path / "s" / "samples.md"
        out.parent.mkdir()
        argv = ["samples", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--out", out, *FAST]
        return argv, RunLock(out, "--out", lock_file=out.parent / ".samples.md.lock"), out.parent
    if case == "corpus":
        cache = tmp_path / "cache"
        argv = ["corpus", "--recipe", "recipes/debug.yaml", *CORPUS, f"data.transfer_set.cache_dir={cache}"]
        assert run_cli(*argv) == 0  # built once to learn its key, then removed: the next run misses
        (built,) = [p for p in cache.iterdir() if p.is_dir()]
        shutil.rmtree(built)
        return argv, RunLock(built, "transfer set", lock_file=transfer_cache.lock_file(built)), cache
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["eval", "lens_only_eval", "score", "samples", "corpus"])
def test_a_second_command_on_the_same_output_is_refused_with_the_first_ones_pid(case, tmp_path, model_dir,
                                                                                monkeypatch, capsys):
    argv, held, watched = _held_case(case, tmp_path, model_dir)
    capsys.readouterr()
    held.acquire()
    try:
        before, model_before = snapshot(watched), snapshot(model_dir.parent)
        monkeypatch.setattr("distill.models.load_model", lambda *a, **k: 1 / 0)  # refused before any model
        assert run_cli(*argv) == 2
        assert_one_error_line(capsys, argv[0], "in use by another distill process", f"pid {os.getpid()}")
        assert snapshot(watched) == before and snapshot(model_dir.parent) == model_before
    finally:
        held.release()
    assert no_leftovers(watched) == []


def test_a_second_study_on_the_same_out_is_refused_with_the_first_ones_pid(tmp_path, capsys):
    out = tmp_path / "study"
    with RunLock(out, "--out"):
        before = snapshot(out)
        assert study.main(["--smoke", "--in-process", "--seeds", "1", "--arms", "kd", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("distill study: error: ") and len(err.strip().splitlines()) == 1, err
        assert f"pid {os.getpid()}" in err and "Traceback" not in err
        assert snapshot(out) == before
    assert not out.exists(), "the lock and the folder it made are gone, nothing else was written"


def test_eval_keeps_its_lock_through_the_rename_of_its_report_and_leaves_none(tmp_path, model_dir, monkeypatch):
    """The report folder is replaced by a rename at the end; the new folder must hold the same locked file, and
    nothing of the lock may outlive the command."""
    from distill.eval import output

    seen = {}
    real = output.write_report_dir

    def spy(out, results, write):
        real(out, results, write)
        other = RunLock(out, "--out")
        with pytest.raises(Exception, match="in use"):  # still locked after the swap
            other.acquire()
        seen["checked"] = True

    monkeypatch.setattr(output, "write_report_dir", spy)
    monkeypatch.setattr("distill.eval.eval_command.write_report_dir", spy)
    out = tmp_path / "rep"
    argv = ["eval", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--lens", "generation", "--bootstrap", 10,
            "--out", out, *FAST]
    assert run_cli(*argv) == 0 and seen["checked"]
    assert no_leftovers(out) == [] and (out / "results.json").is_file()


# --------------------------------------------------------------------------------- a killed --overwrite


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("old") / "run"
    assert run_cli("train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={out}") == 0
    return out


@pytest.fixture
def killed_overwrite(old_run, tmp_path, monkeypatch):
    """The old run, then an `--overwrite` that stopped at step 1, before its first checkpoint, without putting
    the old run back (as after SIGKILL). Returns (run folder, snapshot of the old run)."""
    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    original = snapshot(run)
    with monkeypatch.context() as m:
        nan_loss_at(m)
        m.setattr(run_lifecycle, "abandon_run", lambda *a, **k: None)
        assert run_cli("train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={run}", "--overwrite") == 2
    (kept,) = run.glob(".replaced-*")
    assert snapshot(kept) == {k: v for k, v in original.items() if k != ".lock"}
    return run, original


@pytest.mark.parametrize("extra, needles", [
    ([], ["already holds", ".replaced-", "python -m distill.rundir restore"]),
    (["--overwrite"], ["--overwrite would delete", ".replaced-", "--discard-replaced", "restore"]),
    (["--resume"], ["nothing to resume", ".replaced-", "python -m distill.rundir restore"]),
    (["--discard-replaced"], ["--discard-replaced goes with --overwrite"]),
])
def test_after_a_killed_overwrite_every_train_names_the_run_held_aside(killed_overwrite, extra, needles, capsys):
    run, _ = killed_overwrite
    capsys.readouterr()
    before = snapshot(run)
    assert run_cli("train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={run}", *extra) == 2
    assert_one_error_line(capsys, "train", *needles)
    assert snapshot(run) == before


def test_after_a_killed_overwrite_eval_names_the_run_held_aside(killed_overwrite, model_dir, capsys):
    run, _ = killed_overwrite
    capsys.readouterr()
    before = snapshot(run)
    argv = ["eval", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--out", run, "--overwrite", *FAST]
    assert run_cli(*argv) == 2
    assert_one_error_line(capsys, "eval", "training run", ".replaced-", "python -m distill.rundir restore")
    assert snapshot(run) == before


def test_the_run_held_aside_is_restored_byte_for_byte(killed_overwrite):
    run, original = killed_overwrite
    done = subprocess.run([sys.executable, "-m", "distill.rundir", "restore", str(run)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert snapshot(run) == original
    again = subprocess.run([sys.executable, "-m", "distill.rundir", "restore", str(run)], capture_output=True,
                           text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "nothing to restore" in again.stderr


def test_discard_replaced_lets_a_new_overwrite_delete_it(killed_overwrite, capsys):
    run, _ = killed_overwrite
    argv = ["train", "--recipe", "recipes/debug.yaml", *TRAIN, f"output_dir={run}", "--overwrite"]
    assert run_cli(*argv, "--discard-replaced") == 0
    assert not list(run.glob(".replaced-*")) and no_leftovers(run) == []
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    assert (run / "final" / "config.json").is_file()
