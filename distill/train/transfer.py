"""The teacher-written transfer set: with no corpus, sample one from the teacher (sequence-level distillation).

    distill corpus --recipe recipes/demo_kd.yaml                        # build it, or reuse a cached one
    distill corpus --recipe recipes/demo_kd.yaml data.transfer_set.num_sequences=256

A recipe without a corpus gives `data.transfer_set`, the keys of `config.TransferSetConfig`.
Seed prompts (data/seed_prompts.txt: short openings of news, stories, how-tos, letters, dialogue) are
continued by the teacher with top-k / top-p sampling as plain text, with no chat template: the student should
learn the teacher's distribution over ordinary prose, which is where gendered continuations show up. Each
record's text is prompt + continuation. Kim & Rush (2016) call training on such teacher outputs
sequence-level distillation; here it also gives the token-level KD loss text from the teacher's own
distribution when no corpus can be downloaded.

The result lives in CACHE_DIR/<key>/{train.jsonl, heldout.jsonl, manifest.json} (JSON lines with a "text"
field). <key> hashes the teacher's identity (the content of its weight and tokenizer files, or its config and
seed for a random teacher), the seed prompts, the seed and the sampling settings, so a second run with the
same inputs reuses the set and a changed setting builds a new one. `batch_size` and `cache_dir` are not part
of the key: they change speed and location, not the distribution sampled from. The directory is written under
a temporary name and renamed, so an interrupted run leaves no half set behind. Held-out records come from
prompts that no training record uses, so held-out perplexity never sees a training prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.atomic import atomic_dir
from distill.config import Config, TransferSetConfig, build_section
from distill.config_checks import check_fields
from distill.errors import UserError
from distill.precision import resolve_dtype
from distill.train import transfer_cache
from distill.train.transfer_identity import (
    MANIFEST_VERSION,
    read_seed_prompts,
    teacher_identity,
    transfer_key,
)


@dataclass
class TransferSet:
    train_path: str
    heldout_path: str
    manifest: dict


def parse_transfer_config(raw: dict | None) -> TransferSetConfig:
    """A `TransferSetConfig` from a mapping of `data.transfer_set` keys, validated as in a recipe."""
    tcfg = build_section(TransferSetConfig, raw or {}, prefix="data.transfer_set.")
    check_fields(tcfg, "data.transfer_set.")
    return tcfg


# ---------------------------------------------------------------------------------------------------------
# Sampling


def assign_prompts(prompts: list[str], n_train: int, n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle prompts, give a share to held-out, and cycle each side's prompts to the wanted counts."""
    if n_heldout and len(prompts) < 2:
        raise UserError("data.transfer_set: a held-out split needs at least 2 seed prompts (or heldout_share=0)")
    order = list(prompts)
    random.Random(seed).shuffle(order)
    n_held_prompts = 0
    if n_heldout:
        share = n_heldout / (n_train + n_heldout)
        n_held_prompts = min(len(order) - 1, max(1, round(len(order) * share)))
    held, train = order[:n_held_prompts], order[n_held_prompts:]
    return [train[i % len(train)] for i in range(n_train)], [held[i % len(held)] for i in range(n_heldout)]


