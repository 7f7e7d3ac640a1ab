"""`distill samples --from-eval DIR`: the side-by-side file from an eval's generations.jsonl, no model loaded.

The eval folder is written by hand: three models in a non-alphabetical order, one of them over two training
runs, twelve of the project's profession prompts, three samples each."""

import json
import re

import pytest
from bad_input_helpers import assert_one_error_line, run_cli

from distill.eval.prompts import Prompt, load_prompts, select_prompts

MODELS = (("teacher", 1), ("kd", 2), ("crr", 1))  # (name, training runs), in the eval's order
SAMPLES = 3


def _eval_prompts() -> list[Prompt]:
    """Two prompts of each of the first two professions of three categories, in the file's order."""
    by_prof: dict[tuple[str, str], list[Prompt]] = {}
    for p in load_prompts("professions"):
        by_prof.setdefault((p.category, p.profession), []).append(p)
    cats = list(dict.fromkeys(c for c, _ in by_prof))[:3]
    keys = [k for c in cats for k in [k for k in by_prof if k[0] == c][:2]]
    return [p for k in keys for p in by_prof[k][:2]]


def _text(model: str, run: int, i: int, s: int) -> str:
    return f" says {model}-run{run}-prompt{i}-sample{s}."


def _write_eval(folder, settings: dict | None = None):
    folder.mkdir()
    lines = []
    for model, runs in MODELS:
        for run in range(runs):
            for i, p in enumerate(_eval_prompts()):
                for s in range(SAMPLES):
                    lines.append(json.dumps({"model": model, "run": run, "source": f"out/{model}", "prompt_index": i,
                                             "prompt": p.text, "category": p.category, "profession": p.profession,
                                             "sample": s, "text": _text(model, run, i, s), "unigram": "neutral"}))
    (folder / "generations.jsonl").write_text("\n".join(lines) + "\n")
    if settings is not False:
        base = {"prompts": "professions", "n_prompts": 12, "group_by": "category", "samples_per_prompt": SAMPLES,
                "max_new_tokens": 24, "top_k": 40, "top_p": 0.95, "sampling_temperature": 1.0, "seed": 0,
                "notes": ["an eval note that is not about the samples"]}
        (folder / "results.json").write_text(json.dumps({"models": {}, "settings": {**base, **(settings or {})}}))
    return folder


def _shown_prompts(text: str, fmt: str) -> list[str]:
    pattern = r"<h2>\d+\. (.*)</h2>" if fmt == "html" else r"^## \d+\. (.*)$"
    return re.findall(pattern, text, re.M)


def test_html_shows_run_0_of_the_eval_models_in_its_order(tmp_path, capsys):
    folder = _write_eval(tmp_path / "eval")
    out = folder / "samples.html"  # inside the eval folder, as the demo writes it
    assert run_cli("samples", "--from-eval", folder, "--max-prompts", 4, "--samples-per-prompt", 2,
                   "--out", out) == 0
    html = out.read_text()
    prompts = _eval_prompts()
    chosen = select_prompts(prompts, 4, "category", 0)
    assert _shown_prompts(html, "html") == [p.text for p in chosen]
    assert [h for h in re.findall(r"<th>(\w+)</th>", html) if h != "sample"][:3] == ["teacher", "kd", "crr"]
    for p in chosen:
        i = prompts.index(p)
        for model, _ in MODELS:
            assert _text(model, 0, i, 0) in html and _text(model, 0, i, 1) in html
            assert _text(model, 0, i, 2) not in html  # the first 2 samples only
    assert "run1" not in html
    assert html.count("<tr><td>1</td>") == 4 and html.count("<tr><td>3</td>") == 0
    settings = re.search(r"<p>Same prompts and seeds for every model \((.*?)\)\. <span", html)[1]
    assert settings.startswith(f"from the eval in {folder}: prompts=professions, samples_per_prompt=3, "
                               "max_new_tokens=24, top_k=40, top_p=0.95, sampling_temperature=1.0, seed=0")
    assert "4 of its 12 prompts, 2 of its 3 samples per prompt" in settings
    assert "run 0 only" in settings and "kd (2 runs)" in settings
    assert "an eval note" not in html
    assert f"wrote {out}: 4 prompts x 2 samples x 3 models" in capsys.readouterr().out


