"""Engines for scale-out (distill/train/engine.py): the checks that refuse what cannot run, the teacher's preparation,
and FSDP2 with 2 CPU processes over gloo: same training as one process, bitwise resume from sharded state."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from distill.cli import main
from distill.errors import UserError
from distill.train import engine

NO_DROPOUT = ["teacher.config.resid_pdrop=0", "teacher.config.embd_pdrop=0", "teacher.config.attn_pdrop=0"]
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


def test_the_requested_engine_is_read_from_the_launcher_environment():
    assert engine.requested_engine({}) == "ddp"
    assert engine.requested_engine(FSDP_ENV) == "fsdp"
    assert engine.requested_engine({"ACCELERATE_USE_DEEPSPEED": "true", **FSDP_ENV}) == "deepspeed"


def test_every_accelerate_config_named_in_the_docs_exists():
    text = "".join(p.read_text() for p in [Path("README.md"), *sorted(Path("docs").glob("*.md"))])
    named = set(re.findall(r"recipes/accelerate/[\w.]+\.yaml", text))
    assert named == {f"recipes/accelerate/{n}.yaml" for n in ("ddp", "fsdp", "deepspeed_zero3")}
    assert all(Path(p).is_file() for p in named)


@pytest.mark.parametrize("name,engine_name", [("ddp", "ddp"), ("fsdp", "fsdp")])
def test_shipped_accelerate_configs_pass_the_check(name, engine_name):
    assert engine.check_config_file(f"recipes/accelerate/{name}.yaml") == engine_name


def test_deepspeed_config_without_deepspeed_gets_one_line(monkeypatch, capsys):
    monkeypatch.setattr(engine, "_deepspeed_installed", lambda: False)
    with pytest.raises(UserError, match="asks for DeepSpeed, which is not installed: `pip install deepspeed`"):
        engine.check_config_file("recipes/accelerate/deepspeed_zero3.yaml")
    assert engine.main(["check", "recipes/accelerate/deepspeed_zero3.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distill engine: error:") and "pip install deepspeed" in err[0]


def test_deepspeed_requested_through_the_launcher_stops_train_before_any_compute(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "_deepspeed_installed", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "recipes/debug.yaml", f"output_dir={out}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distill train: error:") and "pip install deepspeed" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("fsdp,message", [
    ({"fsdp_version": 1}, "set fsdp_version: 2"),
    ({}, "set fsdp_version: 2"),
    ({"fsdp_version": 2, "fsdp_auto_wrap_policy": "NO_WRAP"}, "fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP"),
])
def test_fsdp_configs_that_cannot_shard_block_by_block_are_refused(tmp_path, fsdp, message):
    path = tmp_path / "acc.yaml"
    path.write_text(json.dumps({"distributed_type": "FSDP", "fsdp_config": fsdp}))
    with pytest.raises(UserError, match=message):
        engine.check_config_file(path)


def test_missing_accelerate_config_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        engine.check_config_file(tmp_path / "nope.yaml")


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32))


def test_block_classes_come_from_no_split_modules_or_the_config():
    model = _gpt2()
    assert {c.__name__ for c in engine.block_classes(model, None, "teacher")} == {"GPT2Block"}
    assert {c.__name__ for c in engine.block_classes(model, ["GPT2Block", "LlamaDecoderLayer"], "x")} == {"GPT2Block"}


def test_a_model_whose_block_class_cannot_be_auto_wrapped_gets_what_to_set():
    model = _gpt2()
    with pytest.raises(UserError, match=r"cannot auto-wrap the student \(GPT2LMHeadModel\): it names "
                                        r"\['LlamaDecoderLayer'\].*set fsdp_transformer_layer_cls_to_wrap: GPT2Block"):
        engine.block_classes(model, ["LlamaDecoderLayer"], "student")
    model._no_split_modules = None
    with pytest.raises(UserError, match="names no block class.*fsdp_transformer_layer_cls_to_wrap: GPT2Block"):
        engine.block_classes(model, None, "teacher")


def test_fsdp_with_a_block_class_the_models_lack_stops_train_with_one_line(tmp_path, monkeypatch, capsys):
    for key, value in {**FSDP_ENV, "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                       "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "recipes/debug.yaml", f"output_dir={out}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distill train: error: FSDP cannot auto-wrap the teacher")
    assert "fsdp_transformer_layer_cls_to_wrap: GPT2Block" in err[0]
    assert not out.exists()


def test_one_process_teacher_is_on_the_device_in_eval_mode_without_gradients():
    teacher = _gpt2().train()
    prepared = engine.prepare_teacher(Accelerator(cpu=True), teacher, "ddp", batch_size=2)
    assert prepared is teacher and not prepared.training
    assert not any(p.requires_grad for p in prepared.parameters())
    # a sharded engine asked for without a process group (one process, no launcher): nothing to shard across
    assert engine.prepare_teacher(Accelerator(cpu=True), _gpt2(), "fsdp", batch_size=2).__class__ is GPT2LMHeadModel


def test_plain_model_turns_a_state_dict_into_an_ordinary_model_of_the_original_class():
    model = _gpt2()
    plain = engine.plain_model(model, {k: v.clone() for k, v in model.state_dict().items()})
    assert type(plain) is GPT2LMHeadModel and plain.lm_head.weight is plain.transformer.wte.weight
    a, b = model.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- 2 processes


def _train(out, *extra, processes=1, recipe="recipes/debug_crr.yaml"):
    cmd = ["-m", "distill", "train", "--recipe", recipe, f"output_dir={out}", *extra]
    if processes > 1:
        cmd = ["-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/fsdp.yaml",
               "--main_process_port", "0", "--num_processes", str(processes), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _log(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 50-80 s on 2 shared CPU cores (the fast tier's budget is ~30 s a test)
def test_fsdp_two_processes_match_one_process_with_counterfactual_teacher_and_topk_cache(tmp_path):
    """2 FSDP2 processes x batch 1 x accum 2 against 1 process x batch 4: the same losses and weights, with the
    counterfactual pass (rows to swap differ per process) and the top-k cache (second epoch: hits) on."""
    corpus = tmp_path / "corpus.txt"  # about 12 blocks: 5 steps of 4 blocks reach a second epoch
    corpus.write_text("\n".join(Path("data/tiny_corpus.txt").read_text().splitlines()[:20]) + "\n")
    common = ["train.max_steps=5", "train.log_steps=1", "train.save_steps=0", "train.eval_steps=0",
              "loss.teacher_top_k=32", f"data.path={corpus}", *NO_DROPOUT]
    _train(tmp_path / "one", "train.batch_size=4", *common)
    two = _train(tmp_path / "two", "train.batch_size=1", "train.grad_accum=2", *common, processes=2)
    assert "2 processes" in two.stdout
    counts = [line for line in two.stdout.splitlines() if "teacher forwards" in line]
    assert len(counts) == 2, two.stdout[-2000:]
    joined = sum(int(line.split(", ")[1].split()[0]) for line in counts)
    for line in counts:  # each process holds about half of the teacher (dim-0 shards of every tensor)
        held, total = (int(x) for x in line.split("holds ")[1].split(" parameters")[0].split(" of the teacher's "))
        assert 0.4 < held / total < 0.6, line
    assert joined > 0, "the processes' teacher work differed somewhere, so lockstep must have joined forwards"
    a, b = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert b[-1]["teacher_cache_hit_share"] > 0, "the top-k cache served a second epoch"
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "kd", "ce"):  # (teacher_changed_share is the main process's own share)
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)
    w1 = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    config = json.loads((tmp_path / "two" / "final" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final").config.n_layer == 2


@pytest.mark.slow  # two 2-process runs
def test_fsdp_resume_from_sharded_state_is_bitwise(tmp_path):
    args = ["train.max_steps=6", "train.save_steps=3", "train.eval_steps=0", "train.log_steps=1"]
    straight = tmp_path / "straight"
    _train(straight, *args, processes=2, recipe="recipes/debug.yaml")
    step3 = straight / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in step3.iterdir()) == ["rng-0.pt", "rng-1.pt", "scheduler.pt", "sharded",
                                                      "trainer_state.json"]
    resumed = tmp_path / "resumed"  # the run as it was when killed right after its step-3 checkpoint
    shutil.copytree(step3, resumed / "checkpoints" / step3.name)
    shutil.copy(straight / "recipe.yaml", resumed / "recipe.yaml")
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(straight)[:3]))
    done = _train(resumed, *args, "--resume", processes=2, recipe="recipes/debug.yaml")
    assert "resuming from step 3" in done.stdout
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert _log(straight)[-1]["loss"] == _log(resumed)[-1]["loss"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_without_a_gpu_stops_with_one_line(tmp_path):
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OUT_DIR": str(tmp_path / "gc"), "GPU_CHECK_DRY": "0"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["gpu_check: error: no CUDA device (GPU_CHECK_DRY=1 runs the "
                                                "plumbing on CPU)"]
    assert not (tmp_path / "gc" / "bench.json").exists()
