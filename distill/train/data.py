"""Training data: load with `datasets`, optionally gender-swap, tokenise in batches, pack into fixed blocks.

    from distill.train.data import build_datasets, BlockSampler
    train, val, stats = build_datasets(cfg.data, cfg.crr, tokenizer, seed=cfg.seed)

Blocks are windows of `block_size` tokens cut from the concatenated documents (an EOS between documents), so
no position is padding. Each block also carries `swapped`: whether any of its tokens came from a
gender-swapped document, for the per-step "share of sequences swapped" log.

The order of blocks is a pure function of (seed, epoch, position), which is what makes resume exact and
lets several processes share one global batch without a DataLoader: see `BlockSampler`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import UserError

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
             ".csv": "csv"}


def _builder_and_files(path: str) -> tuple[str, list[str]]:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data path {path!r} does not exist")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _BUILDERS) if p.is_dir() else [p]
    if not files:
        raise UserError(f"data path {path!r} holds no .txt/.json/.jsonl/.parquet/.csv files")
    kinds = {_BUILDERS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"data path {path!r}: use files of one kind among {sorted(set(_BUILDERS))}")
    return kinds.pop(), [str(f) for f in files]


def load_documents(data_cfg, path: str | None = None, split: str | None = None):
    """A `datasets.Dataset` with one column `text` of non-empty documents."""
    import datasets

    datasets.disable_progress_bars()
    path = path or data_cfg.path
    try:
        if path:
            builder, files = _builder_and_files(path)
            # A local load must not touch the network: datasets pings a download counter per load, which
            # on an offline machine costs half a minute of retries.
            datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
            ds = datasets.load_dataset(builder, data_files=files, split="train")
        else:
            ds = datasets.load_dataset(data_cfg.name, data_cfg.config_name, split=split or data_cfg.split)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs the one line
        where = path or data_cfg.name
        if path:  # "An error occurred while generating the dataset" hides an empty, binary or non-UTF-8 file
            from distill.inputs import check_data_path

            check_data_path(path, "data path")
        raise UserError(f"could not load data from {where!r}: {str(exc).splitlines()[0][:300]}") from exc
    if data_cfg.text_field not in ds.column_names:
        raise UserError(
            f"data has no column {data_cfg.text_field!r} (columns: {ds.column_names}); set data.text_field"
        )
    ds = ds.select_columns([data_cfg.text_field])
    if data_cfg.text_field != "text":
        ds = ds.rename_column(data_cfg.text_field, "text")
    ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise UserError(f"data {path or data_cfg.name!r} is empty (no non-blank documents)")
    return ds


def augment_documents(ds, lexicon, mode: str, p: float, seed: int):
    """Counterfactual data augmentation (CDA) on documents; adds a boolean column `swapped`.

    replace: each document is swapped with probability p (a per-document coin seeded by seed and index, so
             the result does not depend on batching or process count).
    both:    every document that contains a swappable word is kept and its counterfactual is added; then all
             documents are shuffled with `seed`. Why: packing cuts the stream in order, so a counterfactual
             appended after its original shared a block with it (186 of 187 on data/tiny_corpus.txt at block
             size 64), and teacher and student then read the swapped copy as a copying task in which the
             teacher's copy prior favours the original gender. After the shuffle the share is the
             chance level of a random order (tests/test_data.py).
    """

    def apply(batch, indices):
        texts, flags = [], []
        for text, idx in zip(batch["text"], indices, strict=True):
            if mode == "replace":
                coin = random.Random(seed * 1_000_003 + idx).random() < p
                swap = coin and lexicon.has_gendered_word(text)
                texts.append(lexicon.swap_text(text) if swap else text)
                flags.append(swap)
            else:  # both
                texts.append(text)
                flags.append(False)
                if lexicon.has_gendered_word(text):
                    texts.append(lexicon.swap_text(text))
                    flags.append(True)
        return {"text": texts, "swapped": flags}

    if mode == "none":
        return ds.map(lambda b: {"swapped": [False] * len(b["text"])}, batched=True)
    out = ds.map(apply, batched=True, with_indices=True, remove_columns=ds.column_names)
    if mode == "both":
        out = out.shuffle(seed=seed).flatten_indices()  # a pure function of the seed: resume stays exact
    return out


def pack(ds, tokenizer, block_size: int, num_proc: int | None = None):
    """Tokenise in batches and cut the stream into `block_size` windows; columns input_ids, swapped."""
    eos = tokenizer.eos_token_id

    def tokenize_and_pack(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream, flags = [], []
        for doc, swapped in zip(ids, batch["swapped"], strict=True):
            stream += doc + [eos]
            flags += [swapped] * (len(doc) + 1)
        n = len(stream) // block_size * block_size
        return {
            "input_ids": [stream[i : i + block_size] for i in range(0, n, block_size)],
            "swapped": [any(flags[i : i + block_size]) for i in range(0, n, block_size)],
        }

    # Large map batches waste fewer tokens at batch edges (the remainder of each map batch is dropped).
    packed = ds.map(tokenize_and_pack, batched=True, batch_size=2000, remove_columns=ds.column_names,
                    num_proc=num_proc)
    if len(packed):  # an empty result has no columns to format; the caller reports it
        packed.set_format("torch", columns=["input_ids", "swapped"])
    return packed


@dataclass
class DataStats:
    train_documents: int
    train_blocks: int
    validation_blocks: int
    swapped_documents: int
    block_size: int


def build_datasets(data_cfg, crr_cfg, tokenizer, seed: int, lexicon=None):
    """(train blocks, validation blocks or None, DataStats); refuses a corpus that yields no block."""
    docs = load_documents(data_cfg)
    if data_cfg.max_documents:
        docs = docs.shuffle(seed=seed).select(range(min(data_cfg.max_documents, len(docs))))
    if data_cfg.validation_path:
        train_docs, val_docs = docs, load_documents(data_cfg, path=data_cfg.validation_path)
    elif data_cfg.validation_split > 0 and len(docs) >= 2:
        parts = docs.train_test_split(test_size=data_cfg.validation_split, seed=seed)
        train_docs, val_docs = parts["train"], parts["test"]
    else:
        train_docs, val_docs = docs, None
    # The counterfactual augmentation applies to training text only: validation measures the plain task.
    train_docs = augment_documents(train_docs, lexicon, crr_cfg.augment, crr_cfg.p, seed)
    train = pack(train_docs, tokenizer, data_cfg.block_size, data_cfg.num_proc)
    if len(train) == 0:
        n_tokens = sum(len(t) for t in tokenizer(train_docs["text"][:1000])["input_ids"])
        raise UserError(
            f"the training text gives 0 blocks of {data_cfg.block_size} tokens (about {n_tokens} tokens in all); "
            "give more text or lower data.block_size"
        )
    val = None
    if val_docs is not None:
        val = pack(augment_documents(val_docs, None, "none", 0.0, seed), tokenizer, data_cfg.block_size)
        val = val if len(val) else None
    stats = DataStats(
        train_documents=len(train_docs), train_blocks=len(train), validation_blocks=len(val) if val else 0,
        swapped_documents=int(sum(train_docs["swapped"])), block_size=data_cfg.block_size,
    )
    return train, val, stats


class BlockSampler:
    """Deterministic global batches: epoch e visits the blocks in `randperm(n, seed + e)` order.

    One optimizer step consumes `global_batch = batch_size * grad_accum * num_processes` blocks. Process r's
    micro-batch m of that step takes a fixed slice of them, so the union over processes and micro-batches
    is the same set of blocks whatever the split. State is (epoch, position): two integers to checkpoint.
    """

    def __init__(self, n_blocks: int, batch_size: int, grad_accum: int, num_processes: int, rank: int, seed: int):
        self.n, self.batch_size, self.grad_accum = n_blocks, batch_size, grad_accum
        self.num_processes, self.rank, self.seed = num_processes, rank, seed
        self.global_batch = batch_size * grad_accum * num_processes
        self.epoch, self.position = 0, 0
        self._perm = None

    def _order(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def next_step(self) -> list[list[int]]:
        """This process's micro-batches (lists of block indices) for the next optimizer step."""
        if self.position + self.global_batch > self.n:  # drop the ragged end of an epoch
            self.epoch, self.position = self.epoch + 1, 0
        step = self._order()[self.position : self.position + self.global_batch].tolist()
        self.position += self.global_batch
        micro = []
        for m in range(self.grad_accum):
            start = (m * self.num_processes + self.rank) * self.batch_size
            micro.append(step[start : start + self.batch_size])
        return micro

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
