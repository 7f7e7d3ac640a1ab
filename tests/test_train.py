"""The training loop end to end on the debug recipe: outputs, exact accumulation, two processes, resume."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.cli import main
from distill.config import load_config
from distill.train.data import BlockSampler
from distill.train.setup import build
from distill.train.step import kd_step

NO_DROPOUT = ["teacher.config.resid_pdrop=0", "teacher.config.embd_pdrop=0", "teacher.config.attn_pdrop=0"]


def run_cli(*argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code


def final_weights(run_dir):
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def test_debug_recipe_trains_and_final_model_loads_and_generates(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", "train.max_steps=12") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [5, 10, 12]
    for r in logged:
        assert {"step", "loss", "ce", "kd", "cos", "lr", "tokens_per_s", "grad_norm"} <= set(r)
        assert r["tokens_per_s"] > 0 and r["ce"] > 0 and r["kd"] >= 0
        assert r["loss"] == pytest.approx(1.0 * r["kd"] + 0.5 * r["ce"] + 1.0 * r["cos"], rel=1e-6)
    assert logged[-1]["ce"] < logged[0]["ce"], "the student learns the corpus"
    assert any("val_ppl" in r for r in records)
    # the fairness probe: once on the untrained student, then with every validation, drawn and in the card
    probed = [r["step"] for r in records if "probe_offset" in r]
    assert probed[0] == 0 and records[0]["step"] == 0 and probed[1:] == [r["step"] for r in records if "val_ppl" in r]
    for r in records:
        if "probe_offset" in r:
            assert abs(r["probe_offset"]) < 10 and r["probe_spread"] >= 0 and r["probe_template_sd"] >= 0
            assert r["probe_offset"] == r["probe_offset"] and r["probe_slope"] == r["probe_slope"]  # not NaN
    assert (out / "fairness.png").stat().st_size > 10_000
    card = (out / "final" / "README.md").read_text()
    assert "| probe_offset |" in card and "| teacher_probe_offset |" in card
    final = out / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.n_layer == 2
    generated = model.generate(**tok("The doctor said", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == len(tok("The doctor said")["input_ids"]) + 5
    card = (final / "README.md").read_text()
    assert "from_teacher_layers" in card and "| ce |" in card
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000010"]


class GradRecorder:
    """Stands in for the optimizer (and the schedule): keeps the step's gradients instead of applying them."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        if self.grads is None:  # the optimizer's step, not the schedule's (which comes second)
            self.grads = {k: p.grad.clone() for k, p in self.model.named_parameters()}

    def zero_grad(self, set_to_none=True):
        pass


def _step_grads(tmp_path, batch_size, grad_accum):
    cfg = load_config("recipes/debug.yaml", [f"output_dir={tmp_path}", f"train.batch_size={batch_size}",
                                             f"train.grad_accum={grad_accum}", "train.max_grad_norm=0", *NO_DROPOUT])
    accelerator = Accelerator(cpu=True)
    setup = build(cfg, accelerator)
    sampler = BlockSampler(len(setup.train_blocks), batch_size, grad_accum, 1, 0, cfg.seed)
    batches = [setup.train_blocks[idx] for idx in sampler.next_step()]
    recorder = GradRecorder(setup.student)
    stats = kd_step(cfg, setup, setup.student, recorder, recorder, accelerator, batches)
    sums = stats.sums
    return stats.n_tokens, torch.stack([sums.kd, sums.ce, sums.cos, sums.swapped]) / stats.n_tokens, recorder.grads


def test_batch_4_accum_1_equals_batch_1_accum_4(tmp_path):
    n_a, losses_a, grads_a = _step_grads(tmp_path, 4, 1)
    n_b, losses_b, grads_b = _step_grads(tmp_path, 1, 4)
    assert n_a == n_b == 4 * 63
    assert (losses_a - losses_b).abs().max().item() < 1e-5
    for name, g in grads_a.items():
        assert (g - grads_b[name]).abs().max().item() < 1e-5, name


def _train_subprocess(out, *extra, launcher=()):
    cmd = [*launcher, "-m", "distill", "train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *cmd] if not launcher else cmd, capture_output=True, text=True,
                          env=env, timeout=600)


def _worker_errors(stderr: str) -> str:
    """What a failed launch says: the workers' own error lines (a rank that aborts prints its reason, and with
    faulthandler (distill/cli.py) its Python stacks, far above the launcher's summary) and the summary's end."""
    cues = ("Error", "error:", "terminate called", "Traceback", "what():", "Signal", "Fatal Python", "File \"",
            "Thread 0x", "Current thread")
    lines = [line for line in stderr.splitlines() if any(c in line for c in cues)]
    return "\n".join(lines[:40]) + "\n...\n" + stderr[-1500:]


