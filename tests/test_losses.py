"""Loss functions on vocab-5 tensors: exact values, masking, directions, chunking."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.train.losses import ce_loss, cosine_loss, distill_loss, divergence, kd_loss, shift_labels

V = 5


def _rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_divergence_is_zero_for_identical_distributions(kind):
    logp = F.log_softmax(_rand((2, 3, V), 0), -1)
    assert divergence(logp, logp, kind).abs().max() < 1e-6


def test_forward_kl_matches_hand_computation():
    p = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    q = torch.full((V,), 0.2)
    expected = sum(pi * math.log(pi / 0.2) for pi in p.tolist())
    assert divergence(p.log(), q.log(), "forward_kl").item() == pytest.approx(expected, abs=1e-6)
    reverse = sum(0.2 * math.log(0.2 / pi) for pi in p.tolist())
    assert divergence(p.log(), q.log(), "reverse_kl").item() == pytest.approx(reverse, abs=1e-6)


def test_jsd_endpoints_are_the_kl_directions_and_interior_is_bounded():
    t = F.log_softmax(_rand((4, V), 1), -1)
    s = F.log_softmax(_rand((4, V), 2), -1)
    torch.testing.assert_close(divergence(t, s, "jsd", 0.0), divergence(t, s, "forward_kl"))
    torch.testing.assert_close(divergence(t, s, "jsd", 1.0), divergence(t, s, "reverse_kl"))
    mid = divergence(t, s, "jsd", 0.5)
    assert (mid >= 0).all() and (mid <= math.log(2) + 1e-6).all()  # JSD(0.5) is bounded by log 2
    # near the endpoints JSD/beta approaches forward KL (the limit that defines the endpoint)
    near = divergence(t, s, "jsd", 1e-4) / 1e-4
    torch.testing.assert_close(near.float(), divergence(t, s, "forward_kl").float(), rtol=1e-2, atol=1e-3)


def test_masked_positions_are_ignored_and_all_masked_gives_zero_not_nan():
    logits = _rand((2, 3, V), 3).requires_grad_()
    teacher = F.softmax(_rand((2, 3, V), 4), -1)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 0]])
    full = kd_loss(logits, teacher, labels, temperature=1.0)
    by_hand = sum(
        kd_loss(logits[b, t][None], teacher[b, t][None], labels[b, t][None], temperature=1.0)
        for b, t in [(0, 0), (0, 2), (1, 2)]
    )
    torch.testing.assert_close(full, by_hand)
    none = torch.full_like(labels, -100)
    for value in (kd_loss(logits, teacher, none, temperature=2.0), ce_loss(logits, none),
                  cosine_loss(logits, logits.detach() + 1, none),
                  distill_loss(logits, teacher, none, w_kd=1, w_ce=1, temperature=2.0)[0]):
        assert value.item() == 0.0 and not torch.isnan(value)
    total, _, _ = distill_loss(logits, teacher, none, w_kd=1, w_ce=1, temperature=2.0)
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_temperature_squared_scaling():
    logits = _rand((1, 4, V), 5)
    teacher_logits = _rand((1, 4, V), 6)
    labels = torch.zeros(1, 4, dtype=torch.long)
    for t in (1.0, 2.0, 4.0):
        teacher = F.softmax(teacher_logits / t, -1)
        raw = divergence(teacher.log(), F.log_softmax(logits / t, -1), "forward_kl").sum()
        assert kd_loss(logits, teacher, labels, temperature=t).item() == pytest.approx(t * t * raw.item(), rel=1e-6)


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_equals_unchunked_value_and_gradient(kind, beta, chunk):
    logits = _rand((3, 7, V), 7).float()
    teacher = F.softmax(_rand((3, 7, V), 8).float() / 2, -1)
    labels = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(9))
    labels[0, 2] = labels[2, :] = -100
    ref_logits = logits.clone().requires_grad_()
    ref = 0.3 * kd_loss(ref_logits, teacher, labels, temperature=2.0, kind=kind, beta=beta) + 0.7 * ce_loss(
        ref_logits, labels
    )
    ref.backward()
    ch_logits = logits.clone().requires_grad_()
    total, kd_sum, ce_sum = distill_loss(ch_logits, teacher, labels, w_kd=0.3, w_ce=0.7, temperature=2.0,
                                         kind=kind, beta=beta, chunk_size=chunk)
    total.backward()
    assert abs(total.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))
    assert abs(0.3 * kd_sum.item() + 0.7 * ce_sum.item() - ref.item()) < 1e-5
    assert (ch_logits.grad - ref_logits.grad).abs().max().item() < 1e-6


@pytest.mark.parametrize("kind", ["jsd", "forward_kl"])  # the autograd path and the closed-form one
def test_distill_loss_handles_bf16_student_logits_in_fp32(kind):
    """bf16 logits are upcast before the divergence: the loss equals the fp32 reference on the same (bf16-rounded)
    values to fp32 precision, where bf16 arithmetic would be off by about 1e-3 of it."""
    logits = (_rand((2, 4, V), 10) * 3).to(torch.bfloat16).requires_grad_()
    teacher = F.softmax(_rand((2, 4, V), 11).float(), -1)
    labels = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(12))
    ref_logits = logits.detach().float().requires_grad_()
    ref = 0.5 * kd_loss(ref_logits, teacher, labels, temperature=2.0, kind=kind) + 0.5 * ce_loss(ref_logits, labels)
    ref.backward()
    total, kd_sum, ce_sum = distill_loss(logits, teacher, labels, w_kd=0.5, w_ce=0.5, temperature=2.0, kind=kind)
    total.backward()
    assert total.dtype == torch.float32 and kd_sum.item() > 0
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    assert logits.grad.dtype == torch.bfloat16
    assert (logits.grad.float() - ref_logits.grad).abs().max().item() <= 1e-2 * ref_logits.grad.abs().max().item()


def test_shift_labels_masks_last_position_and_padding():
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert shift_labels(ids).tolist() == [[6, 7, 8, -100]]
    assert shift_labels(ids, mask).tolist() == [[6, 7, -100, -100]]


def test_cosine_loss_zero_for_parallel_and_two_for_opposite():
    h = _rand((1, 3, 4), 12)
    labels = torch.zeros(1, 3, dtype=torch.long)
    assert cosine_loss(h, 2 * h, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(h, -h, labels).item() == pytest.approx(6.0, abs=1e-5)


def test_reusing_the_teacher_buffer_for_the_gradient_gives_the_same_gradient():
    logits = _rand((2, 6, V), 13).float()
    teacher = F.softmax(_rand((2, 6, V), 14).float(), -1)
    labels = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(15))
    grads = []
    for reuse in (False, True):
        z = logits.clone().requires_grad_()
        total, _, _ = distill_loss(z, teacher.clone(), labels, w_kd=0.5, w_ce=0.5, temperature=2.0, chunk_size=4,
                                   reuse_teacher_buffer=reuse)
        total.backward()
        grads.append(z.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_closed_form_gradient_matches_autograd_on_a_realistic_vocabulary(dtype):
    """Forward KL + CE take a closed-form gradient: compare with autograd through the reference functions on
    peaked distributions over 3000 tokens, teacher zeros included (what pair_mean and top-k targets make)."""
    g = torch.Generator().manual_seed(16)
    logits = (torch.randn(2, 9, 3000, generator=g) * 4).to(dtype)
    teacher = F.softmax(torch.randn(2, 9, 3000, generator=g) * 4 / 2, -1)
    teacher[0, :, :1000] = 0.0
    teacher = teacher / teacher.sum(-1, keepdim=True)
    labels = torch.randint(0, 3000, (2, 9), generator=g)
    labels[1, 3] = -100
    ref_logits = logits.clone().requires_grad_()
    ref = 0.4 * kd_loss(ref_logits, teacher, labels, temperature=2.0) + 0.6 * ce_loss(ref_logits, labels)
    ref.backward()
    z = logits.clone().requires_grad_()
    total, kd_sum, ce_sum = distill_loss(z, teacher, labels, w_kd=0.4, w_ce=0.6, temperature=2.0, chunk_size=5)
    total.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: the gradient itself is rounded to bf16
    assert (z.grad.float() - ref_logits.grad.float()).abs().max().item() < tol
    assert z.grad[1, 3].abs().max().item() == 0.0  # masked position: no gradient


def test_cross_entropy_only_matches_torch_cross_entropy():
    g = torch.Generator().manual_seed(17)
    logits = torch.randn(3, 4, 50, generator=g)
    labels = torch.randint(0, 50, (3, 4), generator=g)
    labels[2, 0] = -100
    ref_logits = logits.clone().requires_grad_()
    F.cross_entropy(ref_logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100, reduction="sum").backward()
    z = logits.clone().requires_grad_()
    total, kd_sum, ce_sum = distill_loss(z, None, labels, w_kd=0.0, w_ce=1.0, temperature=2.0, chunk_size=0)
    total.backward()
    assert kd_sum.item() == 0.0 and total.item() == pytest.approx(ce_sum.item())
    assert (z.grad - ref_logits.grad).abs().max().item() < 1e-6


def test_fp16_logits_under_a_grad_scaler_scale_get_the_autograd_gradient():
    """Issue 11, defect 5: with fp16 logits the closed-form gradient was stored in fp16 at the 1/n_tokens
    scale (most entries flushed to zero) and multiplied by GradScaler's initial scale 2^16 in fp16 (inf: every
    step skipped). The buffer is fp32 now and only the scaled gradient is rounded to fp16, as autograd does."""
    g = torch.Generator().manual_seed(18)
    n, vocab, scale = 512, 3000, 2.0**16  # 2^16: torch.amp.GradScaler's initial scale
    logits = (torch.randn(n, vocab, generator=g) * 3).half()
    teacher = F.softmax(torch.randn(n, vocab, generator=g) * 3, -1)
    labels = torch.randint(0, vocab, (n,), generator=g)
    w = 1.0 / n  # the loop's 1/n_global weight
    ref_logits = logits.float().requires_grad_()
    (scale * (w * kd_loss(ref_logits, teacher, labels, temperature=2.0) + w * ce_loss(ref_logits, labels))).backward()
    want = ref_logits.grad.half()
    z = logits.clone().requires_grad_()
    total, _, _ = distill_loss(z, teacher.clone(), labels, w_kd=w, w_ce=w, temperature=2.0,
                               reuse_teacher_buffer=True)
    (total * scale).backward()
    assert z.grad.dtype == torch.float16 and torch.isfinite(z.grad).all()
    assert (z.grad.float() - want.float()).abs().max().item() <= 1e-3 * want.float().abs().max().item()
    assert (z.grad == 0).float().mean().item() == pytest.approx((want == 0).float().mean().item(), abs=0.01)


def test_gender_logratio_reads_only_the_gendered_columns_and_matches_the_softmax():
    from distill.train.losses import gender_logratio, target_logratio

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    male, female = torch.tensor([1, 4]), torch.tensor([2, 7, 9])
    p = torch.softmax(logits / 2.0, -1)
    want = p[..., male].sum(-1).log() - p[..., female].sum(-1).log()
    torch.testing.assert_close(gender_logratio(logits, male, female, temperature=2.0), want)
    torch.testing.assert_close(target_logratio(p, male, female), want)
    other = logits.clone()
    other[..., 0] += 5.0  # a word of neither side: the ratio does not move
    torch.testing.assert_close(gender_logratio(other, male, female, 2.0), gender_logratio(logits, male, female, 2.0))


def test_balance_loss_is_the_masked_squared_gap_and_its_gradient_closes_the_gap():
    from distill.train.losses import balance_loss, gender_logratio

    male, female = torch.tensor([0]), torch.tensor([1])
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[0.0, 0.5, 0.0]])
    labels = torch.tensor([[5, 5, -100]])
    loss = balance_loss(logits, target, labels, male, female)
    assert loss.item() == pytest.approx((2.0 - 0.0) ** 2 + (0.0 - 0.5) ** 2)  # the last position is masked
    loss.backward()
    # gradient descent lowers "he" where the student leans male past the target, raises it where it falls short
    assert logits.grad[0, 0, 0] > 0 and logits.grad[0, 0, 1] < 0
    assert logits.grad[0, 1, 0] < 0 and logits.grad[0, 1, 1] > 0
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[0, :, 2].abs().sum() == 0
    assert balance_loss(logits, gender_logratio(logits, male, female), labels, male, female).item() == 0.0
