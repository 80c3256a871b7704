#!/usr/bin/env bash
# The commands behind the GPU figures in docs/PERFORMANCE.md, run from the repository root on
# a machine with one CUDA GPU and JAX (CUDA), PyTorch, transformers and peft installed; trl
# and the other missing packages can come as wheels in .whl/ (no network needed). Results (logs,
# raw JSON, the profiler's trace) go to $WORK (default /tmp/gpu_figures) and, packed after
# every part, to $OUT/gpu_figures.tar.gz when OUT is set. Each part has its own time limit and
# the parts are independent: one failing still leaves the others' figures.
#
# PARTS picks and orders them (default: all, in this order):
#   ceiling   XLA's GEMM kernels on the step's own matmul shapes under three option sets
#             (benchmarks/jax_matmul_ceiling.py): autotuned, autotuner off, cuBLAS only
#   7b        the published recipe's shapes (LLaVA-1.5-7B, LoRA r128, bf16): the lean PyTorch
#             step alone, then ours, one step of ours profiled. Not interleaved: beside our
#             7B process the served PyTorch process did not get ready in 140 s (alone: 8 s).
#   7b-triton ours with XLA's Triton GEMMs and the autotuner off (session 4's setting)
#   7b-tuned  ours with XLA's defaults (autotuner on; skipped when `ceiling` found the
#             autotuned GEMMs no faster than cuBLAS's on the MLP: its compile is long)
#   small     the issue's workload (bench-small, fp32) with the PyTorch and TRL baselines
#   7b-chunked  ours with the other attention kernel (`--attention chunked`)
#   demo      the README's main command on the GPU
# The wheels the H200 image lacks (cp312; fetch them where pip can reach PyPI, into .whl/):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
#     --platform manylinux2014_x86_64 -d .whl ml_collections grain array_record portpicker
#     trl==1.16.0 datasets dill multiprocess tensorboardX tensorflow-datasets==4.9.10 dm-tree
#     immutabledict simple-parsing docstring-parser tensorflow-metadata termcolor toml
#     googleapis-common-protos
#   pip wheel --no-deps promise==2.3 -w .whl        # an sdist only
# Our processes run with the library's default XLA flags (mmalign_jax/xla_flags.py: GEMMs
# through cuBLAS, no autotuning) unless a part says otherwise. The 7B preset's setup (random
# init of 7.4B parameters, tracing) took ≈ 60 s before its compile on the H200: the 7B parts'
# limits allow for it.
set -u
WORK=${WORK:-/tmp/gpu_figures}
PARTS=${PARTS:-ceiling 7b 7b-triton 7b-tuned small 7b-chunked demo}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$WORK/gpu.txt"
python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$WORK/gpu.txt"
# The library's GPU XLA flags (mmalign_jax/xla_flags.py), as mmalign_jax.configure_process()
# applies them in every `python -m mmalign_jax.…` process below.
python3 -c "import os, mmalign_jax; mmalign_jax.configure_process(); print('XLA_FLAGS after mmalign_jax.configure_process():', os.environ.get('XLA_FLAGS', ''))" 2>&1 | tee -a "$WORK/gpu.txt"

# The 7B DPO step of ours: 2 pairs of (576 image + 64 text) prompt tokens and 2 × 256
# response tokens; LoRA r128/α256 on the LM's linear layers, projector trained, base and
# vision frozen, reference = adapters off; bf16. Args: label, timeout, then extra bench
# arguments; XLA_FLAGS / MMALIGN_JAX_XLA_DEFAULTS from the caller's environment.
bench7b() {
  local label=$1 limit=$2
  shift 2
  local s=$(date +%s)
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$limit" python3 -m mmalign_jax.bench \
    --what dpo --preset llava-1.5-7b --pairs "${PAIRS_7B:-2}" --prompt-text 64 --response-len 256 \
    --lora 128 --dtype bfloat16 --no-eval --baselines none --json "$WORK/$label.json" "$@" > "$WORK/$label.log" 2>&1
  echo "part $label rc=$? wall $(( $(date +%s) - s )) s"
  grep -aE "^\||compiled|Profile" "$WORK/$label.log" | head -40
}

