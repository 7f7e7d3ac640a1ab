"""`kd_step` on the debug recipe with its loss passed in through `loss_fn`: the step backpropagates and reports
what that function returns, and stops on a non-finite loss or gradient norm before anything is applied."""

import pytest
import torch
from accelerate import Accelerator

from distill.config import load_config
from distill.train.data import BlockSampler
from distill.train.losses import distill_loss
from distill.train.setup import build
from distill.train.step import StepDiverged, StepSums, kd_step

# No dropout, so two steps on the same weights see the same forward; no cosine term, so the whole loss is
# what loss_fn returns.
FIXED = ["teacher.config.resid_pdrop=0", "teacher.config.embd_pdrop=0", "teacher.config.attn_pdrop=0",
         "loss.alpha_cos=0"]


class GradRecorder:
    """Stands in for the optimizer (and the schedule): keeps the step's gradients instead of applying them."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        if self.grads is None:  # the optimizer's step, not the schedule's (which comes second)
            self.grads = {k: p.grad.clone() for k, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        pass


@pytest.fixture(scope="module")
def step_inputs(tmp_path_factory):
    """(cfg, setup, accelerator, batches): two micro-batches of 2 blocks of the debug recipe, unclipped."""
    out = tmp_path_factory.mktemp("step")
    cfg = load_config("recipes/debug.yaml", [f"output_dir={out}", "train.batch_size=2", "train.grad_accum=2",
                                             "train.max_grad_norm=0", *FIXED])
    accelerator = Accelerator(cpu=True)
    setup = build(cfg, accelerator)
    sampler = BlockSampler(len(setup.train_blocks), 2, 2, 1, 0, cfg.seed)
    return cfg, setup, accelerator, [setup.train_blocks[idx] for idx in sampler.next_step()]


def _step(step_inputs, loss_fn=None, max_grad_norm=None):
    cfg, setup, accelerator, batches = step_inputs
    if max_grad_norm is not None:
        cfg = load_config("recipes/debug.yaml", [f"output_dir={cfg.output_dir}", "train.batch_size=2",
                                                 "train.grad_accum=2", f"train.max_grad_norm={max_grad_norm}",
                                                 *FIXED])
    setup.student.zero_grad(set_to_none=True)
    recorder = GradRecorder(setup.student)
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    stats = kd_step(cfg, setup, setup.student, recorder, recorder, accelerator, batches, **kwargs)
    return stats, recorder.grads


def test_the_injected_loss_is_what_the_step_backpropagates_and_reports(step_inputs):
    cfg = step_inputs[0]
    reference, reference_grads = _step(step_inputs)
    calls = []

    def scaled(*args, **kwargs):  # twice the loss, three times its KD sum
        calls.append(kwargs)
        total, kd, ce = distill_loss(*args, **kwargs)
        return 2 * total, 3 * kd, ce

    stats, grads = _step(step_inputs, scaled)
    assert len(calls) == 2, "one call per micro-batch"
    assert all(c["temperature"] == cfg.loss.temperature and c["kind"] == cfg.loss.divergence for c in calls)
    assert stats.n_tokens == reference.n_tokens == 4 * 63
    assert torch.allclose(stats.sums.kd, 3 * reference.sums.kd, rtol=1e-6)
    assert torch.allclose(stats.sums.ce, reference.sums.ce, rtol=1e-6)
    assert set(grads) == set(reference_grads)
    for name, g in grads.items():
        assert torch.allclose(g, 2 * reference_grads[name], rtol=1e-5, atol=1e-9), name


def test_a_non_finite_loss_stops_the_step_before_its_backward(step_inputs):
    def nan_loss(*args, **kwargs):
        total, kd, ce = distill_loss(*args, **kwargs)
        return total * float("nan"), kd, ce

    with pytest.raises(StepDiverged) as info:
        _step(step_inputs, nan_loss)
    assert (info.value.what, str(info.value)) == ("loss", "loss became nan")
    assert all(p.grad is None for p in step_inputs[1].student.parameters()), "no backward ran"


class _InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("max_grad_norm", [0, 1.0])
def test_a_non_finite_gradient_norm_stops_the_step_before_the_optimizer(step_inputs, max_grad_norm):
    def finite_loss_infinite_gradient(*args, **kwargs):
        total, kd, ce = distill_loss(*args, **kwargs)
        return _InfiniteGradient.apply(total), kd, ce

    with pytest.raises(StepDiverged) as info:
        _step(step_inputs, finite_loss_infinite_gradient, max_grad_norm=max_grad_norm)
    assert info.value.what == "gradient norm" and str(info.value).startswith("gradient norm became ")


def test_the_step_sums_are_reduced_across_processes_in_one_collective():
    class CountingAccelerator:
        calls = []

        def reduce(self, tensor, op):
            self.calls.append((tuple(tensor.shape), op))
            return tensor * 2  # two processes holding the same sums

    sums = StepSums.zeros("cpu")
    sums.add(kd=torch.tensor(1.5), ce=torch.tensor(2.0), cos=torch.tensor(0.25), balance=torch.tensor(0.5),
             swapped=torch.tensor(3))
    sums.add(kd=torch.tensor(0.5), ce=torch.tensor(1.0), cos=torch.tensor(0.25), balance=torch.tensor(0.0),
             swapped=torch.tensor(1))
    reduced = sums.all_reduced(CountingAccelerator())
    assert CountingAccelerator.calls == [((5,), "sum")]
    assert [reduced.kd.item(), reduced.ce.item(), reduced.cos.item(), reduced.balance.item(),
            reduced.swapped.item()] == [4.0, 6.0, 1.0, 1.0, 8.0]
    assert sums.kd.dtype == torch.float64 and sums.kd.item() == 2.0, "this process's sums are left as they were"


def test_the_balance_term_is_the_students_squared_gender_ratio_under_pair_equalised_targets(tmp_path):
    from distill.crr.vocab import pair_mean_, swap_plan, word_start_sides
    from distill.train.losses import gender_logratio, target_logratio

    overrides = [f"output_dir={tmp_path}", "train.batch_size=2", "train.max_grad_norm=0", "crr.teacher=pair_mean",
                 "crr.augment=none", *FIXED]
    accelerator = Accelerator(cpu=True)
    runs = {}
    for weight in (0.0, 2.0):
        cfg = load_config("recipes/debug.yaml", [*overrides, f"loss.alpha_balance={weight}"])
        setup = build(cfg, accelerator)
        batch = setup.train_blocks[[0, 1]]
        recorder = GradRecorder(setup.student)
        stats = kd_step(cfg, setup, setup.student, recorder, recorder, accelerator, [batch])
        runs[weight] = (setup, batch, stats, recorder.grads)
    setup, batch, stats, _ = runs[2.0]
    male, female = word_start_sides(swap_plan(setup.swap_table, setup.vocab_rows, "cpu"))
    assert len(male) > 0 and len(female) > 0
    ids = batch["input_ids"]
    with torch.no_grad():
        teacher_p = torch.softmax(setup.teacher(input_ids=ids).logits[..., : setup.vocab_rows].float(), -1)
        pair_mean_(teacher_p, swap_plan(setup.swap_table, setup.vocab_rows, "cpu"),
                   swap_plan(setup.swap_table, setup.vocab_rows, "cpu").ends_word[ids])
        # the word-start sides are exactly balanced by pair_mean: the term's target is 0 at every position
        assert target_logratio(teacher_p, male, female).abs().max() < 1e-5
        r = gender_logratio(runs[0.0][0].student(input_ids=ids).logits[..., : setup.vocab_rows], male, female,
                            temperature=cfg.loss.temperature)
    # both runs start from the same student (the debug cut); the step's balance sum is over the labelled positions
    assert stats.sums.balance.item() == pytest.approx(r[:, :-1].square().sum().item(), rel=1e-4)
    assert runs[0.0][2].sums.balance.item() == 0.0
    grads_off, grads_on = runs[0.0][3], runs[2.0][3]
    assert any(not torch.allclose(grads_off[k], grads_on[k]) for k in grads_off)


def test_a_balance_term_with_no_single_token_pairs_is_refused_before_training(tmp_path):
    from distill.errors import UserError

    words, names = tmp_path / "words.tsv", tmp_path / "names.tsv"
    words.write_text("zqxjkvbwy\tpfhgmtrdq\n")  # words the tiny tokenizer splits into several tokens
    names.write_text("Wqxzjkvby\tTrdqpfhgm\n")
    cfg = load_config("recipes/debug.yaml", [f"output_dir={tmp_path}", "loss.alpha_balance=0.3",
                                             f"crr.lexicon={words}", f"crr.names={names}", *FIXED])
    with pytest.raises(UserError, match="loss.alpha_balance needs male and female words"):
        build(cfg, Accelerator(cpu=True))
