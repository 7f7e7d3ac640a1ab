"""One optimizer step of knowledge distillation, in one function: `kd_step`.

    stats = kd_step(cfg, setup, student, optimizer, scheduler, accelerator, batches)

`loop.fit` calls it once per step and `distill bench` calls it to time a step, so what the bench measures
is what training runs. The bench times the named phases through `phases` (a callable returning a context
manager per phase name, `no_phases` by default) and swaps the loss through `loss_fn`; nothing is patched.

Phases, in order: "counterfactual_batch" (the role-reversed rows, cf_* modes), "teacher" (the teacher's
targets), "student_forward", "loss", "backward" (per micro-batch), then "clip" and "optimizer" (clip, AdamW
and schedule step, zero_grad). A top-k cached step skips the first two for cached blocks.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from accelerate import Accelerator

from distill.config import Config
from distill.errors import TrainingDiverged
from distill.train import engine as eng
from distill.train.losses import balance_loss, cosine_loss, distill_loss, shift_labels, target_logratio
from distill.train.prefix import forward_from
from distill.train.targets import CF_MODES, Targets, teacher_targets

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from distill.crr.token_swap import CounterfactualBatch
    from distill.train.setup import Setup


class Phases(Protocol):
    """`phases(name)` is entered around each named phase of the step (e.g. to time it)."""

    def __call__(self, name: str) -> AbstractContextManager: ...


def no_phases(name: str) -> AbstractContextManager:
    return contextlib.nullcontext()


class StepDiverged(TrainingDiverged):
    """The loss (before its backward) or the gradient norm (before the optimizer step) is not finite.
    `what` is "loss" or "gradient norm"; `loop.fit` words it for the run (its step and last checkpoint)."""

    def __init__(self, what: str, value: float):
        super().__init__(f"{what} became {value}")
        self.what, self.value = what, value


@dataclass
class StepSums:
    """One step's sums on this process, each a float64 scalar tensor: the KD, CE, cosine and gender-balance
    terms over its real tokens (unweighted, T^2 included in kd) and its gender-swapped rows."""

    kd: torch.Tensor
    ce: torch.Tensor
    cos: torch.Tensor
    balance: torch.Tensor
    swapped: torch.Tensor

    @classmethod
    def zeros(cls, device) -> StepSums:
        return cls(*torch.zeros(5, dtype=torch.float64, device=device).unbind())

    def add(self, **terms: torch.Tensor) -> None:
        for name, value in terms.items():
            getattr(self, name).add_(value.detach().double().to(getattr(self, name).device))

    def all_reduced(self, accelerator: Accelerator) -> StepSums:
        """The sums over all processes, in one collective for the five."""
        stacked = torch.stack([self.kd, self.ce, self.cos, self.balance, self.swapped])
        return StepSums(*accelerator.reduce(stacked, "sum").unbind())


@dataclass
class StepStats:
    """What one step reports: sums over this process, counts over all processes."""

    n_tokens: int  # real (label != -100) tokens of the step on all processes: the loss's denominator
    sums: StepSums  # this process's term sums and gender-swapped rows
    grad_norm: float
    changed_share: float  # mean over micro-batches of the share of positions whose target was perturbed
    topk_mass: float  # mean teacher mass kept by top-k targets (1.0 without the cache)
    cf_exact: int  # swapped words done by token substitution / by re-tokenisation (cf_* modes)
    cf_aligned: int


def kd_step(cfg: Config, setup: Setup, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler, accelerator: Accelerator, batches: list[dict], *, loss_fn=distill_loss,
            phases: Phases = no_phases) -> StepStats:
    """Forward and backward over one optimizer step's micro-batches `batches` (dicts with "input_ids",
    "swapped" and, for the top-k cache, "blocks"), then clip, optimizer step, schedule step, zero_grad.

    Every term is divided by the count of real tokens in ALL micro-batches of the step on ALL processes,
    counted before the first forward, so batch 4 x accum 1 and batch 1 x accum 4 give the same gradient, and
    so do 2 processes x batch 2 and 1 process x batch 4 (TRL issue 4719). `loss_fn` (default
    `losses.distill_loss`; None means the default) takes distill_loss's arguments and returns its three
    values. Raises StepDiverged on a non-finite loss (before its backward) or gradient norm (before the
    optimizer step).
    """
    loss_fn = loss_fn or distill_loss
    device = accelerator.device
    want_hidden = cfg.loss.alpha_cos > 0
    cache = setup.target_cache if cfg.loss.teacher_top_k else None
    sides = setup.balance_ids if cfg.loss.alpha_balance > 0 else None
    local_tokens = sum((shift_labels(b["input_ids"]) != -100).sum().item() for b in batches)
    n_global = int(accelerator.reduce(torch.tensor(local_tokens, device=device), "sum").item())
    # DDP averages gradients over processes; the scale makes that average the global token mean.
    scale = eng.loss_scale(accelerator, setup.engine, len(batches), n_global)
    sums = StepSums.zeros(device)
    changed_share = topk_mass = 0.0
    cf_exact = cf_aligned = 0
    for m, batch in enumerate(batches):
        ids = batch["input_ids"].to(device)
        labels = shift_labels(ids)
        with eng.accumulating(accelerator, student, setup.engine, last=m == len(batches) - 1):
            with accelerator.autocast():
                # 1. Teacher targets: from the top-k cache (the teacher runs on the blocks not cached yet), or
                #    fresh: plain, pair-equalised or combined with the counterfactual rows.
                probs = target = cf = None
                changed, kept = 0.0, 1.0
                if cache is not None:
                    todo = cache.missing(batch["blocks"])
                    if todo:
                        fresh, _ = batch_targets(cfg, setup, ids[todo], phases)
                        cache.put([batch["blocks"][i] for i in todo], fresh.probs, fresh.changed_share)
                        del fresh
                    probs, changed, kept = cache.get(batch["blocks"], device)
                elif cfg.loss.alpha_kd > 0 or want_hidden:
                    target, cf = batch_targets(cfg, setup, ids, phases)
                    probs, changed = target.probs, target.changed_share
                eng.drain(setup.teacher)  # a sharded teacher: the processes finish their teacher work together
                # Read before the KD term, which may overwrite the targets' buffer with its gradient.
                ratio = target_logratio(probs, *sides) if sides is not None else None
                # 2. Student forward: from the teacher's hidden state after the blocks they share, if any.
                with phases("student_forward"):
                    if target is not None and target.prefix_hidden is not None:
                        out = forward_from(student, target.prefix_hidden, setup.prefix_depth,
                                           unwrapped=accelerator.unwrap_model(student),
                                           output_hidden_states=want_hidden)
                    else:
                        out = student(input_ids=ids, output_hidden_states=want_hidden, use_cache=False)
                # 3. Loss: this process's sums, scaled to its share of the global token mean.
                with phases("loss"):
                    total, kd_sum, ce_sum = loss_fn(
                        out.logits[..., : setup.vocab_rows], probs if cfg.loss.alpha_kd > 0 else None, labels,
                        w_kd=cfg.loss.alpha_kd * scale, w_ce=cfg.loss.alpha_ce * scale,
                        temperature=cfg.loss.temperature, kind=cfg.loss.divergence, beta=cfg.loss.jsd_beta,
                        chunk_size=cfg.loss.chunk_size,
                        reuse_teacher_buffer=True,  # the targets are not read again: their memory holds the gradient
                    )
                    cos_sum = balance_sum = torch.zeros((), device=device)
                    if want_hidden:
                        cos_sum = cosine_loss(out.hidden_states[-1], target.hidden, labels)
                        total = total + cfg.loss.alpha_cos * scale * cos_sum
                    if sides is not None:
                        balance_sum = balance_loss(out.logits[..., : setup.vocab_rows], ratio, labels, *sides,
                                                   temperature=cfg.loss.temperature)
                        total = total + cfg.loss.alpha_balance * scale * balance_sum
            if not torch.isfinite(total):
                raise StepDiverged("loss", total.item())
            # 4. Backward: gradients accumulate in .grad over the micro-batches.
            with phases("backward"):
                accelerator.backward(total)
        sums.add(kd=kd_sum, ce=ce_sum, cos=cos_sum, balance=balance_sum, swapped=batch["swapped"].sum())
        changed_share += changed / len(batches)
        topk_mass += kept / len(batches)
        cf_exact += cf.n_exact if cf is not None else 0
        cf_aligned += cf.n_aligned if cf is not None else 0
    # 5. Clip the global gradient norm, 6. optimizer and schedule step.
    with phases("clip"):
        grad_norm = eng.clip_grad_norm(accelerator, student, setup.engine, cfg.train.max_grad_norm)
    if not math.isfinite(grad_norm):
        raise StepDiverged("gradient norm", grad_norm)
    with phases("optimizer"):
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return StepStats(n_global, sums, grad_norm, changed_share, topk_mass, cf_exact, cf_aligned)


def batch_targets(cfg: Config, setup: Setup, input_ids: torch.Tensor,
                  phases: Phases = no_phases) -> tuple[Targets, CounterfactualBatch | None]:
    """The teacher's targets for rows `input_ids` in the recipe's crr.teacher mode, and the counterfactual
    batch they were combined with (cf_* modes; None otherwise)."""
    cf = None
    if cfg.crr.teacher in CF_MODES:
        from distill.crr.token_swap import counterfactual_batch

        with phases("counterfactual_batch"):
            document_end = setup.tokenizer.eos_token_id if cfg.crr.cf_scope == "document" else None
            cf = counterfactual_batch(input_ids.cpu(), setup.tokenizer, setup.swap_table, setup.lexicon,
                                      document_end).to(input_ids.device)
    with phases("teacher"):
        out = teacher_targets(setup.teacher, input_ids, mode=cfg.crr.teacher, temperature=cfg.loss.temperature,
                              vocab_rows=setup.vocab_rows, table=setup.swap_table, cf=cf,
                              want_hidden=cfg.loss.alpha_cos > 0, prefix_depth=setup.prefix_depth)
    return out, cf

