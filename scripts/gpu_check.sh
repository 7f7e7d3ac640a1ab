#!/usr/bin/env bash
# scripts/gpu_check.sh  (or: make gpu-check)        one GPU, under 10 minutes; writes out/gpu_check/
#
# What it runs, in order, each stage with its own time limit, and what it prints:
#   1. `distill bench --compile` (its GPU section: KD/CE, CRR/KD and cached-top-k/KD step ratios with bf16
#      autocast, absolute tokens/s and torch.cuda.max_memory_allocated per configuration, compile ratio).
#   2. The measurements behind three GPU defaults that are guesses today (set them from these numbers):
#      loss.chunk_size auto = 4096 on a GPU (losses.auto_chunk_size), fused AdamW on CUDA (train.setup.make_optimizer),
#      train.compile (off by default).
#   3. A debug run (recipes/debug.yaml) under each config in recipes/accelerate/ with 1 process, and under fsdp
#      also recipes/debug_crr.yaml with the top-k cache; DeepSpeed is skipped with its one-line reason when it
#      is missing. Stage limits add up to 14 minutes; expected total well under 10 (not measured on a GPU yet).
#   4. Resume on the GPU: a run killed after its step-4 checkpoint and resumed, against the run straight through
#      (final weights compared bit for bit, and the largest difference printed when they are not equal).
# Without CUDA it stops at once, unless GPU_CHECK_DRY=1 (tiny settings on CPU: checks the plumbing only).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT_DIR:-out/gpu_check}
PY=${PY:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=${GPU_CHECK_DRY:-0}
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "$DRY" != 1 ]; then echo "gpu_check: error: no CUDA device (GPU_CHECK_DRY=1 runs the plumbing on CPU)" >&2; exit 2; fi
  echo "gpu_check: DRY RUN on CPU (tiny settings; no figure from it means anything)"
fi
mkdir -p "$OUT"
FAILED=()
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, remember failures
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then echo "   ok in $((SECONDS - t0)) s"
  else echo "   FAILED (exit $?) after $((SECONDS - t0)) s; tail of $OUT/$name.log:"; tail -n 5 "$OUT/$name.log"; FAILED+=("$name"); fi
}

$PY - <<'PY' | tee "$OUT/device.txt"
import torch, accelerate, transformers
d = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
print(f"device {d}; torch {torch.__version__}, cuda {torch.version.cuda}, accelerate {accelerate.__version__}, "
      f"transformers {transformers.__version__}")
PY

# 1. the bench (the GPU section runs in a child process when CUDA is there)
if [ "$DRY" = 1 ]; then stage bench 300 $PY -m distill bench --tiny --out "$OUT/bench.json"
else stage bench 300 $PY -m distill bench --compile --repeats 3 --out "$OUT/bench.json"; fi

# 2. the guessed GPU defaults, measured
stage defaults 120 $PY - "$OUT" "$DRY" <<'PY'
"""Chunk size of the KD loss, fused vs foreach AdamW, on this device; prints what each default should be."""
import json, sys, time
import torch
from distill.train.losses import distill_loss

out, dry = sys.argv[1], sys.argv[2] == "1"
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
N, V = (64, 512) if dry else (8 * 1024, 50257)  # one step of 8 x 1024 tokens, GPT-2 vocabulary
torch.manual_seed(0)
res = {"device": str(dev), "rows": N, "vocab": V}

def timed(fn, reps=3 if dry else 10):
    fn(); sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); fn(); sync(); best = min(best, time.perf_counter() - t)
    return best

logits = torch.randn(N, V, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
target = torch.softmax(torch.randn(N, V, device=dev), -1)
labels = torch.randint(0, V, (N,), device=dev)
chunk = {}
for c in (256, 1024, 4096, 16384) if not dry else (16, 64):
    def step(c=c):
        x = logits.detach().requires_grad_(True)
        total, _, _ = distill_loss(x[None], target[None].clone(), labels[None], w_kd=1.0, w_ce=0.5,
                                   temperature=2.0, kind="forward_kl", chunk_size=c, reuse_teacher_buffer=True)
        total.backward()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    s = timed(step)
    chunk[c] = {"s": s, "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None}
best = min(chunk, key=lambda c: chunk[c]["s"])
res["chunk"] = chunk
print("loss.chunk_size (KD loss fwd+bwd, %d x %d):" % (N, V),
      ", ".join(f"{c}: {v['s'] * 1e3:.2f} ms" + (f" / {v['peak_mb']:.0f} MiB" if v["peak_mb"] else "")
                for c, v in chunk.items()), f"-> fastest {best} (auto today: 4096)")

params = [torch.randn(n, device=dev, requires_grad=True) for n in ([1000] * 4 if dry else [768 * 3072] * 24 + [50257 * 768])]
for p in params:
    p.grad = torch.randn_like(p)
adam = {}
for name, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True})):
    opt = torch.optim.AdamW(params, lr=1e-4, **kw)
    adam[name] = timed(opt.step)
