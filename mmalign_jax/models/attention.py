"""Attention for the LLaMA decoder: which kernel, and the training-only shared-prefix layout.

`LlavaConfig.attention_impl` picks the kernel of the full forward and of the DPO training
path (token-by-token decoding through a KV cache always uses `jax.nn.dot_product_attention`):

* ``"dot_product"`` — `jax.nn.dot_product_attention` with its default `implementation=None`,
  which in JAX 0.10–0.11 is XLA's reference path on every backend (cuDNN's fused kernel is
  used only when asked for by name, and it takes no arbitrary boolean mask): it
  materialises the `[B, H, T, S]` scores and (under autodiff) stores the softmax
  probabilities of every layer for the backward.
* ``"chunked"`` — queries in tiles of `QUERY_CHUNK` rows (`tiled_attention`, a
  flash-attention-style custom VJP): the forward keeps only each row's log-sum-exp, the
  backward recomputes the tile's probabilities from q and k instead of reading stored
  `[T, S]` probabilities of every layer; a causal tile reads only the keys up to its last
  query (static slices: the upper triangle is never computed). q/k/v are laid out heads-major
  once per layer, so the tile matmuls are plain batched matmuls. The softmax is in float32
  and masked logits take the same large negative value as `jax.nn.dot_product_attention`,
  so fully masked (padding) rows stay finite.
* ``"auto"`` (default) — ``"dot_product"`` on GPU for bf16/fp16 compute, ``"chunked"``
  everywhere else (CPU — measured in docs/PERFORMANCE.md —, TPU, GPU in float32). On an
  H200 the two are equal within what was measured at the LLaVA-1.5-7B LoRA bf16 step
  (docs/PERFORMANCE.md, "GPU"); chunked stores less.

Query heads are grouped over the K key/value heads (GQA) without repeating K/V in memory.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "dot_product", "chunked")
# Query rows per tile of the 'chunked' kernel (read at trace time; tests lower it to cover
# several tiles on tiny shapes). On the bench-small DPO step on CPU, 128 vs 256 is within
# noise: a fixed-order A/B had 256 1.05-1.08x faster, a rotated 8-round one 128 1.03x faster
# (benchmarks/jax_dpo_variants.py, docs/PERFORMANCE.md).
QUERY_CHUNK = 256


def resolve_impl(impl: str, dtype) -> str:
    """The kernel `impl` means for this backend and compute dtype ('auto' resolved)."""
    if impl not in IMPLS:
        raise ValueError(f"attention_impl must be one of {IMPLS}; got {impl!r}")
    if impl != "auto":
        return impl
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "dot_product"
    return "chunked"


def _large_negative() -> jax.Array:
    # As jax.nn.dot_product_attention: finite, so a fully masked row attends uniformly.
    return jnp.asarray(-0.7 * np.finfo(np.float32).max, jnp.float32)


def _tiles(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n)) for s in range(0, n, max(chunk, 1))]


def _heads_major(q: jax.Array, k: jax.Array, v: jax.Array):
    """q `[B, T, H, Dh]`, k/v `[B, S, K, Dh]` → `[B, K, G, T, Dh]`, `[B, K, S, Dh]` ×2
    (query head h = k·G + g, the grouping GQA uses)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    qh = q.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    return qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _tokens_major(out: jax.Array) -> jax.Array:
    """`[B, K, G, T, Dh]` → `[B, T, H, Dh]`."""
    b, kv, g, t, d = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, kv * g, d)


def _masked_logits(q, k, mask, scale):
    s = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    return jnp.where(mask, s * jnp.float32(scale), _large_negative())


def _flash_forward(q, k, v, mask, scale):
    logits = _masked_logits(q, k, mask, scale)
    m = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bksd->bkgtd", p.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / l
    return out.astype(q.dtype), m + jnp.log(l)


