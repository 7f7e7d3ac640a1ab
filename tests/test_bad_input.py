"""Issue 16 for `distill train`: nothing lost, one line (exit 2, no traceback) for every bad input.

Each class is one parametrised test. A case builds its folders, runs the command in-process and then checks
the exit code, that stderr holds exactly one line besides progress bars, and that the folders it watches are
byte for byte what they were (nothing deleted or half-written, no lock or temporary file left behind).
Runs use recipes/debug.yaml (a random 4-block teacher of width 64): about a second each.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from bad_input_helpers import (
    assert_one_error_line,
    message_lines,
    nan_loss_at,
    no_leftovers,
    run_cli,
    snapshot,
)

from distill.rundir import RunLock
from distill.train import checkpoint as ckpt
from distill.train import export, run_lifecycle

CORPUS = Path("data/tiny_corpus.txt")
# The base run's settings: a resume with them changes no key of the recipe. Steps take 0.1-3 s on a busy
# 2-core machine, so every run here is a few steps.
FAST = ["train.eval_steps=0", "train.log_steps=1", "train.max_steps=5", "train.save_steps=2"]


def train(out, *extra):
    return run_cli("train", "--recipe", "recipes/debug.yaml", *FAST, f"output_dir={out}", *extra)


def train_args(*extra):
    """Like `train`, with output_dir among `extra`."""
    return run_cli("train", "--recipe", "recipes/debug.yaml", *FAST, *extra)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished run: checkpoints at steps 2 and 4, final model after step 5."""
    out = tmp_path_factory.mktemp("base") / "run"
    with pytest.raises(SystemExit) as info:
        from distill.cli import main

        main(["train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", *FAST])
    assert info.value.code == 0
    return out


def copy_run(base_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


# ------------------------------------------------------------------------------------------- data loss


def _loss_case(case, tmp_path, base_run, monkeypatch):
    """(argv extras, folder to watch, needles of the message)."""
    if case == "overwrite_dir_holding_the_corpus":
        d = tmp_path / "D"
        d.mkdir()
        shutil.copy(CORPUS, d / "corpus.txt")
        (d / "notes.md").write_text("mine")
        return [f"output_dir={d}", f"data.path={d / 'corpus.txt'}", "--overwrite"], d, ["contains", "corpus.txt"]
    if case == "overwrite_dir_that_is_no_run":
        d = tmp_path / "D"
        d.mkdir()
        (d / "thesis.tex").write_text("years of work")
        (d / "metrics.jsonl").write_text("{}\n")
        return [f"output_dir={d}", "--overwrite"], d, ["not an output of distill", ".distill"]
    if case == "output_dir_inside_the_data_folder":
        d = tmp_path / "corpus"
        d.mkdir()
        shutil.copy(CORPUS, d / "a.txt")
        return [f"output_dir={d / 'run'}", f"data.path={d}"], d, ["lies inside"]
    if case == "overwrite_a_report_folder":
        d = tmp_path / "report"
        d.mkdir()
        (d / ".distill").write_text('{"tool": "distill", "kind": "report"}\n')
        (d / "results.json").write_text("{}")
        return [f"output_dir={d}", "--overwrite"], d, ["is a report of distill"]
    if case == "second_process_on_a_locked_run":
        run = copy_run(base_run, tmp_path)
        lock = RunLock(run).acquire()  # another open file description: flock conflicts as across processes
        globals()["_held_lock"] = lock  # released by the test once the command has run
        return [f"output_dir={run}", "--resume"], None, [f"pid {os.getpid()}", "in use"]
    if case == "resume_with_another_architecture":
        run = copy_run(base_run, tmp_path)
        return [f"output_dir={run}", "--resume", "student.from_teacher_layers=[0,1,3]"], run, \
            ["student.from_teacher_layers ([0, 3] -> [0, 1, 3])"]
    if case == "resume_with_another_learning_rate":
        run = copy_run(base_run, tmp_path)
        return [f"output_dir={run}", "--resume", "train.lr=0.5", "loss.alpha_ce=1"], run, \
            ["loss.alpha_ce", "train.lr"]
    if case == "resume_that_stops_on_nan_keeps_the_recipe":
        run = copy_run(base_run, tmp_path)
        nan_loss_at(monkeypatch, 1)
        # the metrics of steps 3-5 go (resume restarts at step 4): snapshot what must stay, not the log
        (run / "metrics.jsonl").unlink()
        return [f"output_dir={run}", "--resume", "train.max_steps=9"], run, ["loss became nan at step 5"]
    if case == "overwrite_of_a_finished_run_that_fails_at_step_1":
        run = copy_run(base_run, tmp_path)
        nan_loss_at(monkeypatch, 1)
        return [f"output_dir={run}", "--overwrite", "train.max_steps=3", "train.save_steps=2"], run, \
            ["loss became nan at step 1"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "overwrite_dir_holding_the_corpus", "overwrite_dir_that_is_no_run", "output_dir_inside_the_data_folder",
    "overwrite_a_report_folder", "second_process_on_a_locked_run", "resume_with_another_architecture",
    "resume_with_another_learning_rate", "resume_that_stops_on_nan_keeps_the_recipe",
    "overwrite_of_a_finished_run_that_fails_at_step_1",
])
def test_nothing_is_lost(case, tmp_path, base_run, monkeypatch, capsys):
    extra, watched, needles = _loss_case(case, tmp_path, base_run, monkeypatch)
    before = snapshot(watched) if watched else None
    try:
        assert train_args(*extra) == 2
    finally:
        held = globals().pop("_held_lock", None)
        if held is not None:
            held.release()
    assert_one_error_line(capsys, "train", *needles)
    if watched is not None:
        assert snapshot(watched) == before
        assert no_leftovers(watched) == []
    assert not (tmp_path / "run").exists() or no_leftovers(tmp_path / "run") == []


