"""The report of `distill bench`: the result dict, its targets and the printed table (what the keys mean:
`distill.bench.run`)."""

from __future__ import annotations

import os
import time

from distill.bench.memory import MEMORY_CONFIGS
from distill.bench.setup import STEP_CONFIGS, TOP_K

# Targets from the issue (the two swap targets are the project's: the token swap must not slow a step, and
# the text swap should stay near its README figure).
TARGETS = {
    "kd_over_ce_step": "within 10% of kd_over_ce_theoretical",
    "crr_over_kd_step": "<= 1.15",
    "kd_peak_mem_over_ce": "<= 1.2",
    "kd_flops_fraction_of_peak": ">= 0.5",
    "gen_batched_over_sequential": ">= 10",
    "cda_mb_per_s": ">= 5",
    "token_swap_per_s": ">= 20 x KD-step sequences/s",
}


# --------------------------------------------------------------------------------------------------------------
# The result dict (bench.json)


def assemble_result(settings: dict, m: dict, host: dict, t_start: float) -> dict:
    """The result of `bench.run.run` from what `_measure` returned (`m`) and the host keys (threads, CPU,
    load average), in the key order bench.json has; the targets are evaluated last, on the finished dict."""
    ratios, steps, flops = m["steps"]["ratios"], m["steps"], m["flops"]
    gen, swaps = m["gen"], m["swaps"]
    r = {
        "settings": _settings_entry(settings, m),
        **host,
        **_step_keys(m),
        **_memory_keys(m["memory"]),
        "kd_flops_fraction_of_peak": ratios["kd_flops_fraction_of_peak"],
        "flops": {**flops, "kd_step_flops_per_s": flops["kd_step_flops"] / steps["kd"]["step_s"],
                  "matmul_flops_per_s": steps["matmul_flops_per_s"],
                  "matmul": f"fp32 {settings['matmul_n']}^3, best of 3 per round, same threads"},
        "gen_batched_over_sequential": gen["ratio"],
        "gen": {**gen, "model_shape": f"the student ({flops['n_student'] / 1e6:.1f}M parameters)"},
        "cda_mb_per_s": swaps["cda_mb_per_s"], "token_swap_per_s": swaps["token_swap_per_s"],
        "token_swap_tokens_per_s": swaps["token_swap_tokens_per_s"], "swaps": swaps,
        "steps": steps,
        "gpu": m["gpu"],
        "sections_s": m["sections"],
        "elapsed_s": time.perf_counter() - t_start,
    }
    r["targets"] = evaluate_targets(r)
    return r


def _settings_entry(settings: dict, m: dict) -> dict:
    """"settings": the settings the run used, with the models, batches and losses in words."""
    return {**settings, "tokenizer": "byte-level BPE trained on data/tiny_corpus.txt "
            f"({m['tokenizer_ids']} ids); model vocab {settings['teacher']['vocab_size']}",
            "student": f"{len(settings['student_layers'])} layers: teacher blocks "
                       f"{settings['student_layers']}",
            "batches": m["batch_info"], "counterfactual_work": m["cf"],
            "step": "train.step.kd_step (1 micro-batch): targets, forward, loss, backward, clip, "
                    "AdamW + schedule step, zero_grad; dropout 0.1 on (GPT-2 default)",
            "losses": {"kd": "alpha_kd 1, alpha_ce 0.5, T 2, forward_kl, chunked distill_loss",
                       "ce": "alpha_kd 0, alpha_ce 1 (teacher not run)",
                       "crr": "as kd + crr.teacher cf_mean, crr.augment replace (cf_scope document)",
                       "crr_block": "as crr with crr.cf_scope block",
                       "kd_topk_cached": f"as kd with loss.teacher_top_k {TOP_K}, every target cached"},
            "ratios": "median over rounds of the per-round ratio (same batch in a round)"}


