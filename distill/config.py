"""Typed run configuration: a YAML recipe plus dotted `key=value` overrides, validated before any compute.

    from distill.config import load_config
    cfg = load_config("recipes/debug.yaml", ["train.max_steps=20", "loss.temperature=2.0"])

Every field has a help string and, where it matters, a range or a set of choices. Unknown keys are refused
with the closest valid key; values out of range are refused with the allowed range (`distill.config_checks`).
Recipes are data: the code holds no default model or dataset.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.config_checks import check_fields, check_layer_list
from distill.errors import UserError
from distill.recipe_values import check_not_empty


def opt(default, help: str, *, range: tuple | None = None, choices: tuple | None = None, factory=None):
    """A dataclass field with a help string and an optional inclusive range / set of choices."""
    meta = {"help": help, "range": range, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


INF = math.inf


@dataclass
class ModelConfig:
    name_or_path: str | None = opt(None, "hub id, local model dir, or .gguf file")
    config: dict | None = opt(None, "random-initialise from this config (needs `model_type`, e.g. gpt2)")
    tokenizer: str | None = opt(None, "tokenizer hub id or dir; defaults to name_or_path")
    from_teacher_layers: list | None = opt(None, "student only: keep these teacher blocks (DistilGPT-2 style)")
    train_layers: list | None = opt(None, "student only: train just these student blocks and the final norm, "
                                    "freezing embeddings, LM head and other blocks (cheaper steps); null = all")
    dtype: str = opt("auto", "weights dtype; auto: bfloat16 where the hardware runs bf16 natively (CUDA with bf16, "
                     "a CPU with AMX), else float32 (distill/precision.py)",
                     choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = opt(False, "run model code from the hub repo (off unless you trust it)")


@dataclass
class TransferSetConfig:
    """`data.transfer_set`: no corpus, so the teacher writes one (distill/train/transfer.py)."""

    seed_prompts: str = opt("data/seed_prompts.txt", "file of seed prompts, one a line ('#' lines ignored)")
    num_sequences: int = opt(2000, "continuations to sample, train and held-out together", range=(1, INF))
    max_new_tokens: int = opt(128, "tokens sampled per continuation (fewer if the teacher ends it)",
                              range=(1, 8192))
    top_k: int = opt(50, "sample from the k most likely tokens (0 = no top-k cut)", range=(0, INF))
    top_p: float = opt(0.95, "nucleus sampling mass (1.0 = no top-p cut)", range=(1e-6, 1.0))
    sampling_temperature: float = opt(1.0, "sampling temperature (not the loss temperature)", range=(1e-3, 100.0))
    heldout_share: float = opt(0.1, "share of sequences held out, from prompts of their own", range=(0.0, 0.5))
    batch_size: int = opt(32, "prompts sampled together (left-padded); speed only", range=(1, INF))
    cache_dir: str = opt("cache/transfer", "where transfer sets are kept, one directory per key")

    def split_counts(self) -> tuple[int, int]:
        """(train, held-out) sequence counts; a non-zero share always holds out at least one sequence."""
        n_heldout = max(1, round(self.num_sequences * self.heldout_share)) if self.heldout_share > 0 else 0
        n_train = self.num_sequences - n_heldout
        if n_train < 1:
            raise UserError(
                f"data.transfer_set.num_sequences={self.num_sequences} leaves no training sequence after holding "
                f"out {n_heldout}; raise num_sequences or lower heldout_share"
            )
        return n_train, n_heldout


@dataclass
class DataConfig:
    path: str | None = opt(None, "local text/json/jsonl/parquet file or directory")
    name: str | None = opt(None, "hub dataset name (e.g. Skylion007/openwebtext)")
    config_name: str | None = opt(None, "hub dataset config")
    split: str = opt("train", "split to train on")
    text_field: str = opt("text", "column holding the text")
    validation_path: str | None = opt(None, "separate validation file; else a share of the training data")
    validation_split: float = opt(0.05, "share of documents held out for validation", range=(0.0, 0.5))
    max_documents: int | None = opt(None, "use at most this many documents (after shuffling)", range=(1, INF))
    block_size: int = opt(128, "tokens per packed training block", range=(8, 1_000_000))
    transfer_set: TransferSetConfig | None = opt(None, "no corpus: sample one from the teacher with the "
                                                 "data.transfer_set.* keys ({} for their defaults)")
    num_proc: int | None = opt(None, "processes for tokenisation", range=(1, 256))


@dataclass
class TrainConfig:
    max_steps: int = opt(1000, "optimizer steps", range=(1, INF))
    batch_size: int = opt(8, "sequences per micro-batch per process", range=(1, INF))
    grad_accum: int = opt(1, "micro-batches per optimizer step", range=(1, INF))
    lr: float = opt(5e-4, "peak learning rate (AdamW)", range=(0.0, 10.0))
    weight_decay: float = opt(0.0, "AdamW weight decay", range=(0.0, 10.0))
    warmup_steps: int = opt(0, "linear warmup steps before the cosine decay", range=(0, INF))
    min_lr_ratio: float = opt(0.1, "cosine decays to lr * min_lr_ratio", range=(0.0, 1.0))
    max_grad_norm: float = opt(1.0, "clip the global grad norm (0 = off)", range=(0.0, INF))
    mixed_precision: str = opt("auto", "bf16 autocast or none (no = fp32); auto: bf16 where the hardware runs it "
                               "natively (CUDA with bf16, a CPU with AMX), else no (distill/precision.py)",
                               choices=("auto", "no", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the student (inductor; needs a C++ compiler on CPU). "
                        "Pays only over many steps: the first step compiles (distill bench --compile measures it)")
    share_teacher_prefix: bool = opt(True, "a student whose first blocks are the teacher's own, frozen "
                                     "(student.from_teacher_layers starting 0, 1, ...), starts from the teacher's "
                                     "hidden state after them instead of computing them again; used only where a "
                                     "start-up check gives the same logits (docs/performance.md)")
    log_steps: int = opt(10, "log every N steps", range=(1, INF))
    eval_steps: int = opt(200, "validation loss every N steps (0 = only at the end)", range=(0, INF))
    eval_batches: int = opt(20, "validation micro-batches per evaluation", range=(1, INF))
    probe: bool = opt(True, "run the likelihood probe on the student at step 0 and at every validation: gender "
                      "offset, spread and slope on the teacher over the validation half of the professions")
    probe_prompts: str = opt("professions", "prompt set whose professions the training-time probe uses (its "
                             "validation half; distill eval probes the other half): 'professions' or a BOLD-format "
                             "JSON file")
    probe_templates: int = opt(8, "how many of the probe's 16 templates the training-time probe uses (the first "
                               "N; distill eval uses all 16): fewer cost less per validation", range=(2, 16))
    save_steps: int = opt(500, "checkpoint every N steps (0 = only the final model)", range=(0, INF))
    keep_checkpoints: int = opt(2, "checkpoints kept on disk", range=(1, INF))


@dataclass
class LossConfig:
    alpha_kd: float = opt(1.0, "weight of the distillation divergence", range=(0.0, INF))
    alpha_ce: float = opt(0.0, "weight of the next-token cross-entropy on the data", range=(0.0, INF))
    alpha_cos: float = opt(0.0, "weight of the hidden-state cosine loss (needs equal widths)", range=(0.0, INF))
    alpha_balance: float = opt(0.0, "weight of the gender-balance term: the squared gap between the student's "
                               "and the targets' log P(male)/P(female) over the swap table's word pairs, at every "
                               "position (docs/crr.md); 0: off", range=(0.0, INF))
    temperature: float = opt(2.0, "loss temperature T: both distributions softened by T, KD term scaled by T^2",
                             range=(1e-6, INF))
    divergence: str = opt("forward_kl", "D(teacher, student)", choices=("forward_kl", "reverse_kl", "jsd"))
    jsd_beta: float = opt(0.5, "generalized JSD mixing weight (0 -> forward KL, 1 -> reverse KL)", range=(0.0, 1.0))
    teacher_top_k: int = opt(0, "0: full-vocabulary teacher targets; k > 0: the teacher's k most likely tokens "
                             "(the rest of the mass spread evenly), cached per block in memory so that later "
                             "epochs skip the teacher", range=(0, INF))
    chunk_size: int = opt(0, "tokens per chunk of the full-vocabulary KD term; 0: auto (16 on CPU, the fastest "
                          "in `distill bench`; 4096 on a GPU)", range=(0, INF))


@dataclass
class CRRConfig:
    augment: str = opt("none", "gender-swap augmentation of the text", choices=("none", "replace", "both"))
    p: float = opt(0.5, "swap probability for augment=replace", range=(0.0, 1.0))
    teacher: str = opt("none", "perturbation of the teacher's next-token targets",
                       choices=("none", "pair_mean", "cf_mean", "cf_max", "cf_expmean"))
    cf_scope: str = opt("document", "reach of the counterfactual context of the cf_* modes: document (to the end "
                        "of the document with the swapped words) or block (to the end of the packed block)",
                        choices=("document", "block"))
    lexicon: str | None = opt(None, "gendered word pairs file (default: data/lexicon/word_pairs.tsv)")
    names: str | None = opt(None, "given-name pairs file (default: data/lexicon/name_pairs.tsv)")


@dataclass
class Config:
    output_dir: str = opt("out/run", "where checkpoints, metrics.jsonl and final/ go")
    seed: int = opt(0, "seed for init, data order and sampling", range=(0, 2**32 - 1))
    report_to: list = opt(None, "accelerate trackers, e.g. [tensorboard]", factory=list)
    teacher: ModelConfig = opt(None, "the teacher", factory=ModelConfig)
    student: ModelConfig = opt(None, "the student", factory=ModelConfig)
    data: DataConfig = opt(None, "training data", factory=DataConfig)
    train: TrainConfig = opt(None, "the optimisation loop", factory=TrainConfig)
    loss: LossConfig = opt(None, "the loss terms", factory=LossConfig)
    crr: CRRConfig = opt(None, "counterfactual role reversal", factory=CRRConfig)
    description: str = opt("", "free text shown in the model card")


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false (any case) are bools.

    YAML 1.1 also reads yes/no/on/off as bools, so `train.mixed_precision=no` (or `mixed_precision: no` in a
    file) reached the config as False and was refused as "must be str". Here such words stay
    strings; a field typed bool accepts them by name (`_coerce`), so nothing that worked before breaks.
    A key given twice in one mapping is refused (PyYAML silently keeps the last, hiding a typo).
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice (again on line "
                                                        f"{line}); keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


RecipeLoader.yaml_implicit_resolvers = {  # a copy per first character, without the 1.1 bool resolver
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def load_yaml(text: str):
    """Parse recipe text (a file, or one override's value) with `RecipeLoader`."""
    return yaml.load(text, Loader=RecipeLoader)


def load_config(recipe: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(recipe)
    if not path.is_file():
        raise UserError(f"recipe {str(recipe)!r} not found; see recipes/ for examples")
    try:
        raw = load_yaml(path.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"recipe {recipe}: not a UTF-8 text file") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {recipe}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"recipe {recipe}: expected a mapping of keys at the top level")
    for item in overrides:
        _apply_override(raw, item)
    cfg = build_section(Config, raw, prefix="")
    validate(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    cfg = build_section(Config, copy_dict(raw), prefix="")
    validate(cfg)
    return cfg


def copy_dict(d):
    return yaml.safe_load(yaml.safe_dump(d))


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key=value (e.g. train.max_steps=100)")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {item!r}: {part!r} is not a section")
    try:  # the value reads as the recipe file would read it (so `a.b=[1, 2]` gives a list)
        node[parts[-1]] = load_yaml(value) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"override {item!r}: the value is not valid YAML ({problem}); quote a string, "
                        "close brackets, e.g. train.lr=1e-3 or student.train_layers=[0,1]") from exc