def test_overwrite_replaces_a_run_and_a_stale_lock_is_taken_over(tmp_path, base_run, capsys):
    run = copy_run(base_run, tmp_path)
    (run / ".lock").write_text("999999999\n")  # left by a killed run: no process holds its flock
    assert train(run, "--overwrite", "train.max_steps=3", "train.save_steps=2") == 0
    assert "taking it over" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    assert no_leftovers(run) == []
    assert json.loads((run / ".distill").read_text()) == {"tool": "distill", "kind": "run"}


# ------------------------------------------------------------------- tracebacks that became one line


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _one_line_case(case, tmp_path, base_run, monkeypatch):
    """(argv extras, folder to watch, needles)."""
    new = tmp_path / "new"
    if case.startswith("override:"):
        return [f"output_dir={new}", case.split(":", 1)[1]], None, []
    if case == "single_checkpoint_truncated_model":
        run = copy_run(base_run, tmp_path)
        shutil.rmtree(run / "checkpoints" / "step-00000002")
        _truncate(run / "checkpoints" / "step-00000004" / "model.safetensors")
        return [f"output_dir={run}", "--resume"], run, ["model.safetensors is damaged or truncated"]
    if case == "resume_from_a_damaged_optimizer":
        run = copy_run(base_run, tmp_path)
        _truncate(run / "checkpoints" / "step-00000002" / "optimizer.pt")
        return [f"output_dir={run}", "--resume-from", "step-2"], run, ["optimizer.pt is damaged"]
    if case == "garbage_trainer_state":
        run = copy_run(base_run, tmp_path)
        for step in ("00000002", "00000004"):
            (run / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text('{"step": 4, "sam')
        return [f"output_dir={run}", "--resume"], run, ["trainer_state.json is damaged"]
    if case == "resume_from_a_missing_step":
        run = copy_run(base_run, tmp_path)
        return [f"output_dir={run}", "--resume-from", "step-3"], run, ["have: step-00000002, step-00000004"]
    if case == "output_dir_under_a_file":
        (tmp_path / "afile").write_text("x")
        return [f"output_dir={tmp_path / 'afile' / 'run'}"], tmp_path, ["is a file"]
    if case == "output_dir_under_proc":
        return ["output_dir=/proc/distill-run"], None, ["cannot be written"]
    if case in ("disk_full_in_torch_save", "disk_full_in_safetensors"):
        run = new
        real_save, calls = torch.save, {"n": 0}

        def full_torch_save(obj, f, *a, **k):
            calls["n"] += 1
            if calls["n"] > 4:  # the second checkpoint: optimizer.pt
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            return real_save(obj, f, *a, **k)

        real_save_model = ckpt.save_model

        def full_save_model(model, filename, *a, **k):
            if "step-00000004" in filename:  # what safetensors raises when the disk is full
                raise ckpt.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                           'message: "No space left on device" })')
            return real_save_model(model, filename, *a, **k)

        if case == "disk_full_in_torch_save":
            monkeypatch.setattr(ckpt.torch, "save", full_torch_save)
        else:
            monkeypatch.setattr(ckpt, "save_model", full_save_model)
        return [f"output_dir={run}", "train.max_steps=6", "train.save_steps=2"], None, \
            ["could not write checkpoint step 4", "disk is full", "step-00000002 is intact"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "override:train.lr=[1,", "override:student.train_layers=[0, 1", "override:data.block_size=256",
    "override:teacher.config.n_embd=66", "override:teacher.config.model_type=no_such_model",
    "override:student.train_layers=[0,a]", "override:student.train_layers=[-1]", "override:student.train_layers=[1,1]",
    "override:student.train_layers=[5]", "override:student.from_teacher_layers=[0,1.5]",
    "override:student.from_teacher_layers=[0,7]", "override:student.from_teacher_layers=[True]",
    "single_checkpoint_truncated_model", "resume_from_a_damaged_optimizer", "garbage_trainer_state",
    "resume_from_a_missing_step", "output_dir_under_a_file", "output_dir_under_proc", "disk_full_in_torch_save",
    "disk_full_in_safetensors",
])
def test_one_line_instead_of_a_traceback(case, tmp_path, base_run, monkeypatch, capsys):
    extra, watched, needles = _one_line_case(case, tmp_path, base_run, monkeypatch)
    before = snapshot(watched) if watched else None
    assert train_args(*extra) == 2
    assert_one_error_line(capsys, "train", *needles)
    if watched is not None:
        assert snapshot(watched) == before
    if case.startswith("disk_full"):
        ckpts = tmp_path / "new" / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002"], "no half-written checkpoint"
        assert not (tmp_path / "new" / ".lock").exists()
    elif case.startswith("override:"):
        assert not (tmp_path / "new").exists()