for part in $PARTS; do
  case $part in
  ceiling)
    # bf16 at the 7B step's shapes, then fp32 (full precision) at bench-small's.
    timeout 90 python3 benchmarks/jax_matmul_ceiling.py --reps 20 > "$WORK/ceiling.log" 2>&1
    echo "part ceiling (7B shapes) rc=$?"; grep -aE "^\|" "$WORK/ceiling.log"
    timeout 45 python3 benchmarks/jax_matmul_ceiling.py --m 1792 --d 512 --f 1408 --r 16 \
      --dtype float32 --precision highest > "$WORK/ceiling_small.log" 2>&1
    echo "part ceiling (bench-small shapes) rc=$?"; grep -aE "^\|" "$WORK/ceiling_small.log"
    ;;
  7b)
    s=$(date +%s)
    timeout 150 python3 -m mmalign_jax.bench_baselines.torch_dpo_step --preset llava-1.5-7b --steps 5 --warmup 2 \
      --pairs "${PAIRS_7B:-2}" --prompt-text 64 --response-len 256 --device cuda --lora 128 \
      --dtype bfloat16 > "$WORK/7b-torch.json" 2> "$WORK/7b-torch.log"
    echo "part 7b (PyTorch) rc=$? wall $(( $(date +%s) - s )) s"; grep -a "^\[torch\]" "$WORK/7b-torch.log"
    bench7b 7b 200 --steps 5 --warmup 2 --profile /tmp/prof7b
    cp /tmp/prof7b/plugins/profile/*/*.trace.json.gz "$WORK/7b.trace.json.gz" 2>/dev/null
    gzip -c /tmp/prof7b/train_step.hlo.txt > "$WORK/7b.hlo.txt.gz" 2>/dev/null
    ;;
  7b-triton)
    XLA_FLAGS="--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=true" \
      bench7b 7b-triton 150 --steps 2 --warmup 1
    ;;
  7b-tuned)
    # Only worth its compile if the autotuned GEMMs beat cuBLAS's on the MLP by > 10 %.
    if [ -f "$WORK/ceiling.log" ] && ! python3 - "$WORK/ceiling.log" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ms = {r["options"]: r["ms"] for r in rows if r.get("case") == "mlp" and "ms" in r}
sys.exit(0 if "xla-default" in ms and "autotune0-cublas" in ms
         and ms["xla-default"] < 0.9 * ms["autotune0-cublas"] else 1)
EOF
    then
      echo "part 7b-tuned skipped: autotuned MLP GEMMs within 10 % of cuBLAS's (ceiling.log)"
    else
      MMALIGN_JAX_XLA_DEFAULTS=0 bench7b 7b-tuned 240 --steps 3 --warmup 1
    fi
    ;;
  7b-chunked)
    bench7b 7b-chunked 150 --steps 3 --warmup 1 --attention chunked
    ;;
  small)
    # fp32 with full-precision matmuls on every side (PyTorch with TF32 off); each
    # implementation in its own process on the card, interleaved: JAX takes at most half.
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 150 python3 -m mmalign_jax.bench \
      --what "${SMALL_WHAT:-dpo}" --preset bench-small --steps 20 --warmup 3 --baselines torch,trl \
      --precision highest --json "$WORK/small.json" > "$WORK/small.log" 2>&1
    echo "part small rc=$?"; grep -aE "^\|" "$WORK/small.log" | head -12
    ;;
  demo)
    # The README's main command (the offline demo), from an empty workdir.
    s=$(date +%s)
    timeout 150 python3 -m mmalign_jax.train --config configs/dpo.py \
      --config.workdir=/tmp/demo_gpu > "$WORK/demo.log" 2>&1
    echo "part demo rc=$? wall $(( $(date +%s) - s )) s"
    grep -aE "finished|^  eval/" "$WORK/demo.log" | tail -12
    cp /tmp/demo_gpu/metrics.jsonl "$WORK/demo_metrics.jsonl" 2>/dev/null || true
    ;;
  *) echo "unknown part $part" ;;
  esac
  [ -n "${OUT:-}" ] && tar czf "$OUT/gpu_figures.tar.gz" -C "$WORK" .
done
nvidia-smi --query-gpu=name,temperature.gpu,clocks.sm --format=csv | tee -a "$WORK/gpu.txt"
