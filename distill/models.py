"""Load teachers and students: hub ids, local dirs, GGUF files, random-initialised configs, layer subsets.

    from distill.models import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer("cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf")

One code path serves every source, so the offline default teacher (a GGUF file) loads exactly like a user's
local model. A GGUF file is de-quantized once, into a Hugging Face folder beside it that later loads read
(`distill.gguf_cache`). Safe defaults: safetensors where the checkpoint has them, no `trust_remote_code`
unless asked.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from distill.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _source_kwargs(name_or_path: str, need: str = "config.json") -> tuple[str, dict]:
    """Map a user string to (from_pretrained path, extra kwargs); refuse missing local paths up front.

    `need` is the file a local directory must hold: config.json for a model, tokenizer_config.json for a
    tokenizer (so a model dir without a tokenizer is refused before its weights are read).
    """
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        if not path.is_file():
            raise UserError(
                f"GGUF file {name_or_path!r} not found; for the default teacher run `make teacher` "
                "(or `python -m distill.fetch_teacher`) to fetch it"
            )
        from distill.gguf_cache import dequantized_dir

        folder = dequantized_dir(path)  # de-quantized once per machine, not once per process
        return (str(folder), {}) if folder is not None else (str(path.parent), {"gguf_file": path.name})
    if path.exists():
        if not path.is_dir() or not (path / need).is_file():
            what = "model" if need == "config.json" else "tokenizer"
            raise UserError(f"path {name_or_path!r} is not a {what} directory (no {need} in it)")
        return str(path), {}
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"model path {name_or_path!r} does not exist; give a local model dir, a .gguf file or a hub id")
    return name_or_path, {}  # a hub id such as "gpt2" or "HuggingFaceTB/SmolLM2-135M"


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    src, extra = _source_kwargs(name_or_path, need="tokenizer_config.json")
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load a tokenizer from {name_or_path!r}: {_first_line(exc)}") from exc
    if tok.pad_token is None:
        # Packed training never pads; generation pads on the left and masks, so EOS as pad is harmless.
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
               device=None) -> torch.nn.Module:
    """`dtype` may be "auto": the precision `distill.precision.choose(device)` picks for the device the model
    will run on (default: CUDA if present, else the CPU)."""
    from distill.precision import resolve_dtype

    dtype = resolve_dtype(dtype, device)[0]
    src, extra = _source_kwargs(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **extra
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        hint = " (is the file complete? re-fetch it with `make teacher`)" if extra.get("gguf_file") else ""
        raise UserError(f"could not load a model from {name_or_path!r}{hint}: {_first_line(exc)}") from exc
    use_fused_gelu(model)
    return model


def load_model_and_tokenizer(
    name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False, device=None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Tokenizer first: it is cheap, and a model dir without one should fail before the weights load."""
    tok = load_tokenizer(name_or_path, trust_remote_code)
    return load_model(name_or_path, dtype, trust_remote_code, device), tok


def build_random_model(config: dict, tokenizer: PreTrainedTokenizerBase, seed: int) -> torch.nn.Module:
    """A random-initialised model from a config dict (`model_type` plus its fields), sized to the tokenizer."""
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise UserError("a model `config` needs a `model_type` (e.g. gpt2 or llama)")
    fields.setdefault("vocab_size", len(tokenizer))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        fields.setdefault(key, getattr(tokenizer, key))
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        close = __import__("difflib").get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
        raise UserError(f"model_type {model_type!r} is not a transformers model type"
                        + (f"; did you mean {close[0]!r}?" if close else " (e.g. gpt2, llama)"))
    try:
        cfg = AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError) as exc:
        raise UserError(f"model config is invalid: {_first_line(exc)}") from exc
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(cfg)
        except Exception as exc:  # e.g. n_embd not divisible by n_head: transformers' own check, any type
            raise UserError(f"model config {config} is rejected by transformers: {_first_line(exc)}") from exc
    use_fused_gelu(model)
    return model