def load_average(start: list[float], end: list[float]) -> dict:
    """"load_average": the 1/5/15-minute load averages at start and end, and whether the machine was shared."""
    return {"start": start, "end": end, "cores": os.cpu_count(),
            "high_load": max(start[0], end[0]) > 3,
            "note": "1/5/15-minute load averages at start and end; above ~3 (2 cores) other jobs "
                    "shared the machine and absolute timings are noisy, ratios less so"}


def _step_keys(m: dict) -> dict:
    """The step-time keys: measured ratios beside their theoretical values, the loss and the cf teacher."""
    ratios, steps, flops, loss, cf_teacher = m["steps"]["ratios"], m["steps"], m["flops"], m["loss"], m["cf_teacher"]
    return {
        "kd_over_ce_step": ratios["kd_over_ce_step"],
        "kd_over_ce_theoretical": flops["kd_over_ce_theoretical"],
        "kd_over_ce_fwd_bwd": ratios["kd_over_ce_fwd_bwd"],
        "crr_over_kd_step": ratios["crr_over_kd_step"],
        "crr_block_over_kd_step": ratios["crr_block_over_kd_step"],
        "kd_topk_cached_over_kd_step": ratios["kd_topk_cached_over_kd_step"],
        "loss_over_unchunked": loss["loss_over_unchunked"], "loss": loss,
        "kd_compiled_over_kd_step": ratios.get("kd_compiled_over_kd_step"),
        "kd_compiled_first_step_s": steps["kd_compiled"]["first_step_s"] if "kd_compiled" in steps else None,
        "kd_topk_cached_theoretical": 6 * flops["n_student"] / (2 * flops["n_teacher"] + 6 * flops["n_student"]),
        "topk_kept_mass": m["topk_mass"],
        "cf_teacher_over_plain_teacher": cf_teacher["cf_teacher_over_plain_teacher"],
        "cf_teacher": cf_teacher,
    }


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _memory_keys(mem: dict) -> dict:
    """The memory keys: KD over CE (and CRR over KD) from the allocator peaks and the fresh-process RSS."""
    return {
        "kd_peak_mem_over_ce": _ratio(mem["kd"].get("alloc_peak_mb"), mem["ce"].get("alloc_peak_mb")),
        "kd_peak_mem_over_ce_unchunked": _ratio(mem["kd_unchunked"].get("alloc_peak_mb"),
                                                mem["ce"].get("alloc_peak_mb")),
        "kd_peak_mem_over_ce_process": _ratio(mem["kd"].get("process_rss_peak_mb"),
                                              mem["ce"].get("process_rss_peak_mb")),
        "step_rss_over_ce": _ratio(mem["kd"].get("process_rss_step_mb"), mem["ce"].get("process_rss_step_mb")),
        "crr_peak_mem_over_kd": _ratio(mem["crr"].get("alloc_peak_mb"), mem["kd"].get("alloc_peak_mb")),
        "memory_method": (
            "kd_peak_mem_over_ce, _unchunked: step working memory = peak bytes held by torch's "
            "CPU allocator during one full step above the bytes held at its start (models and AdamW state "
            "resident, gradients None), from torch.profiler allocation events (profile_memory=True); same "
            "batch for every configuration. kd_peak_mem_over_ce_process: peak RSS (VmHWM reset via "
            "/proc/self/clear_refs) during one step of a fresh KD process (teacher, student, AdamW) / of a fresh "
            "CE process (student, AdamW), MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS; "
            "step_rss_over_ce: the RSS growth during that step, KD / CE. *_mb values are MiB (2^20 bytes)"),
        "memory": mem,
    }


# --------------------------------------------------------------------------------------------------------------
# Targets and the table


