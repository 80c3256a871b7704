"""Experiments built on the library (`python -m mmalign_jax.experiments.<name>`)."""