def _stop_ids(teacher, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    gen_eos = getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return sorted(i for i in ids if i is not None)


def sampling_config(tcfg: TransferSetConfig, seed: int):
    """The transfer set's settings as a `distill.sampling.SamplingConfig` (one continuation per prompt)."""
    from distill.sampling import SamplingConfig

    return SamplingConfig(samples_per_prompt=1, max_new_tokens=tcfg.max_new_tokens, batch_size=tcfg.batch_size,
                          top_k=tcfg.top_k, top_p=tcfg.top_p, temperature=tcfg.sampling_temperature, seed=seed)


def sample_continuations(teacher, tokenizer, prompts: list[str], tcfg: TransferSetConfig, seed: int, *,
                         desc: str = "sampling", show_progress: bool = True) -> tuple[list[str], list[int], list[int]]:
    """Texts (prompt + continuation), their prompt token counts, and their generated token counts.

    The sampling is `distill.sampling.sample_batches`, the loop `distill eval` and `distill samples` use: batches
    left-padded so every row's continuation starts at the same position, each seeded from (seed, batch index)
    in a forked RNG, top-k/top-p drawn over the k candidates only (the distribution of transformers' warpers,
    without their full-vocabulary sort at every step, which dominates this step on a CPU). A row ends at
    the first of the tokenizer's EOS / pad or the teacher's generation-config EOS.
    """
    from distill.sampling import sample_batches

    stop = _stop_ids(teacher, tokenizer)
    if tokenizer.pad_token_id is None and not stop:
        raise UserError("the teacher's tokenizer has neither a pad nor an EOS token; cannot batch prompts")
    old_pad = tokenizer.pad_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else stop[0]
    texts, prompt_counts, new_counts = [], [], []
    t0 = time.perf_counter()
    try:
        for batch in sample_batches(teacher, tokenizer, prompts, sampling_config(tcfg, seed), stop_ids=stop,
                                    progress=show_progress, desc=desc, unit="seq"):
            new = batch.new_ids.cpu()
            n_prompt = batch.attention_mask.sum(dim=1).cpu()
            prompt_len = batch.input_ids.shape[1]
            is_stop = torch.isin(new, torch.tensor(stop)) if stop else torch.zeros_like(new, dtype=torch.bool)
            # generated tokens up to (not including) the first stop token; after it come only pads
            n_new = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1), torch.tensor(new.shape[1]))
            for row in range(new.shape[0]):
                ids = torch.cat([batch.input_ids[row, prompt_len - int(n_prompt[row]):].cpu(),
                                 new[row, :int(n_new[row])]])
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
                prompt_counts.append(int(n_prompt[row]))
                new_counts.append(int(n_new[row]))
    finally:
        if old_pad is None:
            tokenizer.pad_token = None
    if show_progress:
        wall = time.perf_counter() - t0
        print(f"{desc}: {sum(new_counts)} new tokens in {wall:.0f} s ({sum(new_counts) / max(wall, 1e-9):.1f} "
              "tokens/s)", file=sys.stderr)
    return texts, prompt_counts, new_counts


# ---------------------------------------------------------------------------------------------------------
# Cache


def _read_manifest(directory: Path) -> dict | None:
    """The manifest of a complete set whose files match their checksums (transfer_cache); else None."""
    return transfer_cache.read_manifest(directory)


def _write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def _load_teacher(cfg: Config, device):
    from distill.models import build_random_model, load_model_and_tokenizer, load_tokenizer

    t = cfg.teacher
    if t.config is not None:
        tokenizer = load_tokenizer(t.tokenizer, t.trust_remote_code)
        teacher = build_random_model(t.config, tokenizer, cfg.seed)
    else:
        teacher, tokenizer = load_model_and_tokenizer(t.name_or_path, t.dtype, t.trust_remote_code, device)
        if t.tokenizer and t.tokenizer != t.name_or_path:
            tokenizer = load_tokenizer(t.tokenizer, t.trust_remote_code)
    return teacher.to(device), tokenizer


