"""`distill bench --tiny` writes every key; the pieces the benchmark relies on agree with the simple versions.

Benchmarks are not tests: nothing here checks a timing. The checks are that the command runs and writes its
keys, that the memory probe counts what it should, and that the optimisations the benchmark led to (the
top-k/top-p sampler of generate.py) match the reference they replace.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from distill.bench import memory as bench_memory
from distill.bench import setup as bench_setup
from distill.sampling import SamplingConfig, TopKTopPSampler, generate_samples
from distill.train.losses import distill_loss

ROOT = Path(__file__).resolve().parent.parent

KEYS = [
    "kd_over_ce_step", "kd_over_ce_theoretical", "kd_over_ce_fwd_bwd", "crr_over_kd_step", "kd_peak_mem_over_ce",
    "kd_peak_mem_over_ce_unchunked", "kd_peak_mem_over_ce_process", "memory_method", "kd_flops_fraction_of_peak",
    "gen_batched_over_sequential", "cda_mb_per_s", "token_swap_per_s", "settings", "targets", "load_average",
    "torch_threads", "cf_teacher_over_plain_teacher", "crr_block_over_kd_step",
    "kd_topk_cached_over_kd_step", "kd_topk_cached_theoretical", "topk_kept_mass", "loss_over_unchunked",
]
TARGET_KEYS = ["kd_over_ce_step", "crr_over_kd_step", "kd_peak_mem_over_ce", "kd_flops_fraction_of_peak",
               "gen_batched_over_sequential", "cda_mb_per_s", "token_swap_per_s"]


def test_tiny_bench_writes_every_key_and_prints_the_table(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "distill", "bench", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    missing = [k for k in KEYS if k not in r]
    assert not missing, missing
    assert set(TARGET_KEYS) <= set(r["targets"])
    for key in TARGET_KEYS:
        t = r["targets"][key]
        assert t["target"] and isinstance(t["ok"], bool) and t["value"] == r[key], (key, t)
        assert key in proc.stdout and ("PASS" in proc.stdout or "FAIL" in proc.stdout)
    assert r["targets"]["crr_over_kd_step"]["ok"] == (r["crr_over_kd_step"] <= 1.15)
    assert r["crr_over_kd_step"] == pytest.approx(
        sorted(a / b for a, b in zip(r["steps"]["crr"]["steps_s"], r["steps"]["kd"]["steps_s"], strict=True))[0])
    assert "prefix_reuse_speedup" not in r
    # the phases kd_step reports: the teacher runs in KD steps and not in CE or cached top-k steps; the
    # counterfactual batch only in CRR steps; a step is its forward + backward plus clip and optimizer
    steps = r["steps"]
    assert steps["ce"]["teacher_s"] == 0 and steps["kd_topk_cached"]["teacher_s"] == 0 and steps["kd"]["teacher_s"] > 0
    assert steps["kd"]["counterfactual_batch_s"] == 0 and steps["crr"]["counterfactual_batch_s"] > 0
    for name in ("ce", "kd", "crr"):
        x = steps[name]
        assert x["teacher_s"] < x["fwd_bwd_s"] and x["optimizer_s"] > 0, name
        assert x["steps_s"][0] == pytest.approx(x["step_s"]), name  # --tiny: one timed round
    s = r["settings"]
    for key in ("teacher", "student_layers", "seq_len", "batch_size", "torch_threads", "chunk_size"):
        assert key in s, key
    assert s["tiny"] is True
    assert len(r["load_average"]["start"]) == 3
    assert r["memory"]["ce"]["alloc_peak_mb"] > 0 and r["memory"]["kd"]["process_rss_peak_mb"] > 0
    assert f"wrote {out}" in proc.stdout
    # issue 12: the CPU's capability, the precision measured in (fp32) and what auto would pick, with why
    assert r["precision"] == "fp32" and set(r["cpu"]) == {"capability", "amx", "avx512_bf16"}
    assert r["auto_precision"]["choice"] in ("bf16", "fp32") and r["cpu"]["capability"] in r["auto_precision"]["reason"]
    assert f"CPU capability {r['cpu']['capability']}" in proc.stdout and "measured in fp32" in proc.stdout


def test_allocated_peak_counts_the_step_peak_not_the_end():
    def work():
        a = torch.ones(1_000_000)  # 4 MB
        b = a * 2  # 8 MB held here
        del a
        return b.sum()

    peak = bench_memory.allocated_peak(work)
    assert 7.9e6 <= peak <= 8.5e6


def test_unchunked_reference_equals_the_chunked_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(3, 7, 11, generator=g, dtype=torch.float64) / 2, -1)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, 2] = labels[2, -1] = -100
    kwargs = {"w_kd": 0.3, "w_ce": 0.7, "temperature": 2.0, "kind": "forward_kl"}
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    total_a, kd_a, ce_a = distill_loss(a, probs, labels, chunk_size=4, **kwargs)
    total_b, kd_b, ce_b = bench_memory.unchunked_distill_loss(b, probs, labels, **kwargs)
    total_a.backward()
    total_b.backward()
    assert total_a.item() == pytest.approx(total_b.item(), rel=1e-5)
    assert kd_a.item() == pytest.approx(kd_b.item(), rel=1e-5)
    assert ce_a.item() == pytest.approx(ce_b.item(), rel=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def _reference_probs(scores, top_k, top_p, temperature):
    """transformers' own pipeline: temperature -> top-k -> top-p warpers, then softmax."""
    x = TemperatureLogitsWarper(temperature)(None, scores)
    x = TopKLogitsWarper(top_k)(None, x)
    x = TopPLogitsWarper(top_p)(None, x)
    return torch.softmax(x, -1)