def _flash_backward(q, k, v, mask, out, lse, d_out, scale):
    p = jnp.exp(_masked_logits(q, k, mask, scale) - lse)                 # [B, K, G, t, s]
    dv = jnp.einsum("bkgts,bkgtd->bksd", p.astype(v.dtype), d_out,
                    preferred_element_type=jnp.float32)
    dp = jnp.einsum("bkgtd,bksd->bkgts", d_out, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                    keepdims=True)
    ds = (p * (dp - delta) * jnp.float32(scale)).astype(q.dtype)
    dq = jnp.einsum("bkgts,bksd->bkgtd", ds, k, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bkgts,bkgtd->bksd", ds, q, preferred_element_type=jnp.float32)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def tiled_attention(qh, kh, vh, mask, tiles, scale):
    """Softmax attention in query tiles, flash-attention style backward.

    qh `[B, K, G, T, Dh]`, kh/vh `[B, K, S, Dh]`, mask bool `[B, 1, T, S]`; `tiles` a static
    tuple of `(t0, t1, s1)`: query rows `[t0, t1)` attend over keys `[0, s1)` (a causal
    tile stops at its last query; keys from `s1` on must be masked for those rows).
    Returns `[B, K, G, T, Dh]`. Float32 logits and softmax. The forward keeps only each
    row's log-sum-exp (and q, k, v once, not per tile); the backward recomputes a tile's
    probabilities from q, k and it (one matmul) instead of storing `[T, S]` of them, and
    needs no softmax-backward reduction over the keys (`rowsum(dO·O)` replaces it). Fully
    masked rows attend uniformly over their tile's keys (finite); their cotangents are zero
    wherever they are padding.
    """
    return _tiled_forward(qh, kh, vh, mask, tiles, scale)[0]


def _tiled_forward(qh, kh, vh, mask, tiles, scale):
    outs, lses = [], []
    for t0, t1, s1 in tiles:
        o, lse = _flash_forward(qh[:, :, :, t0:t1], kh[:, :, :s1], vh[:, :, :s1],
                                mask[:, :, None, t0:t1, :s1], scale)
        outs.append(o)
        lses.append(lse)
    if len(outs) == 1:
        return outs[0], lses[0]
    return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _tiled_fwd(qh, kh, vh, mask, tiles, scale):
    out, lse = _tiled_forward(qh, kh, vh, mask, tiles, scale)
    return out, (qh, kh, vh, mask, out, lse)


def _tiled_bwd(tiles, scale, res, d_out):
    qh, kh, vh, mask, out, lse = res
    s = kh.shape[2]
    dqs, dk, dv = [], None, None
    for t0, t1, s1 in tiles:
        dq_t, dk_t, dv_t = _flash_backward(
            qh[:, :, :, t0:t1], kh[:, :, :s1], vh[:, :, :s1], mask[:, :, None, t0:t1, :s1],
            out[:, :, :, t0:t1], lse[:, :, :, t0:t1], d_out[:, :, :, t0:t1], scale)
        dqs.append(dq_t)
        if s1 < s:
            pad = ((0, 0), (0, 0), (0, s - s1), (0, 0))
            dk_t, dv_t = jnp.pad(dk_t, pad), jnp.pad(dv_t, pad)
        dk = dk_t if dk is None else dk + dk_t
        dv = dv_t if dv is None else dv + dv_t
    dq = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=3)
    return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype), None


tiled_attention.defvjp(_tiled_fwd, _tiled_bwd)


def attend(q, k, v, mask, impl: str, causal: bool, chunk: int | None = None) -> jax.Array:
    """Attention of q `[B, T, H, Dh]` over k/v `[B, S, K, Dh]` under a boolean mask
    `[B, 1, T, S]` → `[B, T, H, Dh]` in q's dtype.

    `causal=True` promises that query `i` never attends to a key slot after `i` (a full
    forward: slots and queries aligned, T == S), which lets 'chunked' skip those keys.
    """
    if impl == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    if impl != "chunked":
        raise ValueError(f"unresolved attention impl {impl!r}")
    qh, kh, vh = _heads_major(q, k, v)
    tiles = tuple((t0, t1, t1 if causal else k.shape[1])
                  for t0, t1 in _tiles(q.shape[1], chunk or QUERY_CHUNK))
    return _tokens_major(tiled_attention(qh, kh, vh, mask, tiles, 1.0 / np.sqrt(q.shape[-1])))


# ------------------------------------------------------------------ shared-prefix (training)


