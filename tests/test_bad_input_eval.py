"""Issue 16 for `distill eval` and `distill samples`: --out never destroys an input or a non-report, bad
input is one line (exit 2, no traceback) before any model loads, and a failed final write says where the
results went. One tiny random GPT-2 (the debug tokenizer); the refused commands never load it.
"""

import json
import shutil
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_error_line, run_cli, snapshot, tiny_model_run

FIXTURE = Path(__file__).parent / "fixtures" / "bold_small.json"
FAST = ["--max-prompts", 2, "--samples-per-prompt", 2, "--max-new-tokens", 2, "--batch-size", 2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_run(tmp_path_factory.mktemp("models"))


def _run_dir_copy(model_dir, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    return run


def _case(case, tmp_path, model_dir):
    """(argv, command, folder to watch, needles)."""
    model = ["--model", f"s={model_dir}", "--prompts", FIXTURE]
    if case == "eval_out_is_the_run_of_the_scored_model":
        run = _run_dir_copy(model_dir, tmp_path)
        return ["eval", "--model", f"s={run / 'final'}", "--prompts", FIXTURE, "--out", run, "--overwrite"], run, \
            ["contains", "an input of this command"]
    if case == "eval_out_is_a_training_run":
        run = _run_dir_copy(model_dir, tmp_path)
        return ["eval", *model, "--out", run, "--overwrite"], run, ["is a training run of distill"]
    if case == "eval_out_holds_user_files":
        d = tmp_path / "d"
        d.mkdir()
        (d / "results.json").write_text("{}")
        (d / "paper.tex").write_text("mine")
        return ["eval", *model, "--out", d, "--overwrite"], d, ["not an output of distill"]
    if case == "eval_out_inside_the_scored_model":
        return ["eval", *model, "--out", model_dir / "report"], model_dir, ["lies inside"]
    if case == "lens_only_eval_out_inside_the_scored_model":
        return ["eval", "--model", f"s={model_dir}", "--lens", "embedding", "--out", model_dir / "lenses"], \
            model_dir, ["lies inside"]
    if case == "lens_only_eval_out_is_the_bios_file":
        bios = tmp_path / "bios.jsonl"
        bios.write_text('{"text": "She is a nurse.", "occupation": "nurse", "gender": "f"}\n')
        return ["eval", "--model", f"s={model_dir}", "--lens", "downstream", "--bios", bios, "--out", bios,
                "--overwrite"], tmp_path, ["is ", "an input"]
    if case == "eval_out_is_the_text_file":
        text = tmp_path / "heldout.txt"
        text.write_text("Some held-out text. " * 20)
        return ["eval", *model, "--text", text, "--out", text, "--overwrite"], tmp_path, ["is ", "an input"]
    if case == "samples_overwrite_of_a_file_it_did_not_write":
        notes = tmp_path / "notes.md"
        notes.write_text("# My notes\n")
        return ["samples", *model, "--out", notes, "--overwrite"], tmp_path, ["was not written by distill samples"]
    if case == "samples_out_inside_the_model":
        return ["samples", *model, "--out", model_dir / "s.html"], model_dir, ["lies inside"]
    if case == "eval_out_under_a_file":
        (tmp_path / "afile").write_text("x")
        return ["eval", *model, "--out", tmp_path / "afile" / "rep"], tmp_path, ["is a file"]
    if case == "eval_out_under_proc":
        return ["eval", *model, "--out", "/proc/distill-report"], None, ["cannot be written"]
    if case == "samples_out_under_proc":
        return ["samples", *model, "--out", "/proc/distill.html"], None, ["cannot be written"]
    if case in ("binary_text", "latin1_text", "empty_text"):
        text = tmp_path / "heldout.txt"
        data = {"binary_text": b"PK\x03\x04\x00\x00binary", "latin1_text": "r\u00e9sum\u00e9\n".encode("latin-1"),
                "empty_text": b""}[case]
        text.write_bytes(data)
        needle = {"binary_text": "is binary", "latin1_text": "is not UTF-8", "empty_text": "is empty"}[case]
        return ["eval", *model, "--text", text, "--out", tmp_path / "rep"], tmp_path, [needle, "--text"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "eval_out_is_the_run_of_the_scored_model", "eval_out_is_a_training_run", "eval_out_holds_user_files",
    "eval_out_inside_the_scored_model", "lens_only_eval_out_inside_the_scored_model",
    "lens_only_eval_out_is_the_bios_file", "eval_out_is_the_text_file", "samples_overwrite_of_a_file_it_did_not_write",
    "samples_out_inside_the_model", "eval_out_under_a_file", "eval_out_under_proc", "samples_out_under_proc",
    "binary_text", "latin1_text", "empty_text",
])
def test_eval_and_samples_refuse_in_one_line_and_touch_nothing(case, tmp_path, model_dir, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("a model loaded before the input was checked")

    monkeypatch.setattr("distill.models.load_model", no_model)
    argv, watched, needles = _case(case, tmp_path, model_dir)
    model_before = snapshot(model_dir.parent)
    before = snapshot(watched) if watched else None
    assert run_cli(*argv, *FAST) == 2
    assert_one_error_line(capsys, argv[0], *needles)
    if watched is not None:
        assert snapshot(watched) == before
    assert snapshot(model_dir.parent) == model_before


def test_eval_replaces_its_own_report_and_says_where_results_went_when_writing_fails(tmp_path, model_dir,
                                                                                      monkeypatch, capsys):
    out = tmp_path / "rep"
    argv = ["eval", "--model", f"s={model_dir}", "--prompts", FIXTURE, "--bootstrap", 10, "--out", out, *FAST]
    assert run_cli(*argv) == 0
    assert json.loads((out / ".distill").read_text())["kind"] == "report"
    assert run_cli(*argv, "--overwrite") == 0  # a report of distill is replaced
    capsys.readouterr()
    before = snapshot(out)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("distill.eval.report.write_eval_outputs", disk_full)
    assert run_cli(*argv, "--overwrite") == 2
    line = assert_one_error_line(capsys, "eval", "could not write the report", "No space left on device")
    rescue = Path(line.split("written to ")[1].split(" instead")[0])
    assert set(json.loads(rescue.read_text())["models"]) == {"s"}
    rescue.unlink()
    assert snapshot(out) == before, "the previous report is intact"
    assert not list(tmp_path.glob(".rep*")), "no temporary folder left"
