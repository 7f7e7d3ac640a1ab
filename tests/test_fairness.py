"""The training-time fairness probe: figures, and the memo that spares a run the teacher's and the cut's probes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from distill.models import student_from_teacher_layers
from distill.train import fairness

TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "tiny_tokenizer"


@pytest.fixture(scope="module")
def tiny():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tok))).eval()
    return teacher, tok


def _cfg(templates=4):
    return SimpleNamespace(train=SimpleNamespace(probe=True, probe_prompts="professions", probe_templates=templates,
                                                 batch_size=8))


def test_the_teacher_has_slope_one_and_a_cut_student_is_measured_against_it(tiny):
    teacher, tok = tiny
    probe = fairness.build_fairness_probe(_cfg(), teacher, tok)
    assert probe.teacher_figures["probe_slope"] == pytest.approx(1.0)
    assert probe.teacher_figures["probe_spread"] > 0
    student = student_from_teacher_layers(teacher, [0, 2]).eval()
    figs = probe.measure(student)
    assert set(figs) == {"probe_offset", "probe_spread", "probe_slope", "probe_template_sd", "probe_seconds"}
    assert figs["probe_slope"] != pytest.approx(1.0)  # the cut changed the student


def test_the_memo_returns_what_was_computed_and_is_keyed_by_the_cut(tiny, tmp_path, monkeypatch):
    teacher, tok = tiny
    memo = fairness.ProbeMemo(tmp_path / "probe", {"v": 1, "teacher": "sha-of-the-teacher"})
    first = fairness.build_fairness_probe(_cfg(), teacher, tok, memo)
    cut = student_from_teacher_layers(teacher, [0, 2]).eval()
    start = first.measure_start(cut, [0, 2])
    assert len(list((tmp_path / "probe").iterdir())) == 2  # the teacher and the cut

    def no_forward(*a, **k):
        raise AssertionError("a memoised probe ran the model again")

    monkeypatch.setattr(fairness, "probe_model", no_forward)
    memo2 = fairness.ProbeMemo(tmp_path / "probe", {"v": 1, "teacher": "sha-of-the-teacher"})
    second = fairness.build_fairness_probe(_cfg(), teacher, tok, memo2)
    assert second.teacher_logratio == first.teacher_logratio
    again = second.measure_start(cut, [0, 2])
    assert {k: v for k, v in again.items() if k != "probe_seconds"} == {
        k: v for k, v in start.items() if k != "probe_seconds"}
    with pytest.raises(AssertionError, match="memoised"):  # another cut, or fewer templates, is another key
        second.measure_start(cut, [0, 1])
    with pytest.raises(AssertionError, match="memoised"):
        fairness.build_fairness_probe(_cfg(templates=3), teacher, tok,
                                      fairness.ProbeMemo(tmp_path / "probe", {"v": 1, "teacher": "sha-of-the-teacher"}))


def test_an_unreadable_memo_entry_is_computed_again(tiny, tmp_path):
    teacher, tok = tiny
    memo = fairness.ProbeMemo(tmp_path / "probe", {"v": 1, "teacher": "t"})
    first = fairness.build_fairness_probe(_cfg(), teacher, tok, memo)
    for f in (tmp_path / "probe").iterdir():
        f.write_text('{"result": ')
    again = fairness.build_fairness_probe(_cfg(), teacher, tok, fairness.ProbeMemo(tmp_path / "probe",
                                                                                   {"v": 1, "teacher": "t"}))
    assert again.teacher_logratio == pytest.approx(first.teacher_logratio)
