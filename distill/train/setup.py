"""What a run builds before its first step: models, tokenizer, data (`build` -> `Setup`), optimizer, schedule.

    setup = build(cfg, accelerator)
    optimizer = make_optimizer(cfg, setup.student)
    scheduler = make_scheduler(cfg, optimizer)

Everything that can refuse the run (mismatched tokenizers or widths, too little data, a top-k cache that
would not fit) refuses here, before any training.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from distill.config import Config
from distill.config_checks import check_block_size
from distill.errors import UserError
from distill.train import engine as eng

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from distill.crr.lexicon import Lexicon
    from distill.crr.token_table import TokenSwapTable
    from distill.train.data import DataStats
    from distill.train.target_cache import TopKTargetCache


@dataclass
class Setup:
    """Everything `kd_step` and `fit` need, built once by `build`."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    train_blocks: Dataset | None  # packed blocks, "input_ids" (torch format) and "swapped"
    val_blocks: Dataset | None
    vocab_rows: int  # the rows teacher, student and tokenizer share: targets and logits are cut to these
    lexicon: Lexicon | None = None
    swap_table: TokenSwapTable | None = None
    data_stats: DataStats | None = None
    target_cache: TopKTargetCache | None = None  # when loss.teacher_top_k > 0
    engine: str = "ddp"  # ddp, fsdp or deepspeed: see distill/train/engine.py
    # (male ids, female ids) the gender-balance term compares, on the training device; when loss.alpha_balance > 0
    balance_ids: tuple[torch.Tensor, torch.Tensor] | None = None
    # leading student blocks that are the teacher's own: the step starts the student after them (train/prefix.py)
    prefix_depth: int = 0


def build(cfg: Config, accelerator: Accelerator) -> Setup:
    """Load teacher, student, tokenizer and data; refuse incompatible pieces before any training."""
    teacher, student, tokenizer, vocab_rows = _models(cfg, accelerator)
    engine = eng.engine_of(accelerator)
    eng.check_auto_wrap(accelerator, teacher, student)  # FSDP asked for: both models have blocks to shard
    if engine == "ddp":  # a sharded teacher stays on the CPU until it is sharded (end of build)
        teacher.to(accelerator.device)

    lexicon = swap_table = balance_ids = None
    needs_table = cfg.crr.teacher != "none" or cfg.loss.alpha_balance > 0  # the token-level pairs
    if cfg.crr.augment != "none" or needs_table:
        from distill.crr.lexicon import load_lexicon
        from distill.crr.token_table import build_token_swap_table

        lexicon = load_lexicon(cfg.crr.lexicon, cfg.crr.names)
        if needs_table:
            swap_table = build_token_swap_table(tokenizer, lexicon)
        if cfg.loss.alpha_balance > 0:
            balance_ids = _balance_ids(swap_table, vocab_rows, accelerator.device)
    train_blocks, val_blocks, stats = _data(cfg, accelerator, teacher, tokenizer, lexicon)
    target_cache = _target_cache(cfg, len(train_blocks), vocab_rows)
    prefix_depth = _prefix_depth(cfg, engine, teacher, student, train_blocks)
    # After the transfer set: sampling it runs the teacher on the main process alone, which a sharded teacher
    # cannot do.
    teacher = eng.prepare_teacher(accelerator, teacher, engine, cfg.train.batch_size)
    return Setup(teacher, student, tokenizer, train_blocks, val_blocks, vocab_rows, lexicon, swap_table, stats,
                 target_cache, engine, balance_ids, prefix_depth)


def _prefix_depth(cfg: Config, engine: str, teacher, student, train_blocks) -> int:
    """The student's blocks shared with the teacher (`train.share_teacher_prefix`); 0 where sharing does not
    apply: a sharded engine, a compiled student, top-k cached targets (the teacher skips cached blocks) or
    no KD targets (the teacher does not run), and wherever the start-up check finds other logits."""
    from distill.train.prefix import shared_prefix_depth

    if (not cfg.train.share_teacher_prefix or engine != "ddp" or cfg.train.compile or cfg.loss.teacher_top_k
            or (cfg.loss.alpha_kd == 0 and cfg.loss.alpha_cos == 0)):
        return 0
    sample = train_blocks[0]["input_ids"].reshape(1, -1)
    return shared_prefix_depth(teacher, student, cfg.student.from_teacher_layers, sample)


