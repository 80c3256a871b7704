"""The `lora` collection: targeting, zero-init identity, merge equivalence, dropout, specs."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec

from mmalign_jax.models import llava, lora
from mmalign_jax.models.config import LlavaConfig, LoraConfig, TextConfig, VisionConfig

IMAGE_TOKEN = 99
BASE = LlavaConfig(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, image_size=16, patch_size=8),
    text=TextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2),
    image_token_id=IMAGE_TOKEN,
)
CFG = BASE.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
LM_TARGETS = [
    f"language_model/layers/{m}"
    for m in ("mlp/down_proj", "mlp/gate_proj", "mlp/up_proj", "self_attn/k_proj",
              "self_attn/o_proj", "self_attn/q_proj", "self_attn/v_proj")
]


@pytest.fixture(scope="module")
def params():
    return jax.jit(functools.partial(llava.init_params, CFG))(jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    ids = [1, 5] + [IMAGE_TOKEN] * CFG.num_image_tokens + rng.integers(1, IMAGE_TOKEN, 5).tolist()
    ids = jnp.asarray([ids, ids[::-1]], jnp.int32)
    pixels = jnp.asarray(rng.normal(size=(2, 1, 16, 16, 3)), jnp.float32)
    return ids, pixels, jnp.ones_like(ids)


def randomize_b(adapters, seed=1):
    """Non-zero B (as after training) so the adapters change the output."""
    key = jax.random.key(seed)
    flat = traverse_util.flatten_dict(adapters)
    return traverse_util.unflatten_dict({
        path: 0.05 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape)
        if path[-1] == "b" else leaf
        for i, (path, leaf) in enumerate(flat.items())
    })


@functools.partial(jax.jit, static_argnums=(0, 3))
def forward(cfg, variables, batch, deterministic=True, dropout_key=None):
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return llava.Llava(cfg).apply(variables, *batch, deterministic=deterministic, rngs=rngs)


def test_default_targets_are_exactly_the_lm_linears(params):
    assert lora.lora_paths(CFG, params) == LM_TARGETS


def test_wide_regex_reaches_dense_layers_but_never_the_conv_or_embeddings(params):
    cfg = CFG.replace(lora=dataclasses.replace(CFG.lora, target_regex=".*"))
    paths = lora.lora_paths(cfg, params)
    assert "language_model/lm_head" in paths
    assert "multi_modal_projector/linear_2" in paths
    assert "vision_tower/layers_1/self_attn/out_proj" in paths
    assert not any("patch_embedding" in p or "embed_tokens" in p for p in paths)


def test_regex_matching_nothing_is_an_error(params):
    cfg = CFG.replace(lora=dataclasses.replace(CFG.lora, target_regex="q_proj"))  # not fullmatch
    with pytest.raises(ValueError, match="matches no Dense layer"):
        lora.lora_paths(cfg, params)


def test_init_lora_shapes_and_zero_b(params):
    adapters = lora.init_lora(CFG, params, jax.random.key(2))
    q = adapters["language_model"]["layers"]["self_attn"]["q_proj"]
    assert q["a"].shape == (2, 64, 4) and q["b"].shape == (2, 4, 64)
    assert q["a"].dtype == jnp.float32
    assert float(jnp.abs(q["b"]).max()) == 0.0
    bound = 1 / np.sqrt(64)
    assert 0.5 * bound < float(jnp.abs(q["a"]).max()) <= bound  # PEFT's kaiming-uniform
    assert not np.allclose(q["a"][0], q["a"][1])  # layers get independent draws


def test_zero_b_lora_equals_base_model(params, batch):
    adapters = lora.init_lora(CFG, params, jax.random.key(2))
    base = forward(CFG, {"params": params}, batch)
    adapted = forward(CFG, {"params": params, "lora": adapters}, batch)
    np.testing.assert_array_equal(adapted, base)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_lora_forward_equals_merged_params(params, batch, remat_policy):
    cfg = CFG.replace(remat_policy=remat_policy)
    adapters = randomize_b(lora.init_lora(cfg, params, jax.random.key(2)))
    adapted = forward(cfg, {"params": params, "lora": adapters}, batch)
    merged = forward(cfg, {"params": lora.merge(cfg, params, adapters)}, batch)
    base = forward(cfg, {"params": params}, batch)
    assert float(jnp.abs(adapted - base).max()) > 1e-2  # the adapters really act
    np.testing.assert_allclose(adapted, merged, atol=1e-4, rtol=0)


def test_lora_collection_is_ignored_without_a_lora_config(params, batch):
    adapters = randomize_b(lora.init_lora(CFG, params, jax.random.key(2)))
    without_cfg = forward(BASE, {"params": params, "lora": adapters}, batch)
    np.testing.assert_array_equal(without_cfg, forward(BASE, {"params": params}, batch))


def test_dropout_only_when_not_deterministic(params, batch):
    cfg = CFG.replace(lora=dataclasses.replace(CFG.lora, dropout=0.5))
    adapters = randomize_b(lora.init_lora(cfg, params, jax.random.key(2)))
    variables = {"params": params, "lora": adapters}
    no_dropout = forward(CFG, variables, batch)

    np.testing.assert_array_equal(forward(cfg, variables, batch), no_dropout)
    drop_a = forward(cfg, variables, batch, False, jax.random.key(3))
    drop_b = forward(cfg, variables, batch, False, jax.random.key(4))
    assert float(jnp.abs(drop_a - no_dropout).max()) > 1e-3
    assert float(jnp.abs(drop_a - drop_b).max()) > 1e-3
    # dropout sits on the adapter input only: the base model is unaffected
    base_det = forward(cfg, {"params": params}, batch)
    base_train = forward(cfg, {"params": params}, batch, False, jax.random.key(3))
    np.testing.assert_array_equal(base_train, base_det)


def test_gradients_reach_the_adapters(params, batch):
    adapters = lora.init_lora(CFG, params, jax.random.key(2))

    def loss(adapters):
        return forward(CFG, {"params": params, "lora": adapters}, batch).mean()

    grads = jax.grad(loss)(adapters)["language_model"]["layers"]["mlp"]["down_proj"]
    assert float(jnp.abs(grads["b"]).max()) > 0.0  # B learns first, A's gradient is 0 at B = 0
    assert float(jnp.abs(grads["a"]).max()) == 0.0


def test_lora_logical_specs_mirror_the_adapters(params):
    specs = lora.lora_logical_specs(CFG)
    adapters = jax.eval_shape(lambda k: lora.init_lora(CFG, llava.abstract_params(CFG), k),
                              jax.random.key(0))
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    assert jax.tree.structure(jax.tree.map(lambda _: 0, specs, is_leaf=is_spec)) == \
        jax.tree.structure(jax.tree.map(lambda _: 0, adapters))
    q = specs["language_model"]["layers"]["self_attn"]["q_proj"]
    assert q == {"a": PartitionSpec("layers", "embed", "lora_rank"),
                 "b": PartitionSpec("layers", "lora_rank", "heads")}
    down = specs["language_model"]["layers"]["mlp"]["down_proj"]
    assert down["a"] == PartitionSpec("layers", "mlp", "lora_rank")


def test_lora_helpers_require_a_lora_config(params):
    with pytest.raises(ValueError, match="cfg.lora is None"):
        lora.init_lora(BASE, params, jax.random.key(0))
