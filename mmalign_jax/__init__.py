"""mmalign-jax: multimodal (LLaVA) preference alignment in JAX/Flax.

Importing the package (or any module of it) changes nothing in the process. Programs that
run JAX work call `mmalign_jax.configure_process()` first, before JAX starts its backends:
it applies the library's GPU XLA flags and, when asked for, its glibc malloc settings
(runtime.py). The command-line entry points (`python -m mmalign_jax.train`, …) do so.
"""

from mmalign_jax.runtime import configure_process

__version__ = "0.1.0"

__all__ = ["configure_process", "__version__"]
