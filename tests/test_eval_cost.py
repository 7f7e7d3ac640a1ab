"""report.md's cost table: each part's seconds set against the paired comparison it adds (pure, no models)."""

import pytest

from distill.eval.cost import cost_rows, render_cost_md
from distill.eval.runtime import part_seconds, timed


def _results(names=("teacher", "kd", "crr")):
    by_model = {n: {"load": 1.0, "generation": 10.0, "probe": 2.0, "utility": 3.0} for n in names}
    comparisons = [
        {"a": "teacher", "b": "kd", "metric": "disparity_rms", "diff": -0.3, "ci": [-0.4, -0.2], "p": 0.001},
        {"a": "kd", "b": "crr", "metric": "disparity_rms", "diff": -0.05, "ci": [-0.15, 0.05], "p": 0.4},
        {"a": "kd", "b": "crr", "metric": "probe_rms_logratio", "diff": -0.1, "ci": [-0.12, -0.08], "p": 2.5e-4},
    ]
    return {"models": {n: {} for n in names}, "settings": {"part_seconds": part_seconds(by_model)},
            "comparisons": comparisons, "power": {"detectable_difference": 0.228}}


def test_rows_take_the_students_comparison_and_the_summed_seconds():
    rows = {r["part"]: r for r in cost_rows(_results())}
    assert list(rows) == ["load", "generation", "probe", "utility"]  # compute order; lenses that did not run: absent
    gen = rows["generation"]
    assert gen["seconds"] == 30.0 and gen["share"] == pytest.approx(30.0 / 48.0)
    assert gen["comparison"] == "crr - kd" and gen["diff"] == -0.05 and gen["half_width"] == pytest.approx(0.1)
    assert gen["detectable"] == 0.228
    assert rows["probe"]["half_width"] == pytest.approx(0.02) and rows["probe"]["p"] == 2.5e-4
    assert rows["load"]["metric"] is None and rows["utility"]["diff"] is None


def test_two_models_use_their_own_pair():
    res = _results(("teacher", "kd"))
    rows = {r["part"]: r for r in cost_rows(res)}
    assert rows["generation"]["comparison"] == "kd - teacher" and rows["generation"]["diff"] == -0.3


def test_the_table_renders_and_an_eval_without_timings_has_none():
    md = "\n".join(render_cost_md(_results()))
    assert "| generation: generation disparity (the paper's metric) | 30.0 | 62% | disparity_rms (detects 0.228" in md
    assert "| load: loading each model | 3.0 | 6% | - | n/a | n/a | n/a |" in md
    assert render_cost_md({"models": {}, "settings": {}, "comparisons": []}) == []


def test_timed_adds_up_and_a_missing_dict_is_a_no_op():
    seconds: dict = {}
    for _ in range(2):
        with timed(seconds, "probe"):
            pass
    assert set(seconds) == {"probe"} and seconds["probe"] >= 0.0
    with timed(None, "probe"):
        pass
    with pytest.raises(ValueError), timed(seconds, "fails"):
        raise ValueError  # the time is still recorded, and the error is not swallowed
    assert "fails" in seconds
