"""mmalign-jax: multimodal (LLaVA) preference alignment in JAX/Flax."""

from mmalign_jax import host_malloc as _host_malloc
from mmalign_jax import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before JAX creates its GPU client: GEMMs through cuBLAS (see xla_flags.py for the figures).
_xla_flags.apply_defaults()
# Before JAX starts its CPU client: each step's memory kept in the process (host_malloc.py).
_host_malloc.apply_defaults()
