"""`auto` precision: chosen from the capability checks (monkeypatched here, so the test holds on any machine)."""

import pytest
import torch

from distill import precision


def fake_cpu(monkeypatch, capability: str, amx: bool, avx512_bf16: bool, cuda: bool = False,
             cuda_bf16: bool = False):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "FakeGPU")


@pytest.mark.parametrize("capability, amx, avx512_bf16, bf16, named", [
    ("AVX512", True, True, True, "AMX"),            # Sapphire Rapids and later
    ("AVX512", True, False, True, "AMX"),
    ("AVX512", False, True, precision.BF16_WITHOUT_AMX, "AVX512-BF16"),  # Zen 4: measured, see the module
    ("AVX512", False, False, False, "AVX512"),      # Skylake-X: no bf16 instructions
    ("AVX2", False, False, False, "AVX2"),          # the AMD EPYC
    ("AVX2", True, True, False, "ATen dispatches below AVX512"),  # ATEN_CPU_CAPABILITY=avx2 emulation
    ("DEFAULT", False, False, False, "DEFAULT"),
])
def test_cpu_choice_follows_the_capability(monkeypatch, capability, amx, avx512_bf16, bf16, named):
    fake_cpu(monkeypatch, capability, amx, avx512_bf16)
    for device in ("cpu", None):  # None: no CUDA here, so the CPU decides
        c = precision.choose(device)
        assert c.bf16 is bf16
        assert (c.dtype, c.mixed_precision, c.name) == (("bfloat16", "bf16", "bf16") if bf16
                                                        else ("float32", "no", "fp32"))
        assert f"CPU capability {capability}" in c.reason and named in c.reason


def test_avx512_bf16_without_amx_is_fp32_as_measured(monkeypatch):
    """The measured decision (README, Hardware and precision): bf16 was slower than fp32 on this CPU kind."""
    fake_cpu(monkeypatch, "AVX512", amx=False, avx512_bf16=True)
    assert precision.BF16_WITHOUT_AMX is False
    assert precision.choose("cpu").name == "fp32"
    monkeypatch.setattr(precision, "BF16_WITHOUT_AMX", True)
    assert precision.choose("cpu").name == "bf16"


@pytest.mark.parametrize("cuda_bf16", [True, False])
def test_cuda_choice_follows_bf16_support_not_the_cpu(monkeypatch, cuda_bf16):
    fake_cpu(monkeypatch, "AVX2", amx=False, avx512_bf16=False, cuda=True, cuda_bf16=cuda_bf16)
    for device in ("cuda", "cuda:0", None):
        c = precision.choose(device)
        assert c.bf16 is cuda_bf16 and "FakeGPU" in c.reason
    assert precision.choose("cpu").name == "fp32"  # the CPU of the same machine is judged on its own


def test_explicit_settings_pass_through_and_auto_resolves(monkeypatch):
    fake_cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
    assert precision.resolve_dtype("auto", "cpu") == ("bfloat16", "CPU capability AVX512 with AMX")
    assert precision.resolve_mixed_precision("auto", "cpu") == ("bf16", "CPU capability AVX512 with AMX")
    assert precision.resolve_dtype("float16", "cpu") == ("float16", "set explicitly")
    assert precision.resolve_mixed_precision("no", "cpu") == ("no", "set explicitly")
    fake_cpu(monkeypatch, "AVX2", amx=False, avx512_bf16=False)
    assert precision.resolve_dtype("auto", "cpu")[0] == "float32"
    assert precision.resolve_mixed_precision("auto", "cpu")[0] == "no"


def test_load_model_auto_dtype_follows_the_choice(monkeypatch, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.models import load_model

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)).save_pretrained(tmp_path)
    fake_cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
    assert next(load_model(str(tmp_path), "auto").parameters()).dtype == torch.bfloat16
    fake_cpu(monkeypatch, "AVX2", amx=False, avx512_bf16=False)
    assert next(load_model(str(tmp_path), "auto").parameters()).dtype == torch.float32


def test_train_plan_says_which_precision_and_why(tmp_path, capsys):
    """Under conftest's AVX2-only CPU, auto resolves to fp32 and the plan names the capability."""
    from distill.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "recipes/debug.yaml", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
              "train.eval_steps=0", "train.mixed_precision=auto", "teacher.dtype=auto"])
    assert exit_info.value.code == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("precision:"))
    assert line.startswith("precision: student fp32 (train.mixed_precision=auto), teacher float32 "
                           "(teacher.dtype=auto); CPU capability AVX2 (no AMX, no AVX512-BF16)")


def test_bench_precision_measures_every_piece_in_both_precisions():
    from distill.bench.cpu import measure_precision as measure

    r = measure(tiny=True, rounds=1)
    assert r["auto"] == "fp32" and "AVX2" in r["auto_reason"]  # conftest's CPU
    for name in ("matmul_512", "student_fwd_bwd", "teacher_forward", "generate"):
        assert r[name]["fp32_s"] > 0 and r[name]["bf16_s"] > 0
        assert r[name]["bf16_over_fp32"] == pytest.approx(r[name]["bf16_s"] / r[name]["fp32_s"], rel=1e-9)
