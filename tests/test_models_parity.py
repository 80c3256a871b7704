"""Logit parity with transformers' `LlavaForConditionalGeneration` on tiny random models.

Every HF weight (norm scales and biases included) is perturbed away from its init so a
mis-mapped or ignored parameter cannot hide, then copied into our tree with a small
test-local mapping (the real converter lives in models/llava/hf.py and is tested there).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration

from mmalign_jax.models import llava
from mmalign_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from mmalign_jax.models.vision import VisionTower

TOL = 1e-4
IMAGE_TOKEN = 299
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=32, patch_size=8)
TEXT = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
N_IMG = (32 // 8) ** 2  # image tokens per image ('default' drops CLS)


# ----------------------------------------------------------------------------- helpers


def build_hf(text=None, **llava_kw):
    torch.manual_seed(0)
    hf_cfg = HFLlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=LlamaConfig(**{**TEXT, **(text or {})}),
        image_token_id=IMAGE_TOKEN,
        projector_hidden_act="gelu",
        **{"vision_feature_layer": -2, "vision_feature_select_strategy": "default", **llava_kw},
    )
    model = LlavaForConditionalGeneration._from_config(hf_cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def our_config(hf_cfg) -> LlavaConfig:
    v, t = hf_cfg.vision_config, hf_cfg.text_config
    rope = dict(t.rope_parameters)
    theta = rope.pop("rope_theta")
    return LlavaConfig(
        vision=VisionConfig(**{f: getattr(v, f) for f in VISION}, layer_norm_eps=v.layer_norm_eps),
        text=TextConfig(
            **{f: getattr(t, f) for f in TEXT},
            head_dim_override=t.head_dim,
            rms_norm_eps=t.rms_norm_eps,
            rope_theta=theta,
            rope_scaling=None if rope["rope_type"] == "default" else tuple(sorted(rope.items())),
            tie_word_embeddings=t.tie_word_embeddings,
            attention_bias=t.attention_bias,
            mlp_bias=t.mlp_bias,
        ),
        image_token_id=hf_cfg.image_token_id,
        vision_feature_layer=hf_cfg.vision_feature_layer,
        vision_feature_select_strategy=hf_cfg.vision_feature_select_strategy,
    )


def to_params(hf, cfg: LlavaConfig):
    """HF state dict → our params tree (Linear weights transposed, conv OIHW → HWIO,
    decoder layers stacked)."""
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}

    def dense(prefix):
        out = {"kernel": sd[f"{prefix}.weight"].T}
        if f"{prefix}.bias" in sd:
            out["bias"] = sd[f"{prefix}.bias"]
        return out

    def norm(prefix):
        out = {"scale": sd[f"{prefix}.weight"]}
        if f"{prefix}.bias" in sd:
            out["bias"] = sd[f"{prefix}.bias"]
        return out

    vt, lm = "model.vision_tower.", "model.language_model."
    vision = {
        "embeddings": {
            "class_embedding": sd[vt + "embeddings.class_embedding"],
            "patch_embedding": {
                "kernel": sd[vt + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)
            },
            "position_embedding": {"embedding": sd[vt + "embeddings.position_embedding.weight"]},
        },
        "pre_layrnorm": norm(vt + "pre_layrnorm"),
        "post_layernorm": norm(vt + "post_layernorm"),
    }
    for i in range(cfg.vision.num_hidden_layers):
        p = f"{vt}encoder.layers.{i}."
        vision[f"layers_{i}"] = {
            "layer_norm1": norm(p + "layer_norm1"),
            "layer_norm2": norm(p + "layer_norm2"),
            "self_attn": {n: dense(p + "self_attn." + n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "mlp": {n: dense(p + "mlp." + n) for n in ("fc1", "fc2")},
        }

    def decoder_layer(i):
        p = f"{lm}layers.{i}."
        return {
            "input_layernorm": norm(p + "input_layernorm"),
            "post_attention_layernorm": norm(p + "post_attention_layernorm"),
            "self_attn": {n: dense(p + "self_attn." + n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
            "mlp": {n: dense(p + "mlp." + n) for n in ("gate_proj", "up_proj", "down_proj")},
        }

    layers = [decoder_layer(i) for i in range(cfg.text.num_hidden_layers)]
    language = {
        "embed_tokens": {"embedding": sd[lm + "embed_tokens.weight"]},
        "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers),
        "norm": norm(lm + "norm"),
    }
    if not cfg.text.tie_word_embeddings:
        language["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    params = {
        "vision_tower": vision,
        "multi_modal_projector": {n: dense("model.multi_modal_projector." + n) for n in ("linear_1", "linear_2")},
        "language_model": language,
    }
    # The mapping must cover exactly the parameters our model creates, with their shapes.
    expected = llava.abstract_params(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, expected)
    return jax.tree.map(jnp.asarray, params)


@functools.partial(jax.jit, static_argnums=0)
def run(cfg, params, ids, pixels, mask, image_mask=None):
    """Jitted `Llava.__call__` (also proves it traces under jit)."""
    return llava.Llava(cfg).apply({"params": params}, ids, pixels, mask, image_mask)


def random_tokens(rng, n):
    return rng.integers(3, IMAGE_TOKEN - 1, size=n).tolist()


def image_prompt(rng, n_images, n_text=4):
    """[bos, text, (<image>*N_IMG, text) * n_images]."""
    ids = [1] + random_tokens(rng, n_text)
    for _ in range(n_images):
        ids += [IMAGE_TOKEN] * N_IMG + random_tokens(rng, n_text)
    return ids


def hf_logits(hf, ids, mask, pixels_nhwc=None):
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(np.asarray(ids)),
            attention_mask=torch.tensor(np.asarray(mask)),
            pixel_values=None if pixels_nhwc is None
            else torch.tensor(np.asarray(pixels_nhwc).transpose(0, 3, 1, 2)),
        )
    return out.logits.numpy()


def max_diff_on(mask, a, b):
    mask = np.asarray(mask).astype(bool)
    return float(np.abs(np.asarray(a)[mask] - np.asarray(b)[mask]).max())


@pytest.fixture(scope="module")
def base():
    hf = build_hf()
    cfg = our_config(hf.config)
    return hf, cfg, to_params(hf, cfg)


# ----------------------------------------------------------------------------- vision


@pytest.mark.parametrize("layer,strategy", [(-2, "default"), (1, "full")])
def test_vision_tower_and_projector_match_hf(layer, strategy):
    hf = build_hf(vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    cfg = our_config(hf.config)
    params = to_params(hf, cfg)
    pixels = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    hf_pixels = torch.tensor(pixels.transpose(0, 3, 1, 2))
    with torch.no_grad():
        hidden = hf.model.vision_tower(hf_pixels, output_hidden_states=True).hidden_states[layer]
        projected = torch.stack(hf.model.get_image_features(hf_pixels).pooler_output)
    expected = hidden[:, 1:] if strategy == "default" else hidden

    ours = VisionTower(cfg).apply({"params": params["vision_tower"]}, jnp.asarray(pixels))
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected.numpy(), atol=TOL, rtol=0)

    feats = llava.Llava(cfg).apply(
        {"params": params}, jnp.asarray(pixels)[None], method=llava.Llava.encode_images
    )
    assert feats.shape == (1, 3, cfg.num_image_tokens, TEXT["hidden_size"])
    np.testing.assert_allclose(feats[0], projected.numpy(), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- LM alone

LM_VARIANTS = {
    "gqa": {},
    "tied": {"tie_word_embeddings": True},
    "llama3_rope_head_dim": {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
        "rope_theta": 500000.0,
        "head_dim": 32,
    },
    "biases": {"attention_bias": True, "mlp_bias": True},
    "linear_rope": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    # positions run past max_position_embeddings, so the NTK base really changes
    "dynamic_rope": {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
                     "max_position_embeddings": 16},
}


@pytest.mark.parametrize("variant", sorted(LM_VARIANTS))
def test_language_model_text_only_matches_hf(variant):
    hf = build_hf(text=LM_VARIANTS[variant])
    cfg = our_config(hf.config)
    if variant == "tied":
        assert "lm_head" not in llava.abstract_params(cfg)["language_model"]
    params = to_params(hf, cfg)
    rng = np.random.default_rng(1)
    ids = np.array([[1] + random_tokens(rng, 23), [1] + random_tokens(rng, 23)])
    mask = np.ones_like(ids)
    mask[1, 15:] = 0  # right padding
    expected = hf_logits(hf, ids, mask)

    ours = run(cfg, params, jnp.asarray(ids), None, jnp.asarray(mask))
    assert ours.dtype == jnp.float32 and ours.shape == (2, 24, TEXT["vocab_size"])
    assert max_diff_on(mask, ours, expected) <= TOL


# ----------------------------------------------------------------------------- full LLaVA


def test_llava_one_image_matches_hf(base):
    hf, cfg, params = base
    rng = np.random.default_rng(2)
    ids = np.array([image_prompt(rng, 1)])
    mask = np.ones_like(ids)
    pixels = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
    expected = hf_logits(hf, ids, mask, pixels)
    ours = run(cfg, params, jnp.asarray(ids), jnp.asarray(pixels)[:, None], jnp.asarray(mask))
    assert max_diff_on(mask, ours, expected) <= TOL
    # the image actually matters: a different image changes the logits
    other = run(cfg, params, jnp.asarray(ids), jnp.asarray(pixels)[:, None] + 1.0, jnp.asarray(mask))
    assert float(jnp.abs(other - ours).max()) > 1e-2


def test_llava_two_images_in_one_example_matches_hf(base):
    hf, cfg, params = base
    rng = np.random.default_rng(3)
    ids = np.array([image_prompt(rng, 2)])
    mask = np.ones_like(ids)
    pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    expected = hf_logits(hf, ids, mask, pixels)  # HF: [num_images_total, 3, H, W]
    ours = run(cfg, params, jnp.asarray(ids), jnp.asarray(pixels)[None], jnp.asarray(mask))
    assert max_diff_on(mask, ours, expected) <= TOL


def test_llava_padded_batch_with_image_mask_matches_hf(base):
    """Right-padded batch; example 2 has one image in two slots (slot 2 holds junk)."""
    hf, cfg, params = base
    rng = np.random.default_rng(4)
    first, second = image_prompt(rng, 2), image_prompt(rng, 1, n_text=2)
    ids = np.zeros((2, len(first)), np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate((first, second)):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    pixels = rng.normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
    image_mask = np.array([[True, True], [True, False]])
    expected = hf_logits(hf, ids, mask, pixels[image_mask])  # the 3 real images, in order

    args = (jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask), jnp.asarray(image_mask))
    ours = run(cfg, params, *args)
    assert max_diff_on(mask, ours, expected) <= TOL

    model = llava.Llava(cfg)
    shape = jax.eval_shape(lambda p, *a: model.apply({"params": p}, *a), params, *args)
    assert shape == jax.ShapeDtypeStruct((2, len(first), TEXT["vocab_size"]), jnp.float32)


def test_image_mask_takes_real_images_in_order(base):
    """A real image in slot 2 with slot 1 empty feeds the first image-token run."""
    _, cfg, params = base
    rng = np.random.default_rng(5)
    ids = jnp.asarray([image_prompt(rng, 1)])
    mask = jnp.ones_like(ids)
    image = jnp.asarray(rng.normal(size=(1, 1, 32, 32, 3)), jnp.float32)
    junk = jnp.full_like(image, 3.0)
    reference = run(cfg, params, ids, image, mask)
    shifted = run(cfg, params, ids, jnp.concatenate([junk, image], axis=1), mask,
                  jnp.asarray([[False, True]]))
    np.testing.assert_allclose(shifted, reference, atol=1e-5, rtol=0)


def test_init_params_matches_logical_specs():
    cfg = dataclasses.replace(our_config(build_hf().config), remat_policy="dots")
    params = jax.jit(functools.partial(llava.init_params, cfg))(jax.random.key(0))
    specs = llava.param_logical_specs(cfg)
    assert jax.tree.structure(jax.tree.map(lambda x: 0, params)) == jax.tree.structure(
        jax.tree.map(lambda x: 0, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    layers = specs["language_model"]["layers"]
    assert tuple(layers["self_attn"]["k_proj"]["kernel"]) == ("layers", "embed", "kv_heads")
    assert tuple(layers["mlp"]["down_proj"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(specs["language_model"]["embed_tokens"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["vision_tower"]["layers_0"]["mlp"]["fc1"]["kernel"]) == ("embed_vision", "mlp_vision")
    flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for spec, leaf in zip(flat, jax.tree.leaves(params)):
        assert len(spec) == leaf.ndim


def test_remat_policies_keep_values_and_gradients(base):
    _, cfg, params = base
    ids = jnp.asarray([[1] + random_tokens(np.random.default_rng(6), 11)])
    mask = jnp.ones_like(ids)

    def value_and_grad(policy):
        model = llava.Llava(dataclasses.replace(cfg, remat_policy=policy))
        loss = lambda p: model.apply({"params": p}, ids, None, mask).std()  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    reference = value_and_grad("none")
    for policy in ("full", "dots_no_batch"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                     value_and_grad(policy), reference)
    with pytest.raises(ValueError, match="remat_policy"):
        value_and_grad("sometimes")


def test_out_of_range_feature_layer_is_reported(base):
    _, cfg, params = base
    bad = dataclasses.replace(cfg, vision_feature_layer=-5)  # 3 layers: 4 hidden states
    with pytest.raises(ValueError, match="vision_feature_layer=-5"):
        llava.Llava(bad).apply({"params": params}, jnp.zeros((1, 1, 32, 32, 3)),
                               method=llava.Llava.encode_images)


def test_linear_projector_has_only_linear_1(base):
    _, cfg, _ = base
    shapes = llava.abstract_params(dataclasses.replace(cfg, projector_type="linear"))
    projector = shapes["multi_modal_projector"]
    assert set(projector) == {"linear_1"}
    assert projector["linear_1"]["kernel"].shape == (VISION["hidden_size"], TEXT["hidden_size"])
    with pytest.raises(ValueError, match="projector_type"):
        llava.abstract_params(dataclasses.replace(cfg, projector_type="mlp3x"))
