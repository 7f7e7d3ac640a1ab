"""Pure loss functions for distillation. Shapes: logits (B, T, V) or (N, V); labels (B, T) or (N,).

    from distill.train.losses import distill_loss
    total, kd_sum, ce_sum = distill_loss(student_logits, teacher_probs, labels, w_kd=1 / n, w_ce=0.0,
                                         temperature=2.0, kind="forward_kl")

Conventions shared by every function here:
- Masking: a position whose label is -100 contributes nothing; `labels[b, t]` is the token that position
  `t` predicts (the caller shifts once, see `shift_labels`), so logits are never sliced or copied to shift.
- Every function returns a SUM over the unmasked positions. The training loop divides by the global count of
  real tokens of the whole optimizer step (all micro-batches, all processes), so batch 4 x accum 1 equals
  batch 1 x accum 4 (the bug of TRL issue 4719 is a per-micro-batch mean). An all-masked input gives 0.
- Divergences are computed in fp32 whatever the input dtype (a bf16 teacher against an fp32 student gave
  negative JSD elsewhere); teacher targets arrive as probabilities at the loss temperature.
- Temperature T has one meaning: both distributions are softened by T and the KD term is scaled by T^2
  (Hinton et al. 2015) so its gradient scale does not shrink as T grows. Sampling has its own knob.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
_TINY = 1e-30  # log(0) guard for teacher probabilities that underflowed or were perturbed to 0


def shift_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """labels[b, t] = input_ids[b, t + 1]; the last position and padding become -100."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        labels[:, :-1][attention_mask[:, 1:] == 0] = -100
    return labels


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence D(teacher, student) over the last axis; returns shape `logp.shape[:-1]`.

    forward_kl: KL(p_t || p_s) = sum p_t (log p_t - log p_s)     (mean-seeking; the classic KD loss)
    reverse_kl: KL(p_s || p_t) = sum p_s (log p_s - log p_t)     (mode-seeking)
    jsd:        generalized JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s
                (Agarwal et al. 2024). Its endpoints are the KL directions: JSD/beta -> forward KL as beta -> 0
                and JSD/(1 - beta) -> reverse KL as beta -> 1, so beta = 0 and 1 are defined as those.
    """
    t_logp, s_logp = teacher_logp.float(), student_logp.float()
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if kind == "reverse_kl":
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    if kind == "jsd":
        m_logp = torch.logsumexp(
            torch.stack([t_logp + torch.log(torch.tensor(beta)), s_logp + torch.log(torch.tensor(1 - beta))]), 0
        )
        kl_t = (t_logp.exp() * (t_logp - m_logp)).sum(-1)
        kl_s = (s_logp.exp() * (s_logp - m_logp)).sum(-1)
        return beta * kl_t + (1 - beta) * kl_s
    raise ValueError(f"unknown divergence {kind!r}; choose one of {DIVERGENCES}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    kind: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """T^2 * sum over unmasked positions of D(teacher_T, student_T). Reference (unchunked) version."""
    mask = labels != -100
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t_logp = teacher_probs.float().clamp_min(_TINY).log()
    per_pos = divergence(t_logp, s_logp, kind, beta)
    return temperature**2 * torch.where(mask, per_pos, 0.0).sum()


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy (at T=1) over unmasked positions."""
    v = student_logits.shape[-1]
    return F.cross_entropy(student_logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over unmasked positions of 1 - cos(h_s, h_t) (DistilBERT's alignment loss); widths must match."""
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return torch.where(labels != -100, 1.0 - cos, 0.0).sum()


def gender_logratio(logits: torch.Tensor, male_ids: torch.Tensor, female_ids: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """log P(male ids) - log P(female ids) per position, from logits (..., V) at `temperature`.

    The softmax normaliser cancels, so only the gendered columns are read: log-sum-exp over each side.
    """
    z = logits.float() / temperature
    return torch.logsumexp(z.index_select(-1, male_ids), -1) - torch.logsumexp(z.index_select(-1, female_ids), -1)


def target_logratio(probs: torch.Tensor, male_ids: torch.Tensor, female_ids: torch.Tensor) -> torch.Tensor:
    """log P(male ids) - log P(female ids) per position of target probabilities (..., V); masses floored."""
    pm = probs.float().index_select(-1, male_ids).sum(-1).clamp_min(_TINY)
    pf = probs.float().index_select(-1, female_ids).sum(-1).clamp_min(_TINY)
    return pm.log() - pf.log()


def balance_loss(student_logits: torch.Tensor, target_ratio: torch.Tensor, labels: torch.Tensor,
                 male_ids: torch.Tensor, female_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sum over unmasked positions of (student's log P(male)/P(female) - the targets')^2.

    The KD divergence weighs a position's gender ratio by the mass it holds, so where gendered words are
    unlikely it barely constrains the ratio; this term weighs every position alike. With pair-equalised
    targets (target_ratio 0) it asks the student for no gender preference anywhere, not only where the
    training text made a pronoun likely.
    """
    diff = gender_logratio(student_logits, male_ids, female_ids, temperature) - target_ratio.float()
    return torch.where(labels != -100, diff.square(), 0.0).sum()


def forward_kl_ce_chunk(
    z: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    w_kd: float,
    w_ce: float,
    temperature: float,
    grad_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kd_sum, ce_sum) of `kd_loss` (forward KL) and `ce_loss` on rows z (N, V) fp32, with the gradient of
    w_kd * kd_sum + w_ce * ce_sum written into `grad_out` (N, V) when given. Same values as the reference
    functions; the gradient in closed form instead of autograd:

        d/dz  T^2 KL(p || softmax(z/T)) = T (softmax(z/T) - p)
        d/dz  CE(z, y)                  = softmax(z) - onehot(y)

    Why: autograd through log_softmax and the divergence makes about twice as many passes over the (N, V)
    rows, and on a CPU those passes, not the matmuls, are what the loss costs (see `distill bench`).
    `grad_out` may be `teacher_probs` itself: every read of p happens before the write.
    """
    mask = labels != -100
    target = labels.clamp_min(0).unsqueeze(-1)
    shifted = z - z.amax(-1, keepdim=True)  # both log-sum-exps share the row max
    soft1 = shifted.exp()
    sum1 = soft1.sum(-1, keepdim=True)
    ce_pos = sum1.log().squeeze(-1) - shifted.gather(-1, target).squeeze(-1)
    ce_sum = torch.where(mask, ce_pos, 0.0).sum()
    kd_sum = z.new_zeros(())
    grad = None
    if teacher_probs is not None:
        p = teacher_probs.float()
        zt = shifted.div_(temperature)  # z/T up to a per-row constant, which log-softmax removes
        soft_t = zt.exp()
        sum_t = soft_t.sum(-1, keepdim=True)
        # KL = sum p log p - sum p (z/T - lse) = -entropy(p) - <p, z/T> + lse * sum p  (p may not sum to 1 exactly)
        # (vecdot, and log then vecdot, are several times faster on a CPU than bmm or special.entr here)
        p_log_p = torch.linalg.vecdot(p, p.clamp_min(_TINY).log_())
        kd_pos = p_log_p - torch.linalg.vecdot(p, zt) + sum_t.log().squeeze(-1) * p.sum(-1)
        kd_sum = temperature**2 * torch.where(mask, kd_pos, 0.0).sum()
        if grad_out is not None:
            scale = w_kd * temperature
            grad = soft_t.mul_(scale / sum_t).sub_(p, alpha=scale)
    if grad_out is None:
        return kd_sum, ce_sum
    soft1.mul_(w_ce / sum1)
    grad = soft1 if grad is None else grad.add_(soft1)
    grad.scatter_add_(-1, target, grad.new_full(target.shape, -w_ce))
    if not mask.all():
        grad[~mask] = 0.0
    grad_out.copy_(grad)
    return kd_sum, ce_sum


class _ChunkedDistillLoss(torch.autograd.Function):
    """w_kd * kd_loss + w_ce * ce_loss, computed over row chunks with the gradient taken inside forward.

    Why: autograd on the plain expression keeps several fp32 (N, V) intermediates alive until backward
    (log-softmaxes, teacher log-probs, products). Here each chunk's intermediates die with the chunk, and the
    only extra full-size tensor is the gradient w.r.t. the logits, which backward needs anyway. Forward KL
    (and CE alone) take the closed-form gradient of `forward_kl_ce_chunk`; the other divergences autograd.
    """

    @staticmethod
    def forward(ctx, logits, teacher_probs, labels, w_kd, w_ce, temperature, kind, beta, chunk_size, reuse):
        n = logits.shape[0]
        grad = None
        # fp16 logits get an fp32 gradient buffer: the gradient is stored at the 1/n_global scale, where fp16
        # flushed 42.5% of the entries to zero, and GradScaler's 2^16 applied in fp16 overflowed it to inf.
        # Only backward's scaled result is rounded to fp16, as autograd would. bf16 has fp32's
        # exponent range, so it keeps a buffer of its own dtype (half the memory).
        buf_dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype
        ctx.logits_dtype = logits.dtype
        if ctx.needs_input_grad[0]:
            # With `reuse`, each chunk's gradient overwrites the teacher rows it has just consumed, so the
            # step holds one (N, V) tensor less (the caller promises not to read teacher_probs afterwards).
            can_reuse = reuse and teacher_probs is not None and teacher_probs.dtype == buf_dtype \
                and teacher_probs.shape == logits.shape
            grad = teacher_probs if can_reuse else torch.empty_like(logits, dtype=buf_dtype)
        closed_form = teacher_probs is None or kind == "forward_kl" or (kind == "jsd" and beta == 0.0)
        kd_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        ce_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            t_rows = teacher_probs[rows] if teacher_probs is not None else None
            if closed_form:
                kd, ce = forward_kl_ce_chunk(logits[rows].detach().float(), t_rows, labels[rows], w_kd=w_kd,
                                             w_ce=w_ce, temperature=temperature,
                                             grad_out=grad[rows] if grad is not None else None)
            else:
                with torch.enable_grad():
                    z = logits[rows].detach().float().requires_grad_(grad is not None)
                    kd = kd_loss(z, t_rows, labels[rows], temperature=temperature, kind=kind, beta=beta)
                    ce = ce_loss(z, labels[rows])
                    if grad is not None:
                        (g,) = torch.autograd.grad(w_kd * kd + w_ce * ce, z)
                        grad[rows] = g.to(grad.dtype)
            kd_sum += kd.detach().double()
            ce_sum += ce.detach().double()
        ctx.save_for_backward(grad)
        total = (w_kd * kd_sum + w_ce * ce_sum).float()
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return total, kd_sum.float(), ce_sum.float()

    @staticmethod
    def backward(ctx, grad_total, _grad_kd, _grad_ce):
        (grad,) = ctx.saved_tensors
        grad = grad.mul_(grad_total.to(grad.dtype)).to(ctx.logits_dtype)
        return grad, None, None, None, None, None, None, None, None, None


def auto_chunk_size(device: torch.device) -> int:
    """Rows per chunk when `loss.chunk_size` is 0. On a CPU, 16 rows of a 50k vocabulary (3 MiB per fp32
    temporary) stay in cache, which timed faster than 64 rows; on a GPU, large chunks keep the kernel count
    low (a guess: not measured)."""
    return 16 if device.type == "cpu" else 4096


def distill_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    w_kd: float,
    w_ce: float,
    temperature: float,
    kind: str = "forward_kl",
    beta: float = 0.5,
    chunk_size: int = 0,
    reuse_teacher_buffer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_kd * kd_loss + w_ce * ce_loss, kd_sum, ce_sum), memory-lean: see `_ChunkedDistillLoss`.

    student_logits (B, T, V) or (N, V); teacher_probs the same shape at `temperature`, or None for CE only;
    labels (B, T) or (N,) with -100 masking. The weights carry the 1/global-token-count normalisation, so
    only `total` has a gradient; kd_sum and ce_sum are detached raw sums for logging. kd_sum includes T^2.
    `reuse_teacher_buffer=True` lets the gradient overwrite `teacher_probs` (when dtypes match): one (B, T, V)
    tensor less, for callers that do not read the targets again.
    """
    v = student_logits.shape[-1]
    if chunk_size == 0:
        chunk_size = auto_chunk_size(student_logits.device)
    flat_t = teacher_probs.reshape(-1, v) if teacher_probs is not None else None
    return _ChunkedDistillLoss.apply(
        student_logits.reshape(-1, v), flat_t, labels.reshape(-1), float(w_kd), float(w_ce), float(temperature),
        kind, float(beta), int(chunk_size), bool(reuse_teacher_buffer),
    )
