"""The training-only shared-prefix DPO pass (`Llava.decode_shared_prefix`, used by
`steps.dpo_response_logps`) and the attention kernels behind it.

Checked against two independent computations of the same numbers: a naive full forward of
each `[prompt | response]` sequence without padding inside (as the baselines do it), and
the previous KV-cache layout (`steps.dpo_response_logps_cached`). Log-probs AND gradients
(LoRA adapters and base weights), with left-padded prompts, right-padded responses of
different lengths, GQA, both attention kernels, and query tiles small enough that every
prompt and response spans several of them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign_jax.models import attention, llava
from mmalign_jax.models import lora as lora_lib
from mmalign_jax.models.config import LlavaConfig, LoraConfig, TextConfig, VisionConfig
from mmalign_jax.train import steps as steps_lib
from naive_dpo import naive_dpo_logps

IMAGE_TOKEN, PAD = 99, 3
CFG = LlavaConfig(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, image_size=16, patch_size=8),   # 4 image tokens
    text=TextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD),
    image_token_id=IMAGE_TOKEN,
    lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0),
)
B, TEXT, R = 3, 7, 6
PROMPT_PADS = (3, 0, 1)                       # left padding per row
CHOSEN_LENS, REJECTED_LENS = (6, 2, 4), (3, 6, 1)


@pytest.fixture(scope="module")
def variables():
    """Weights pushed away from init (attention far from uniform) and non-zero adapters."""
    params = jax.jit(functools.partial(llava.init_params, CFG))(jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)
    lo = lora_lib.init_lora(CFG, params, jax.random.key(1))
    lo = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), lo)
    return {"params": params, "lora": lo}


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    n_img = CFG.num_image_tokens
    p = n_img + TEXT
    prompt_mask = np.ones((B, p), np.int32)
    prompt_ids = rng.integers(5, IMAGE_TOKEN, (B, p)).astype(np.int32)
    for i, pad in enumerate(PROMPT_PADS):
        prompt_mask[i, :pad] = 0
        prompt_ids[i, :pad] = PAD
        prompt_ids[i, pad + 1:pad + 1 + n_img] = IMAGE_TOKEN   # <bos> then the image

    def responses(lens):
        ids = rng.integers(5, IMAGE_TOKEN, (B, R)).astype(np.int32)
        mask = (np.arange(R)[None] < np.asarray(lens)[:, None]).astype(np.int32)
        return np.where(mask > 0, ids, PAD).astype(np.int32), mask

    chosen_ids, chosen_mask = responses(CHOSEN_LENS)
    rejected_ids, rejected_mask = responses(REJECTED_LENS)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "chosen_ids": chosen_ids, "chosen_mask": chosen_mask,
            "rejected_ids": rejected_ids, "rejected_mask": rejected_mask,
            "pixel_values": rng.standard_normal((B, 1, 16, 16, 3)).astype(np.float32),
            "image_mask": np.ones((B, 1), bool)}


def naive_logps(model, variables, batch):
    return naive_dpo_logps(model, variables, batch, pad_id=PAD)


def _loss(logps_fn, variables, batch):
    """A scalar mixing both sides with different weights, so gradients see both."""
    pc, pr = logps_fn(variables, batch)[:2]
    w = jnp.arange(1, B + 1, dtype=jnp.float32)
    return (w * pc).sum() - 0.5 * (w * pr).sum(), (pc, pr)


def _value_and_grad(logps_fn, variables, batch):
    """jit'd value and gradient w.r.t. the variables; the batch stays a host constant (the
    naive path slices it with numpy)."""
    return jax.jit(jax.value_and_grad(lambda v: _loss(logps_fn, v, batch), has_aux=True))(
        variables)


def _max_abs_diff(a, b):
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("impl,chunk", [("chunked", 4), ("chunked", 128), ("dot_product", 128)])
def test_shared_prefix_equals_naive_forward_logps_and_grads(variables, batch, impl, chunk,
                                                            monkeypatch):
    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    model = llava.Llava(CFG.replace(attention_impl=impl))
    fast = functools.partial(steps_lib.dpo_response_logps, model)
    naive = functools.partial(naive_logps, llava.Llava(CFG.replace(attention_impl="dot_product")))

    (_, (pc, pr)), g_fast = _value_and_grad(fast, variables, batch)
    (_, (nc_, nr_)), g_naive = _value_and_grad(naive, variables, batch)
    np.testing.assert_allclose(pc, nc_, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pr, nr_, rtol=1e-5, atol=1e-4)
    # Not vacuous: the sides differ and each response contributes.
    assert np.all(np.asarray(pc) < 0) and np.abs(np.asarray(pc) - np.asarray(pr)).max() > 1.0

    scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(g_naive))
    assert scale > 1e-2
    for coll in ("params", "lora"):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_fast[coll]),
                                jax.tree.leaves(g_naive[coll]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5 * scale,
                                       err_msg=f"{coll}{jax.tree_util.keystr(path)}")
    # The adapters and the LM really receive gradient through both paths.
    assert float(np.abs(np.asarray(g_fast["lora"]["language_model"]["layers"]["self_attn"]
                                   ["k_proj"]["a"])).max()) > 1e-4


def test_shared_prefix_equals_kv_cache_layout(variables, batch):
    """The new pass against the previous one (token counts too), default kernel."""
    model = llava.Llava(CFG)
    new = jax.jit(lambda v, b: steps_lib.dpo_response_logps(model, v, b))(variables, batch)
    old = jax.jit(lambda v, b: steps_lib.dpo_response_logps_cached(model, v, b))(variables, batch)
    for a, b in zip(new, old, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(new[2], CHOSEN_LENS)
    np.testing.assert_array_equal(new[3], REJECTED_LENS)


def test_responses_do_not_see_each_other_and_padding_is_ignored(variables, batch):
    model = llava.Llava(CFG)
    fn = jax.jit(lambda v, b: steps_lib.dpo_response_logps(model, v, b))
    pc, pr, _, _ = fn(variables, batch)
    other = dict(batch)
    rng = np.random.default_rng(7)
    # New rejected tokens: chosen log-probs must not move.
    other["rejected_ids"] = np.where(batch["rejected_mask"] > 0,
                                     rng.integers(5, IMAGE_TOKEN, batch["rejected_ids"].shape),
                                     PAD).astype(np.int32)
    # Garbage in padded slots (prompt left padding, response right padding): nothing moves.
    other["prompt_ids"] = np.where(batch["prompt_mask"] > 0, batch["prompt_ids"], 42)
    other["chosen_ids"] = np.where(batch["chosen_mask"] > 0, batch["chosen_ids"], 43)
    pc2, pr2, _, _ = fn(variables, other)
    np.testing.assert_allclose(pc2, pc, rtol=1e-6, atol=1e-5)
    assert np.abs(np.asarray(pr2) - np.asarray(pr)).max() > 1e-2   # the rejected side changed


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_shared_prefix_under_remat_keeps_values_and_grads(variables, batch, remat):
    base = functools.partial(steps_lib.dpo_response_logps, llava.Llava(CFG))
    rem = functools.partial(steps_lib.dpo_response_logps, llava.Llava(CFG.replace(remat_policy=remat)))
    (v0, _), g0 = _value_and_grad(base, variables, batch)
    (v1, _), g1 = _value_and_grad(rem, variables, batch)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    assert _max_abs_diff(g1, g0) < 1e-5 * max(1.0, max(
        float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(g0)))


# --------------------------------------------------------------------- attention kernels

@pytest.mark.parametrize("causal", [True, False])
def test_chunked_attention_equals_dot_product_attention(causal):
    rng = np.random.default_rng(2)
    b, t, h, k, d = 2, 11, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
    kk = jnp.asarray(rng.normal(size=(b, t, k, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, k, d)), jnp.float32)
    valid = np.ones((b, t), bool)
    valid[0, :4] = False                                 # left padding
    mask = np.broadcast_to(valid[:, None, None, :], (b, 1, t, t))
    if causal:
        mask = mask & np.tril(np.ones((t, t), bool))[None, None]
    mask = jnp.asarray(mask)
    # Query rows with at least one key: fully masked rows (causal, left padding) attend
    # uniformly over the keys of their tile instead of over all keys — garbage either way,
    # but finite; they get no weight in the loss.
    live = np.asarray(mask).any(-1)[:, 0][:, :, None, None]          # [b, t, 1, 1]
    weights = jnp.asarray(np.sin(np.arange(b * t * h * d)).reshape(b, t, h, d) * live)

    def loss(fn, q, kk, v):
        out = fn(q, kk, v)
        return (out * weights).sum(), out

    def ref_fn(q, kk, v):
        return jax.nn.dot_product_attention(q, kk, v, mask=mask)

    def new_fn(q, kk, v):
        return attention.attend(q, kk, v, mask, "chunked", causal, chunk=3)

    (_, ref), g_ref = jax.value_and_grad(functools.partial(loss, ref_fn), (0, 1, 2),
                                         has_aux=True)(q, kk, v)
    (_, out), g_new = jax.value_and_grad(functools.partial(loss, new_fn), (0, 1, 2),
                                         has_aux=True)(q, kk, v)
    assert np.isfinite(np.asarray(out)).all()
    assert live.sum() < b * t if causal else live.all()
    sel = np.broadcast_to(live, out.shape)
    np.testing.assert_allclose(np.asarray(out)[sel], np.asarray(ref)[sel], rtol=1e-5, atol=1e-6)
    for a, bb in zip(g_new, g_ref, strict=True):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(bb), rtol=1e-4, atol=1e-5)


def test_full_forward_same_with_either_kernel(variables, monkeypatch):
    """The SFT / full-forward path (`Llava.__call__`) under both kernels, several tiles."""
    monkeypatch.setattr(attention, "QUERY_CHUNK", 5)
    rng = np.random.default_rng(3)
    ids = rng.integers(5, IMAGE_TOKEN, (2, 13)).astype(np.int32)
    ids[:, 1:1 + CFG.num_image_tokens] = IMAGE_TOKEN
    mask = np.ones_like(ids)
    mask[1, 9:] = 0                                      # right padding
    pix = rng.standard_normal((2, 1, 16, 16, 3)).astype(np.float32)
    out = {impl: llava.Llava(CFG.replace(attention_impl=impl)).apply(
        {"params": variables["params"]}, ids, pix, mask) for impl in ("chunked", "dot_product")}
    np.testing.assert_allclose(out["chunked"][0], out["dot_product"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["chunked"][1, :9], out["dot_product"][1, :9], rtol=1e-5, atol=1e-5)


def test_attention_impl_choice():
    assert attention.resolve_impl("dot_product", jnp.float32) == "dot_product"
    assert attention.resolve_impl("chunked", jnp.bfloat16) == "chunked"
    if jax.default_backend() == "cpu":
        assert attention.resolve_impl("auto", jnp.bfloat16) == "chunked"
    with pytest.raises(ValueError, match="attention_impl"):
        attention.resolve_impl("flash", jnp.float32)


def test_frozen_vision_tower_runs_once_for_policy_and_reference(variables, batch):
    """Online reference, frozen tower (the same arrays on both sides): one tower pass, and the
    loss equals the one computed with separate passes (a copied tower is not shared)."""
    from types import SimpleNamespace
    c = SimpleNamespace(dpo=SimpleNamespace(beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
                                            sft_weight=0.0, logp_reduction="sum"))
    model = llava.Llava(CFG)
    loss = steps_lib.dpo_loss_fn(model, c)
    b = {**batch, "weight": np.ones((B,), np.float32)}
    params = variables["params"]
    ref_projector = jax.tree.map(lambda x: x * 0.9, params["multi_modal_projector"])

    # As in the trainer, both sides are built inside the traced function from one tree; a
    # tower passed as a separate argument (other arrays, equal values) must not be shared.
    def run(v, ref_proj, other_tower):
        tower = v["params"]["vision_tower"] if other_tower is None else other_tower
        ref = {"params": {**v["params"], "multi_modal_projector": ref_proj,
                          "vision_tower": tower}}
        return loss(v, ref, b, None, True)

    copied = jax.tree.map(jnp.copy, params["vision_tower"])
    n_convs = [str(jax.make_jaxpr(run)(variables, ref_projector, t)).count("conv_general_dilated")
               for t in (None, copied)]
    assert n_convs == [1, 2]
    t1, _, m1 = jax.jit(run)(variables, ref_projector, None)
    t2, _, m2 = jax.jit(run)(variables, ref_projector, copied)
    np.testing.assert_allclose(t1, t2, rtol=1e-6)
    assert abs(float(m1["rewards/margin"])) > 1e-4     # the references differ from the policy
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-5)


# --------------------------------------------------- custom VJPs against plain autodiff

def _plain_rms_norm(x, scale, eps):
    x32 = x.astype(jnp.float32)
    n = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return scale * n.astype(scale.dtype)


@pytest.mark.parametrize("name", ["rms_norm", "swiglu", "matmul"])
def test_custom_vjps_equal_autodiff(name):
    from mmalign_jax.models import layers
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.normal(size=(2, 7, 16)) * 2, jnp.float32)
    if name == "rms_norm":
        b = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
        new, ref = (lambda x, s: layers.rms_norm(x, s, 1e-5)), (lambda x, s: _plain_rms_norm(x, s, 1e-5))
    elif name == "swiglu":
        b = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
        new, ref = layers.swiglu, (lambda g, u: jax.nn.silu(g) * u)
    else:
        b = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
        new, ref = layers.matmul_materialized_grad, jnp.dot
    out_new, out_ref = new(a, b), ref(a, b)
    np.testing.assert_allclose(out_new, out_ref, rtol=1e-6, atol=1e-6)
    w = jnp.asarray(rng.normal(size=out_ref.shape), jnp.float32)
    g_new = jax.grad(lambda a, b: (new(a, b) * w).sum(), (0, 1))(a, b)
    g_ref = jax.grad(lambda a, b: (ref(a, b) * w).sum(), (0, 1))(a, b)
    for x, y in zip(g_new, g_ref, strict=True):
        assert float(np.abs(np.asarray(y)).max()) > 1e-3
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