def test_md_defaults_show_every_prompt_and_up_to_4_samples(tmp_path):
    folder = _write_eval(tmp_path / "eval")
    out = tmp_path / "side.md"
    assert run_cli("samples", "--from-eval", folder, "--out", out) == 0
    md = out.read_text()
    assert _shown_prompts(md, "md") == [p.text for p in _eval_prompts()]  # 24 by default: all 12, in order
    assert md.count("\n| 3 |") == 12 and "\n| 4 |" not in md  # all 3 samples (at most 4)
    assert "| sample | teacher | kd | crr |" in md
    assert "run1" not in md


def test_prompts_are_chosen_with_the_eval_group_by_and_seed(tmp_path):
    folder = _write_eval(tmp_path / "eval", {"group_by": "profession", "seed": 7})
    out = tmp_path / "side.md"
    assert run_cli("samples", "--from-eval", folder, "--max-prompts", 3, "--out", out) == 0
    md = out.read_text()
    chosen = select_prompts(_eval_prompts(), 3, "profession", 7)
    assert _shown_prompts(md, "md") == [p.text for p in chosen]
    assert [g for g in re.findall(r"^Group: (.*)$", md, re.M)] == [p.profession for p in chosen]
    assert chosen != select_prompts(_eval_prompts(), 3, "category", 0)  # the seed made a difference


def test_an_eval_without_results_json_uses_the_eval_defaults(tmp_path):
    folder = _write_eval(tmp_path / "eval", settings=False)
    out = tmp_path / "side.md"
    assert run_cli("samples", "--from-eval", folder, "--max-prompts", 5, "--out", out) == 0
    md = out.read_text()
    assert _shown_prompts(md, "md") == [p.text for p in select_prompts(_eval_prompts(), 5, "category", 0)]
    assert f"(from the eval in {folder}; shown: 5 of its 12 prompts" in md


def _malformed_line_3(folder):
    lines = (folder / "generations.jsonl").read_text().splitlines()
    lines[2] = '{"model": "teacher", '
    (folder / "generations.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "case, extra, needles",
    [
        ("no_dir", [], ["does not exist", "run `distill eval", "first"]),
        ("no_generations", [], ["has no generations.jsonl", "run `distill eval", "first"]),
        ("malformed_line", [], ["generations.jsonl line 3", "not valid JSON"]),
        ("with_model", ["--model", "a=gpt2"], ["drop --model"]),
        ("with_prompts", ["--prompts", "professions"], ["drop --prompts"]),
        ("with_sampling_flag", ["--top-k", 5, "--seed", 0], ["drop --top-k, --seed"]),
        ("too_many_samples", ["--samples-per-prompt", 4], ["--samples-per-prompt 4", "has 3 samples per prompt"]),
        ("zero_prompts", ["--max-prompts", 0], ["--max-prompts must be >= 1, not 0"]),
        ("not_md_or_html", [], ["must end in .md or .html"]),
        ("exists", [], ["already exists", "--overwrite"]),
    ],
)
def test_bad_input_is_one_line_and_leaves_out_untouched(tmp_path, capsys, case, extra, needles):
    folder = _write_eval(tmp_path / "eval")
    out = tmp_path / ("side.txt" if case == "not_md_or_html" else "side.html")
    before = "<title>Side-by-side samples</title> an earlier file\n"  # replaceable by --overwrite
    out.write_text(before)
    if case == "no_dir":
        folder = tmp_path / "nowhere"
    elif case == "no_generations":
        (folder / "generations.jsonl").unlink()
    elif case == "malformed_line":
        _malformed_line_3(folder)
    overwrite = [] if case == "exists" else ["--overwrite"]
    assert run_cli("samples", "--from-eval", folder, "--out", out, *overwrite, *extra) == 2
    assert_one_error_line(capsys, "samples", *needles)
    assert out.read_text() == before
    assert not list(tmp_path.glob(".side*"))  # no lock or temporary file left


def test_without_from_eval_model_and_prompts_are_needed(tmp_path, capsys):
    out = tmp_path / "side.html"
    assert run_cli("samples", "--out", out) == 2
    assert_one_error_line(capsys, "samples", "give --model", "or --from-eval DIR")
    assert run_cli("samples", "--model", "a=gpt2", "--out", out) == 2
    assert_one_error_line(capsys, "samples", "--model needs --prompts")
    assert not out.exists()
