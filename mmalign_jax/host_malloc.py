"""glibc malloc settings that keep a CPU train step's memory in the process (opt-in; the bench's default).

XLA:CPU allocates a train step's temporaries as one block and frees it when the step ends.
glibc serves a block that big with `mmap` and gives it back with `munmap`, so every step
faults in fresh zeroed pages, and after an idle pause (evaluation, a checkpoint, another
process's turn) they cost more again; keeping the block in the process removes that cost (the
measurements: docs/PERFORMANCE.md, "Host memory").

The settings: every thread allocates from the main arena (`M_ARENA_MAX=1`: a per-thread arena
can only `mmap` a block over 64 MB), no `mmap` for big blocks (`M_MMAP_MAX=0`) and no
returning freed memory to the OS (`M_TRIM_THRESHOLD` at its maximum, 2 GiB): the block freed
by one step is the block the next step gets (no page faults per step from the second step on).
The cost: the process keeps its peak memory, and glibc 2.36 does not put an
aligned block (XLA's, 64-byte aligned) into a free one of exactly its size unless a free
neighbour makes it larger, so where blocks are freed out of order — a quick jitted call
whose output is freed after the next call has allocated its own, under asynchronous
dispatch — the heap grows by several blocks before it settles.

Not on by default: compile-heavy work (the tests) got slower with them, and the demo's
tiny model has no block big enough to gain (docs/PERFORMANCE.md).
`python -m mmalign_jax.bench` turns them on in every process it times (`--malloc keep`, its default: the interleaved rounds would otherwise charge whichever
process sat idle longest); elsewhere `MMALIGN_JAX_KEEP_STEP_MEMORY=1` turns them on when
the process calls `mmalign_jax.configure_process()` (runtime.py; the package's command-line
entry points call it first thing in their `__main__`; importing `mmalign_jax` alone changes
nothing). They must be set before JAX starts its CPU client (its worker threads pick their
arena at their first allocation): after `import jax` works, after the first computation is
too late. Only on Linux with glibc, where JAX will run on the CPU (no
CUDA plugin or TPU runtime it could use, or `JAX_PLATFORMS=cpu`), and not where
`GLIBC_TUNABLES` already sets malloc tunables.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from typing import MutableMapping, Optional

from mmalign_jax import xla_flags

ENV = "MMALIGN_JAX_KEEP_STEP_MEMORY"

# mallopt(3) parameters (malloc.h), the values set (C ints) and the same as glibc tunables.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = (("M_ARENA_MAX", M_ARENA_MAX, 1, "glibc.malloc.arena_max"),
            ("M_MMAP_MAX", M_MMAP_MAX, 0, "glibc.malloc.mmap_max"),
            ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 2**31 - 1, "glibc.malloc.trim_threshold"))

# What `apply` set in this process (the names glibc accepted); logged by the trainer.
applied: list[str] = []


def glibc() -> bool:
    """The C library this process runs on is glibc (not musl, not macOS's)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def tpu_runtime_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def cpu_backend_expected(environ: MutableMapping[str, str], accelerator: Optional[bool] = None) -> bool:
    """JAX will run on the CPU: `JAX_PLATFORMS` names only `cpu`, or no CUDA plugin or TPU
    runtime is installed (`accelerator`, detected when None) that it could use instead."""
    platforms = xla_flags.jax_platforms(environ)
    if platforms and platforms <= {"cpu"}:
        return True
    return not (_accelerator() if accelerator is None else accelerator)


def _accelerator() -> bool:
    return xla_flags.cuda_plugin_installed() or tpu_runtime_installed()


def possible(environ: MutableMapping[str, str], accelerator: Optional[bool] = None) -> bool:
    """Linux with glibc, JAX will run on the CPU, and `GLIBC_TUNABLES` sets no malloc tunable."""
    if not sys.platform.startswith("linux") or not glibc():
        return False
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    return cpu_backend_expected(environ, accelerator)


def requested(environ: MutableMapping[str, str]) -> bool:
    return environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def apply(environ: MutableMapping[str, str] = os.environ, accelerator: Optional[bool] = None) -> list[str]:
    """Set `SETTINGS` with mallopt(3) where `possible`, unless JAX's backends are already up
    (too late: its threads have their arenas). Returns the names of the settings glibc took."""
    if not possible(environ, accelerator) or xla_flags.backends_started():
        return []
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = [name for name, param, value, _ in SETTINGS if mallopt(param, value) == 1]
    applied.extend(n for n in done if n not in applied)
    return done


def apply_if_requested(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """`apply` when `MMALIGN_JAX_KEEP_STEP_MEMORY` asks for it (called by
    `mmalign_jax.configure_process()`)."""
    return apply(environ) if requested(environ) else []


def glibc_tunables(environ: MutableMapping[str, str] = os.environ) -> str:
    """`GLIBC_TUNABLES` for a child process (a benchmark baseline, our served step) so that it
    starts with the settings this process has (`applied`), after the tunables `environ`
    already names; `environ`'s own value when none were applied."""
    mine = [f"{tunable}={value}" for name, _, value, tunable in SETTINGS if name in applied]
    if not mine:
        return environ.get("GLIBC_TUNABLES", "")
    return ":".join([t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t] + mine)