def use_fused_gelu(model: torch.nn.Module) -> int:
    """Swap GPT-2's `gelu_new` module (the tanh-approximate GELU written as about eight elementwise ops) for
    the same formula as one fused kernel (`GELUTanh`); returns how many modules were swapped.

    Outputs agree to float rounding (tested). Only the module objects change: the config still says gelu_new,
    so a saved model is unchanged. Why: one kernel instead of eight elementwise passes makes the KD step faster
    on CPU (`distill bench`; figures in docs/performance.md)."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


# Decoder blocks live under `.h.<i>.` (GPT-2 family) or `.layers.<i>.` (Llama, Mistral, Qwen, ...).
_BLOCK_KEY = re.compile(r"^(.*?\.(?:h|layers)\.)(\d+)(\..*)$")


def num_layers(config) -> int:
    return config.num_hidden_layers


def student_from_teacher_layers(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A shallower student holding the teacher's blocks `layers` (in order) plus embeddings, final norm, LM head.

    DistilGPT-2 style (Sanh et al. 2019; the reference recipe keeps GPT-2 blocks [0, 2, 4, 7, 9, 11]).
    Works on any layout whose blocks are keyed `.h.<i>.` or `.layers.<i>.`.
    """
    n_teacher = num_layers(teacher.config)
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if not layers or bad or len(set(layers)) != len(layers):
        raise UserError(
            f"student.from_teacher_layers={layers} must be distinct indices in 0..{n_teacher - 1} "
            f"(the teacher has {n_teacher} layers)"
        )
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(layers)
    if isinstance(getattr(cfg, "layer_types", None), list):  # per-layer attention types (sliding/full)
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    student = AutoModelForCausalLM.from_config(cfg).to(next(teacher.parameters()).dtype)
    teacher_state = teacher.state_dict()
    new_state = {}
    for key in student.state_dict():
        match = _BLOCK_KEY.match(key)
        src = f"{match[1]}{layers[int(match[2])]}{match[3]}" if match else key
        new_state[key] = teacher_state[src].clone()
    student.load_state_dict(new_state)
    student.tie_weights()
    return student


def freeze_except_layers(model: torch.nn.Module, layers: list[int]) -> int:
    """Train only blocks `layers` and the non-embedding, non-block parameters (the final norm); returns the
    count of trainable parameters. Autograd then records nothing below the lowest trainable block, so a
    student whose lower blocks are the teacher's own costs a fraction of a full backward pass."""
    n_layers = num_layers(model.config)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if not layers or bad:
        raise UserError(f"student.train_layers={layers} must be indices in 0..{n_layers - 1} (the student has "
                        f"{n_layers} layers)")
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    trainable = 0
    for name, param in model.named_parameters():
        match = _BLOCK_KEY.match(name)
        keep = int(match[2]) in layers if match else (id(param) not in embeddings and "wpe" not in name)
        param.requires_grad_(keep)
        trainable += param.numel() if keep else 0
    return trainable


def check_same_tokenizer(teacher_tok: PreTrainedTokenizerBase, student_tok: PreTrainedTokenizerBase) -> None:
    """Distillation compares distributions row by row, so both models must index the same vocabulary."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        diff = sorted(set(tv.items()) ^ set(sv.items()), key=lambda kv: kv[1])[:3]
        raise UserError(
            f"teacher and student tokenizers differ ({len(tv)} vs {len(sv)} tokens; e.g. {diff}); "
            "distillation needs one vocabulary: use a student from the teacher's family"
        )


def shared_vocab_size(teacher: torch.nn.Module, student: torch.nn.Module, tokenizer_len: int) -> int:
    """Rows both output layers share. Padded embedding rows (e.g. 50257 vs 50304) are sliced away."""
    t_rows = teacher.get_output_embeddings().weight.shape[0]
    s_rows = student.get_output_embeddings().weight.shape[0]
    rows = min(t_rows, s_rows)
    if rows < tokenizer_len:
        raise UserError(f"an output layer has {rows} rows but the tokenizer has {tokenizer_len} tokens")
    return rows


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def train_byte_bpe_tokenizer(texts: list[str], vocab_size: int = 512):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts`: for the debug recipe and the tests.

    Deterministic for a given input, so `data/tiny_tokenizer/` can be rebuilt and compared in a test.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(tk_models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def batches_by_length(rows: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of `rows` in batches of up to `batch_size`, shortest rows first, so that a right-padded batch
    (`right_padded`) spends few positions on padding; the caller puts each result back at its index."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def right_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (len(rows), longest row), for token-id rows padded on the right: the
    batch shape of one-forward probes (the likelihood probe, the lenses), which read the last real position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = 1
    return ids, mask
