"""`fairness.png` in a run directory: the loss and the fairness probe over training steps, from metrics.jsonl.

    plot_training(run_dir, teacher_figures)    # teacher_figures: FairnessProbe.teacher_figures, or None

Left: the training KD loss and the validation KD. Right: the probe's offset, spread and slope on the teacher
(distill.train.fairness) at step 0 and every validation, with the teacher's own offset and spread dashed, and
0 (no lean) as a line: a curve that moves away from 0 and from the teacher is a lean the training created.
"""

from __future__ import annotations

import json
from pathlib import Path

PROBE_KEYS = (("probe_offset", "offset (mean log P(m)/P(f))"), ("probe_spread", "spread (sd over professions)"),
              ("probe_slope", "slope on the teacher"))


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl, skipping a line a killed run left half-written."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def plot_training(run_dir: Path, teacher_figures: dict | None) -> Path | None:
    """Write run_dir/fairness.png; None (nothing written) when the run logged no probe figures."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    probed = [r for r in records if r.get("probe_offset") is not None]
    if not probed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, probe_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("kd", "train KD"), ("val_kd", "validation KD")):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            loss_ax.plot(*zip(*pts, strict=True), marker="o" if key == "val_kd" else None, label=label)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("divergence to the teacher")
    loss_ax.set_title("loss")
    loss_ax.legend()
    for (key, label), color in zip(PROBE_KEYS, ("tab:red", "tab:blue", "tab:green"), strict=True):
        pts = [(r["step"], r[key]) for r in probed if r.get(key) is not None]
        if pts:
            probe_ax.plot(*zip(*pts, strict=True), marker="o", color=color, label=label)
        if teacher_figures and key != "probe_slope" and teacher_figures.get(key) is not None:
            probe_ax.axhline(teacher_figures[key], color=color, linestyle="--", linewidth=1,
                             label=f"teacher {label.split(' ')[0]}")
    probe_ax.axhline(0.0, color="black", linewidth=0.8)
    probe_ax.set_xlabel("step")
    probe_ax.set_title("fairness probe (validation professions; > 0 leans male)")
    probe_ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / "fairness.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