def _worker_aborted(stderr: str) -> bool:
    """The launcher's summary names a worker killed by SIGABRT or SIGSEGV (not a Python error: exit code 1)."""
    return "(SIGABRT)" in stderr or "(SIGSEGV)" in stderr


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    common = ["train.max_steps=6", "train.log_steps=1", "train.save_steps=0", "train.eval_steps=0", *NO_DROPOUT]
    one = _train_subprocess(tmp_path / "one", "train.batch_size=4", *common)
    assert one.returncode == 0, one.stderr[-2000:]
    # `--multi_gpu` is accelerate's torchrun launcher; on a machine without CUDA distill runs its workers on
    # CPU with gloo (accelerate's `--cpu` launcher would start one process unless MPI is installed).
    # A free port, not 29500: another launch on this machine (a second test run, a user's job) cannot meet it.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two_dir = tmp_path / "two"
    two = _train_subprocess(two_dir, "train.batch_size=2", *common, launcher=launcher)
    if two.returncode != 0 and _worker_aborted(two.stderr):
        # A gloo worker has aborted in C++ ("terminate called without an active exception") in 2 of about 10
        # full `make test` runs and in none of ~150 launches of this test alone; the cause is not known. One
        # retry in a fresh directory, reported as a warning with the worker's lines, keeps it visible; a second
        # abort, a Python error or wrong numbers still fail.
        warnings.warn("2-process launch: a worker died of a signal, retried once:\n" + _worker_errors(two.stderr),
                      stacklevel=1)
        two_dir = tmp_path / "two_retry"
        two = _train_subprocess(two_dir, "train.batch_size=2", *common, launcher=launcher)
    assert two.returncode == 0, _worker_errors(two.stderr)
    assert "2 processes" in two.stdout
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "one", two_dir)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == list(range(0, 7))
    for key in ("probe_offset", "probe_spread", "probe_slope"):  # the untrained student, probed in shards
        assert logs[0][0][key] == pytest.approx(logs[1][0][key], rel=1e-4, abs=1e-5), key
    for a, b in zip(logs[0][1:], logs[1][1:], strict=True):
        for key in ("loss", "kd", "ce", "cos"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(two_dir)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_identical(tmp_path):
    args = ["train.max_steps=40", "train.save_steps=4", "train.eval_steps=0", "train.keep_checkpoints=2"]
    straight = _train_subprocess(tmp_path / "straight", *args)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "distill", "train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "step-00000004").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run was killed before it finished"
    # a kill in the middle of writing a checkpoint leaves a .tmp dir; resume must ignore it
    (out / "checkpoints" / ".tmp-step-99999999").mkdir(parents=True, exist_ok=True)
    resumed = _train_subprocess(out, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stdout
    a, b = final_weights(tmp_path / "straight"), final_weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_a_run_killed_by_sigabrt_prints_where_python_was(tmp_path):
    """The abort a gloo worker can hit (see the two-process test) leaves more than the launcher's "Signal 6"."""
    out = tmp_path / "aborted"
    cmd = [sys.executable, "-m", "distill", "train", "--recipe", "recipes/debug.yaml", f"output_dir={out}",
           "train.max_steps=1000", "train.save_steps=0", "train.eval_steps=0", "train.log_steps=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGABRT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in stderr
    assert "distill/train/" in stderr  # the main thread's stack, down to the training loop


@pytest.mark.parametrize(
    "extra,message",
    [
        (["teacher.config=null", "teacher.name_or_path=./no/such/model"], "does not exist"),
        (["train.max_stepz=3"], "did you mean 'train.max_steps'"),
        (["loss.alpha_kd=-0.5"], "loss.alpha_kd=-0.5 is out of range"),
        (["loss.temperature=0"], "loss.temperature=0.0 is out of range"),
        (["data.path=EMPTY"], "is empty"),
        (["data.path=TINY"], "gives 0 blocks"),
        (["student.from_teacher_layers=null", "student.name_or_path=STUDENT"], "tokenizers differ"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    (tmp_path / "empty.txt").write_text("\n   \n\n")
    (tmp_path / "tiny.txt").write_text("one short line\n")
    if "student.name_or_path=STUDENT" in extra:
        from distill.models import train_byte_bpe_tokenizer

        other = train_byte_bpe_tokenizer(["unrelated words only " * 30], 300)
        model = AutoModelForCausalLM.from_config(
            __import__("transformers").GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(other)))
        model.save_pretrained(tmp_path / "student")
        other.save_pretrained(tmp_path / "student")
    subs = {"EMPTY": str(tmp_path / "empty.txt"), "TINY": str(tmp_path / "tiny.txt"),
            "STUDENT": str(tmp_path / "student")}
    extra = [e.split("=")[0] + "=" + subs.get(e.split("=", 1)[1], e.split("=", 1)[1]) for e in extra]
    out = tmp_path / "run"
    capsys.readouterr()
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("distill train: error:")
    assert not out.exists()


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}") == 2
    assert "already holds a run (logged up to step 7)" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 7, "loss": 1.0}\n'
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", "--overwrite",
                   "train.max_steps=2") == 0
    assert (out / "final" / "model.safetensors").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A loss that turns NaN at step 3 (injected: a real divergence is slow and flaky to provoke)."""
    from bad_input_helpers import nan_loss_at

    nan_loss_at(monkeypatch, 3)
    out = tmp_path / "run"
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", "train.save_steps=1",
                   "train.max_steps=10", "train.eval_steps=0") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss became nan at step 3" in err and "step-00000002" in err
    assert not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]


@pytest.mark.parametrize("teacher_mode,augment", [("cf_mean", "replace"), ("pair_mean", "both")])
def test_debug_crr_run_swaps_perturbs_and_writes_its_student(tmp_path, teacher_mode, augment):
    out = tmp_path / "crr"
    assert run_cli("train", "--recipe", "recipes/debug_crr.yaml", f"output_dir={out}", "train.max_steps=6",
                   "train.log_steps=2", "train.eval_steps=0", "train.save_steps=0", f"crr.teacher={teacher_mode}",
                   f"crr.augment={augment}") == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # after step 0
    assert all(0 <= r["swapped_share"] <= 1 and 0 <= r["teacher_changed_share"] <= 1 for r in logged)
    # every logged window (2 steps of 4 blocks) holds swapped text and perturbed targets: a swap or a
    # perturbation that stopped working after the first steps would fail here
    assert all(r["swapped_share"] > 0 for r in logged), [r["swapped_share"] for r in logged]
    assert all(r["teacher_changed_share"] > 0.01 for r in logged), [r["teacher_changed_share"] for r in logged]
    if teacher_mode == "cf_mean":
        assert sum(r["cf_exact"] + r["cf_aligned"] for r in logged) > 0
    assert (out / "final" / "model.safetensors").is_file()
    assert f"teacher={teacher_mode}" in (out / "final" / "README.md").read_text()


def test_fused_adamw_takes_the_same_steps_as_the_default_implementation():
    """Fed the same gradients, fused and plain AdamW reach the same weights to a few float32 roundings.

    Both optimizers get the gradients of one model (copied), so the test measures the optimizer alone. Letting
    each model compute its own gradient compares chaotic dynamics instead: the key third of `c_attn.bias` has a
    zero gradient in exact arithmetic (softmax ignores a shift shared by all keys), so its gradient is rounding
    noise (~1e-11), which Adam divides by sqrt(v) + eps = ~1e-8 and turns into steps of ~1e-3 lr whose sign
    depends on the order of float sums; after one step the two models' weights differ by an ulp, their noise
    differs, and the old 1e-6 tolerance failed on some CPUs (issue 12).

    Tolerance from the arithmetic, over `steps` steps: each step rounds the new weight once (at most 1 ulp,
    2^-23 relative, per side, hence rtol = 2 * steps * 2^-23) and computes an update of size <= ~lr with a few
    roundings of its own (atol = steps * lr * 1e-6). A wrong hyperparameter is far outside this: a dropped
    weight decay alone moves a weight of 0.02 by lr * 0.1 * 0.02 = 2e-6 per step, and a real step moves a
    weight by about lr (asserted below, so the comparison is not vacuous).
    """
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.train.setup import make_optimizer

    lr, steps = 1e-3, 3
    cfg = SimpleNamespace(train=SimpleNamespace(lr=lr, weight_decay=0.1))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    fused_model, plain_model = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    plain_model.load_state_dict(fused_model.state_dict())
    start = [p.detach().clone() for p in plain_model.parameters()]
    fused = make_optimizer(cfg, fused_model)
    assert fused.defaults["fused"]
    index = {id(p): i for i, p in enumerate(fused_model.parameters())}
    plain_params = list(plain_model.parameters())
    plain = torch.optim.AdamW([{"params": [plain_params[index[id(p)]] for p in g["params"]],
                                "weight_decay": g["weight_decay"]} for g in fused.param_groups],
                              lr=lr, betas=(0.9, 0.98), eps=1e-8, foreach=False)
    ids = torch.randint(0, 64, (2, 16))
    for _ in range(steps):
        fused_model(input_ids=ids, labels=ids).loss.backward()
        for a, b in zip(fused_model.parameters(), plain_params, strict=True):
            b.grad = a.grad.clone()
        for opt in (fused, plain):
            opt.step()
            opt.zero_grad()
    rtol, atol = 2 * steps * 2.0**-23, steps * lr * 1e-6
    for (name, a), b, b0 in zip(fused_model.named_parameters(), plain_params, start, strict=True):
        assert (b - b0).abs().median() > 0.5 * lr * steps, name  # the steps were real steps
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=name)


@pytest.mark.slow
def test_compiled_student_trains_like_the_eager_one_and_exports_plain_weights(tmp_path):
    """train.compile: about 20 s of torch.compile on 2 cores, hence slow."""
    args = ["train.max_steps=6", "train.eval_steps=3", "train.save_steps=0", *NO_DROPOUT]
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={tmp_path / 'eager'}", *args) == 0
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={tmp_path / 'compiled'}",
                   "train.compile=true", *args) == 0
    eager, compiled = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()  # no torch.compile prefixes in the export
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-4, msg=key)
