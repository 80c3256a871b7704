"""mmalign-jax: multimodal (LLaVA) preference alignment in JAX/Flax."""

from mmalign_jax import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before JAX creates its GPU client: GEMMs through cuBLAS (see xla_flags.py for the figures).
_xla_flags.apply_defaults()
