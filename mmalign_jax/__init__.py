"""mmalign-jax: multimodal (LLaVA) preference alignment in JAX/Flax."""

__version__ = "0.1.0"
