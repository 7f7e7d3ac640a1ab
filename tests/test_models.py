"""Model loading and students built from teacher layers, for GPT-2 and Llama layouts."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from distill import models
from distill.errors import UserError


def _gpt2(n_layer=4, vocab=64):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=vocab, n_positions=32)).eval()


def _llama(n_layer=4, vocab=64):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=n_layer, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=vocab, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_student_from_teacher_layers_copies_the_chosen_blocks(make):
    teacher = make()
    student = models.student_from_teacher_layers(teacher, [0, 3]).eval()
    assert student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    block = ".h." if ".h." in next(k for k in t if ".h." in k or ".layers." in k) else ".layers."
    for key, value in s.items():
        src = key.replace(f"{block}1.", f"{block}3.")
        assert torch.equal(value, t[src]), key
    # a student holding every block in order is the teacher itself
    full = models.student_from_teacher_layers(teacher, list(range(4))).eval()
    ids = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(full(ids).logits, teacher(ids).logits)


@pytest.mark.parametrize("layers", [[], [0, 0], [7], [-1]])
def test_bad_layer_lists_are_refused(layers):
    with pytest.raises(UserError, match="from_teacher_layers"):
        models.student_from_teacher_layers(_gpt2(), layers)


def test_padded_vocab_rows_are_sliced_to_the_shared_rows():
    teacher, student = _gpt2(vocab=72), _gpt2(vocab=64)
    assert models.shared_vocab_size(teacher, student, tokenizer_len=60) == 64
    with pytest.raises(UserError, match="rows"):
        models.shared_vocab_size(teacher, student, tokenizer_len=70)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.load_model_and_tokenizer(str(tmp_path / "missing-model"))
    with pytest.raises(UserError, match="make teacher"):
        models.load_model_and_tokenizer(str(tmp_path / "teacher.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer_config.json"):
        models.load_model_and_tokenizer(str(tmp_path / "empty"))
    corrupt = tmp_path / "bad.gguf"
    corrupt.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="bad.gguf"):
        models.load_model_and_tokenizer(str(corrupt))


def test_local_dir_round_trip_and_tokenizer_mismatch(tmp_path):
    tok = models.train_byte_bpe_tokenizer(["he said she said " * 20, "the nurse and the doctor"], 280)
    model = _gpt2(vocab=len(tok))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = models.load_model_and_tokenizer(str(tmp_path / "m"))
    assert isinstance(loaded, AutoModelForCausalLM._model_mapping[type(model.config)])
    models.check_same_tokenizer(tok, loaded_tok)
    other = models.train_byte_bpe_tokenizer(["completely different words here " * 20], 280)
    with pytest.raises(UserError, match="tokenizers differ"):
        models.check_same_tokenizer(tok, other)


def test_shipped_tiny_tokenizer_is_the_one_built_from_the_tiny_corpus():
    from pathlib import Path

    texts = Path("data/tiny_corpus.txt").read_text().splitlines()
    rebuilt = models.train_byte_bpe_tokenizer(texts, 1024)
    assert rebuilt.get_vocab() == models.load_tokenizer("data/tiny_tokenizer").get_vocab()


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_freeze_except_layers_trains_only_the_chosen_blocks_and_final_norm(make):
    model = make()
    trainable = models.freeze_except_layers(model, [3])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all((".3." in n) or ("norm" in n or "ln_f" in n) for n in names), names
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert not model.get_input_embeddings().weight.requires_grad
    ids = torch.randint(0, 64, (2, 8))
    model(ids).logits.sum().backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    with pytest.raises(UserError, match="train_layers"):
        models.freeze_except_layers(model, [9])


def test_fused_gelu_swap_keeps_outputs_and_config():
    from transformers.activations import GELUTanh, NewGELUActivation

    reference = _gpt2()
    fast = _gpt2()
    assert models.use_fused_gelu(fast) == 4  # one per block
    assert not any(isinstance(m, NewGELUActivation) for m in fast.modules())
    assert sum(isinstance(m, GELUTanh) for m in fast.modules()) == 4
    assert fast.config.activation_function == "gelu_new"  # what a saved model says is unchanged
    ids = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(fast(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert models.use_fused_gelu(_llama()) == 0  # other activations are left alone