def _balance_ids(table, vocab_rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The swap table's word-start spellings, male and female (`word_start_sides`): what the balance term reads."""
    from distill.crr.vocab import swap_plan, word_start_sides

    male, female = word_start_sides(swap_plan(table, vocab_rows, device))
    if len(male) == 0 or len(female) == 0:
        raise UserError("loss.alpha_balance needs male and female words the tokenizer spells as single tokens "
                        "(the swap table's pairs), and this tokenizer has none; set loss.alpha_balance=0 or "
                        "give crr.lexicon pairs it can spell")
    return male, female


def _models(cfg: Config, accelerator: Accelerator):
    """(teacher frozen in eval mode, fp32 student in train mode, tokenizer, shared vocabulary rows)."""
    from distill import models
    from distill.precision import resolve_dtype

    t = cfg.teacher
    tokenizer = models.load_tokenizer(t.tokenizer or t.name_or_path, t.trust_remote_code)
    if t.config is not None:
        teacher = models.build_random_model(t.config, tokenizer, seed=cfg.seed)
    else:
        teacher = models.load_model(t.name_or_path, "float32", t.trust_remote_code)
    teacher.eval().requires_grad_(False)
    check_block_size(cfg.data.block_size, teacher.config, "teacher")

    s = cfg.student
    if s.from_teacher_layers is not None:
        student = models.student_from_teacher_layers(teacher, list(s.from_teacher_layers))
    elif s.config is not None:
        student = models.build_random_model(s.config, tokenizer, seed=cfg.seed + 1)
    else:
        models.check_same_tokenizer(tokenizer, models.load_tokenizer(s.tokenizer or s.name_or_path,
                                                                     s.trust_remote_code))
        student = models.load_model(s.name_or_path, "float32", s.trust_remote_code)
    check_block_size(cfg.data.block_size, student.config, "student")
    student.float().train()  # fp32 master weights; mixed precision is autocast, not a bf16 copy
    if s.train_layers is not None:
        models.freeze_except_layers(student, list(s.train_layers))
    # Only now, with the student copied from full-precision weights, may the teacher drop to its dtype.
    teacher.to(dtype=models.DTYPES[resolve_dtype(t.dtype, accelerator.device)[0]])
    vocab_rows = models.shared_vocab_size(teacher, student, len(tokenizer))
    if cfg.loss.alpha_cos > 0 and teacher.config.hidden_size != student.config.hidden_size:
        raise UserError(
            f"loss.alpha_cos needs equal hidden widths (teacher {teacher.config.hidden_size}, "
            f"student {student.config.hidden_size}); set loss.alpha_cos=0"
        )
    return teacher, student, tokenizer, vocab_rows


def _data(cfg: Config, accelerator: Accelerator, teacher, tokenizer, lexicon):
    """(train blocks, validation blocks, DataStats), from the corpus or from the transfer set it names."""
    from distill.train.data import build_datasets

    data_cfg = cfg.data
    if data_cfg.transfer_set is not None:
        from distill.train.transfer import ensure_transfer_set

        # The main process samples (or reuses) the transfer set; the others wait and then read the cache.
        with accelerator.main_process_first():
            ts = ensure_transfer_set(cfg, teacher if cfg.teacher.config is None else None, tokenizer,
                                     device=accelerator.device, show_progress=accelerator.is_main_process)
        data_cfg = dataclasses.replace(data_cfg, path=ts.train_path, validation_path=ts.heldout_path,
                                       transfer_set=None)
    with accelerator.main_process_first():  # datasets' cache: tokenise once, reuse in the other processes
        train_blocks, val_blocks, stats = build_datasets(data_cfg, cfg.crr, tokenizer, cfg.seed, lexicon)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    if len(train_blocks) < global_batch:
        raise UserError(
            f"the training data has {len(train_blocks)} blocks, fewer than one global batch of {global_batch} "
            "(batch_size x grad_accum x processes); give more text or lower train.batch_size"
        )
    return train_blocks, val_blocks, stats


def _target_cache(cfg: Config, n_blocks: int, vocab_rows: int) -> TopKTargetCache | None:
    """The top-k target cache of `loss.teacher_top_k`, refused when it could not fit in memory."""
    from distill.train.target_cache import TopKTargetCache, cache_bytes

    k = cfg.loss.teacher_top_k
    if not k:
        return None
    if k >= vocab_rows:
        raise UserError(f"loss.teacher_top_k={k} keeps the whole vocabulary of {vocab_rows}; lower it (e.g. 64) "
                        "or set 0 for full targets")
    need = cache_bytes(n_blocks, cfg.data.block_size, k)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    if free is not None and need > free / 2:
        raise UserError(f"loss.teacher_top_k={k} would cache up to {need / 2**30:.1f} GiB for {n_blocks} blocks, "
                        f"more than half of the {free / 2**30:.1f} GiB free; lower loss.teacher_top_k, or set 0")
    return TopKTargetCache(k, vocab_rows)


def make_optimizer(cfg: Config, student: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norms get no weight decay.

    fused=True: one kernel over all parameters instead of a dozen passes per tensor (README, `distill bench`,
    has the measured gain); the update matches the default one (tested).
    """
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-8, fused=True,
    )


def lr_lambda(cfg: Config):
    """Linear warmup to the peak, then cosine decay to lr * min_lr_ratio at max_steps."""
    warm, total, floor = cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
