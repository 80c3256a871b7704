"""Qwen2.5-VL against Hugging Face `Qwen2_5_VLForConditionalGeneration` (float32, tiny random
config): logits, KV-cached decoding, greedy generation, parameter counts, weights both ways."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmalign_jax.generate.sampling import SamplingConfig, generate_tokens  # noqa: E402
from mmalign_jax.models import registry  # noqa: E402
from mmalign_jax.models.qwen2_5_vl import hf, model as qm, presets  # noqa: E402

CFG = presets.qwen25_vl_tiny()
IMG, VS, VE = CFG.image_token_id, CFG.vision_start_token_id, CFG.vision_end_token_id
PAD = CFG.text.pad_token_id
SIZES = [(230, 150), (90, 60), (40, 200)]          # (width, height): 3 grids, windows > 1


def _randomize(sd):
    """HF initialises biases to 0 and norms to 1: give every tensor random values so a
    swapped or skipped tensor shows."""
    rs = np.random.RandomState(0)
    out = {}
    for k, v in sd.items():
        x = v.detach().numpy()
        if k.endswith("bias") or "norm" in k or "ln_q" in k:
            x = rs.randn(*x.shape).astype(np.float32) * 0.1 + (1.0 if "norm" in k or "ln_q" in k else 0.0)
        if "attn.qkv.weight" in k:   # sharper vision attention: a wrong window shows
            x = x * 8.0
        out[k] = torch.tensor(x)
    return out


@pytest.fixture(scope="module")
def hf_model():
    config = transformers.Qwen2_5_VLConfig(**presets.to_hf_config(CFG))
    torch.manual_seed(0)
    m = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
    m.load_state_dict(_randomize(m.state_dict()))
    return m


@pytest.fixture(scope="module")
def params(hf_model):
    return hf.state_dict_to_params(CFG, hf_model.state_dict())


@pytest.fixture(scope="module")
def images():
    """(HF pixel_values, image_grid_thw) per image of SIZES, from HF's own processor."""
    from PIL import Image
    proc = transformers.Qwen2VLImageProcessor(min_pixels=CFG.image.min_pixels,
                                              max_pixels=CFG.image.max_pixels)
    rs = np.random.RandomState(1)
    out = []
    for w, h in SIZES:
        im = Image.fromarray(rs.randint(0, 255, (h, w, 3), dtype=np.uint8))
        enc = proc(images=[im], return_tensors="np")
        out.append((enc["pixel_values"].astype(np.float32), enc["image_grid_thw"][0]))
    return out


def _row(images, which):
    """Prompt ids: text, then for each image its `<|vision_start|>` + pads + end, text."""
    ids = [5, 6, 7]
    for j in which:
        n = int(np.prod(images[j][1])) // CFG.vision.merge_unit
        ids += [VS] + [IMG] * n + [VE] + [8 + j, 9]
    return ids + [10, 11, 12]


def _batch(images, rows_images, text_rows=()):
    """Left-padded ids/mask, our slot inputs, and HF's flat inputs for the same rows."""
    rows = [_row(images, w) for w in rows_images] + [list(r) for r in text_rows]
    t = max(map(len, rows))
    ids = np.full((len(rows), t), PAD, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    slots = max([len(w) for w in rows_images] + [1])
    fam = registry.get("qwen2_5_vl")
    arrays = fam.empty_images(CFG, len(rows), slots, 0)
    image_mask = np.zeros((len(rows), slots), bool)
    hf_pix, hf_grid = [], []
    for i, which in enumerate(rows_images):
        for s, j in enumerate(which):
            pix, grid = images[j]
            arrays["pixel_values"][i, s, :len(pix)] = pix
            arrays["image_grid_thw"][i, s] = grid
            image_mask[i, s] = True
            hf_pix.append(pix)
            hf_grid.append(grid)
    ours = {k: jnp.asarray(v) for k, v in arrays.items()}
    hf_in = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
             "mm_token_type_ids": torch.tensor((ids == IMG).astype(np.int64))}
    if hf_pix:
        hf_in["pixel_values"] = torch.tensor(np.concatenate(hf_pix))
        hf_in["image_grid_thw"] = torch.tensor(np.stack(hf_grid))
    return ids, mask, ours, image_mask, hf_in


