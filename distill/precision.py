"""`auto` precision: bf16 where the hardware runs it natively, fp32 everywhere else.

    from distill.precision import choose
    choice = choose("cpu")            # Precision(bf16=False, reason='CPU capability AVX2: no AMX or ...')
    choice.dtype, choice.mixed_precision, choice.reason

Why by capability and not by device type: on a CPU without native bf16 PyTorch emulates it, many times slower
than fp32, so a recipe that hard-codes bf16 would turn a short CPU run into a long one. bf16 is native on a
CUDA device that says so, and on an x86 CPU with AMX tiles (`torch.cpu._is_amx_tile_supported()`). A CPU with
AVX512-BF16 but no AMX has bf16 dot products but not the tile engine; there bf16 did not pay at the demo's
shapes (`python -m distill.bench.cpu precision`; figures in docs/performance.md), so auto picks fp32 on it.

The CPU checks go through ATen's dispatch level as well (`torch.backends.cpu.get_cpu_capability()`): with
`ATEN_CPU_CAPABILITY=avx2` (how to emulate an AVX2-only machine on a newer one) torch's own kernels use AVX2
only, so auto picks fp32 even though the silicon has more. Everything here is a pure function of what the
three checks return, so the tests monkeypatch them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Does auto pick bf16 on a CPU with AVX512-BF16 but no AMX? No: `python -m distill.bench.cpu precision` found
# bf16 slower there (docs/performance.md). A named constant, so the decision can be revisited in one place.
BF16_WITHOUT_AMX = False

_CHOICES = {"auto", "bf16", "fp32"}


@dataclass(frozen=True)
class Precision:
    bf16: bool
    reason: str  # names the capability that decided, e.g. "CPU capability AVX2 (no AMX, no AVX512-BF16)"

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def dtype(self) -> str:
        """Weights dtype for `models.DTYPES` (teacher.dtype, eval --dtype)."""
        return "bfloat16" if self.bf16 else "float32"

    @property
    def mixed_precision(self) -> str:
        """accelerate's mixed_precision for train.mixed_precision."""
        return "bf16" if self.bf16 else "no"


def cpu_features() -> dict:
    """What torch reports about this CPU: ATen's dispatch capability and the two native-bf16 features."""
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
    }


def _device_type(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def choose(device=None) -> Precision:
    """bf16 if `device` (default: CUDA if present, else CPU) runs bf16 natively and fast, else fp32."""
    kind = _device_type(device)
    if kind == "cuda":
        name = torch.cuda.get_device_name(torch.device(device) if device is not None else None)
        if torch.cuda.is_bf16_supported():
            return Precision(True, f"CUDA {name} supports bf16")
        return Precision(False, f"CUDA {name} has no bf16 support")
    if kind != "cpu":
        return Precision(False, f"{kind} device: fp32 (bf16 is chosen automatically only on CUDA and CPUs)")
    f = cpu_features()
    cap = f["capability"]
    # ATen's level below AVX512 (AVX2, DEFAULT, or ATEN_CPU_CAPABILITY=avx2) means bf16 runs emulated even
    # where the silicon has more; a non-x86 capability string (e.g. ZVECTOR, SVE) is treated the same way.
    aten_avx512 = cap.startswith("AVX512")
    if f["amx"] and aten_avx512:
        return Precision(True, f"CPU capability {cap} with AMX")
    if f["avx512_bf16"] and aten_avx512:
        if BF16_WITHOUT_AMX:
            return Precision(True, f"CPU capability {cap} with AVX512-BF16")
        return Precision(False, f"CPU capability {cap} with AVX512-BF16 but no AMX: bf16 measured slower than "
                                "fp32 there (python -m distill.bench.cpu precision)")
    missing = "no AMX, no AVX512-BF16" if not (f["amx"] or f["avx512_bf16"]) else \
        "AMX/AVX512-BF16 present but ATen dispatches below AVX512"
    return Precision(False, f"CPU capability {cap} ({missing}): bf16 would be emulated")


def resolve_dtype(dtype: str, device=None) -> tuple[str, str]:
    """(weights dtype, why) for a dtype setting that may be `auto` (teacher.dtype, eval/samples --dtype)."""
    if dtype != "auto":
        return dtype, "set explicitly"
    c = choose(device)
    return c.dtype, c.reason


def resolve_mixed_precision(choice: str, device=None) -> tuple[str, str]:
    """(accelerate mixed_precision, why) for train.mixed_precision, which may be `auto`."""
    if choice != "auto":
        return choice, "set explicitly"
    c = choose(device)
    return c.mixed_precision, c.reason