@pytest.mark.parametrize("top_k,top_p,temperature",
                         [(40, 0.95, 1.0), (5, 0.5, 0.7), (3, 1.0, 1.3), (200, 0.9, 1.0)])
def test_topk_topp_sampler_has_the_distribution_of_the_transformers_warpers(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(top_k)
    scores = torch.randn(6, 100, generator=g) * 3
    sampler = TopKTopPSampler(top_k, top_p, temperature)
    probs, ids = sampler.candidates(scores)
    mine = torch.zeros_like(scores).scatter_(-1, ids, probs)
    assert torch.allclose(mine, _reference_probs(scores, top_k, top_p, temperature), atol=1e-6)
    out = sampler(None, scores)
    drawn = out.argmax(-1)
    assert torch.isneginf(out).sum(-1).tolist() == [99] * 6
    assert (mine.gather(-1, drawn[:, None]) > 0).all()


def test_topk_topp_sampler_draws_in_proportion():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = TopKTopPSampler(3, 0.9, 1.0)  # top-3 = {0.5, 0.3, 0.15}; 0.5 + 0.3 < 0.9 so all three stay
    torch.manual_seed(0)
    draws = torch.stack([sampler(None, scores).argmax(-1) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[3] == 0
    assert torch.allclose(freq[:3], torch.tensor([0.5, 0.3, 0.15]) / 0.95, atol=0.03)


def test_generate_samples_gives_k_reproducible_samples_per_prompt_on_both_paths():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny_tokenizer")
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64))
    prompts = ["The nurse said that", "He walked in and", "A doctor"]
    for top_k in (40, 0):  # 0: no top-k, transformers' sampler
        cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=5, batch_size=2, top_k=top_k, seed=1)
        a = generate_samples(model, tok, prompts, cfg, progress=False)
        b = generate_samples(model, tok, prompts, cfg, progress=False)
        assert a == b and len(a) == 3 and all(len(x) == 3 for x in a)


def test_batches_hold_the_gendered_share_spread_over_batches(tmp_path):
    from distill.crr.lexicon import load_lexicon

    settings = bench_setup.settings_for(tiny=True)
    settings["seq_len"] = 128
    tok = bench_setup.build_tokenizer(settings, tmp_path)[0]
    lexicon = load_lexicon()
    batches, info = bench_setup.build_batches(tok, lexicon, settings, 4)
    assert info["rows"] == 20 and info["rows_with_gendered_line"] == 8  # 40%, 2 rows in each batch of 5
    counts = []
    for b in batches:
        assert b["input_ids"].shape == (5, 128) and b["swapped"].shape == (5,)
        counts.append(sum(lexicon.has_gendered_word(tok.decode(r)) for r in b["input_ids"].tolist()))
    assert counts == [2, 2, 2, 2]
