"""The shared frozen prefix (`train.share_teacher_prefix`): which students share, that the start-up check refuses
models where starting from the teacher's hidden state would change the result, and that a step with sharing
gives the same loss and gradients as one without."""

import pytest
import torch
from accelerate import Accelerator

from distill.config import load_config
from distill.models import (
    build_random_model,
    freeze_except_layers,
    load_tokenizer,
    student_from_teacher_layers,
)
from distill.train.data import BlockSampler
from distill.train.prefix import candidate_depth, decoder_blocks, forward_from, shared_prefix_depth
from distill.train.setup import build
from distill.train.step import kd_step

LLAMA = {"model_type": "llama", "num_hidden_layers": 5, "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
LLAMA_RECIPE = ["teacher.config={" + ", ".join(f"{k}: {v}" for k, v in LLAMA.items()) + "}",
                "student.from_teacher_layers=[0, 1, 2, 4]", "student.train_layers=[3]", "loss.alpha_cos=0",
                "loss.alpha_ce=0.5", "train.batch_size=2", "train.grad_accum=2", "train.max_grad_norm=0"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("data/tiny_tokenizer")


def _student(teacher, layers, train):
    student = student_from_teacher_layers(teacher, layers).float().train()
    freeze_except_layers(student, train)
    return student


def test_the_depth_is_the_leading_frozen_blocks_that_are_the_teachers_own(tokenizer):
    teacher = build_random_model(LLAMA, tokenizer, seed=0).eval()
    assert candidate_depth([0, 1, 2, 4], _student(teacher, [0, 1, 2, 4], [3])) == 3
    assert candidate_depth([0, 1, 2, 4], _student(teacher, [0, 1, 2, 4], [1, 3])) == 1  # block 1 trains
    assert candidate_depth([1, 2, 3, 4], _student(teacher, [1, 2, 3, 4], [3])) == 0  # block 0 is not the teacher's 0
    assert candidate_depth([0, 2, 3, 4], _student(teacher, [0, 2, 3, 4], [3])) == 1
    assert candidate_depth(None, _student(teacher, [0, 1, 2, 4], [3])) == 0  # not made from the teacher's blocks
    whole = _student(teacher, [0, 1, 2, 4], [3])
    whole.get_input_embeddings().weight.requires_grad_(True)
    assert candidate_depth([0, 1, 2, 4], whole) == 0  # trained embeddings change what block 0 sees


def test_a_llama_student_from_the_teachers_hidden_state_gives_its_own_logits(tokenizer):
    teacher = build_random_model(LLAMA, tokenizer, seed=0).eval()
    student = _student(teacher, [0, 1, 2, 4], [3])
    ids = torch.randint(0, len(tokenizer), (2, 40), generator=torch.Generator().manual_seed(0))
    assert shared_prefix_depth(teacher, student, [0, 1, 2, 4], ids[:1]) == 3
    with torch.inference_mode():
        hidden = teacher(input_ids=ids, output_hidden_states=True).hidden_states[3]
    shared = forward_from(student, hidden.clone(), 3).logits
    full = student(input_ids=ids).logits
    assert torch.allclose(shared, full, atol=1e-5)
    assert len(decoder_blocks(student)) == 4, "the block list is restored after the shortened forward"


def test_gpt2_is_refused_by_the_check_because_its_forward_adds_position_embeddings(tokenizer):
    gpt2 = {"model_type": "gpt2", "n_layer": 4, "n_embd": 64, "n_head": 4, "n_positions": 128,
            "resid_pdrop": 0, "embd_pdrop": 0, "attn_pdrop": 0}
    teacher = build_random_model(gpt2, tokenizer, seed=0).eval()
    student = _student(teacher, [0, 1, 3], [2])
    assert candidate_depth([0, 1, 3], student) == 2
    ids = torch.randint(0, len(tokenizer), (1, 40), generator=torch.Generator().manual_seed(0))
    assert shared_prefix_depth(teacher, student, [0, 1, 3], ids) == 0


def test_a_teacher_in_another_dtype_is_not_shared(tokenizer):
    teacher = build_random_model(LLAMA, tokenizer, seed=0).eval()
    student = _student(teacher, [0, 1, 2, 4], [3])
    ids = torch.randint(0, len(tokenizer), (1, 40), generator=torch.Generator().manual_seed(0))
    assert shared_prefix_depth(teacher.to(torch.bfloat16), student, [0, 1, 2, 4], ids) == 0


class GradRecorder:
    """Stands in for the optimizer and the schedule: keeps the step's gradients instead of applying them."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        if self.grads is None:
            self.grads = {k: p.grad.clone() for k, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        pass


@pytest.mark.parametrize("teacher_mode", ["none", "pair_mean"])
def test_a_step_with_the_shared_prefix_matches_one_without(tmp_path, teacher_mode):
    results = {}
    for share in (True, False):
        cfg = load_config("recipes/debug.yaml", [f"output_dir={tmp_path / str(share)}", *LLAMA_RECIPE,
                                                 f"crr.teacher={teacher_mode}",
                                                 f"train.share_teacher_prefix={str(share).lower()}"])
        accelerator = Accelerator(cpu=True)
        setup = build(cfg, accelerator)
        assert setup.prefix_depth == (3 if share else 0)
        batches = [setup.train_blocks[idx] for idx in BlockSampler(len(setup.train_blocks), 2, 2, 1, 0,
                                                                   cfg.seed).next_step()]
        recorder = GradRecorder(setup.student)
        stats = kd_step(cfg, setup, setup.student, recorder, recorder, accelerator, batches)
        results[share] = stats, recorder.grads
    (shared, shared_grads), (full, full_grads) = results[True], results[False]
    assert torch.allclose(shared.sums.kd, full.sums.kd, rtol=1e-5)
    assert torch.allclose(shared.sums.ce, full.sums.ce, rtol=1e-5)
    assert set(shared_grads) == set(full_grads) and shared_grads
    for name, g in shared_grads.items():
        assert torch.allclose(g, full_grads[name], rtol=1e-4, atol=1e-7), name