def test_block_size_beyond_a_random_students_positions(tmp_path, capsys):
    student = "student.config={model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 32}"
    assert train(tmp_path / "new", "student.from_teacher_layers=null", student) == 2
    assert_one_error_line(capsys, "train", "32 positions of the student.config")


def test_damaged_newest_checkpoint_falls_back_to_the_previous_and_says_so(tmp_path, base_run, capsys):
    run = copy_run(base_run, tmp_path)
    _truncate(run / "checkpoints" / "step-00000004" / "model.safetensors", 0.9)
    assert train(run, "--resume", "train.max_steps=5") == 0
    out = capsys.readouterr().out
    assert "step-00000004/model.safetensors is damaged" in out and "resuming from step 2" in out
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5], "rows after the checkpoint were dropped before being logged again"


def test_a_failed_final_write_says_where_the_model_went(tmp_path, monkeypatch, capsys):
    real = export._write_final

    def fail_in_run_dir(folder, *args):
        if "distill-final-" not in str(folder):
            raise OSError(30, "Read-only file system")
        return real(folder, *args)

    monkeypatch.setattr(export, "_write_final", fail_in_run_dir)
    assert train(tmp_path / "new", "train.max_steps=2", "train.save_steps=0") == 2
    line = assert_one_error_line(capsys, "train", "could not write the final model", "Read-only file system")
    rescue = Path(line.split("written to ")[1].split(" instead")[0])
    assert (rescue / "model.safetensors").is_file()
    shutil.rmtree(rescue)


# ------------------------------------------------------------------------------------ messages that mislead