def ensure_transfer_set(cfg: Config, teacher=None, tokenizer=None, *, device=None,
                        show_progress: bool = True) -> TransferSet:
    """Return the transfer set of `cfg` (which must have data.transfer_set), sampling it on a cache miss.

    `teacher`/`tokenizer`, if given, must be what cfg.teacher describes (the key is computed from cfg); they
    are used as they are, on their own device. Otherwise the teacher is loaded, on `device` (default: CUDA if
    available, else CPU), only when the cache misses. With several processes, call this on the main process
    first (e.g. inside accelerate's `main_process_first()`), so the others find the set in the cache.
    """
    if cfg.data.transfer_set is None:
        raise UserError("the recipe has no data.transfer_set; add one (see distill/train/transfer.py) or give data.path")
    tcfg = cfg.data.transfer_set
    transfer_cache.check_cache_dir(cfg, device)  # before the teacher loads: writable, or the set is there
    prompts = read_seed_prompts(tcfg.seed_prompts)
    n_train, n_heldout = tcfg.split_counts()
    train_prompts, held_prompts = assign_prompts(prompts, n_train, n_heldout, cfg.seed)
    cache_dir = Path(tcfg.cache_dir)

    if device is None:
        device = next(teacher.parameters()).device if teacher is not None else \
            "cuda" if torch.cuda.is_available() else "cpu"
    dtype, dtype_why = resolve_dtype(cfg.teacher.dtype, device)
    identity, teacher, tokenizer = _resolve_identity(cfg, cache_dir / "file_hashes.json", device, dtype, teacher,
                                                     tokenizer)
    key = transfer_key(identity, tcfg, prompts, cfg.seed)
    final = cache_dir / key

    manifest = _read_manifest(final)
    if manifest is not None:
        print(f"reusing transfer set {final} ({manifest['counts']['train_sequences']} train / "
              f"{manifest['counts']['heldout_sequences']} held-out sequences, built {manifest['created']})")
        return TransferSet(str(final / "train.jsonl"), str(final / "heldout.jsonl"), manifest)

    with transfer_cache.building(final):  # one builder per set: a second is refused, naming this one's PID
        return _build_transfer_set(cfg, teacher, tokenizer, device, (dtype, dtype_why), identity, key, final,
                                   prompts, (train_prompts, held_prompts), show_progress)


def _build_transfer_set(cfg: Config, teacher, tokenizer, device, dtype_and_why: tuple[str, str], identity: str,
                        key: str, final: Path, prompts: list[str], split: tuple[list[str], list[str]],
                        show_progress: bool) -> TransferSet:
    """Sample the set (loading the teacher if not given) and write it into the cache folder `final`."""
    tcfg = cfg.data.transfer_set
    (dtype, dtype_why), (train_prompts, held_prompts) = dtype_and_why, split
    n_train, n_heldout = len(train_prompts), len(held_prompts)
    if teacher is None:
        teacher, tokenizer = _load_teacher(cfg, device)
    elif tokenizer is None:
        raise UserError("ensure_transfer_set: a teacher was given without its tokenizer")
    print(f"building transfer set {final}: {n_train} train + {n_heldout} held-out continuations of "
          f"{tcfg.max_new_tokens} new tokens from {len(prompts)} seed prompts; teacher in {dtype} ({dtype_why})")

    t0 = time.perf_counter()
    # One pass over train + held-out prompts: no half-empty batch for the held-out remainder.
    texts, prompt_n, new_n = sample_continuations(
        teacher, tokenizer, train_prompts + held_prompts, tcfg, cfg.seed, desc="transfer set",
        show_progress=show_progress)
    wall = time.perf_counter() - t0
    manifest = {
        **_manifest_header(cfg, key, identity, dtype, dtype_why, prompts, held_prompts),
        "counts": _manifest_counts(texts, prompt_n, new_n, n_train, tcfg.max_new_tokens),
        "timing": {"wall_s": round(wall, 2), "generated_tokens_per_s": round(sum(new_n) / max(wall, 1e-9), 1),
                   "device": str(next(teacher.parameters()).device), "batch_size": tcfg.batch_size},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "distill": _version("distill")},
    }
    return _write_transfer_set(final, texts[:n_train], texts[n_train:], manifest, wall)


