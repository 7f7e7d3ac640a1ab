"""The teacher-written transfer set: counts, manifest, cache reuse and keys, validation of its settings."""

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from distill.config import config_from_dict
from distill.errors import UserError
from distill.train import transfer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "The baker opened the shop and",
    "The storm had passed by morning, and",
    "My grandmother always told me that",
    "To make a good cup of tea,",
    "The nurse said that",
    "Dear neighbours, we are writing to",
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny random GPT-2 and a byte-level BPE trained on the project's tiny corpus, saved as a model dir."""
    out = tmp_path_factory.mktemp("tiny_teacher")
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(ROOT / "data" / "tiny_corpus.txt")], vocab_size=400, min_frequency=2,
              special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tok),
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    from distill.models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(teacher_dir))


def _cfg(teacher_dir, tmp_path, **ts):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("# a comment line\n" + "\n".join(PROMPTS) + "\n\n")
    settings = {"seed_prompts": str(prompts), "num_sequences": 10, "max_new_tokens": 12, "heldout_share": 0.2,
                "batch_size": 4, "cache_dir": str(tmp_path / "transfer"), **ts}
    return config_from_dict({"teacher": {"name_or_path": str(teacher_dir)}, "student": {"from_teacher_layers": [0]},
                             "data": {"transfer_set": settings}})


def _texts(path):
    return [json.loads(line)["text"] for line in Path(path).read_text().splitlines()]


def test_builds_the_set_then_reuses_it(teacher_dir, teacher, tmp_path, monkeypatch, capsys):
    cfg = _cfg(teacher_dir, tmp_path)
    model, tok = teacher
    ts = transfer.ensure_transfer_set(cfg, model, tok, show_progress=False)
    train, held = _texts(ts.train_path), _texts(ts.heldout_path)
    assert (len(train), len(held)) == (8, 2)
    # every text is prompt + continuation, and held-out prompts are never training prompts
    start = {t: [p for p in PROMPTS if t.startswith(p)] for t in train + held}
    assert all(len(s) == 1 for s in start.values())
    start = {t: s[0] for t, s in start.items()}
    assert not {start[t] for t in held} & {start[t] for t in train}
    assert all(len(t) > len(start[t]) for t in train + held)

    m = ts.manifest
    assert Path(ts.train_path).parent.name == m["key"]
    assert json.loads((Path(ts.train_path).parent / "manifest.json").read_text()) == m
    c = m["counts"]
    assert (c["train_sequences"], c["heldout_sequences"]) == (8, 2)
    assert 0 < c["generated_tokens"] <= 10 * 12
    assert c["train_tokens"] + c["heldout_tokens"] > c["generated_tokens"]
    assert m["teacher"]["identity"].startswith(tuple("0123456789abcdef")) and m["seed_prompts"]["count"] == 6
    assert m["settings"]["top_k"] == 50 and m["timing"]["wall_s"] >= 0
    assert tok.padding_side == "right"  # left padding is restored afterwards
    assert not [p for p in Path(cfg.data.transfer_set.cache_dir).iterdir() if p.name.startswith(".tmp")]

    # Second call: no sampling and no teacher loading, the same files.
    def boom(*a, **k):
        raise AssertionError("the cached set must be reused")

    monkeypatch.setattr(transfer, "sample_continuations", boom)
    monkeypatch.setattr(transfer, "_load_teacher", boom)
    capsys.readouterr()
    again = transfer.ensure_transfer_set(cfg, show_progress=False)
    assert "reusing transfer set" in capsys.readouterr().out
    assert again.train_path == ts.train_path and again.manifest == m
    # batch_size and cache location do not change what is sampled: same key
    assert transfer.ensure_transfer_set(_cfg(teacher_dir, tmp_path, batch_size=3)).manifest["key"] == m["key"]


def test_sampling_is_seeded(teacher_dir, teacher, tmp_path):
    model, tok = teacher
    a = transfer.ensure_transfer_set(_cfg(teacher_dir, tmp_path / "a"), model, tok, show_progress=False)
    b = transfer.ensure_transfer_set(_cfg(teacher_dir, tmp_path / "b"), model, tok, show_progress=False)
    assert a.manifest["key"] == b.manifest["key"]
    assert _texts(a.train_path) == _texts(b.train_path)


