"""Tiny word-level GPT-2s for the lens tests: every word one token, so a planted bias can be put into (or taken
out of) exactly the rows of the embedding matrix that hold the gendered words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
LENSES = REPO / "data" / "lenses"
WORD_RE = r"\w+|[^\w\s]"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def vocabulary() -> list[str]:
    """Every word of the project's embedding tests, templates and biographies."""
    text = (LENSES / "embedding_templates.txt").read_text() + (LENSES / "embedding_tests.json").read_text()
    text += "\n".join(json.loads(line)["text"] for line in (LENSES / "bios.jsonl").read_text().splitlines())
    return sorted(set(re.findall(WORD_RE, text)))


def word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="[PAD]")


def tiny_model(tok, seed: int = 0, n_embd: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=n_embd, n_head=2, n_positions=128, vocab_size=len(tok),
                     bos_token_id=1, eos_token_id=1, pad_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


def token_id(tok, word: str) -> int:
    ids = tok(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    return ids[0]


def shift_words(model, tok, words, direction: torch.Tensor, amount: float) -> None:
    """Add amount * direction to the input embedding of each word (each word of a multi-word phrase)."""
    with torch.no_grad():
        for phrase in words:
            for w in phrase.split():
                model.transformer.wte.weight[token_id(tok, w)] += amount * direction


def equalise(model, tok, pairs) -> None:
    """Give the second word of each pair the input embedding of the first: the model can no longer tell them apart."""
    with torch.no_grad():
        wte = model.transformer.wte.weight
        for a, b in pairs:
            wte[token_id(tok, b)] = wte[token_id(tok, a)]