CASES = {
    "one image": ([[0]], ()),
    "two images of different sizes": ([[0, 1]], ()),
    "text only": ([], ([20, 21, 22, 23, 24],)),
    "padded batch mixing these": ([[0, 1], [2], [1]], ([20, 21, 22],)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_transformers(case, hf_model, params, images):
    rows_images, text_rows = CASES[case]
    ids, mask, ours, image_mask, hf_in = _batch(images, rows_images, text_rows)
    with torch.no_grad():
        ref = hf_model(**hf_in).logits.numpy()
    pix = ours if rows_images else None
    got = np.asarray(qm.Qwen25VL(CFG).apply(
        {"params": params}, jnp.asarray(ids, jnp.int32), pix, jnp.asarray(mask, jnp.int32),
        image_mask=jnp.asarray(image_mask) if rows_images else None))
    diff = np.abs(got - ref)[mask.astype(bool)]
    assert diff.max() <= 1e-4, diff.max()


def test_positions_match_get_rope_index(hf_model, images):
    ids, mask, ours, image_mask, hf_in = _batch(images, [[0, 1], [2], []], ([20, 21],))
    ref_pos, ref_delta = hf_model.model.get_rope_index(
        hf_in["input_ids"], hf_in["mm_token_type_ids"], hf_in["image_grid_thw"],
        attention_mask=hf_in["attention_mask"])
    pos, nxt = qm.mrope_positions(CFG, jnp.asarray(ids), jnp.asarray(mask),
                                  ours["image_grid_thw"], jnp.asarray(image_mask))
    m = mask.astype(bool)
    np.testing.assert_array_equal(np.asarray(pos)[:, m], ref_pos.numpy()[:, m])
    np.testing.assert_array_equal(np.asarray(nxt), (ref_delta[:, 0] + m.sum(1)).numpy())


def test_window_attention_is_used(params, images):
    """Every vision block full-attention gives other features: the windows are real."""
    ids, mask, ours, image_mask, _ = _batch(images, [[0]])
    full = CFG.replace(vision=CFG.vision.__class__(**{**CFG.vision.__dict__,
                                                       "fullatt_block_indexes": (0, 1)}))
    a = qm.Qwen25VL(CFG).apply({"params": params}, ours, method="encode_images")["features"]
    b = qm.Qwen25VL(full).apply({"params": params}, ours, method="encode_images")["features"]
    assert float(jnp.abs(a - b).max()) > 1e-3   # parity holds to ~1e-6


def test_kv_cache_equals_full_forward(params, images):
    ids, mask, ours, image_mask, _ = _batch(images, [[0, 1], [2]])
    model = qm.Qwen25VL(CFG)
    v = {"params": params}
    ids_j, mask_j, im = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(image_mask)
    split = ids.shape[1] - 4

    @jax.jit
    def both(v, ours):
        full = model.apply(v, ids_j, ours, mask_j, image_mask=im)
        feats = model.apply(v, ours, method="encode_images")
        embeds = model.apply(v, ids_j, feats, im, method="embed")
        pos, _ = model.apply(v, ids_j, mask_j, ours, im, method="positions")
        cache = registry.get("qwen2_5_vl").init_cache(CFG, ids.shape[0], ids.shape[1])
        h1, cache = model.apply(v, embeds[:, :split], mask_j, pos[:, :, :split], cache,
                                method="decode")
        h2, cache = model.apply(v, embeds[:, split:], mask_j, pos[:, :, split:], cache,
                                method="decode")
        return full, model.apply(v, jnp.concatenate([h1, h2], axis=1), method="lm_logits")

    full, logits = both(v, ours)
    np.testing.assert_allclose(np.asarray(logits)[mask.astype(bool)],
                               np.asarray(full)[mask.astype(bool)], atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_generation_matches_transformers(case, hf_model, params, images):
    rows_images, text_rows = CASES[case]
    ids, mask, ours, image_mask, hf_in = _batch(images, rows_images, text_rows)
    n_new = 8
    with torch.no_grad():
        ref = hf_model.generate(**hf_in, max_new_tokens=n_new, min_new_tokens=n_new,
                                do_sample=False, pad_token_id=PAD).numpy()[:, ids.shape[1]:]
    out = generate_tokens(qm.Qwen25VL(CFG), {"params": params}, ids, mask,
                          ours if rows_images else None,
                          image_mask if rows_images else None,
                          SamplingConfig(max_new_tokens=n_new, temperature=0.0,
                                         eos_token_ids=(CFG.text.vocab_size + 5,)))
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_preset_parameter_counts_equal_transformers(name):
    cfg = presets.PRESET_BUILDERS[name]()
    config = transformers.Qwen2_5_VLConfig(**presets.to_hf_config(cfg))
    with torch.device("meta"):
        ref = sum(p.numel() for p in
                  transformers.Qwen2_5_VLForConditionalGeneration(config).parameters())
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(qm.abstract_params(cfg)))
    assert ours == ref


def test_config_json_round_trip_and_hub_form():
    assert presets.from_hf_config(presets.to_hf_config(CFG)) == CFG.replace(image=presets.QwenImageConfig())
    hub = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
           "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
           "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
           "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 128000,
           "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
           "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645,
           "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                             "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                             "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
                             "spatial_patch_size": 14, "window_size": 112,
                             "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                             "temporal_patch_size": 2},
           "image_token_id": 151655, "video_token_id": 151656,
           "vision_start_token_id": 151652, "vision_end_token_id": 151653}
    assert presets.from_hf_config(hub) == presets.qwen25_vl_3b()


def test_registry_finds_the_family():
    assert registry.for_hf_config(presets.to_hf_config(CFG)).name == "qwen2_5_vl"
    assert registry.for_preset("qwen2.5-vl-7b").name == "qwen2_5_vl"
    assert registry.for_config(CFG).name == "qwen2_5_vl"