def _misleading_case(case, tmp_path, base_run, monkeypatch):
    new = tmp_path / "new"
    corpus = tmp_path / "corpus.txt"
    if case == "empty_corpus":
        corpus.write_bytes(b"")
        return [f"output_dir={new}", f"data.path={corpus}"], ["corpus.txt is empty"]
    if case == "whitespace_corpus":
        corpus.write_bytes(b" \n\n\t\n")
        return [f"output_dir={new}", f"data.path={corpus}"], ["is empty (only whitespace)"]
    if case == "binary_corpus":
        corpus.write_bytes(CORPUS.read_bytes()[:500] + b"\x00\x01\x02" * 50)
        return [f"output_dir={new}", f"data.path={corpus}"], ["corpus.txt is binary (a NUL byte at offset 500)"]
    if case == "latin1_corpus":
        corpus.write_bytes("Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9.\n".encode("latin-1") * 40)
        return [f"output_dir={new}", f"data.path={corpus}"], ["not UTF-8 (byte 0xe9 at offset 3)"]
    if case == "latin1_file_in_a_corpus_folder":
        folder = tmp_path / "corpus"
        folder.mkdir()
        shutil.copy(CORPUS, folder / "a.txt")
        (folder / "b.txt").write_bytes(b"na\xefve\n")
        return [f"output_dir={new}", f"data.path={folder}"], ["b.txt is not UTF-8"]
    if case == "missing_rng_file":
        run = copy_run(base_run, tmp_path)
        for step in ("00000002", "00000004"):
            (run / "checkpoints" / f"step-{step}" / "rng-0.pt").unlink()
        return [f"output_dir={run}", "--resume"], ["rng-0.pt (this process's random state) is missing"]
    if case in ("duplicate_top_level_key", "duplicate_nested_key"):
        recipe = Path("recipes/debug.yaml").read_text()
        recipe += "\nseed: 3\n" if case == "duplicate_top_level_key" else "\n"
        if case == "duplicate_nested_key":
            recipe = recipe.replace("  max_steps: 30\n", "  max_steps: 30\n  lr: 0.5\n")
        (tmp_path / "dup.yaml").write_text(recipe)
        return ["--recipe", tmp_path / "dup.yaml", f"output_dir={new}"], ["given twice"]
    if case.startswith("override:"):
        return [f"output_dir={new}", case.split(":", 1)[1]], ["must be a finite number"]
    if case == "missing_data_path_before_models_load":
        def no_models(*a, **k):
            raise AssertionError("a model loaded before the data path was checked")

        monkeypatch.setattr("distill.models.load_tokenizer", no_models)
        return [f"output_dir={new}", f"data.path={tmp_path / 'nope.txt'}"], ["does not exist"]
    if case == "missing_lexicon_before_models_load":
        monkeypatch.setattr("distill.models.load_tokenizer", lambda *a, **k: 1 / 0)
        return [f"output_dir={new}", "crr.augment=both", f"crr.lexicon={tmp_path / 'pairs.tsv'}"], ["not found"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "empty_corpus", "whitespace_corpus", "binary_corpus", "latin1_corpus", "latin1_file_in_a_corpus_folder",
    "missing_rng_file", "duplicate_top_level_key", "duplicate_nested_key", "override:loss.temperature=.inf",
    "override:train.lr=.nan", "override:loss.alpha_ce=-.inf", "missing_data_path_before_models_load",
    "missing_lexicon_before_models_load",
])
def test_messages_name_the_real_problem(case, tmp_path, base_run, monkeypatch, capsys):
    extra, needles = _misleading_case(case, tmp_path, base_run, monkeypatch)
    before = snapshot(tmp_path)
    if "--recipe" in extra:
        code = run_cli("train", *extra)
    else:
        code = train_args(*extra)
    assert code == 2
    assert_one_error_line(capsys, "train", *needles)
    assert snapshot(tmp_path) == before, "a refused command writes nothing"


def test_resume_after_a_kill_logs_each_step_once(tmp_path, base_run, capsys):
    """A kill after step 5 was logged but before a checkpoint: the resumed run logs steps 5.. again, once."""
    run = copy_run(base_run, tmp_path)
    shutil.rmtree(run / "final")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 1.0}\n{"step": 7, "lo')  # a row of a killed run, and one cut short
    assert train(run, "--resume", "train.max_steps=7") == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 7]
    assert message_lines(capsys.readouterr().err) == []


def test_resume_check_fills_keys_a_newer_recipe_added_and_names_changed_ones(tmp_path):
    import yaml

    from distill.config import load_config
    from distill.errors import UserError

    cfg = load_config("recipes/debug.yaml")
    old = run_lifecycle.config_dict(cfg)
    del old["train"]["compile"]  # a run from before the key existed: its default is no change
    old["train"]["max_steps"] = 10
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(old))
    assert run_lifecycle.check_resume_recipe(tmp_path, cfg) == ["train.max_steps"]
    old["data"]["block_size"] = 32
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(UserError, match=r"data.block_size \(32 -> 64\)"):
        run_lifecycle.check_resume_recipe(tmp_path, cfg)
