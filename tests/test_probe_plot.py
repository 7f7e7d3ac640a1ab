"""The probe scatter (each student against the teacher, per profession) and the lenses plot's slope panel."""

import json

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from lens_fixtures import PNG_MAGIC, tiny_model, vocabulary, word_tokenizer

from distill.cli import main
from distill.eval import probe_plot
from distill.eval.lenses.report import plot_lenses
from distill.eval.probe import probe_summary


def _results(slopes: dict, n: int = 30, teacher: str = "teacher") -> dict:
    g = np.random.default_rng(0)
    t = g.normal(0, 1, n)
    profs = [f"cat{i % 3}/prof_{i}" for i in range(n)]
    models = {teacher: {"probe": {"logratio": dict(zip(profs, t.tolist(), strict=True))}}}
    for name, b in slopes.items():
        s = b * t + 0.3 + g.normal(0, 0.1, n)
        models[name] = {"probe": {"logratio": dict(zip(profs, s.tolist(), strict=True)),
                                  **probe_summary(s, t)}}
    return {"models": models, "settings": {"teacher": teacher}, "comparisons": []}


def _line_slope(line) -> float:
    x, y = line.get_data()
    return (y[1] - y[0]) / (x[1] - x[0])


@pytest.mark.parametrize("students", [{"kd": 0.9}, {"kd": 0.9, "crr": 0.2}, {"a": 1.0, "b": 0.5, "c": 0.0}])
def test_one_panel_per_student_with_its_fitted_slope(students):
    results = _results(students)
    fig = probe_plot.probe_scatter_figure(results)
    assert len(fig.axes) == len(students)
    for ax, name in zip(fig.axes, students, strict=True):
        want = results["models"][name]["probe"]["slope_on_teacher"]
        assert ax.get_title().startswith(f"{name}: slope on the teacher {want:.2f}")
        fitted = [ln for ln in ax.get_lines() if "least squares" in str(ln.get_label())]
        assert len(fitted) == 1 and _line_slope(fitted[0]) == pytest.approx(want)
        (identity,) = [ln for ln in ax.get_lines() if ln.get_label() == "student = teacher"]
        assert identity.get_linestyle() == "--" and _line_slope(identity) == pytest.approx(1.0)
        zero_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
        assert len(zero_lines) == 2  # y = 0 and x = 0
        assert len(ax.collections[0].get_offsets()) == 30  # one point per profession
    plt.close(fig)


def test_the_scatter_file_and_its_link(tmp_path):
    results = _results({"kd": 0.9, "crr": 0.2})
    (path,) = probe_plot.write_probe_scatter(tmp_path, results)
    assert path == tmp_path / probe_plot.PROBE_SCATTER and path.read_bytes()[:8] == PNG_MAGIC
    assert f"]({probe_plot.PROBE_SCATTER})" in "\n".join(probe_plot.probe_scatter_md(results))


@pytest.mark.parametrize("case", ["no_teacher_probe", "teacher_not_a_model", "only_the_teacher", "no_probe"])
def test_no_scatter_without_a_teacher_and_a_student_probe(tmp_path, case):
    results = _results({"kd": 0.9})
    if case == "no_teacher_probe":
        del results["models"]["teacher"]["probe"]
    elif case == "teacher_not_a_model":
        results["settings"]["teacher"] = "someone else"
    elif case == "only_the_teacher":
        del results["models"]["kd"]
    else:
        for m in results["models"].values():
            del m["probe"]
    assert probe_plot.probe_scatter_figure(results) is None
    assert probe_plot.write_probe_scatter(tmp_path, results) == [] and not list(tmp_path.iterdir())
    assert probe_plot.probe_scatter_md(results) == []


def test_lenses_plot_has_the_probe_slope_as_a_fourth_panel(tmp_path, monkeypatch):
    results = _results({"kd": 0.9, "crr": 0.2})
    results["models"]["crr"]["seeds"] = [{"probe": {"slope_on_teacher": 0.1}}, {"probe": {"slope_on_teacher": 0.3}}]
    saved = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (saved.append(list(fig.axes)), real(fig, *a, **k))[1])
    plot_lenses(tmp_path / "lenses.png", results)
    (axes,) = saved
    assert len(axes) == 4 and axes[3].get_title().startswith("probe: slope on the teacher")
    points = {round(float(y), 6) for ln in axes[3].get_lines() for y in ln.get_ydata() if len(ln.get_ydata()) >= 1}
    for name in ("kd", "crr"):
        assert round(results["models"][name]["probe"]["slope_on_teacher"], 6) in points
    assert {0.1, 0.3, 1.0} <= points  # crr's runs, and the teacher at 1 by definition
    assert (tmp_path / "lenses.png").read_bytes()[:8] == PNG_MAGIC


def test_distill_eval_writes_and_links_the_scatter(tmp_path):
    tok = word_tokenizer(vocabulary())
    for name, seed in (("t", 0), ("s", 1)):
        tiny_model(tok, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only add hand-off cost on a shared CPU
    try:
        _eval_and_check_the_scatter(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _eval_and_check_the_scatter(tmp_path):
    out = tmp_path / "with"
    argv = ["eval", "--model", f"teacher={tmp_path / 't'}", "--model", f"student={tmp_path / 's'}",
            "--prompts", "professions", "--max-prompts", "14", "--samples-per-prompt", "2",
            "--max-new-tokens", "2", "--bootstrap", "20", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert (out / probe_plot.PROBE_SCATTER).read_bytes()[:8] == PNG_MAGIC
    assert f"]({probe_plot.PROBE_SCATTER})" in (out / "report.md").read_text()
    results = json.loads((tmp_path / "with" / "results.json").read_text())
    fig = probe_plot.probe_scatter_figure(results)
    assert len(fig.axes) == 1  # one student
    want = results["models"]["student"]["probe"]["slope_on_teacher"]
    assert f"slope on the teacher {want:.2f}" in fig.axes[0].get_title()
    plt.close(fig)
