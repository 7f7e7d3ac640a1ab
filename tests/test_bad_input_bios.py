"""The downstream lens's Bias in Bios loader on the hub dataset's schema (distill/eval/lenses/bios_hub.py).

tests/fixtures/bias_in_bios/ is a folder in the hub's layout, written for the project: `hard_text`, and
`profession` and `gender` as ClassLabel features (README.md's dataset_info), train/test/dev splits of made-up
biographies. Labels must come from the feature's names, never from a guessed order: the fixture is also read
with its gender names swapped, which must swap every gender. A wrong or missing feature is one line.
LabHC/bias_in_bios itself stores the labels as plain int64 (its card's dataset_info); that schema is built in
memory here and read through the names its card gives.
"""

import json
import shutil
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_error_line, run_cli, snapshot, tiny_model_run

from distill.errors import UserError
from distill.eval.lenses import bios_hub
from distill.eval.lenses import downstream as ld

FIXTURE = Path(__file__).parent / "fixtures" / "bias_in_bios"


def _copy(tmp_path, old: str = "", new: str = "", split_text=None) -> Path:
    """The fixture copied to tmp_path, with `old` replaced by `new` in its README (its schema), and
    `split_text(split, text)` applied to each data file."""
    folder = tmp_path / "bib"
    shutil.copytree(FIXTURE, folder)
    readme = folder / "README.md"
    assert old in readme.read_text()
    readme.write_text(readme.read_text().replace(old, new))
    if split_text is not None:
        for f in (folder / "data").iterdir():
            f.write_text(split_text(f.stem, f.read_text()))
    return folder


def test_the_fixture_reads_labels_from_its_classlabel_names(tmp_path):
    bios = ld.load_bios(str(_copy(tmp_path)))
    assert len(bios.texts) == 24 and bios.splits.count("test") == 6  # train and test; dev is not read
    assert sorted(set(bios.occupations)) == ["nurse", "professor", "surgeon"]
    for text, gender in zip(bios.texts, bios.genders, strict=True):
        assert gender == ("female" if text.startswith("She") else "male"), (text, gender)
    assert all(("patients" in t) == (o == "nurse") for t, o in zip(bios.texts, bios.occupations, strict=True))


def test_swapped_gender_names_swap_every_gender(tmp_path):
    """The same integers under names in the other order: the loader follows the names."""
    bios = ld.load_bios(str(_copy(tmp_path, "'0': male\n          '1': female", "'0': female\n          '1': male")))
    assert all(g == ("male" if t.startswith("She") else "female") for t, g in zip(bios.texts, bios.genders,
                                                                                    strict=True))


GENDER_FEATURE = "  - name: gender\n    dtype:\n      class_label:\n        names:\n          '0': male\n          '1': female\n"


@pytest.mark.parametrize("case, old, new, split_text, needle", [
    ("gender_plain_integers", GENDER_FEATURE, "  - name: gender\n    dtype: int64\n", None,
     "column 'gender' holds integers with no label names"),
    ("gender_names_not_two_genders", "'0': male\n          '1': female", "'0': x\n          '1': y", None,
     "the gender feature's label names are ['x', 'y'], not female and male"),
    ("a_row_without_a_label", "", "", lambda s, t: t.replace('"gender": 1}', '"gender": -1}', 1) if s == "test"
     else t, "split 'test' column 'gender' row 1 has no label (-1)"),
    ("a_label_beyond_the_names", "", "", lambda s, t: t.replace('"profession": 13', '"profession": 40', 1)
     if s == "train" else t, "column 'profession' row 0 has label 40, beyond its 28 names"),
    ("no_gender_column", "- name: gender", "- name: sex", lambda s, t: t.replace('"gender"', '"sex"'),
     "and a gender column; its 'train' split has ['hard_text', 'profession', 'sex']"),
    ("no_test_split", "  - split: test\n    path: data/test.jsonl\n", "", None, "has no 'test' split"),
])
def test_a_wrong_or_missing_feature_is_one_line_before_any_model(case, old, new, split_text, needle, tmp_path,
                                                                 monkeypatch, capsys):
    folder = _copy(tmp_path, old, new, split_text)
    with pytest.raises(UserError, match="--bios dataset"):
        ld.load_bios(str(folder))
    model = tiny_model_run(tmp_path / "m")
    monkeypatch.setattr("distill.models.load_model", lambda *a, **k: 1 / 0)  # refused before any model loads
    capsys.readouterr()
    before = snapshot(tmp_path)
    argv = ["eval", "--model", f"s={model}", "--lens", "downstream", "--bios", folder, "--out", tmp_path / "rep"]
    assert run_cli(*argv) == 2
    assert_one_error_line(capsys, "eval", f"--bios dataset '{folder}'", needle)
    assert snapshot(tmp_path) == before


def test_the_fixture_runs_through_the_downstream_lens(tmp_path, capsys):
    model = tiny_model_run(tmp_path / "m")
    out = tmp_path / "rep"
    argv = ["eval", "--model", f"s={model}", "--lens", "downstream", "--bios", _copy(tmp_path), "--bootstrap", 10,
            "--out", out]
    assert run_cli(*argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["bios_split"] == "given" and results["settings"]["bios_test"] == 6
    assert sorted(results["models"]["s"]["downstream"]["tpr_gap"]) == ["nurse", "professor", "surgeon"]


def test_labhc_bias_in_bios_int64_labels_are_read_through_its_card(monkeypatch):
    """The hub dataset's own schema (its card: profession and gender int64, no ClassLabel) with the names its
    card gives: gender 0 male, 1 female; profession 13 nurse, 25 surgeon."""
    import datasets

    rows = {"hard_text": ["She nurses.", "He nurses.", "She operates.", "He operates."],
            "profession": [13, 13, 25, 25], "gender": [1, 0, 1, 0]}
    feats = datasets.Features({"hard_text": datasets.Value("string"), "profession": datasets.Value("int64"),
                               "gender": datasets.Value("int64")})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows, features=feats) for s in ("train", "test", "dev")})
    monkeypatch.setattr(datasets, "load_dataset", lambda spec, *a, **k: dd)
    bios = ld.load_bios("LabHC/bias_in_bios")
    assert bios.occupations[:4] == ["nurse", "nurse", "surgeon", "surgeon"]
    assert bios.genders[:4] == ["female", "male", "female", "male"]
    with pytest.raises(UserError, match="holds integers with no label names"):
        ld.load_bios("someone/bias_in_bios_copy")  # another dataset of the same schema: no card to read
    assert bios_hub.CARD_NAMES["LabHC/bias_in_bios"]["gender"] == ["male", "female"]
