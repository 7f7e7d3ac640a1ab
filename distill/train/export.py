"""The trained student as a Hugging Face model folder, with a model card: `final/` of a run.

    final = export.save_final(run_dir, cfg, student, tokenizer, metrics, setup)

`final/` loads with AutoModelForCausalLM / AutoTokenizer; its README.md names the teacher, the method, the
student's shape, the final metrics and the full recipe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from safetensors import SafetensorError

from distill.atomic import atomic_dir
from distill.errors import UserError
from distill.train.checkpoint import latest_checkpoint
from distill.train.run_lifecycle import config_dict


def save_final(run_dir: Path, cfg, student, tokenizer, metrics: dict, setup) -> Path:
    """`final/`: loadable with AutoModelForCausalLM / AutoTokenizer, plus a model card with recipe and metrics.

    A write that fails (disk full, a file system gone read-only) is retried in a temporary folder, and the
    one-line error says where the model was left. The caller then commits the run (`run_lifecycle.commit_run`).
    """
    final = Path(run_dir) / "final"
    try:
        with atomic_dir(final) as tmp:
            _write_final(tmp, cfg, student, tokenizer, metrics, setup)
    except (OSError, RuntimeError, SafetensorError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        try:
            import tempfile

            rescue = Path(tempfile.mkdtemp(prefix="distill-final-"))
            _write_final(rescue, cfg, student, tokenizer, metrics, setup)
            where = f"the model was written to {rescue} instead"
        except (OSError, RuntimeError, SafetensorError):
            latest = latest_checkpoint(run_dir)
            where = f"nothing was written; the last checkpoint is {latest}" if latest else "nothing was written"
        raise UserError(f"could not write the final model to {final} ({text}); {where}") from exc
    return final


def _write_final(folder: Path, cfg, student, tokenizer, metrics: dict, setup) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    student.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(cfg, metrics, setup))


def model_card(cfg, metrics: dict, setup) -> str:
    from distill.models import count_parameters

    teacher = cfg.teacher.name_or_path or f"random {cfg.teacher.config.get('model_type')} (debug)"
    layers = cfg.student.from_teacher_layers
    student_desc = (f"the teacher's blocks {list(layers)} with its embeddings, final norm and LM head"
                    if layers is not None else (cfg.student.name_or_path or "a random-initialised config"))
    method = ("plain knowledge distillation" if cfg.crr.augment == "none" and cfg.crr.teacher == "none" else
              f"counterfactual role reversal (augment={cfg.crr.augment}, teacher={cfg.crr.teacher})")
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    recipe = yaml.safe_dump(config_dict(cfg), sort_keys=False)
    return f"""---
library_name: transformers
tags: [distillation, debiasing, counterfactual-role-reversal]
---
# Distilled student

Distilled with `distill` from **{teacher}** by {method}.
Student: {student_desc}; {count_parameters(setup.student) / 1e6:.1f}M parameters,
{setup.student.config.num_hidden_layers} layers.
{cfg.description}

Load it with `AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)`.
Score it with `distill eval --model student=PATH --prompts professions --out DIR`.

## Final training metrics

| metric | value |
|---|---|
{rows}

## Recipe

```yaml
{recipe}```
"""