def test_a_changed_setting_gives_a_new_key(teacher_dir, teacher, tmp_path):
    model, tok = teacher
    base = transfer.ensure_transfer_set(_cfg(teacher_dir, tmp_path), model, tok, show_progress=False)
    other = transfer.ensure_transfer_set(_cfg(teacher_dir, tmp_path, top_k=5, num_sequences=6), model, tok,
                                         show_progress=False)
    assert other.manifest["key"] != base.manifest["key"]
    assert Path(base.train_path).is_file() and Path(other.train_path).is_file()
    assert other.manifest["counts"]["train_sequences"] + other.manifest["counts"]["heldout_sequences"] == 6


@pytest.mark.parametrize("bad, match", [
    ({"num_sequence": 5}, "did you mean 'data.transfer_set.num_sequences'"),
    ({"topk": 5}, "did you mean 'data.transfer_set.top_k'"),
    ({"top_p": 1.5}, r"top_p=1.5 is out of range"),
    ({"heldout_share": 0.9}, "heldout_share"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"batch_size": "many"}, "must be int"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(UserError, match=match):
        transfer.parse_transfer_config(bad)


def test_counts_and_prompt_files_are_checked(teacher_dir, tmp_path):
    with pytest.raises(UserError, match="no training sequence"):  # refused with the recipe, before any model
        _cfg(teacher_dir, tmp_path, num_sequences=1, heldout_share=0.5)
    with pytest.raises(UserError, match="not found"):
        transfer.ensure_transfer_set(_cfg(teacher_dir, tmp_path, seed_prompts=str(tmp_path / "missing.txt")))
    cfg = config_from_dict({"teacher": {"name_or_path": str(teacher_dir)}, "student": {"from_teacher_layers": [0]},
                            "data": {"path": "x.txt"}})
    with pytest.raises(UserError, match="no data.transfer_set"):
        transfer.ensure_transfer_set(cfg)


def test_project_seed_prompts_are_clean():
    prompts = transfer.read_seed_prompts(ROOT / "data" / "seed_prompts.txt")
    assert len(prompts) >= 250 and len(set(prompts)) == len(prompts)
    raw = (ROOT / "data" / "seed_prompts.txt").read_text().splitlines()
    assert not [line for line in raw if line != line.rstrip()]  # a trailing space derails BPE continuations


def test_corpus_command_with_a_random_teacher(teacher_dir, tmp_path, capsys):
    """`distill corpus` on a recipe whose teacher is random-initialised from a config (loaded, not passed)."""
    recipe = tmp_path / "r.yaml"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))
    recipe.write_text(yaml.safe_dump({
        "teacher": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64},
                    "tokenizer": str(teacher_dir)},
        "student": {"from_teacher_layers": [0]},
        "data": {"transfer_set": {"seed_prompts": str(prompts), "num_sequences": 4, "max_new_tokens": 5,
                                  "cache_dir": str(tmp_path / "c")}},
    }))
    args = argparse.Namespace(recipe=str(recipe), overrides=["data.transfer_set.heldout_share=0.25"])
    assert transfer.main(args) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "(3 sequences" in out and "(1 sequences" in out
    manifest = json.loads(next((tmp_path / "c").glob("*/manifest.json")).read_text())
    assert manifest["teacher"]["identity"].startswith("random:") and manifest["settings"]["heldout_share"] == 0.25
    assert transfer.main(args) == 0 and "reusing transfer set" in capsys.readouterr().out


def test_the_transfer_set_and_eval_share_one_sampler(teacher_dir, teacher, tmp_path):
    """sample_continuations and generate_samples (the eval/samples path) draw the same continuations for the
    same prompts, settings and seed: one loop (generate.sample_batches), one seeding scheme."""
    from distill.sampling import generate_samples

    model, tok = teacher
    tcfg = transfer.parse_transfer_config({"max_new_tokens": 9, "batch_size": 4, "top_k": 20, "top_p": 0.9})
    texts, prompt_n, new_n = transfer.sample_continuations(model, tok, PROMPTS, tcfg, seed=3, show_progress=False)
    eval_texts = generate_samples(model, tok, PROMPTS, transfer.sampling_config(tcfg, 3), progress=False)
    assert [p + e[0] for p, e in zip(PROMPTS, eval_texts, strict=True)] == texts
    assert prompt_n == [len(tok(p)["input_ids"]) for p in PROMPTS] and max(new_n) == 9
    assert len(set(texts)) == len(texts)  # sampled, not greedy: six different continuations
