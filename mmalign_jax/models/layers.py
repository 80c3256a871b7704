"""Building blocks shared by the vision tower, the projector and the decoder.

Every parameter is created through `nn.with_logical_partitioning` so that
`nn.get_partition_spec` on a (possibly abstract) init returns the logical layout, and
`parallel.py` alone decides how logical names map to mesh axes.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign_jax.models.config import LoraConfig

LogicalNames = Sequence[Optional[str]]


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
    """Sharding constraint by activation logical names (`activation_*`, never a parameter's
    name); a no-op outside a `nn.logical_axis_rules` scope. Inside one, a name the rules do
    not mention is an error, as it is for parameters (`parallel.py`): Flax alone would
    constrain that dimension to be replicated, silently."""
    names = tuple(names)
    rules = nn.get_logical_axis_rules()
    if rules:
        known = {logical for logical, _ in rules}
        missing = [n for n in names if isinstance(n, str) and n not in known]
        if missing:
            raise ValueError(
                f"activation of shape {tuple(x.shape)} with logical axes {names}: "
                f"{missing} have no rule in the config's sharding rules; add "
                f"('{missing[0]}', <mesh axes or None>) to mesh.rules")
    return nn.with_logical_constraint(x, names)


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


@jax.custom_vjp
def matmul_materialized_grad(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` (w `[in, out]`) whose backward first materialises the output cotangent.

    Numerically the plain matmul and its usual gradients. Why it exists: for the weight
    gradient `x^T @ g` (a contraction over the tokens) XLA:CPU transposes one operand, and
    when `g` is still an unfused elementwise expression (SwiGLU / RoPE backward reading
    per-layer slices of the scan's residual stacks) it fuses that expression into the
    transposing copy, which then reads every input with a stride of one row per element —
    measured ~1.6× slower for a scanned SwiGLU MLP's backward at the bench-small shapes
    (docs/PERFORMANCE.md). The `optimization_barrier` makes `g` a plain array first, so the
    transpose is a fast plain copy. Used on CPU only (`Dense`); GPU/TPU keep the fusion.
    """
    return jnp.dot(x, w)


def _matmul_fwd(x, w):
    return jnp.dot(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    g = jax.lax.optimization_barrier(g)
    dx = jnp.dot(g, w.T)
    lead = tuple(range(x.ndim - 1))
    dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())))
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul_materialized_grad.defvjp(_matmul_fwd, _matmul_bwd)


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    if jax.default_backend() == "cpu":
        return matmul_materialized_grad(x, w)
    return jnp.dot(x, w)


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
        y = _matmul(x, kernel.astype(self.dtype))
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


def _rms_normalize(x: jax.Array, eps: float):
    x32 = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return x32 * r, r


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """`scale * (x / rms(x))` as Hugging Face's LlamaRMSNorm computes it: statistics in
    float32, the normalised value cast to `scale`'s dtype before the scale multiplies it.

    A custom VJP only so the backward keeps `x` and the `[.., 1]` inverse rms, recomputing
    the rest: autodiff would save the float32 normalised activations as well (one more
    `[L, B, T, D]` stack written and read per step under the decoder scan).
    """
    n, _ = _rms_normalize(x, eps)
    return scale * n.astype(scale.dtype)


def _rms_norm_fwd(x, scale, eps):
    n, r = _rms_normalize(x, eps)
    return scale * n.astype(scale.dtype), (x, scale, r)


def _rms_norm_bwd(eps, res, g):
    x, scale, r = res
    n = x.astype(jnp.float32) * r
    lead = tuple(range(g.ndim - 1))
    d_scale = jnp.sum((g * n.astype(scale.dtype)).astype(jnp.float32), axis=lead)
    dn = (g * scale).astype(jnp.float32)
    dx = r * (dn - n * jnp.mean(dn * n, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """`silu(gate) * up` (LLaMA's MLP); the backward keeps only `gate` and `up` and
    recomputes the sigmoid, instead of autodiff's saved sigmoid and silu activations."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return jax.nn.silu(gate) * up, (gate, up)


def _swiglu_bwd(res, g):
    gate, up = res
    s = jax.nn.sigmoid(gate)
    d_up = g * (gate * s)
    d_gate = g * up * (s * (1 + gate * (1 - s)))
    return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class RMSNorm(nn.Module):
    """LLaMA RMSNorm exactly as Hugging Face computes it: statistics in float32, the result
    cast back to the compute dtype *before* the learned scale multiplies it (`rms_norm`)."""

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
        return rms_norm(x, scale.astype(self.dtype), self.eps)


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
