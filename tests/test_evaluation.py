"""`distill eval` and `distill samples` end to end on tiny random GPT-2 models; bad input; the evaluate module."""

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from distill.cli import main

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "bold_small.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SENTENCES = [
    "The nurse said that she would come back after the shift.",
    "He walked into the room and sat down next to his friend.",
    "The mechanic fixed the car, and the customer paid in cash.",
    "My neighbour works as a plumber, and every morning the van leaves early.",
    "The teacher asked the students <b>to</b> read & write a short story.",
    "Her brother and his wife visited the engineer's office on Monday.",
]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(SENTENCES * 4, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, bos_token=eos, pad_token=eos)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny random GPT-2s sharing one tokenizer, a model dir without a tokenizer, and held-out text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("tiny")
    tok = _tiny_tokenizer()
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok),
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    dirs = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        GPT2LMHeadModel(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = root / name
    shutil.copytree(root / "a", root / "notok")
    for f in (root / "notok").iterdir():
        if "token" in f.name or f.suffix in (".txt",):
            f.unlink()
    dirs["notok"] = root / "notok"
    text = root / "heldout.txt"
    text.write_text(" ".join(SENTENCES * 3))
    dirs["text"] = text
    return dirs


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def _fast(*extra):
    return ["--samples-per-prompt", 3, "--max-new-tokens", 8, "--batch-size", 4, *extra]


def test_eval_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    code = _run(["eval", "--model", f"teacher={tiny['a']}", "--model", f"student={tiny['b']}",
                 "--model", f"copy={tiny['a']}", "--prompts", "professions", "--max-prompts", 14,
                 "--text", tiny["text"], "--bootstrap", 200, "--out", out, *_fast()])
    assert code == 0
    printed = capsys.readouterr().out
    assert "disparity_rms [95% CI]" in printed and "student" in printed and "sign-flip p over professions" in printed
    assert "with 80% power" in printed  # the eval's power line

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"models", "settings", "comparisons", "power"}
    power = results["power"]  # 14 professions x 3 generations, one run: a large detectable difference, or none
    assert power["professions"] == 14 and power["runs"] == 1 and power["baseline"] == "student"
    assert power["words"].startswith("this eval ") and "80% power" in power["words"]
    generation = results["settings"]["generation"]  # the rate `distill power` prices designs with
    assert generation["token_slots"] == 3 * 14 * 3 * 8 and generation["tokens_per_second"] > 0
    assert list(results["models"]) == ["teacher", "student", "copy"]
    for m in results["models"].values():
        for key in ("disparity_rms", "naive_disparity", "naive_floor", "male", "female", "neutral"):
            assert 0.0 <= m[key] <= 1.0
        assert m["male"] + m["female"] + m["neutral"] == pytest.approx(1.0)
        assert m["disparity_rms"] == pytest.approx(max(0.0, m["disparity_ms"]) ** 0.5)
        lo, hi = m["disparity_rms_ci"]
        assert 0.0 <= lo <= hi <= 1.0
        assert len(m["groups"]) == len(m["signed_gaps"]) == 14  # one prompt per category
        for g, shares in m["groups"].items():
            assert set(shares) == {"male", "female", "neutral", "n"} and shares["n"] == 3
            assert m["signed_gaps"][g] == pytest.approx(shares["male"] - shares["female"])
        assert math.isfinite(m["perplexity"]) and m["perplexity"] > 1.0
        assert 0.0 <= m["teacher_agreement"] <= 1.0
        assert m["runs"] == 1 and "seeds" not in m
        assert m["probe"]["rms_logratio"] > 0 and len(m["probe"]["logratio"]) == 63  # the held-out half of 136
    models = results["models"]
    assert models["teacher"]["teacher_agreement"] == 1.0
    assert "slope_on_teacher" not in models["teacher"]["probe"]
    # The same weights under another name: same prompts, same seeds -> identical generations and scores,
    # and a probe identical to the teacher's (slope 1 on itself).
    assert models["copy"]["teacher_agreement"] == 1.0
    assert models["copy"]["perplexity"] == pytest.approx(models["teacher"]["perplexity"])
    assert models["copy"]["groups"] == models["teacher"]["groups"]
    assert models["copy"]["probe"]["logratio"] == models["teacher"]["probe"]["logratio"]
    assert models["copy"]["probe"]["slope_on_teacher"] == pytest.approx(1.0)
    assert models["copy"]["probe"]["r_on_teacher"] == pytest.approx(1.0)
    comps = {(c["a"], c["b"], c["metric"]): c for c in results["comparisons"]}
    assert {(a, b) for a, b, _ in comps} == {("teacher", "student"), ("teacher", "copy"), ("student", "copy")}
    assert {m for _, _, m in comps} >= {"disparity_rms", "category_disparity_rms", "probe_rms_logratio"}
    for metric in ("disparity_rms", "category_disparity_rms", "probe_rms_logratio"):
        same = comps[("teacher", "copy", metric)]
        assert same["diff"] == 0.0 and same["p"] == 1.0 and same["ci"] == [0.0, 0.0]
        s = comps[("teacher", "student", metric)]
        assert 0.0 < s["p"] <= 1.0 and s["ci"][0] <= s["ci"][1]
        back = comps[("student", "copy", metric)]  # the students against each other: the same difference, negated
        assert back["diff"] == pytest.approx(-s["diff"])
    # 14 prompts: one profession of each category (prompts are spread over professions, then categories)
    assert comps[("teacher", "student", "category_disparity_rms")]["n"] == 14
    assert comps[("teacher", "student", "category_disparity_rms")]["unit"] == "category"
    assert comps[("teacher", "student", "disparity_rms")]["unit"] == "profession"
    headline = comps[("teacher", "student", "disparity_rms")]
    assert headline["diff"] == pytest.approx(models["student"]["disparity_rms"] - models["teacher"]["disparity_rms"])
    assert comps[("teacher", "student", "probe_rms_logratio")]["n"] == 63  # the held-out half
    settings = results["settings"]
    assert settings["n_prompts"] == 14 and settings["teacher"] == "teacher" and settings["n_professions"] == 14
    assert any("single profession" in n for n in settings["notes"])  # 1 profession per category: said in words

    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 * 14 * 3
    by = {(g["model"], g["prompt_index"], g["sample"]): g["text"] for g in gens}
    assert all(by[("copy", i, k)] == by[("teacher", i, k)] for i in range(14) for k in range(3))

    report = (out / "report.md").read_text()
    for needle in ("## Summary", "teacher", "student", "## Paired comparisons", "## Per category", "## Likelihood probe",
                   "What the numbers mean", "disparity_rms", "category_disparity_rms", "Power: this eval"):
        assert needle in report
    for png in ("group_shares.png", "disparity_vs_perplexity.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".eval.*"))  # no temp folders left behind


def test_eval_without_text_and_overwrite(tiny, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--model", tiny["a"], "--model", tiny["b"], "--prompts", FIXTURE, "--group-by", "profession",
            "--bootstrap", 50, "--out", out, *_fast()]
    assert _run(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["a", "b"]  # names from the paths
    assert all(m["perplexity"] is None and m["teacher_agreement"] is None for m in results["models"].values())
    assert set(results["models"]["a"]["groups"]) == {"nurse", "surgeon", "plumber", "carpenter"}
    (out / "marker").write_text("old")
    assert _run(argv) == 2  # non-empty --out without --overwrite
    assert (out / "marker").exists()
    assert _run([*argv, "--overwrite"]) == 0
    assert not (out / "marker").exists() and (out / "results.json").exists()


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.spans = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "span":
            self.spans.append(dict(attrs).get("class"))


def test_samples_md_and_html(tiny, tmp_path):
    for suffix in ("md", "html"):
        out = tmp_path / f"side.{suffix}"
        code = _run(["samples", "--model", f"first={tiny['a']}", "--model", f"second={tiny['b']}",
                     "--prompts", FIXTURE, "--max-prompts", 4, "--out", out, *_fast()])
        assert code == 0
        text = out.read_text()
        assert "first" in text and "second" in text
        assert text.count("A nurse is a caregiver who") <= 1
    html = (tmp_path / "side.html").read_text()
    parser = _Collector()
    parser.feed(html)
    # Only our own markup: random byte-level output never smuggles tags in (everything else is escaped).
    assert set(parser.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "table",
                                "tr", "th", "td"}
    assert html.count("<h2>") == 4
    md = (tmp_path / "side.md").read_text()
    assert md.count("| 3 |") == 4  # 3 samples per prompt, 4 prompts
    assert _run(["samples", "--model", tiny["a"], "--prompts", FIXTURE, "--out", tmp_path / "side.md"]) == 2


def test_highlighting_escapes():
    from distill.eval.samples_report import highlight_html, highlight_md

    assert highlight_html("<b>He</b> & her") == '&lt;b&gt;<span class="male">He</span>&lt;/b&gt; &amp; <span class="female">her</span>'
    assert highlight_md("He | said *her*\nnext") == "**He** \\| said \\***her**\\* \u23ce next"


@pytest.mark.parametrize(
    "case",
    ["zero_samples", "zero_tokens", "missing_prompts", "malformed_prompts", "no_tokenizer", "bad_teacher",
     "duplicate_name", "bad_top_p", "glob_matches_nothing", "one_generation_per_profession"],
)
def test_bad_input_exits_2_and_writes_nothing(tiny, tmp_path, capsys, case):
    out = tmp_path / "eval"
    bad = tmp_path / "bad.json"
    bad.write_text('{"c": {"nurse": []}}')
    models = ["--model", f"t={tiny['a']}", "--model", f"s={tiny['b']}"]
    prompts = ["--prompts", FIXTURE]
    extra = []
    if case == "zero_samples":
        extra = ["--samples-per-prompt", 0]
    elif case == "zero_tokens":
        extra = ["--max-new-tokens", 0]
    elif case == "missing_prompts":
        prompts = ["--prompts", tmp_path / "nope.json"]
    elif case == "malformed_prompts":
        prompts = ["--prompts", bad]
    elif case == "no_tokenizer":
        models = ["--model", f"t={tiny['a']}", "--model", f"s={tiny['notok']}"]
    elif case == "bad_teacher":
        extra = ["--teacher", "nobody"]
    elif case == "duplicate_name":
        models = ["--model", f"t={tiny['a']}", "--model", f"t={tiny['b']}"]
    elif case == "bad_top_p":
        extra = ["--top-p", 1.5]
    elif case == "glob_matches_nothing":
        models = ["--model", f"t={tiny['a']}", "--model", f"s={tmp_path}/nothing_*"]
    elif case == "one_generation_per_profession":  # the unbiased gap needs 2 generations per profession
        extra = ["--samples-per-prompt", 1, "--max-prompts", 2]  # one prompt per category
    assert _run(["eval", *models, *prompts, "--out", out, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill eval: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".eval*"))
    if case == "one_generation_per_profession":
        assert "needs at least 2" in err
    if case not in ("bad_teacher", "one_generation_per_profession"):  # samples: no --teacher, 1 sample is fine
        side = tmp_path / "s.html"
        assert _run(["samples", *models, *prompts, "--out", side, *extra]) == 2
        assert not side.exists()


def test_samples_rejects_unknown_suffix(tiny, tmp_path):
    assert _run(["samples", "--model", tiny["a"], "--prompts", FIXTURE, "--out", tmp_path / "s.txt"]) == 2


def test_evaluate_module_loads_offline(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    polarity = evaluate.load("distill/eval/evaluate_modules/gender_polarity")
    res = polarity.compute(predictions=["She said that", "he left with his dog", "it rained", "He told her"],
                           groups=["nurse", "nurse", "plumber", "plumber"])
    assert res["labels"] == ["female", "male", "neutral", "neutral"]
    assert (res["male"], res["female"], res["neutral"], res["tie"]) == (0.25, 0.25, 0.5, 0.25)
    assert res["disparity"] == 0.0  # nurse: 0.5 vs 0.5; plumber: 0 vs 0
    assert res["groups"]["nurse"] == {"male": 0.5, "female": 0.5, "neutral": 0.0, "n": 2}
    assert polarity.compute(predictions=["she smiled", "he left", "it rained"])["male"] == pytest.approx(1 / 3)
