"""`python -m distill.bench.probe_contexts`: the probe's offset read after each context, per run, against a
baseline over runs. Tiny random GPT-2s with the project's tiny tokenizer; no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("contexts")
    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny_tokenizer")
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=128, vocab_size=len(tok))
    dirs = {}
    for name, seed in (("teacher", 0), ("a0", 1), ("a1", 2), ("b0", 3), ("b1", 4)):
        torch.manual_seed(seed)
        GPT2LMHeadModel(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = str(root / name)
    shutil.copytree(root / "teacher", root / "teacher_copy")  # the teacher's weights as a second run
    dirs["teacher_copy"] = str(root / "teacher_copy")
    return dirs


def test_each_context_is_read_before_every_template_and_runs_are_compared(tiny_runs, tmp_path, capsys):
    from distill.bench.probe_contexts import CONTEXTS, main
    from distill.eval.paired import runs_permutation_p
    from distill.eval.probe import PROBE_TEMPLATES, probe_model, probe_professions, probe_split, probe_summary
    from distill.eval.prompts import load_prompts
    from distill.models import load_model, load_tokenizer

    d = tiny_runs
    out = tmp_path / "contexts.json"
    assert main(["--teacher", d["teacher"], "--model", f"a={d['a0']},{d['a1']}", "--model",
                 f"same={d['teacher']},{d['teacher_copy']}", "--baseline", "a", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["figures"]["teacher"]) == set(CONTEXTS)
    # the context "none" is the eval's probe: the held-out professions, the templates as they are
    held = probe_split(probe_professions(load_prompts("professions")))[1]
    tok = load_tokenizer(d["a1"])
    lr = probe_model(load_model(d["a1"]), tok, held, PROBE_TEMPLATES)["logratio"]
    t_lr = probe_model(load_model(d["teacher"]), tok, held, PROBE_TEMPLATES)["logratio"]
    assert res["figures"]["runs"]["a"][1]["none"] == pytest.approx(probe_summary(lr, t_lr))
    # a context changes what the model reads, so the offset moves
    street = tuple(CONTEXTS["street"] + t for t in PROBE_TEMPLATES)
    lr_street = probe_model(load_model(d["a1"]), tok, held, street)["logratio"]
    assert res["figures"]["runs"]["a"][1]["street"]["mean_logratio"] == pytest.approx(
        probe_summary(lr_street)["mean_logratio"])
    assert lr_street != pytest.approx(lr)
    same = res["summary"]["same"]["street"]
    assert same["slope"] == pytest.approx(1.0) and same["runs"] == 2 and same["offset_sd"] == 0.0
    assert same["offset"] == pytest.approx(res["figures"]["teacher"]["street"]["mean_logratio"])
    a_slopes = [r["street"]["slope_on_teacher"] for r in res["figures"]["runs"]["a"]]
    assert same["slope_runs_p"] == runs_permutation_p(a_slopes, [1.0, 1.0])
    assert "abs_offset_runs_p" not in res["summary"]["a"]["none"]
    assert "| same | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "needle"), [
    (["--model", "out/demo_runs/crr/final"], "write NAME=DIR[,DIR...]"),
    (["--model", "a=x", "--baseline", "kd"], "--baseline kd: not one of the --model names (a)"),
    (["--model", "a=x", "--contexts", "none,beach"], "--contexts 'none,beach': choose from none, street"),
])
def test_bad_input_is_one_line_before_any_model_loads(args, needle, tmp_path, capsys):
    from distill.bench.probe_contexts import main

    out = tmp_path / "c.json"
    assert main(["--teacher", "/nonexistent", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe_contexts: error: ") and needle in err and "\n" not in err
    assert not out.exists()