def _resolve_identity(cfg: Config, memo: Path, device, dtype: str, teacher, tokenizer):
    """The teacher identity the cache key is made of, with the teacher and tokenizer (loaded here only for a
    hub id not cached yet: loading it pins the snapshot the identity names)."""
    identity = teacher_identity(cfg, memo, device)
    if identity is None and teacher is None:
        teacher, tokenizer = _load_teacher(cfg, device)
        identity = teacher_identity(cfg, memo, device)
    if identity is None:
        identity = f"hub:{cfg.teacher.name_or_path}|{dtype}"
    return identity, teacher, tokenizer


def _manifest_header(cfg: Config, key: str, identity: str, dtype: str, dtype_why: str, prompts: list[str],
                     held_prompts: list[str]) -> dict:
    """The manifest's first entries: what the set was sampled from (teacher, seed, settings, seed prompts)."""
    tcfg = cfg.data.transfer_set
    return {
        "version": MANIFEST_VERSION,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "teacher": {"source": cfg.teacher.name_or_path or "random:" + json.dumps(cfg.teacher.config, sort_keys=True),
                    "tokenizer": cfg.teacher.tokenizer, "dtype": dtype, "dtype_setting": cfg.teacher.dtype,
                    "dtype_reason": dtype_why, "identity": identity},
        "seed": cfg.seed,
        "settings": dataclasses.asdict(tcfg),
        "seed_prompts": {"path": tcfg.seed_prompts, "count": len(prompts),
                         "sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
                         "heldout_prompts": len(set(held_prompts))},
    }


def _manifest_counts(texts: list[str], prompt_n: list[int], new_n: list[int], n_train: int,
                     max_new_tokens: int) -> dict:
    """The manifest's "counts": sequences and tokens (prompt + continuation) of each split, the first `n_train`
    of the samples being the train split."""
    generated = sum(new_n)
    return {
        "train_sequences": len(texts[:n_train]), "heldout_sequences": len(texts[n_train:]),
        "train_tokens": sum(prompt_n[:n_train]) + sum(new_n[:n_train]),
        "heldout_tokens": sum(prompt_n[n_train:]) + sum(new_n[n_train:]),
        "generated_tokens": generated,
        "mean_new_tokens": round(generated / max(len(new_n), 1), 2),
        # continuations the teacher ended with EOS before max_new_tokens (empty ones counted separately)
        "ended_early": sum(1 for n in new_n if n < max_new_tokens),
        "empty_continuations": sum(1 for n in new_n if n == 0),
    }


def _write_transfer_set(final: Path, train_texts: list[str], held_texts: list[str], manifest: dict,
                        wall: float) -> TransferSet:
    """Write the set into the cache folder `final` in one atomic step, and say what was written."""
    # Another process may have finished the same key meanwhile: keep its (identical) set; replace a broken one.
    with atomic_dir(final, replace=_read_manifest(final) is None) as tmp:
        _write_jsonl(tmp / "train.jsonl", train_texts)
        _write_jsonl(tmp / "heldout.jsonl", held_texts)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        transfer_cache.write_checksums(tmp)  # last: a set without it was never finished
    generated = manifest["counts"]["generated_tokens"]
    manifest = _read_manifest(final) or manifest
    print(f"wrote {final}: {len(train_texts)} train / {len(held_texts)} held-out sequences, "
          f"{generated} new tokens in {wall:.0f} s ({generated / max(wall, 1e-9):.0f} tokens/s)")
    return TransferSet(str(final / "train.jsonl"), str(final / "heldout.jsonl"), manifest)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(args) -> int:
    """`distill corpus --recipe R [key=value ...]`: build or reuse the recipe's transfer set, print its paths."""
    from distill.config import load_config

    cfg = load_config(args.recipe, list(args.overrides or []))
    ts = ensure_transfer_set(cfg)
    c = ts.manifest["counts"]
    print(f"train:    {ts.train_path} ({c['train_sequences']} sequences, {c['train_tokens']} tokens)")
    print(f"held-out: {ts.heldout_path} ({c['heldout_sequences']} sequences, {c['heldout_tokens']} tokens)")
    return 0
