"""Data that used to be taken silently: now refused in one line, or named where it changes a figure.

- `distill score` on a generations file that is not UTF-8: the replacement characters used to be scored as
  text; now the line and the byte offset are named, as the corpus check names them; the same for eval's
  --bios (a traceback before) and --prompts files (no offset before).
- the downstream lens with an occupation that has no test biography (one person holds it, so the seeded split
  puts it in train): it used to be left out of the TPR-gap table and the RMS without a word; now the console,
  report.md and results.json name it and say why.
"""

import json
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_error_line, generations_file, run_cli, snapshot, tiny_model_run

# ------------------------------------------------------------------------------ non-UTF-8 generations


@pytest.mark.parametrize("bad, needle", [
    ("caf\xe9".encode("latin-1"), "byte 0xe9"),  # a Latin-1 file
    (b"\xff\xfe", "byte 0xff"),  # a stray byte
    ("\u00e9".encode()[:1], "byte 0xc3"),  # a multi-byte character cut in two
])
def test_score_names_the_line_and_offset_of_bytes_that_are_not_utf8(bad, needle, tmp_path, capsys):
    path = generations_file(tmp_path / "g.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    line3 = lines[2].replace(b'"text": "', b'"text": "' + bad, 1)
    path.write_bytes(b"".join(lines[:2]) + line3 + b"".join(lines[3:]))
    with pytest.raises(UnicodeDecodeError) as where:
        path.read_bytes().decode("utf-8")
    offset = where.value.start
    assert len(b"".join(lines[:2])) < offset < len(b"".join(lines[:3]))
    before = snapshot(tmp_path)
    assert run_cli("score", "--generations", path, "--out", tmp_path / "rep") == 2
    assert_one_error_line(capsys, "score", f"{path} line 3: not UTF-8", needle, f"at offset {offset}", "iconv")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--bios", "--prompts"])
def test_eval_names_the_offset_of_a_bios_or_prompt_file_that_is_not_utf8(flag, tmp_path, monkeypatch, capsys):
    model = tiny_model_run(tmp_path / "m")
    if flag == "--bios":
        bad = tmp_path / "bios.jsonl"
        bad.write_bytes(b'{"text": "She runs a caf\xe9.", "occupation": "chef", "gender": "f"}\n')
        argv = ["--lens", "downstream", "--bios", bad]
    else:
        bad = tmp_path / "prompts.json"
        bad.write_bytes(b'{"c": {"chef": {"Chef_A": ["A caf\xe9 chef said"]}}}')
        argv = ["--lens", "generation", "--prompts", bad]
    monkeypatch.setattr("distill.models.load_model", lambda *a, **k: 1 / 0)  # refused before any model loads
    capsys.readouterr()
    assert run_cli("eval", "--model", f"s={model}", *argv, "--out", tmp_path / "rep") == 2
    offset = bad.read_bytes().index(b"\xe9")
    assert_one_error_line(capsys, "eval", str(bad), f"is not UTF-8 (byte 0xe9 at offset {offset}, line 1)", "iconv")
    assert not (tmp_path / "rep").exists()


def test_score_still_reads_utf8_text_beyond_ascii(tmp_path, capsys):
    path = generations_file(tmp_path / "g.jsonl", text="He said she was a na\u00efve nurse \u2014 \u00e9l\u00e8ve.")
    raw = path.read_text().replace("\\u00ef", "\u00ef")  # raw UTF-8, not only JSON escapes
    path.write_text(raw, encoding="utf-8")
    assert run_cli("score", "--generations", path, "--out", tmp_path / "rep", "--bootstrap", 10) == 0


# ------------------------------------------------------------------------------ an occupation left out

OCCUPATIONS = ["nurse", "pilot", "chef", "judge", "baker", "tailor", "farmer"]


def _bios(path: Path) -> Path:
    rows = []
    for occ in OCCUPATIONS:  # four of each gender: the seeded split puts one of each in the test split
        for k in range(4):
            rows.append({"text": f"She works as a {occ} in town {k}.", "occupation": occ, "gender": "female"})
            rows.append({"text": f"He works as a {occ} in town {k}.", "occupation": occ, "gender": "male"})
    rows.append({"text": "She flew to the moon as an astronaut.", "occupation": "astronaut", "gender": "female"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_occupation_without_test_biographies_is_named_where_it_is_left_out(tmp_path, capsys):
    model = tiny_model_run(tmp_path)
    out = tmp_path / "rep"
    argv = ["eval", "--model", f"s={model}", "--lens", "downstream", "--bios", _bios(tmp_path / "bios.jsonl"),
            "--bootstrap", 10, "--out", out]
    assert run_cli(*argv) == 0
    console = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["models"]["s"]["downstream"]["tpr_gap"]) == sorted(OCCUPATIONS)  # 7 of 8 scored
    assert results["settings"]["bios_left_out"] == {"astronaut": "1 biography, none in the test split"}
    why = "1 of 8 occupations left out of the TPR-gap table and its RMS"
    assert f"downstream lens: {why}" in console and "astronaut (1 biography, none in the test split)" in console
    report = (out / "report.md").read_text()
    assert why[0].upper() + why[1:] in report and "astronaut (1 biography, none in the test split)" in report


def test_no_note_when_every_occupation_is_scored(tmp_path, capsys):
    from distill.eval.lenses import downstream as ld

    bios = ld.load_bios("project")
    assert ld.left_out_occupations(bios, ld.split_bios(bios, seed=0)) == {}
