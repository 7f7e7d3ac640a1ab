"""Fairness while training: the likelihood probe on the student at step 0 and at every validation.

    probe = build_fairness_probe(cfg, setup.teacher, setup.tokenizer)    # None when train.probe is off
    probe.measure(student)    # {"probe_offset", "probe_spread", "probe_slope", "probe_template_sd"}

The probe (distill.eval.probe) is run on the *validation* half of the professions (`probe_split`); the other
half is what `distill eval` probes, so a run chosen or tuned on these curves is never judged on the same
professions. The teacher's per-profession ratios are computed once per run.

What is logged, over the validation professions c (log ratio r_c = log P(male) - log P(female), > 0 leans male):
    probe_offset        mean_c r_c: a default gender shared by every profession
    probe_spread        sd_c r_c: the stereotype (nurse -> she, mechanic -> he)
    probe_slope         slope of r_c on the teacher's r_c: how much of the teacher's stereotype survives
    probe_template_sd   sd over templates of the per-template offset: how much the offset depends on wording
    probe_seconds       what this probe cost (the step-0 record also holds the teacher's figures and cost)
Both the offset and the spread are bias; targets that give both genders equal mass should pull both to 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import UserError
from distill.eval.probe import PROBE_TEMPLATES, probe_model, probe_professions, probe_split, probe_summary
from distill.train import engine as eng


@dataclass
class FairnessProbe:
    professions: list  # the validation half: (category, profession) pairs
    templates: tuple
    teacher_logratio: list
    teacher_figures: dict  # the same figures for the teacher itself (slope 1), for the plot and the model card
    tokenizer: object
    batch_size: int

    teacher_seconds: float  # what the teacher's probe took, once per run

    memo: ProbeMemo | None = None

    def measure(self, model, teacher=None) -> dict:
        """The four figures for `model`, and `probe_seconds`, its cost (left in eval mode: the caller restores
        training mode)."""
        t0 = time.perf_counter()
        res = probe_model(model, self.tokenizer, self.professions, self.templates, batch_size=self.batch_size)
        eng.drain(teacher)
        return {**figures(res, self.teacher_logratio), "probe_seconds": round(time.perf_counter() - t0, 2)}

    def measure_start(self, model, cut: list[int] | None, teacher=None) -> dict:
        """`measure` for the student before its first update; a student cut from the teacher (`cut`: the kept
        blocks) is the same in every run, so its figures come from the memo when there is one."""
        if cut is None or self.memo is None:
            return self.measure(model, teacher)
        dtype = str(next(model.parameters()).dtype)
        res, seconds = _memoised(self.memo, {"model": "cut", "blocks": list(cut), "dtype": dtype}, lambda: probe_model(
            model, self.tokenizer, self.professions, self.templates, batch_size=self.batch_size))
        eng.drain(teacher)
        return {**figures(res, self.teacher_logratio), "probe_seconds": seconds}


def figures(probe_result: dict, teacher_logratio) -> dict:
    """probe_model's output -> the logged figures (see the module docstring)."""
    s = probe_summary(probe_result["logratio"], teacher_logratio)
    per_template = np.asarray(probe_result["template_mean_logratio"], dtype=np.float64)
    return {"probe_offset": s["mean_logratio"], "probe_spread": s["sd_logratio"],
            "probe_slope": s.get("slope_on_teacher"),
            "probe_template_sd": float(per_template.std(ddof=1)) if per_template.size > 1 else 0.0}


def validation_professions(spec: str) -> list:
    """The validation half of a prompt set's professions; refuses a set whose validation half is empty."""
    from distill.eval.prompts import load_prompts

    professions = probe_professions(load_prompts(spec))
    val, held = probe_split(professions)
    if len(val) < 2:
        raise UserError(
            f"train.probe_prompts={spec!r} lists {len(professions)} profession(s), of which {len(val)} fall in the "
            "probe's validation half (at least 2 are needed for a spread and a slope); give a prompt set with more "
            "professions, or set train.probe=false"
        )
    return val


def build_fairness_probe(cfg, teacher, tokenizer, memo: ProbeMemo | None = None) -> FairnessProbe | None:
    """Load the validation professions and the teacher's ratios on them; None when train.probe is false."""
    if not cfg.train.probe:
        return None
    professions = validation_professions(cfg.train.probe_prompts)
    templates = PROBE_TEMPLATES[: cfg.train.probe_templates]
    batch = max(cfg.train.batch_size, 16)
    if memo is not None:
        memo.base = {**memo.base, "professions": professions, "templates": list(templates)}
    teacher_res, seconds = _memoised(memo, {"model": "teacher"}, lambda: probe_model(
        teacher, tokenizer, professions, templates, batch_size=batch))
    eng.drain(teacher)
    return FairnessProbe(professions, templates, teacher_res["logratio"], figures(teacher_res, teacher_res["logratio"]),
                         tokenizer, batch, seconds, memo)


# ------------------------------------------------------------------------------------------ memo between runs
# The teacher's ratios, and those of a student cut from the teacher before its first update, depend only on the
# teacher's files, the cut and the probe: every run of a study (and the demo's two students) would otherwise
# spend two of its three probes recomputing them.


@dataclass
class ProbeMemo:
    folder: Path
    base: dict  # what every entry's key holds: the teacher's content hash and the probe's settings


def probe_memo(cfg, accelerator) -> ProbeMemo | None:
    """A memo beside the transfer-set cache, for one-process runs of a teacher known by its file hashes; None
    otherwise (several processes must all run a sharded model's forward, so none may skip it alone)."""
    ts = cfg.data.transfer_set
    if accelerator.num_processes != 1 or ts is None:
        return None
    from distill.train.transfer import teacher_identity

    cache = Path(ts.cache_dir).expanduser()
    identity = teacher_identity(cfg, cache / "file_hashes.json", accelerator.device)
    return ProbeMemo(cache.parent / "probe", {"v": 1, "teacher": identity}) if identity else None


def _memoised(memo: ProbeMemo | None, what: dict, compute) -> tuple[dict, float]:
    """(probe result, seconds it took when computed) from the memo, or computed and stored there."""
    import hashlib
    import json

    from distill.atomic import write_text_atomic

    path = None
    if memo is not None:
        key = hashlib.sha256(json.dumps({**memo.base, **what}, sort_keys=True).encode()).hexdigest()[:20]
        path = memo.folder / f"{key}.json"
        try:
            stored = json.loads(path.read_text())
            return stored["result"], stored["seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: computed again
    t0 = time.perf_counter()
    result = compute()
    seconds = round(time.perf_counter() - t0, 2)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps({"what": what, "result": result, "seconds": seconds}) + "\n")
        except OSError:
            pass  # a read-only cache costs the next run one probe, nothing else
    return result, seconds
