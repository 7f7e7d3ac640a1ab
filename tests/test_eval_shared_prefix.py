"""`distill eval` reuses the teacher's hidden states for a student whose first blocks are the teacher's own
(distill.eval.shared_prefix): which depth a stored student shares, that the check turns GPT-2 off, and that the
probe, perplexity and both lenses give the same numbers with and without the reuse."""

import json

import pytest
import torch

from distill.cli import main
from distill.eval import shared_prefix
from distill.eval.lenses.downstream import bio_features
from distill.eval.probe import probe_model, probe_professions
from distill.eval.prompts import load_prompts
from distill.eval.shared_prefix import SharedPrefix, plain_forward, stored_prefix_depth
from distill.eval.utility import make_windows, score_windows
from distill.models import build_random_model, load_tokenizer, student_from_teacher_layers

LLAMA = {"model_type": "llama", "num_hidden_layers": 5, "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
GPT2 = {"model_type": "gpt2", "n_layer": 4, "n_embd": 64, "n_head": 4, "n_positions": 128}
TEXTS = ["The nurse said that she would come back after the shift.",
         "He walked into the room and sat down next to his friend.",
         "My neighbour works as a plumber, and every morning the van leaves early."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("data/tiny_tokenizer")


def _saved(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama(tokenizer, tmp_path_factory):
    """A tiny random Llama teacher, a student of its blocks [0, 1, 2, 4] whose block 3 (the teacher's 4) was
    changed, and one whose block 1 was changed too: they share 3 and 1 blocks with the teacher."""
    root = tmp_path_factory.mktemp("shared")
    teacher = build_random_model(LLAMA, tokenizer, seed=0).eval()
    student = student_from_teacher_layers(teacher, [0, 1, 2, 4]).eval()
    with torch.no_grad():
        for p in student.model.layers[3].parameters():
            p.add_(0.05 * torch.randn_like(p))
    early = student_from_teacher_layers(teacher, [0, 1, 2, 4]).eval()
    with torch.no_grad():
        for p in early.model.layers[1].parameters():
            p.mul_(1.1)
    return {"teacher": teacher, "student": student,
            "paths": {n: _saved(m, tokenizer, root / n) for n, m in
                      (("teacher", teacher), ("student", student), ("early", early))}}


def test_the_stored_depth_is_the_leading_blocks_equal_to_the_first_models(llama, tokenizer, tmp_path):
    teacher, paths = llama["teacher"], llama["paths"]
    assert stored_prefix_depth(teacher, paths["student"]) == 3
    assert stored_prefix_depth(teacher, paths["early"]) == 1
    assert stored_prefix_depth(teacher, paths["teacher"]) == 5  # a copy shares everything
    other = build_random_model(LLAMA, tokenizer, seed=1)
    assert stored_prefix_depth(other, paths["student"]) == 0  # other embeddings: nothing shared
    assert stored_prefix_depth(teacher, str(tmp_path / "missing")) == 0
    assert stored_prefix_depth(teacher, "some-org/some-hub-model") == 0


def test_a_student_reading_the_teachers_states_gets_its_own_numbers(llama, tokenizer):
    teacher, student, paths = llama["teacher"], llama["student"], llama["paths"]
    professions = probe_professions(load_prompts("professions"))[:12]
    windows = make_windows(tokenizer(" ".join(TEXTS * 4))["input_ids"], 16)

    def lenses(model, forward):
        return (probe_model(model, tokenizer, professions, forward=forward)["logratio"],
                bio_features(model, tokenizer, TEXTS, forward=forward),
                score_windows(model, windows, len(tokenizer), forward=forward)[:2])

    shared = SharedPrefix.plan(teacher, [paths["student"]])
    assert lenses(teacher, shared.recorder(teacher)) is not None  # the teacher's pass keeps its states
    forward = shared.reader(student, paths["student"])
    assert forward.depth == 3 and shared.bytes > 0
    calls = []
    original = shared_prefix.forward_from

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    shared_prefix.forward_from = counting
    try:
        reused = lenses(student, forward)
    finally:
        shared_prefix.forward_from = original
    plain = lenses(student, plain_forward)
    assert calls, "no batch started from the teacher's hidden state"
    assert reused[0] == pytest.approx(plain[0], abs=1e-5)
    assert reused[1] == pytest.approx(plain[1], abs=1e-5)
    assert reused[2][0] == pytest.approx(plain[2][0], rel=1e-5) and reused[2][1] == plain[2][1]


def test_a_batch_the_teacher_did_not_see_and_a_lens_layer_inside_the_prefix_run_the_ordinary_way(llama, tokenizer):
    teacher, student, paths = llama["teacher"], llama["student"], llama["paths"]
    shared = SharedPrefix.plan(teacher, [paths["student"]], lens_layer=1)
    bio_features(teacher, tokenizer, TEXTS[:2], forward=shared.recorder(teacher))
    forward = shared.reader(student, paths["student"])
    unseen = bio_features(student, tokenizer, TEXTS[2:], forward=forward)
    assert unseen == pytest.approx(bio_features(student, tokenizer, TEXTS[2:]), abs=1e-6)
    inside = bio_features(student, tokenizer, TEXTS[:2], layer=1, forward=forward)  # layer 1 is in the prefix
    assert inside == pytest.approx(bio_features(student, tokenizer, TEXTS[:2], layer=1), abs=1e-6)


def test_the_check_turns_the_reuse_off_for_gpt2(tokenizer, tmp_path):
    """GPT-2 adds position embeddings inside its forward: starting from a hidden state would add them twice."""
    teacher = build_random_model(GPT2, tokenizer, seed=0).eval()
    student = student_from_teacher_layers(teacher, [0, 1, 3]).eval()
    path = _saved(student, tokenizer, tmp_path / "gpt2_student")
    shared = SharedPrefix.plan(teacher, [path])
    assert shared.depths == {path: 2}
    shared.recorder(teacher)
    assert shared.reader(student, path) is plain_forward


def test_distill_eval_writes_the_same_numbers_with_and_without_the_reuse(llama, tmp_path, monkeypatch, capsys):
    paths = llama["paths"]

    def run_eval(out):
        argv = ["eval", "--model", f"teacher={paths['teacher']}", "--model", f"student={paths['student']}",
                "--prompts", "professions", "--max-prompts", "14", "--samples-per-prompt", "2",
                "--max-new-tokens", "4", "--text", "data/tiny_heldout.txt", "--bootstrap", "50",
                "--lens", "all", "--out", str(out)]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        return json.loads((out / "results.json").read_text())["models"]["student"]

    reused = run_eval(tmp_path / "reused")
    assert "its first 3 blocks are the first model's" in capsys.readouterr().err
    monkeypatch.setattr(shared_prefix, "stored_prefix_depth", lambda reference, path: 0)
    plain = run_eval(tmp_path / "plain")
    assert reused["probe"]["logratio"] == pytest.approx(plain["probe"]["logratio"], abs=1e-5)
    assert reused["perplexity"] == pytest.approx(plain["perplexity"], rel=1e-5)
    assert reused["teacher_agreement"] == plain["teacher_agreement"]
    assert reused["embedding"]["combined_effect_size"] == pytest.approx(plain["embedding"]["combined_effect_size"],
                                                                        abs=1e-4)
    assert reused["downstream"]["accuracy"] == plain["downstream"]["accuracy"]
    assert reused["downstream"]["tpr_gap_rms"] == pytest.approx(plain["downstream"]["tpr_gap_rms"], abs=1e-6)
