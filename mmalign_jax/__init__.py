"""mmalign-jax: multimodal (LLaVA) preference alignment in JAX/Flax."""

from mmalign_jax import host_malloc as _host_malloc
from mmalign_jax import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before JAX creates its GPU client: GEMMs through cuBLAS (see xla_flags.py for the figures).
_xla_flags.apply_defaults()
# MMALIGN_JAX_KEEP_STEP_MEMORY=1: glibc keeps each CPU step's memory (host_malloc.py); off by default.
_host_malloc.apply_if_requested()
