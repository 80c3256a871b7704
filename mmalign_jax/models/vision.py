"""CLIP ViT vision tower (pre-layer-norm, quick-GELU, class token, learned positions).

Parameter names follow Hugging Face's `CLIPVisionModel` (`vision_model.` prefix dropped)
so checkpoints map one to one. Layers are unrolled (`layers_{i}`) rather than scanned:
LLaVA reads an intermediate layer, and unrolling lets us run only the layers up to it.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign_jax.models.config import LlavaConfig
from mmalign_jax.models.layers import Dense, activation, constrain, layer_norm

_ACT = ("activation_batch", "activation_length", "activation_embed_vision")


def feature_depth(cfg: LlavaConfig) -> int:
    """How many encoder layers produce `hidden_states[cfg.vision_feature_layer]`.

    HF's `hidden_states` holds the pre-layer-normed embeddings followed by one entry per
    layer, so index -2 of a 24-layer tower is the output of layer 22 (23 layers run).
    """
    n_layers = cfg.vision.num_hidden_layers
    index = cfg.vision_feature_layer
    depth = index if index >= 0 else n_layers + 1 + index
    if not 0 <= depth <= n_layers:
        raise ValueError(
            f"vision_feature_layer={index} is outside the {n_layers + 1} CLIP hidden states "
            f"(embeddings + {n_layers} layers)"
        )
    return depth


def _dense(cfg: LlavaConfig, features: int, axes, name: str) -> Dense:
    return Dense(
        features,
        axes,
        use_bias=True,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        lora=cfg.lora,
        name=name,
    )


def _layer_norm(cfg: LlavaConfig, name: str) -> nn.LayerNorm:
    return layer_norm(
        cfg.vision.layer_norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name
    )


class VisionEmbeddings(nn.Module):
    """Patch conv (no bias) + class token + learned position embeddings."""

    cfg: LlavaConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        v = self.cfg.vision
        dtype, param_dtype = jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
        if pixel_values.shape[1:] != (v.image_size, v.image_size, v.num_channels):
            raise ValueError(
                f"pixel_values must be channels-last [N, {v.image_size}, {v.image_size}, "
                f"{v.num_channels}]; got shape {pixel_values.shape}"
            )
        patches = nn.Conv(
            v.hidden_size,
            (v.patch_size, v.patch_size),
            strides=(v.patch_size, v.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, None, "embed_vision")
            ),
            name="patch_embedding",
        )(pixel_values.astype(dtype))
        n = pixel_values.shape[0]
        patches = patches.reshape(n, -1, v.hidden_size)  # row-major, as HF's flatten(2)
        cls = self.param(
            "class_embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(v.hidden_size**-0.5), ("embed_vision",)
            ),
            (v.hidden_size,),
            param_dtype,
        )
        cls = jnp.broadcast_to(cls.astype(dtype), (n, 1, v.hidden_size))
        positions = nn.Embed(
            v.num_patches + 1,
            v.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, "embed_vision")
            ),
            name="position_embedding",
        )(jnp.arange(v.num_patches + 1))
        return jnp.concatenate([cls, patches], axis=1) + positions[None]


class VisionAttention(nn.Module):
    """Bidirectional multi-head self-attention with biased q/k/v/out projections."""

    cfg: LlavaConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        v = self.cfg.vision
        dense = functools.partial(_dense, self.cfg, v.hidden_size)
        heads = (*x.shape[:2], v.num_attention_heads, v.head_dim)
        q = dense(("embed_vision", "heads_vision"), "q_proj")(x, deterministic).reshape(heads)
        k = dense(("embed_vision", "heads_vision"), "k_proj")(x, deterministic).reshape(heads)
        val = dense(("embed_vision", "heads_vision"), "v_proj")(x, deterministic).reshape(heads)
        out = jax.nn.dot_product_attention(q, k, val).reshape(x.shape)
        return dense(("heads_vision", "embed_vision"), "out_proj")(out, deterministic)


class VisionMLP(nn.Module):
    cfg: LlavaConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        v = self.cfg.vision
        h = _dense(self.cfg, v.intermediate_size, ("embed_vision", "mlp_vision"), "fc1")(
            x, deterministic
        )
        h = activation(v.hidden_act)(h)
        return _dense(self.cfg, v.hidden_size, ("mlp_vision", "embed_vision"), "fc2")(
            h, deterministic
        )


class VisionEncoderLayer(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    cfg: LlavaConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        x = x + VisionAttention(self.cfg, name="self_attn")(
            _layer_norm(self.cfg, "layer_norm1")(x), deterministic
        )
        x = x + VisionMLP(self.cfg, name="mlp")(
            _layer_norm(self.cfg, "layer_norm2")(x), deterministic
        )
        return constrain(x, _ACT)


class VisionTower(nn.Module):
    """`pixel_values [N, H, W, 3]` → LLaVA image features `[N, Nimg, Dv]`.

    Returns `hidden_states[cfg.vision_feature_layer]`, without the class token under the
    'default' select strategy. Only the layers that feed that hidden state run; at init
    every layer and `post_layernorm` are created anyway so the parameter tree holds the
    whole CLIP model and round-trips to Hugging Face.
    """

    cfg: LlavaConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array, deterministic: bool = True) -> jax.Array:
        strategy = self.cfg.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full'; got {strategy!r}"
            )
        depth = feature_depth(self.cfg)
        n_layers = self.cfg.vision.num_hidden_layers if self.is_initializing() else depth

        h = VisionEmbeddings(self.cfg, name="embeddings")(pixel_values)
        h = constrain(_layer_norm(self.cfg, "pre_layrnorm")(h), _ACT)
        features = h
        for i in range(n_layers):
            h = VisionEncoderLayer(self.cfg, name=f"layers_{i}")(h, deterministic)
            if i + 1 == depth:
                features = h
        if self.is_initializing():
            _layer_norm(self.cfg, "post_layernorm")(h[:, 0])
        return features[:, 1:] if strategy == "default" else features