def evaluate_targets(r: dict) -> dict:
    def entry(key, ok):
        return {"target": TARGETS[key], "value": r.get(key), "ok": None if ok is None else bool(ok)}

    kd_sps = r["settings"]["batch_size"] / r["steps"]["kd"]["step_s"]
    return {
        "kd_over_ce_step": entry("kd_over_ce_step",
                                 abs(r["kd_over_ce_step"] / r["kd_over_ce_theoretical"] - 1) <= 0.10),
        "crr_over_kd_step": entry("crr_over_kd_step", r["crr_over_kd_step"] <= 1.15),
        "kd_peak_mem_over_ce": entry("kd_peak_mem_over_ce", r["kd_peak_mem_over_ce"] <= 1.2),
        "kd_flops_fraction_of_peak": entry("kd_flops_fraction_of_peak", r["kd_flops_fraction_of_peak"] >= 0.5),
        "gen_batched_over_sequential": entry("gen_batched_over_sequential",
                                             r["gen_batched_over_sequential"] >= 10),
        "cda_mb_per_s": entry("cda_mb_per_s", r["cda_mb_per_s"] >= 5),
        "token_swap_per_s": entry("token_swap_per_s", r["token_swap_per_s"] >= 20 * kd_sps),
    }


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def format_table(r: dict) -> str:
    rows = [("key", "value", "target", "ok")]
    for key, t in r["targets"].items():
        ok = "-" if t["ok"] is None else ("PASS" if t["ok"] else "FAIL")
        rows.append((key, _fmt(t["value"]), t["target"], ok))
    for key in INFO_KEYS:
        rows.append((key, _fmt(r.get(key)), "(info)", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = r["steps"]
    lines.append("")
    st, fl = r["settings"], r["flops"]
    lines.append(f"batch {st['batch_size']} x {st['seq_len']} tokens, N_teacher {fl['n_teacher'] / 1e6:.1f}M, "
                 f"N_student {fl['n_student'] / 1e6:.1f}M, chunk_size {st['chunk_size']}"
                 + (f" (auto: {st['chunk_size_auto']} rows)" if "chunk_size_auto" in st else "") + "; step medians (s):")
    for n in (n for n in STEP_CONFIGS if n in s):
        x = s[n]
        lines.append(f"  {n:14s} {x['step_s']:.2f} = fwd+bwd {x['fwd_bwd_s']:.2f} (teacher {x['teacher_s']:.2f}, "
                     f"counterfactual_batch {x['counterfactual_batch_s']:.3f}) + clip/AdamW {x['optimizer_s']:.2f}")
    m = r["memory"]
    if "loss" in r:
        lines.append(f"KD + CE loss alone, {r['loss']['shape']}: {r['loss']['loss_s']:.3f} s chunked (closed-form "
                     f"gradient) vs {r['loss']['loss_unchunked_s']:.3f} s under autograd")
    lines.append("step working memory (MiB, allocator peak above the step's start): " + ", ".join(
        f"{n} {m[n]['alloc_peak_mb']:.0f}" for n in MEMORY_CONFIGS if "alloc_peak_mb" in m.get(n, {})))
    g = r["gen"]
    lines.append(f"generation: {g['tokens_per_s_batched']:.0f} tok/s at batch {g['batch_size']} vs "
                 f"{g['tokens_per_s_sequential']:.1f} tok/s one prompt at a time ({g['model_shape']})")
    c = r["cpu"]
    lines.append(f"CPU capability {c['capability']} (AMX {c['amx']}, AVX512-BF16 {c['avx512_bf16']}); measured in "
                 f"{r['precision']}; auto would pick {r['auto_precision']['choice']} "
                 f"({r['auto_precision']['reason']})")
    lines.append(f"threads {r['torch_threads']}; load average {r['load_average']['start']} -> "
                 f"{r['load_average']['end']} on {r['load_average']['cores']} cores; {r['elapsed_s']:.0f} s")
    return "\n".join(lines)


INFO_KEYS = ("kd_over_ce_theoretical", "kd_over_ce_fwd_bwd", "crr_block_over_kd_step",
             "kd_topk_cached_over_kd_step", "kd_topk_cached_theoretical", "topk_kept_mass",
             "loss_over_unchunked", "kd_compiled_over_kd_step", "kd_compiled_first_step_s",
             "kd_peak_mem_over_ce_unchunked", "kd_peak_mem_over_ce_process", "crr_peak_mem_over_kd",
             "cf_teacher_over_plain_teacher", "token_swap_tokens_per_s")


