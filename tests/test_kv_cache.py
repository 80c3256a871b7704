"""KV-cache decoding reproduces the full forward pass, with left padding and images."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign_jax.models import llava
from mmalign_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from mmalign_jax.models.llama import default_positions

TOL = 1e-4
IMAGE_TOKEN = 99
CFG = LlavaConfig(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, image_size=16, patch_size=8),
    text=TextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2),
    image_token_id=IMAGE_TOKEN,
)
Llava = llava.Llava


@pytest.fixture(scope="module")
def params():
    """Random params pushed well away from init so attention patterns are not near-uniform."""
    rng = np.random.default_rng(0)
    base = jax.jit(functools.partial(llava.init_params, CFG))(jax.random.key(0))
    return jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), base)


def left_padded_batch(seed, length, pads):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, IMAGE_TOKEN, size=(len(pads), length))
    mask = np.ones_like(ids)
    for row, pad in enumerate(pads):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)


@functools.partial(jax.jit, static_argnames="with_positions")
def decode_step(params, embeds, slot_mask, positions, cache, with_positions=True):
    variables = {"params": params}
    hidden, cache = Llava(CFG).apply(
        variables, embeds, slot_mask, positions if with_positions else None, cache,
        method=Llava.decode,
    )
    return Llava(CFG).apply(variables, hidden, method=Llava.lm_logits), cache


def run_cached(params, embeds, mask, chunks, max_len, with_positions=True):
    """Feed `embeds [B, T, D]` through the cache in chunks of the given sizes."""
    b, t, _ = embeds.shape
    slot_mask = jnp.zeros((b, max_len), jnp.int32).at[:, :t].set(mask)
    positions = default_positions(mask)
    cache = llava.init_cache(CFG, b, max_len, jnp.float32)
    logits, start = [], 0
    for size in chunks:
        step_logits, cache = decode_step(
            params, embeds[:, start:start + size], slot_mask, positions[:, start:start + size],
            cache, with_positions=with_positions,
        )
        logits.append(step_logits)
        start += size
    assert start == t and int(cache["index"]) == t
    return jnp.concatenate(logits, axis=1), cache


def assert_close_on_real_tokens(mask, ours, expected):
    real = np.asarray(mask).astype(bool)
    diff = np.abs(np.asarray(ours)[real] - np.asarray(expected)[real]).max()
    assert diff <= TOL, diff


def test_init_cache_layout():
    cache = llava.init_cache(CFG, batch=3, max_len=7, dtype=jnp.bfloat16)
    assert cache["k"].shape == cache["v"].shape == (3, 3, 7, 2, 16)
    assert cache["k"].dtype == jnp.bfloat16 and cache["index"].dtype == jnp.int32
    assert int(cache["index"]) == 0


@pytest.mark.parametrize("chunks", [[1] * 10, [6, 1, 1, 1, 1], [4, 3, 3]])
def test_cached_decoding_equals_full_forward_with_left_padding(params, chunks):
    ids, mask = left_padded_batch(0, 10, pads=[0, 3])
    full = Llava(CFG).apply({"params": params}, ids, None, mask)
    assert bool(jnp.isfinite(full).all())  # fully masked padding rows must not produce NaN
    embeds = Llava(CFG).apply({"params": params}, ids, method=Llava.embed)
    cached, _ = run_cached(params, embeds, mask, chunks, max_len=12)
    assert_close_on_real_tokens(mask, cached, full)


def test_default_positions_come_from_the_slot_mask(params):
    ids, mask = left_padded_batch(1, 8, pads=[2, 0])
    full = Llava(CFG).apply({"params": params}, ids, None, mask)
    embeds = Llava(CFG).apply({"params": params}, ids, method=Llava.embed)
    cached, _ = run_cached(params, embeds, mask, [5, 1, 1, 1], max_len=8, with_positions=False)
    assert_close_on_real_tokens(mask, cached, full)


def test_image_prompt_prefill_then_tokens(params):
    """Prefill a prompt holding an image, then decode text tokens one at a time."""
    n_img = CFG.num_image_tokens
    rng = np.random.default_rng(2)
    row = [1, 5] + [IMAGE_TOKEN] * n_img + rng.integers(1, IMAGE_TOKEN, 6).tolist()
    ids = jnp.asarray([[0, 0] + row, row + [7, 8]], jnp.int32)  # left-padded row 0
    mask = jnp.asarray([[0, 0] + [1] * len(row), [1] * (len(row) + 2)], jnp.int32)
    pixels = jnp.asarray(rng.normal(size=(2, 1, 16, 16, 3)), jnp.float32)

    model = Llava(CFG)
    full = model.apply({"params": params}, ids, pixels, mask)
    feats = model.apply({"params": params}, pixels, method=Llava.encode_images)
    embeds = model.apply({"params": params}, ids, feats, None, method=Llava.embed)
    prefill = 2 + 2 + n_img
    chunks = [prefill] + [1] * (ids.shape[1] - prefill)
    cached, _ = run_cached(params, embeds, mask, chunks, max_len=ids.shape[1] + 4)
    assert_close_on_real_tokens(mask, cached, full)


def test_decode_rejects_a_mask_that_does_not_cover_the_cache(params):
    cache = llava.init_cache(CFG, 1, 8)
    embeds = jnp.zeros((1, 1, CFG.text.hidden_size))
    with pytest.raises(ValueError, match="cache slots"):
        Llava(CFG).apply({"params": params}, embeds, jnp.ones((1, 5), jnp.int32), None, cache,
                         method=Llava.decode)
