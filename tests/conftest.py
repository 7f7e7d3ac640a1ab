"""Shared test setup: every test sees a CPU without native bf16 unless it says otherwise.

`auto` precision (distill/precision.py) picks bf16 on CPUs with AMX; tests that score or train through `auto`
would then give different numbers on a developer's machine and on CI (issue 12). Faking an AVX2-only CPU makes
auto resolve to fp32 everywhere; tests of the choice itself monkeypatch the checks again.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
