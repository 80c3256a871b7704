"""Multimodal projector: CLIP features `[.., Dv]` → language-model embeddings `[.., D]`.

'mlp2x_gelu' is LLaVA-1.5's (and HF `LlavaMultiModalProjector`'s) linear_1 → GELU →
linear_2; 'linear' is LLaVA-1's single linear_1.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign_jax.models.config import LlavaConfig
from mmalign_jax.models.layers import Dense, activation, constrain

PROJECTOR_TYPES = ("mlp2x_gelu", "linear")


class Projector(nn.Module):
    cfg: LlavaConfig

    @nn.compact
    def __call__(self, features: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        if cfg.projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"projector_type must be one of {PROJECTOR_TYPES}; got {cfg.projector_type!r}"
            )
        dense = lambda axes, name: Dense(  # noqa: E731
            cfg.text.hidden_size,
            axes,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            lora=cfg.lora,
            name=name,
        )
        h = dense(("embed_vision", "embed"), "linear_1")(features, deterministic)
        if cfg.projector_type == "mlp2x_gelu":
            h = activation(cfg.projector_hidden_act)(h)
            # 'mlp' on the input side so the [D, D] kernel never names 'embed' twice.
            h = dense(("mlp", "embed"), "linear_2")(h, deterministic)
        return constrain(h, ("activation_batch", "activation_length", "activation_embed"))
