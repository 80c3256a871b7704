"""Test setup: 8 simulated CPU devices and one persistent compilation cache for the session
(set before JAX is imported, so subprocesses inherit them), float32 matmuls.

The cache is why the suite fits CI's time limit: the tests build the same tiny models' steps
again and again, and an identical program is compiled once per session instead of per test.
It lives in a fresh temporary folder removed at exit (unless JAX_COMPILATION_CACHE_DIR is
already set), so nothing carries over between runs.
"""
import atexit
import os
import shutil
import struct
import tempfile
import zlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="mmalign-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra) -> dict:
    """The environment of a CLI run in a subprocess: CPU, float32 matmuls, this checkout on
    the path, the session's compilation cache (inherited from os.environ)."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject addopts): one worker per core, but no more than the memory holds —
    a worker peaks near 4 GiB (a trained demo run, a built dataset, XLA executables)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(cores or 1, int(ram_gib // 4)))


def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A valid 1-bit black PNG of width x height: about 18 KB, while decoding it takes
    width*height bytes (144 MB for 12000x12000) and preprocessing it as RGB three times that."""
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
