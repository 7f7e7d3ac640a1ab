"""The audits of where a gender lean can come from: the training targets, the swap table, the augmented corpus.

    python -m pytest tests/test_audit.py -q

On the debug recipe (a tiny random teacher, data/tiny_tokenizer, data/tiny_corpus.txt). The slow test reads
the real teacher's tokenizer (`make teacher`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "debug_crr.yaml")
TEACHER = ROOT / "cache" / "teacher" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def collected():
    from distill.bench.audit_targets import collect

    cfg = load_config(RECIPE)
    return cfg, collect(cfg, modes=("none", "pair_mean", "cf_mean"), augments=("none", "both"), max_blocks=16,
                        show_progress=False)


def _teacher_and_blocks(cfg, augment: str):
    import dataclasses

    from accelerate import Accelerator

    from distill.train.setup import build

    cfg = dataclasses.replace(cfg, crr=dataclasses.replace(cfg.crr, augment=augment, teacher="none"))
    setup = build(cfg, Accelerator(cpu=True, mixed_precision="no"))
    return setup


def test_plain_targets_are_the_teachers_softmax_on_the_blocks_training_sees(collected):
    from distill.bench.audit_swap import word_lists

    cfg, col = collected
    for aug in ("none", "both"):
        setup = _teacher_and_blocks(cfg, aug)
        ids = setup.train_blocks[col.blocks[aug]]["input_ids"]
        assert len(col.blocks[aug]) == 16
        # the first blocks of a run of this seed: the training sampler's epoch-0 order
        assert col.blocks[aug] == torch.randperm(len(setup.train_blocks),
                                                 generator=torch.Generator().manual_seed(cfg.seed))[:16].tolist()
        with torch.no_grad():
            logits = setup.teacher(input_ids=ids).logits[:, :-1, : setup.vocab_rows]
        p = torch.softmax(logits.float() / cfg.loss.temperature, -1).reshape(-1, setup.vocab_rows)
        from distill.crr.lexicon import load_lexicon
        from distill.crr.token_table import build_token_swap_table

        table = build_token_swap_table(setup.tokenizer, load_lexicon())
        lists = word_lists(setup.tokenizer, table, setup.vocab_rows)
        for name, (m, f) in lists.items():
            pm, pf = col.masses[aug]["none"][name]
            np.testing.assert_allclose(pm, p[:, m].sum(-1).double().numpy(), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(pf, p[:, f].sum(-1).double().numpy(), rtol=1e-5, atol=1e-9)


def test_pair_mean_targets_balance_the_table_wherever_a_word_may_start(collected):
    from distill.bench.audit_targets import kind_masks, summarise

    _, col = collected
    for aug in ("none", "both"):
        boundary = kind_masks(col.kinds[aug])["after a space or punctuation"]
        assert 0 < boundary.sum() < boundary.size
        pm, pf = col.masses[aug]["pair_mean"]["table"]
        lr = np.log(pm) - np.log(pf)
        assert np.abs(lr[boundary]).max() < 1e-5  # by construction: each pair group's sides get half its mass
        plain = col.masses[aug]["none"]["table"]
        assert np.abs(np.log(plain[0]) - np.log(plain[1]))[boundary].min() > 1e-3  # the teacher alone is not
        # after a word character the spellings without a space are left alone, so the balance is not exact
        assert np.abs(lr[~boundary]).max() > 1e-4
    fig = summarise(col)["none"]["pair_mean"]["table"]["after a space or punctuation"]
    assert abs(fig["mean_logratio"]) < 1e-6 and abs(fig["pooled_logratio"]) < 1e-6


def test_a_student_column_is_the_students_own_distribution_on_the_same_positions():
    from distill.bench.audit_tables import arm_table
    from distill.bench.audit_targets import collect, summarise

    cfg = load_config(RECIPE)
    teacher = _teacher_and_blocks(cfg, "none").teacher
    col = collect(cfg, modes=("none",), augments=("none",), max_blocks=4, show_progress=False,
                  students={"teacher": teacher})
    # the plain targets are the teacher's softmax at the loss temperature: scored as a student, it matches them
    for name in col.ids:
        for got, want in zip(col.masses["none"]["student teacher"][name], col.masses["none"]["none"][name],
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert "| student teacher | none | student teacher |" in "\n".join(arm_table(summarise(col)))


def test_tables_from_json_name_each_arm(collected, tmp_path, capsys):
    import json

    from distill.bench.audit_targets import main, summarise

    _, col = collected
    summary = summarise(col)
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"blocks": col.blocks, "figures": summary,
                                "id_counts": {k: [len(m), len(f)] for k, (m, f) in col.ids.items()}}))
    assert main(["--from-json", str(path)]) == 0
    out = capsys.readouterr().out
    pooled = summary["both"]["pair_mean"]["probe"]["all"]["pooled_logratio"]
    assert f"| cda_pair_mean | both | pair_mean | {pooled:+.3f} |" in out
    assert "| kd | none | none |" in out and "| cda_cf_mean | both | cf_mean |" in out


def test_position_kinds_of_a_written_block():
    from distill import models
    from distill.bench.audit_targets import position_kinds
    from distill.crr.lexicon import load_lexicon
    from distill.crr.token_table import build_token_swap_table
    from distill.crr.vocab import build_swap_plan

    tok = models.load_tokenizer(str(ROOT / "data" / "tiny_tokenizer"))
    lexicon = load_lexicon()
    table = build_token_swap_table(tok, lexicon)
    plan = build_swap_plan(table, len(tok))
    first = tok("The cat sat. Then he ran to her home", add_special_tokens=False)["input_ids"]
    second = tok("A dog. She", add_special_tokens=False)["input_ids"]
    row = torch.tensor([first + [tok.eos_token_id] + second])
    kinds = position_kinds(row, tok, table, lexicon, plan)
    pieces = [table.pieces[i] for i in row[0].tolist()]
    he = next(i for i, s in enumerate(pieces) if s.strip() == "he")
    eos = len(first)
    after = kinds["gendered word before"]
    assert not after[:he].any() and after[he:eos].all()  # from the token " he" itself to the document's end
    assert not after[eos:].any()  # a new document: "She" is the last token, so no position follows it
    her = next(i for i, s in enumerate(pieces) if s.strip() == "her")
    male = kinds["last gendered word male"]
    assert male[he:her].all() and not male[her:].any() and not male[:he].any()
    caps = [t for t in range(row.shape[1] - 1) if kinds["next word capitalised"][t]]
    assert [pieces[t + 1].strip()[:1] for t in caps] == [s.strip()[:1] for s in pieces[1:] if s.strip()[:1].isupper()]
    cont = kinds["next token continues a word"]
    for t in range(row.shape[1] - 1):
        joined = pieces[t][-1:].isalnum() and pieces[t + 1][:1].isalnum()
        assert cont[t] == joined, (t, pieces[t], pieces[t + 1])


def test_swap_audit_classes_agree_with_the_table():
    from distill import models
    from distill.bench.audit_swap import audit, spelled_pairs
    from distill.crr.lexicon import load_lexicon
    from distill.crr.token_table import build_token_swap_table
    from distill.eval.probe import gender_token_ids

    tok = models.load_tokenizer(str(ROOT / "data" / "tiny_tokenizer"))
    lexicon = load_lexicon()
    res = audit(tok, lexicon)
    table = build_token_swap_table(tok, lexicon)
    in_table = set(table.is_gendered.nonzero().flatten().tolist())
    both = {i for p in spelled_pairs(tok, lexicon) if p["status"] == "both one token" for i in p["ids"]}
    assert both == in_table  # the table holds exactly the spellings that are one token on both sides
    assert "her -> him, his" in res["classes"]["one_to_many"]["all"]
    m, f = gender_token_ids(tok)
    assert res["classes"]["probe_outside"]["count"] == len((set(m) | set(f)) - in_table)
    total = sum(sum(r[s] for s in ("both one token", "male side only", "female side only", "neither"))
                for r in res["spellings"])
    assert total == len(spelled_pairs(tok, lexicon))
    one_side = sum(res["classes"][f"{k}_{s}"]["count"] for k in ("words", "names")
                   for s in ("male_side_only", "female_side_only"))
    assert one_side == sum(r["male side only"] + r["female side only"] for r in res["spellings"])


@pytest.mark.slow
def test_swap_audit_on_the_demo_teacher_finds_the_probe_ids_the_table_cannot_balance():
    from distill import models
    from distill.bench.audit_swap import audit
    from distill.crr.lexicon import load_lexicon

    if not TEACHER.exists():
        pytest.skip("no teacher: run `make teacher`")
    res = audit(models.load_tokenizer(str(TEACHER)), load_lexicon())
    # "Woman", " Herself" and "girls" are two tokens, so their male counterparts are in no pair
    assert res["classes"]["probe_outside"]["all"] == ["'Man' (male)", "' Himself' (male)", "'boys' (male)"]


def test_corpus_audit_counts_swapped_copies_as_mirror_images():
    from distill.bench.audit_corpus import LISTS, audit

    res = audit(load_config(RECIPE), "both")
    s = res["sets"]
    assert s["swapped"]["documents"] == s["original"]["documents_gendered"] > 0
    assert s["combined"]["documents"] == s["original"]["documents"] + s["swapped"]["documents"]
    for name in LISTS:
        o, w, c = (s[k][name] for k in ("original", "swapped", "combined"))
        assert o["male"] + o["female"] > 0 or name == "lexicon names"
        assert (w["male"], w["female"]) == (o["female"], o["male"])  # each swapped word changes side
        assert c == {"male": o["male"] + w["male"], "female": o["female"] + w["female"]}
        assert c["male"] == c["female"]
    assert s["original"]["probe"]["male"] != s["original"]["probe"]["female"]  # so the balance is the swap's


@pytest.mark.parametrize(("module", "args", "needle"), [
    ("audit_targets", ["--modes", "pair_mean,pairmean"], "--modes 'pair_mean,pairmean': choose from"),
    ("audit_targets", ["--augment", "twice"], "--augment 'twice': choose from"),
    ("audit_targets", ["--max-blocks", "-1"], "--max-blocks must be >= 0"),
    ("audit_targets", ["--from-json", "/nonexistent.json"], "--from-json /nonexistent.json: not an --out file"),
    ("audit_targets", ["--student", "out/demo_runs/crr/final"], "write NAME=DIR"),
    ("audit_targets", ["--student", "crr=/nonexistent"], "--student crr=/nonexistent: no config.json there"),
    ("audit_swap", ["crr.lexicon=/nonexistent.tsv"], "lexicon file /nonexistent.tsv not found"),
    ("audit_corpus", ["crr.names=/nonexistent.tsv"], "lexicon file /nonexistent.tsv not found"),
])
def test_bad_input_is_one_line_before_any_compute(module, args, needle, capsys, tmp_path):
    import importlib

    mod = importlib.import_module(f"distill.bench.{module}")
    out = tmp_path / "out.json"
    assert mod.main(["--recipe", RECIPE, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{module}: error: ") and needle in err and "\n" not in err
    assert not out.exists()
