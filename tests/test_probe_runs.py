"""`python -m distill.bench.probe_runs`: per-run probe figures from evals' results.json, slopes against a teacher
scored by another eval, ratios and runs p against the baseline, one-line errors."""

import json

import numpy as np
import pytest

from distill.bench import probe_runs

TEACHER = {"a": -1.0, "b": 0.0, "c": 1.0, "d": 2.0}


def _run(ratios, ppl):
    values = np.array(list(ratios.values()))
    return {"perplexity": ppl, "probe": {"mean_logratio": float(values.mean()), "logratio": ratios}}


def _write(path, models):
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"models": models}))
    return path


@pytest.fixture
def evals(tmp_path):
    teacher = {"perplexity": 40.0, "probe": {"mean_logratio": 0.5, "logratio": TEACHER}}
    kd = [_run({k: 0.9 * v + 0.1 * i for k, v in TEACHER.items()}, 50.0 + i) for i in range(5)]
    first = _write(tmp_path / "first", {"teacher": teacher, "kd": {"seeds": kd}})
    # the arm's eval scored no teacher: its slopes come from its own ratios against the first eval's teacher
    arm = [_run({k: 0.3 * v - 0.5 - 0.01 * i for k, v in TEACHER.items()}, 52.0 + i) for i in range(5)]
    second = _write(tmp_path / "second", {"arm": {"seeds": arm}})
    return first, second


def test_slopes_offsets_and_runs_p_against_the_baseline(evals):
    models, teacher = probe_runs.load_runs(list(evals))
    assert teacher["offset"] == 0.5 and teacher["perplexity"] == 40.0
    assert models["kd"]["slope"] == pytest.approx([0.9] * 5)
    assert models["arm"]["slope"] == pytest.approx([0.3] * 5)
    assert models["arm"]["|offset - teacher|"] == pytest.approx(np.abs(models["arm"]["offset"] - 0.5))
    text = probe_runs.table(models, teacher, "kd")
    arm_row = next(line for line in text.splitlines() if line.startswith("| arm |"))
    assert "0.300 ± 0.000 (0.33x, p 0.008)" in arm_row  # every arm run below every kd run: the 5 + 5 floor
    assert "| teacher | 1 | +0.500 | 0.500 | 0 | 1 | 40.00 |" in text


def test_a_model_without_a_probe_and_a_missing_eval_are_one_line_errors(tmp_path, evals, capsys):
    assert probe_runs.main(["--eval", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    no_probe = _write(tmp_path / "no_probe", {"kd": {"seeds": [{"perplexity": 1.0}]}})
    assert probe_runs.main(["--eval", str(no_probe)]) == 2
    assert "has no likelihood probe" in capsys.readouterr().err
    assert probe_runs.main(["--eval", str(evals[0]), "--baseline", "crr"]) == 2
    assert "is not among the scored models" in capsys.readouterr().err
