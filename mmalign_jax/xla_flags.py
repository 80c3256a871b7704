"""XLA flags the library sets by default: GEMMs through cuBLAS on NVIDIA GPUs.

Why: on Hopper GPUs, XLA's own Triton GEMM kernels with the autotuner off made the
LLaVA-1.5-7B LoRA DPO step tens of times slower than cuBLAS, and the autotuner on compiled
for minutes for kernels no faster than cuBLAS's (the measurements: docs/PERFORMANCE.md, "GPU").
XLA reads these flags when JAX creates its GPU client, i.e. at the first computation:
`mmalign_jax.configure_process()` (runtime.py) applies them and must be called before that —
the package's command-line entry points call it first thing; importing `mmalign_jax` alone
changes nothing.

Only where JAX can reach an NVIDIA GPU: a CUDA PJRT plugin is installed (`jax_plugins.xla_cuda*`)
and `JAX_PLATFORMS`, if set, allows it — elsewhere `XLA_FLAGS` is left alone (another XLA in
the process, an old TensorFlow's, stops at flags it does not know). A flag the user already
put in `XLA_FLAGS` is never overridden; `MMALIGN_JAX_XLA_DEFAULTS=0` turns the defaults off.
Applied after JAX has started its backends, the flags come too late: a RuntimeWarning says so.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import MutableMapping, Optional

GPU_DEFAULTS = (
    ("xla_gpu_enable_triton_gemm", "false"),
    ("xla_gpu_autotune_level", "0"),
)
OPT_OUT = "MMALIGN_JAX_XLA_DEFAULTS"


def _named(flags: str) -> set[str]:
    """Flag names in an `XLA_FLAGS` string (`--name=value` or `--name`)."""
    return {tok.lstrip("-").split("=", 1)[0] for tok in flags.split() if tok.startswith("--")}


def cuda_plugin_installed() -> bool:
    """Whether a JAX CUDA PJRT plugin (`jax_plugins.xla_cuda12`, `..13`) is importable — asked
    without importing JAX or starting a backend."""
    try:
        spec = importlib.util.find_spec("jax_plugins")
    except (ImportError, ValueError):
        return False
    for loc in (spec.submodule_search_locations or []) if spec else []:
        try:
            if any(name.startswith("xla_cuda") for name in os.listdir(loc)):
                return True
        except OSError:
            continue
    return False


def jax_platforms(environ: MutableMapping[str, str]) -> set[str]:
    """The platforms `JAX_PLATFORMS` names (lower case); empty when unset: any may be used."""
    return {x.strip().lower() for x in environ.get("JAX_PLATFORMS", "").split(",") if x.strip()}


def gpu_possible(environ: MutableMapping[str, str], plugin: Optional[bool] = None) -> bool:
    """A CUDA plugin is there (`plugin`, detected when None) and `JAX_PLATFORMS` allows it."""
    platforms = jax_platforms(environ)
    if platforms and not platforms & {"cuda", "gpu"}:
        return False
    return cuda_plugin_installed() if plugin is None else plugin


def apply_defaults(environ: MutableMapping[str, str] = os.environ,
                   plugin: Optional[bool] = None) -> list[str]:
    """Append the GPU defaults the user has not set to `environ['XLA_FLAGS']` where a GPU is
    possible (`gpu_possible`); returns the flags added (none when opted out, no GPU is
    possible, or all are already named)."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    if not gpu_possible(environ, plugin):
        return []
    current = environ.get("XLA_FLAGS", "")
    have = _named(current)
    added = [f"--{name}={value}" for name, value in GPU_DEFAULTS if name not in have]
    if added:
        environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
        if environ is os.environ and backends_started():   # this process's JAX: too late
            warnings.warn(
                "JAX started its backends before mmalign_jax.configure_process() was called, so "
                f"XLA_FLAGS {' '.join(added)} cannot take effect in this process: on an NVIDIA "
                "GPU the train step can run many times slower (docs/PERFORMANCE.md, 'GPU'). Call "
                "mmalign_jax.configure_process() before the first JAX computation, or set these "
                "flags in XLA_FLAGS before starting Python.", RuntimeWarning, stacklevel=2)
    return added


def backends_started() -> bool:
    """Whether JAX has created its backends (clients) already, without creating them."""
    xb = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xb, "_backends", None))