class SharedPrefixMask(NamedTuple):
    """Masks of the training-only shared-prefix layout (`LlamaModel.decode_shared_prefix`).

    The sequence is `[prompt (P slots) | response 0 (R) | … | response N-1 (R)]` per row:
    prompt slots attend causally to real prompt slots; response `n`'s tokens attend to every
    real prompt slot and causally to response `n`'s own real tokens — never to another
    response. `prompt` bool `[B, P]` (left padded), `responses` bool `[B, N, R]` (right
    padded). Static N, P, R come from the shapes.
    """

    prompt: jax.Array
    responses: jax.Array


def shared_prefix_attention(q, k, v, masks: SharedPrefixMask, impl: str,
                            chunk: int | None = None, query_start: int = 0) -> jax.Array:
    """k/v `[B, P + N·R, K, Dh]` in the `SharedPrefixMask` layout, q `[B, P + N·R - qs, H,
    Dh]` for the rows from `query_start` (qs ≤ P) on → `[B, P + N·R - qs, H, Dh]`.

    Prompt rows attend over the P prompt slots only (not the response slots); each response
    attends to the prompt's keys of this layer and to its own keys — no KV cache, no copy
    of the prompt's K/V per response.
    """
    b, rows, h, d = q.shape
    total = k.shape[1]
    p = masks.prompt.shape[1]
    n, r = masks.responses.shape[1:]
    qs = query_start
    if total != p + n * r or rows != total - qs or not 0 <= qs <= p:
        raise ValueError(f"shared-prefix layout needs P + N·R = {p} + {n}·{r} key rows and "
                         f"those from query_start={qs} (≤ P) as queries; got {total} and {rows}")
    prompt_mask, resp_mask = masks.prompt.astype(bool), masks.responses.astype(bool)
    pq = p - qs                                          # prompt rows among the queries
    if impl == "dot_product":
        out_p = jax.nn.dot_product_attention(
            q[:, :pq], k[:, :p], v[:, :p], mask=_prompt_mask_4d(prompt_mask)[:, :, qs:])
        out_r = jax.nn.dot_product_attention(q[:, pq:], k, v,
                                             mask=_responses_mask_4d(prompt_mask, resp_mask))
        return jnp.concatenate([out_p, out_r], axis=1)
    if impl != "chunked":
        raise ValueError(f"unresolved attention impl {impl!r}")

    # One tiled call over all query rows: prompt tiles stop at their last query (never
    # reaching the response slots), response tiles read every slot under the block mask.
    chunk = chunk or QUERY_CHUNK
    qh, kh, vh = _heads_major(q, k, v)
    tiles = tuple((t0, t1, qs + t1) for t0, t1 in _tiles(pq, chunk))
    tiles += tuple((pq + t0, pq + t1, total) for t0, t1 in _tiles(n * r, chunk))
    mask = jnp.concatenate([
        jnp.pad(_prompt_mask_4d(prompt_mask)[:, :, qs:], ((0, 0), (0, 0), (0, 0), (0, n * r))),
        _responses_mask_4d(prompt_mask, resp_mask)], axis=2)
    return _tokens_major(tiled_attention(qh, kh, vh, mask, tiles, 1.0 / np.sqrt(d)))


def _prompt_mask_4d(prompt_mask: jax.Array) -> jax.Array:
    p = prompt_mask.shape[1]
    causal = jnp.arange(p)[None, :] <= jnp.arange(p)[:, None]
    return prompt_mask[:, None, None, :] & causal[None, None]


def _responses_mask_4d(prompt_mask: jax.Array, resp_mask: jax.Array) -> jax.Array:
    """`[B, 1, N·R, P + N·R]`: the packed responses (query n·R + j) see every real prompt
    slot and, causally, the real tokens of their own response — never another response."""
    b, n, r = resp_mask.shape
    idx = jnp.arange(n * r)
    same = (idx[:, None] // r == idx[None, :] // r) & (idx[None, :] <= idx[:, None])
    own = same[None] & resp_mask.reshape(b, 1, n * r)
    prompt = jnp.broadcast_to(prompt_mask[:, None, :], (b, n * r, prompt_mask.shape[1]))
    return jnp.concatenate([prompt, own], axis=-1)[:, None]