res["adamw_step_s"] = adam
print(f"AdamW step over {sum(p.numel() for p in params) / 1e6:.1f}M params: fused {adam['fused'] * 1e3:.2f} ms, "
      f"foreach {adam['foreach'] * 1e3:.2f} ms -> {'fused' if adam['fused'] <= adam['foreach'] else 'foreach'} "
      "(default today: fused)")
json.dump(res, open(f"{out}/defaults.json", "w"), indent=1)
PY
cat "$OUT/defaults.log" 2>/dev/null | grep -E "chunk_size|AdamW" || true
$PY - "$OUT/bench.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
g = r.get("gpu") or {}
if "error" in g or not g:
    print("bench gpu section:", g.get("error", "absent (no CUDA)"))
    sys.exit()
print(f"bench on {g['device']} ({g['precision']}): kd/ce {g['kd_over_ce_step']:.3g}, crr/kd {g['crr_over_kd_step']:.3g},"
      f" cached top-k/kd {g['kd_topk_cached_over_kd_step']:.3g}, mem kd/ce {g['kd_peak_mem_over_ce']:.3g}, "
      f"flops fraction {g['kd_flops_fraction_of_peak']:.3g}")
for name, tps in g["tokens_per_s"].items():
    print(f"  {name:16s} {tps:10.0f} tokens/s  peak {g['cuda_max_memory_allocated_mb'].get(name, float('nan')):8.0f} MiB")
steps = g.get("steps", {})
if "kd_compiled" in steps and "kd" in steps:
    print(f"train.compile: KD step {steps['kd_compiled']['step_s'] / steps['kd']['step_s']:.3g}x the eager one "
          f"(first step with compiling {steps['kd_compiled'].get('first_step_s', float('nan')):.1f} s); default today: off")
PY

# 3. a debug run under each accelerate config, 1 process
for config in recipes/accelerate/*.yaml; do
  name=$(basename "$config" .yaml)
  if ! reason=$($PY -m distill.train.engine check "$config" 2>&1); then echo "== debug_$name: skipped: $reason"; continue; fi
  stage "debug_$name" 120 $PY -m accelerate.commands.launch --config_file "$config" --num_processes 1 \
    -m distill train --recipe recipes/debug.yaml output_dir="$OUT/runs/$name" --overwrite train.max_steps=12
  [ "$name" = fsdp ] || continue  # the counterfactual pass and the top-k cache where lockstep matters
  stage "debug_crr_$name" 120 $PY -m accelerate.commands.launch --config_file "$config" --num_processes 1 \
    -m distill train --recipe recipes/debug_crr.yaml output_dir="$OUT/runs/crr_$name" --overwrite \
    train.max_steps=12 loss.teacher_top_k=32
done

# 4. resume on the GPU: straight vs killed-after-step-4-and-resumed
ARGS=(train.max_steps=8 train.save_steps=4 train.eval_steps=0 train.keep_checkpoints=2)
stage resume_straight 120 $PY -m distill train --recipe recipes/debug.yaml output_dir="$OUT/runs/straight" --overwrite "${ARGS[@]}"
rm -rf "$OUT/runs/resumed" && mkdir -p "$OUT/runs/resumed/checkpoints"
if [ -d "$OUT/runs/straight/checkpoints/step-00000004" ]; then
  cp -r "$OUT/runs/straight/checkpoints/step-00000004" "$OUT/runs/resumed/checkpoints/"
  cp "$OUT/runs/straight/recipe.yaml" "$OUT/runs/resumed/"
  : > "$OUT/runs/resumed/metrics.jsonl"  # (nothing was logged before step 5 in recipes/debug.yaml)
fi
stage resume_resumed 120 $PY -m distill train --recipe recipes/debug.yaml output_dir="$OUT/runs/resumed" --resume "${ARGS[@]}"
$PY - "$OUT/runs" <<'PY' | tee "$OUT/resume.txt" || FAILED+=(resume_compare)
import sys
from safetensors.torch import load_file
a = load_file(f"{sys.argv[1]}/straight/final/model.safetensors")
b = load_file(f"{sys.argv[1]}/resumed/final/model.safetensors")
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
same = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
print(f"resume: final weights {'bitwise identical' if same else f'differ, max abs diff {diff:.3g}'} "
      "(straight 8 steps vs killed after step 4 and resumed)")
sys.exit(0 if same else 1)
PY

echo "== done in $SECONDS s; logs and JSON in $OUT/"
if [ ${#FAILED[@]} -gt 0 ]; then echo "gpu_check: FAILED stages: ${FAILED[*]}"; exit 1; fi
echo "gpu_check: all stages passed"
