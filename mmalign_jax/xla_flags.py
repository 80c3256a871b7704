"""XLA flags the library sets by default: GEMMs through cuBLAS on NVIDIA GPUs.

Measured on an H200 (docs/PERFORMANCE.md, "GPU"): with XLA's own Triton GEMM kernels and the
autotuner off, the LLaVA-1.5-7B LoRA DPO step took 13.4 s; with cuBLAS (its own heuristics,
no autotuning) 0.27-0.28 s — 37 % MFU, 1.7x the same step in PyTorch — compiled in 10-14 s.
XLA's default (autotuner on) compiles far longer (one fp32 GEMM case of the microbenchmark:
8-16 s instead of 0.1 s; a 7B run had not got through setup (≈ 60 s), compile and one step in
100 s) for kernels within 5 % of cuBLAS's on the 7B step's bf16 shapes, except the plain
projection, where cuBLAS was 1.4x faster (in fp32 the autotuned SwiGLU MLP was 1.28x faster).
XLA reads these flags when JAX creates its GPU client, i.e. at the first computation:
importing `mmalign_jax` before that is enough. They are GPU-only options; CPU and TPU ignore them.

A flag the user already put in `XLA_FLAGS` is never overridden; `MMALIGN_JAX_XLA_DEFAULTS=0`
turns the defaults off altogether.
"""
from __future__ import annotations

import os
from typing import MutableMapping

GPU_DEFAULTS = (
    ("xla_gpu_enable_triton_gemm", "false"),
    ("xla_gpu_autotune_level", "0"),
)
OPT_OUT = "MMALIGN_JAX_XLA_DEFAULTS"


def _named(flags: str) -> set[str]:
    """Flag names in an `XLA_FLAGS` string (`--name=value` or `--name`)."""
    return {tok.lstrip("-").split("=", 1)[0] for tok in flags.split() if tok.startswith("--")}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Append the GPU defaults the user has not set to `environ['XLA_FLAGS']`; returns the
    flags added (none when opted out or all already named)."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    current = environ.get("XLA_FLAGS", "")
    have = _named(current)
    added = [f"--{name}={value}" for name, value in GPU_DEFAULTS if name not in have]
    if added:
        environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
    return added
