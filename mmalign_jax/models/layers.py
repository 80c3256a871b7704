"""Building blocks shared by the vision tower, the projector and the decoder.

Every parameter is created through `nn.with_logical_partitioning` so that
`nn.get_partition_spec` on a (possibly abstract) init returns the logical layout, and
`parallel.py` alone decides how logical names map to mesh axes.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign_jax.models.config import LoraConfig

LogicalNames = Sequence[Optional[str]]


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a `nn.logical_axis_rules` scope."""
    return nn.with_logical_constraint(x, tuple(names))


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": _quick_gelu,  # CLIP
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch nn.GELU(): exact erf form
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name` in Hugging Face's ACT2FN, with the same numerics."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}"
        ) from None


class Dense(nn.Module):
    """`x @ kernel (+ bias)` with kernel `[in, out]`, plus an optional LoRA adapter.

    The adapter `scale * dropout(x) @ a @ b` is added only when `lora` is set *and* the
    caller passed a `lora` collection holding `a`/`b` for this module: the same params
    applied without that collection are the base model (the DPO reference under LoRA).
    """

    features: int
    kernel_axes: tuple[Optional[str], Optional[str]]
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    lora: Optional[LoraConfig] = None
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        y = jnp.dot(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.kernel_axes[1],)),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        if self.lora is not None and self.has_variable("lora", "a"):
            y = y + self._adapter(x, deterministic)
        return y

    def _adapter(self, x: jax.Array, deterministic: bool) -> jax.Array:
        a = self.get_variable("lora", "a").astype(self.dtype)
        b = self.get_variable("lora", "b").astype(self.dtype)
        if self.lora.dropout > 0.0:
            x = nn.Dropout(rate=self.lora.dropout, name="lora_dropout")(
                x, deterministic=deterministic
            )
        return jnp.dot(jnp.dot(x, a), b) * jnp.asarray(self.lora.scale, self.dtype)


class RMSNorm(nn.Module):
    """LLaMA RMSNorm exactly as Hugging Face computes it: statistics in float32, the result
    cast back to the compute dtype *before* the learned scale multiplies it."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def layer_norm(eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
    """torch-equivalent LayerNorm (two-pass variance) with logically partitioned weights."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )
