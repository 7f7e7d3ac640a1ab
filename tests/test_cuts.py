"""python -m distill.bench.cuts: every cut's untrained student on the fairness probe and perplexity."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from distill.bench import cuts

TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "tiny_tokenizer"


def test_scan_measures_the_teacher_then_each_cut_and_prints_rows():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tok))).eval()
    seen = []
    docs = ["My neighbour said that she would come back tomorrow with the keys."] * 3
    rows = cuts.scan(teacher, tok, 2, cuts._starts(None, 4, 2), docs, templates=2, on_row=seen.append)
    assert [r["cut"] for r in rows] == ["none (teacher)", "1-2", "2-3"] and seen == rows
    assert rows[0]["probe_slope"] == pytest.approx(1.0) and rows[0]["teacher_agreement"] == 1.0
    for r in rows[1:]:
        assert r["perplexity"] > 1 and 0 <= r["teacher_agreement"] <= 1 and r["probe_slope"] != pytest.approx(1.0)
    line = cuts.table_row(rows[1], rows[0]["probe_offset"])
    assert line.startswith("| 1-2 | ") and line.count("|") == cuts.HEADER.splitlines()[0].count("|")


def test_a_cut_past_the_last_block_is_refused():
    with pytest.raises(SystemExit, match="starts at 0..26"):
        cuts._starts("25-28", 30, 4)