def build_section(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'recipe'}: expected a section of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            valid = [prefix + k for k in fields]
            close = difflib.get_close_matches(prefix + str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise UserError(f"unknown recipe key {prefix + str(key)!r}{hint}")
        section = _section_type(hints[key])
        if section is not None and (value is not None or section is hints[key]):
            values[key] = build_section(section, value, prefix + key + ".")
        else:
            check_not_empty(value, hints[key], prefix + key, fields[key])
            values[key] = _coerce(value, hints[key], prefix + key)
    return cls(**values)


def _section_type(hint):
    """The dataclass of a section field (`X` or an optional `X | None`, which null switches off), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType):
        sections = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return sections[0] if len(sections) == 1 else None
    return None


def _coerce(value, hint, name: str):
    if value is None:
        return None
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = [typing.get_origin(a) or a for a in allowed if a is not type(None)]
    for typ in allowed:
        if typ is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typ is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if typ is bool and isinstance(value, bool):
            return value
        if typ is bool and isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if typ in (str, dict, list) and isinstance(value, typ):
            return value
    names = " or ".join("bool (true/false, yes/no, on/off)" if a is bool else getattr(a, "__name__", str(a))
                        for a in allowed)
    raise UserError(f"recipe key {name!r} must be {names}, got {value!r}")


def validate(cfg: Config) -> None:
    """Ranges and choices from field metadata, then the cross-field rules."""
    check_fields(cfg, "")
    for role in ("teacher", "student"):
        m = getattr(cfg, role)
        sources = [m.name_or_path is not None, m.config is not None, m.from_teacher_layers is not None]
        if sum(sources) != 1:
            raise UserError(
                f"{role}: give exactly one of {role}.name_or_path, {role}.config"
                + (", student.from_teacher_layers" if role == "student" else "")
            )
        if m.config is not None and not (m.tokenizer or role == "student"):
            raise UserError(f"{role}.config needs {role}.tokenizer (a random model has no tokenizer of its own)")
    for key in ("from_teacher_layers", "train_layers"):
        if getattr(cfg.teacher, key) is not None:
            raise UserError(f"teacher.{key} is for the student only")
        check_layer_list(f"student.{key}", getattr(cfg.student, key))
    if cfg.data.path is None and cfg.data.name is None and cfg.data.transfer_set is None:
        raise UserError("data: give data.path (local files), data.name (hub dataset) or data.transfer_set")
    if cfg.loss.alpha_kd + cfg.loss.alpha_ce + cfg.loss.alpha_cos == 0:
        raise UserError("loss: all of alpha_kd, alpha_ce, alpha_cos are 0; nothing to train on")
    if cfg.crr.teacher != "none" and cfg.loss.alpha_kd == 0:
        raise UserError(f"crr.teacher={cfg.crr.teacher} perturbs the KD targets, but loss.alpha_kd is 0")
    if cfg.loss.alpha_balance > 0 and cfg.loss.alpha_kd == 0:
        raise UserError("loss.alpha_balance compares the student's gender ratio with the KD targets', but "
                        "loss.alpha_kd is 0; set loss.alpha_kd > 0 or loss.alpha_balance=0")
    if cfg.loss.teacher_top_k and cfg.loss.alpha_cos > 0:
        raise UserError("loss.teacher_top_k caches the teacher's targets, not its hidden states, so it cannot serve "
                        "loss.alpha_cos; set one of them to 0")
    if cfg.loss.teacher_top_k and cfg.loss.alpha_kd == 0:
        raise UserError("loss.teacher_top_k caches KD targets, but loss.alpha_kd is 0; set loss.teacher_top_k=0")
    if cfg.data.transfer_set is not None:
        cfg.data.transfer_set.split_counts()


def describe(cls=Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every recipe key; printed by `distill train --help-recipe`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        section = _section_type(hints[f.name])
        if section is not None and section is not hints[f.name]:  # an optional section: off unless given
            rows.append((prefix + f.name, "None", f.metadata["help"]))
        if section is not None:
            rows += describe(section, prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, repr(default), f.metadata["help"]))
    return rows
