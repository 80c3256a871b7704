#!/usr/bin/env bash
# The commands behind the GPU figures in docs/PERFORMANCE.md, run from the repository root on
# a machine with one CUDA GPU and JAX (CUDA), PyTorch, transformers and peft installed; trl
# and the other missing packages can come as wheels in .whl/ (no network needed). Results (logs and
# raw JSON) go to $OUT (default /tmp/gpu_figures). Each part has its own time limit and the
# parts are independent: one failing still leaves the others' figures.
set -u
OUT=${OUT:-/tmp/gpu_figures}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

# XLA's GPU autotuner made even the tiny preset's DPO step compile for 45 s on an H200: with a
# short lease, take cuBLAS's heuristics (AUTOTUNE=1 keeps XLA's default).
[ "${AUTOTUNE:-0}" = 1 ] || export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"

# 0. Smoke test (fails fast if this JAX/flax cannot run our step at all).
[ "${SKIP_SMOKE:-0}" = 1 ] || timeout 120 python3 -m mmalign_jax.bench --what dpo --preset tiny --steps 1 --warmup 1 \
  --baselines none --no-eval > "$OUT/smoke.log" 2>&1 || { tail -40 "$OUT/smoke.log"; exit 3; }
echo "smoke ok"

# 1. The workload (bench-small, fp32, full fine-tuning, reference online), with the
#    PyTorch and TRL baselines on the same GPU, interleaved. The three processes share the card:
#    JAX takes at most half of it.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 240 python3 -m mmalign_jax.bench --what "${SMALL_WHAT:-all}" \
  --preset bench-small --steps 20 --warmup 3 --baselines torch,trl --precision highest \
  --json "$OUT/small.json" > "$OUT/small.log" 2>&1
echo "part 1 rc=$?"; grep -E "^\|" "$OUT/small.log" | head -12

# 2. The published recipe's shapes: LLaVA-1.5-7B (CLIP-L/336, 576 image tokens; 6.7B LM),
#    LoRA r128/α256, bf16 compute, DPO, pairs of 64 text + 2 × 256 response tokens; the
#    lean PyTorch step does the same through peft (BASELINES_7B=none to skip it). Both
#    processes hold the card at once: JAX allocates on demand, and 2 pairs keep the two
#    steps' activations (ours measured 74 GiB at 4 pairs) within its 141 GB.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 220 python3 -m mmalign_jax.bench --what dpo \
  --preset llava-1.5-7b --pairs "${PAIRS_7B:-2}" \
  --prompt-text 64 --response-len 256 --lora 128 --dtype bfloat16 --attention "${ATTENTION_7B:-auto}" \
  --baselines "${BASELINES_7B:-torch}" --no-eval \
  --steps 5 --warmup 2 --json "$OUT/7b.json" --profile /tmp/prof7b > "$OUT/7b.log" 2>&1
echo "part 2 rc=$?"; grep -E "^\||DPO diag|Profile" "$OUT/7b.log" | head -40

# 3. The README's main command (the offline demo) on the GPU, from an empty workdir (needs
#    tensorflow-datasets, which builds the demo data; SKIP_DEMO=1 skips it).
if [ "${SKIP_DEMO:-0}" != 1 ]; then
  s=$(date +%s)
  timeout 150 python3 -m mmalign_jax.train --config configs/dpo.py \
    --config.workdir=/tmp/demo_gpu > "$OUT/demo.log" 2>&1
  echo "part 3 rc=$? wall $(( $(date +%s) - s )) s"
  grep -aE "finished|^  eval/" "$OUT/demo.log" | tail -12
  cp /tmp/demo_gpu/metrics.jsonl "$OUT/demo_metrics.jsonl" 2>/dev/null || true
fi
nvidia-smi --query-gpu=name,temperature.gpu,clocks.sm --format=csv | tee -a "$OUT/gpu.txt"
