"""HF llava checkpoints ⇄ mmalign_jax params: layouts, logits parity, LoRA export, errors, bf16."""
import copy
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from mmalign_jax import convert  # noqa: E402
from mmalign_jax.convert import CheckpointError  # noqa: E402
from mmalign_jax.models.llava import hf  # noqa: E402
from mmalign_jax.convert.__main__ import main as cli_main  # noqa: E402
from mmalign_jax.models import llava, lora as lora_lib  # noqa: E402
from mmalign_jax.models.config import LoraConfig  # noqa: E402

IMAGE_TOKEN = 5
VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
              num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
              projection_dim=16)
TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=112, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
            max_position_embeddings=128, rms_norm_eps=1e-5)


def _hf_model(seed=0, dtype=torch.float32, **overrides):
    """A tiny random LlavaForConditionalGeneration with O(1) weights (HF init is tiny)."""
    text = dict(TEXT, **overrides.pop("text", {}))
    cfg = transformers.LlavaConfig(vision_config=dict(VISION), text_config=text,
                                   image_token_index=IMAGE_TOKEN, pad_token_id=3, **overrides)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = name.endswith(".weight") and ("norm" in name or "layrnorm" in name)
            p.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise)
    return model.to(dtype)


def _inputs(seed=0, batch=2):
    n_img = (VISION["image_size"] // VISION["patch_size"]) ** 2
    rng = np.random.default_rng(seed)
    ids = rng.integers(6, TEXT["vocab_size"], size=(batch, 4 + n_img + 7))
    ids[:, 0] = 1
    ids[:, 4:4 + n_img] = IMAGE_TOKEN
    pixels = rng.standard_normal((batch, 3, VISION["image_size"], VISION["image_size"]),
                                 dtype=np.float32)
    mask = np.ones_like(ids)
    return ids, pixels, mask


def _hf_logits(model, inputs):
    ids, pixels, mask = inputs
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels).to(model.dtype),
                    attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


def _our_logits(cfg, params, inputs, lora=None):
    ids, pixels, mask = inputs
    variables = {"params": params} if lora is None else {"params": params, "lora": lora}
    pv = jnp.asarray(pixels.transpose(0, 2, 3, 1)[:, None])  # [B, I=1, H, W, 3]
    fn = jax.jit(llava.Llava(cfg).apply)
    return np.asarray(fn(variables, jnp.asarray(ids, jnp.int32), pv, jnp.asarray(mask, jnp.int32)))


def _write_folder(path, config: dict, tensors: dict, n_shards=1):
    """A checkpoint folder written by hand: `tensors` split into `n_shards` files (+ index)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    keys = list(tensors)
    if n_shards == 1:
        save_file({k: tensors[k].contiguous() for k in keys},
                  os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.arange(len(keys)), n_shards)):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {keys[j]: tensors[keys[j]].contiguous() for j in chunk}
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return path


def _tree_equal(a, b):
    fa, fb = hf._flatten(a), hf._flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The HF model, its save_pretrained folder, reference logits and our loaded params."""
    root = tmp_path_factory.mktemp("convert")
    model = _hf_model()
    saved = root / "saved"
    model.save_pretrained(saved)
    inputs = _inputs()
    cfg, params = convert.load_hf_llava(saved)
    return dict(root=root, model=model, saved=saved, inputs=inputs,
                hf_logits=_hf_logits(model, inputs), cfg=cfg, params=params)


def test_saved_layout_is_what_we_expect(base):
    # transformers 5.x save_pretrained layout (checked, not assumed): what load must accept.
    with safe_open(os.path.join(base["saved"], "model.safetensors"), "numpy") as f:
        keys = set(f.keys())
    canonical = {hf.canonical_key(k) for k in keys}
    assert canonical == {e.hf_key for e in hf.hf_entries(base["cfg"])}


def test_load_matches_hf_logits(base):
    cfg = base["cfg"]
    assert cfg.vision.num_patches == 16 and cfg.text.num_key_value_heads == 2
    assert cfg.image_token_id == IMAGE_TOKEN
    ours = _our_logits(cfg, base["params"], base["inputs"])
    np.testing.assert_allclose(ours, base["hf_logits"], atol=1e-4, rtol=0)
    assert np.abs(base["hf_logits"]).max() > 0.5  # not a trivially small comparison


@pytest.mark.parametrize("layout,n_shards", [("hub", 2), ("transformers5", 3), ("hub", 1)])
def test_load_other_key_layouts_and_shards(base, layout, n_shards):
    sd = base["model"].state_dict()
    tensors = {hf.layout_key(hf.canonical_key(k), layout): v for k, v in sd.items()}
    if layout == "hub":
        assert any(k.startswith("vision_tower.vision_model.") for k in tensors)
        assert "language_model.lm_head.weight" in tensors
    else:
        assert "lm_head.weight" in tensors and any(k.startswith("model.language_model.")
                                                   for k in tensors)
    with open(os.path.join(base["saved"], "config.json")) as f:
        config = json.load(f)
    folder = _write_folder(base["root"] / f"{layout}-{n_shards}", config, tensors, n_shards)
    cfg, params = convert.load_hf_llava(folder)
    assert cfg == base["cfg"]
    _tree_equal(params, base["params"])


def test_state_dict_identity(base):
    sd = {k: v.numpy() for k, v in base["model"].state_dict().items()}
    params = convert.hf_state_dict_to_params(base["cfg"], sd)
    back = convert.params_to_hf_state_dict(base["cfg"], params, key_layout="hub")
    assert set(back) == {hf.canonical_key(k) for k in sd}
    for k, v in sd.items():
        np.testing.assert_array_equal(back[hf.canonical_key(k)], v, err_msg=k)


def test_save_loads_in_transformers_with_same_logits(base):
    out = base["root"] / "export"
    # A small shard size forces several files + the index.
    convert.save_hf_llava(base["cfg"], base["params"], out, max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 2
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    np.testing.assert_allclose(_hf_logits(model.eval(), base["inputs"]), base["hf_logits"],
                               atol=1e-5, rtol=0)
    # and back again, bit for bit
    cfg2, params2 = convert.load_hf_llava(out)
    assert cfg2 == base["cfg"]
    _tree_equal(params2, base["params"])


def test_save_hub_layout_loads(base):
    out = base["root"] / "export-hub"
    convert.save_hf_llava(base["cfg"], base["params"], out, key_layout="hub")
    with safe_open(os.path.join(out, "model.safetensors"), "numpy") as f:
        assert "language_model.lm_head.weight" in f.keys()
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    np.testing.assert_allclose(_hf_logits(model.eval(), base["inputs"]), base["hf_logits"],
                               atol=1e-5, rtol=0)


def test_lora_export_matches_adapter_forward(base):
    cfg = base["cfg"].replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    params = base["params"]
    adapters = lora_lib.init_lora(cfg, params, jax.random.key(1))
    keys = iter(jax.random.split(jax.random.key(2), 100))
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.2 * jax.random.normal(next(keys), x.shape, x.dtype)
        if p[-1].key == "b" else x, adapters)
    ours = _our_logits(cfg, params, base["inputs"], lora=adapters)
    assert np.abs(ours - base["hf_logits"]).max() > 1e-2  # the adapters change the model
    out = base["root"] / "export-lora"
    convert.save_hf_llava(cfg, params, out, lora=adapters)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    np.testing.assert_allclose(_hf_logits(model, base["inputs"]), ours, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cfg.lora"):
        convert.save_hf_llava(base["cfg"], params, base["root"] / "x", lora=adapters)


def test_sharded_load_places_arrays(base):
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), devices=jax.devices()[:8])
    from jax.sharding import NamedSharding, PartitionSpec as P

    def shard(path):  # shard stacked decoder params over 'fsdp' on their model dim
        if "/layers/" in path and path.endswith("kernel"):
            return NamedSharding(mesh, P(None, "fsdp", None))
        return NamedSharding(mesh, P())

    cfg, params = convert.load_hf_llava(base["saved"], sharding=shard)
    q = params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding == NamedSharding(mesh, P(None, "fsdp", None))
    assert len(q.addressable_shards) == 8
    _tree_equal(params, base["params"])
    # a pytree of shardings works too
    tree = jax.tree.map(lambda _: NamedSharding(mesh, P()), base["params"])
    _, params2 = convert.load_hf_llava(base["saved"], sharding=tree)
    _tree_equal(params2, base["params"])


def test_bf16_round_trip(base, tmp_path):
    model = _hf_model(dtype=torch.bfloat16)
    src = tmp_path / "bf16"
    model.save_pretrained(src)
    ref = {hf.canonical_key(k): v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
           for k, v in model.state_dict().items()}
    cfg, params = convert.load_hf_llava(src, dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    back = convert.params_to_hf_state_dict(cfg, params, key_layout="hub")
    for k, v in ref.items():  # bit exact
        np.testing.assert_array_equal(back[k].view(np.int16), v.view(np.int16), err_msg=k)
    # float32 load of a bf16 file is the exact upcast
    _, p32 = convert.load_hf_llava(src, dtype="float32")
    k = p32["language_model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(np.asarray(k), np.asarray(
        params["language_model"]["embed_tokens"]["embedding"]).astype(np.float32))

    out = tmp_path / "bf16-export"
    convert.save_hf_llava(cfg, params, out)
    with safe_open(os.path.join(out, "model.safetensors"), "numpy") as f:
        key = f.keys()[0]
        assert f.get_slice(key).get_dtype() == "BF16"
    assert json.load(open(out / "config.json"))["dtype"] == "bfloat16"
    reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(
        out, dtype=torch.bfloat16)
    for k, v in reloaded.state_dict().items():
        np.testing.assert_array_equal(v.view(torch.int16).numpy(),
                                      ref[hf.canonical_key(k)].view(np.int16), err_msg=k)
    # export of f32 params as bf16
    out2 = tmp_path / "f32-as-bf16"
    convert.save_hf_llava(base["cfg"], base["params"], out2, dtype="bfloat16")
    _, p_bf = convert.load_hf_llava(out2, dtype="bfloat16")
    np.testing.assert_array_equal(
        np.asarray(p_bf["multi_modal_projector"]["linear_1"]["kernel"]),
        np.asarray(base["params"]["multi_modal_projector"]["linear_1"]["kernel"]).astype(
            ml_dtypes.bfloat16))


def test_tied_embeddings_and_projector_without_bias(tmp_path):
    model = _hf_model(seed=3, tie_word_embeddings=True, multimodal_projector_bias=False,
                      text=dict(tie_word_embeddings=True))
    assert model.model.multi_modal_projector.linear_1.bias is None
    src = tmp_path / "tied"
    model.save_pretrained(src)
    cfg, params = convert.load_hf_llava(src)
    assert cfg.text.tie_word_embeddings and "lm_head" not in params["language_model"]
    assert not np.asarray(params["multi_modal_projector"]["linear_1"]["bias"]).any()
    inputs = _inputs(seed=1)
    ref = _hf_logits(model, inputs)
    np.testing.assert_allclose(_our_logits(cfg, params, inputs), ref, atol=1e-4, rtol=0)
    out = tmp_path / "tied-export"
    convert.save_hf_llava(cfg, params, out)
    re_model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    np.testing.assert_allclose(_hf_logits(re_model, inputs), ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def sharded(base):
    """A hub-layout checkpoint in 2 shards; each error test copies and damages it."""
    sd = base["model"].state_dict()
    tensors = {hf.canonical_key(k): v for k, v in sd.items()}
    with open(os.path.join(base["saved"], "config.json")) as f:
        config = json.load(f)
    return _write_folder(base["root"] / "sharded-ok", config, tensors, 2), tensors, config


def _damaged(sharded, tmp_path, edit):
    folder, tensors, config = sharded
    tensors, config = dict(tensors), copy.deepcopy(config)
    edit(tensors, config)
    return _write_folder(tmp_path / "bad", config, tensors, 2)


def test_error_missing_shard(sharded, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(sharded[0], folder)
    os.remove(folder / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        convert.load_hf_llava(folder)


def test_error_wrong_shape(sharded, tmp_path):
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    folder = _damaged(sharded, tmp_path,
                      lambda t, c: t.__setitem__(key, torch.zeros(100, 64)))
    with pytest.raises(CheckpointError) as e:
        convert.load_hf_llava(folder)
    assert key in str(e.value) and "[100, 64] -> [112, 64]" in str(e.value)


def test_error_missing_tensor(sharded, tmp_path):
    key = "vision_tower.vision_model.encoder.layers.2.mlp.fc1.bias"
    folder = _damaged(sharded, tmp_path, lambda t, c: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensors") as e:
        convert.load_hf_llava(folder)
    assert f"{key} [64]" in str(e.value)


def test_error_unexpected_tensor(sharded, tmp_path):
    folder = _damaged(sharded, tmp_path,
                      lambda t, c: t.__setitem__("language_model.model.extra.weight", torch.ones(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors[\s\S]*"
                                              r"language_model\.model\.extra\.weight"):
        convert.load_hf_llava(folder)


def test_error_layer_count_mismatch(sharded, tmp_path):
    # config.json says 4 decoder layers, the weights hold 3: every layer-3 tensor is missing
    folder = _damaged(sharded, tmp_path,
                      lambda t, c: c["text_config"].__setitem__("num_hidden_layers", 4))
    with pytest.raises(CheckpointError, match=r"language_model\.model\.layers\.3\.self_attn"):
        convert.load_hf_llava(folder)


@pytest.mark.parametrize("field,value,match", [
    ("architectures", ["LlavaNextForConditionalGeneration"], "architectures"),
    ("model_type", "llava_next", "model_type"),
])
def test_error_unknown_architecture(sharded, tmp_path, field, value, match):
    folder = _damaged(sharded, tmp_path, lambda t, c: c.__setitem__(field, value))
    with pytest.raises(CheckpointError, match=match) as e:
        convert.load_hf_llava(folder)
    assert "config.json" in str(e.value) and str(value[0] if isinstance(value, list) else value) in str(e.value)


def test_error_missing_config_and_weights(sharded, tmp_path):
    folder = tmp_path / "noconfig"
    shutil.copytree(sharded[0], folder)
    os.remove(folder / "config.json")
    with pytest.raises(CheckpointError, match="config.json"):
        convert.load_hf_llava(folder)
    empty = tmp_path / "noweights"
    empty.mkdir()
    shutil.copy(sharded[0] / "config.json", empty)
    with pytest.raises(CheckpointError, match="safetensors"):
        convert.load_hf_llava(empty)


def test_save_rejects_mismatched_params(base, tmp_path):
    params = jax.tree.map(lambda x: x, base["params"])
    del params["language_model"]["norm"]
    with pytest.raises(CheckpointError, match="missing language_model/norm/scale"):
        convert.save_hf_llava(base["cfg"], params, tmp_path / "x")


# ----------------------------------------------------------------------------- CLI


def test_cli_round_trip_with_lora(base, tmp_path):
    import orbax.checkpoint as ocp

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    src = tmp_path / "src"
    shutil.copytree(base["saved"], src)
    shutil.copy(tok / "tokenizer_config.json", src)
    jax_dir = tmp_path / "jax"
    assert cli_main(["hf-to-orbax", "--hf", str(src), "--out", str(jax_dir)]) == 0
    assert (jax_dir / "config.json").exists() and (jax_dir / "tokenizer_config.json").exists()

    cfg = base["cfg"].replace(lora=LoraConfig(rank=2, alpha=6.0, dropout=0.0))
    adapters = lora_lib.init_lora(cfg, base["params"], jax.random.key(3))
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)
    # as a training run stores it: CheckpointManager step folders, 'state' item, trainable
    with ocp.CheckpointManager(os.path.abspath(tmp_path / "run" / "checkpoints"),
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as mngr:
        state = {"trainable": {"lora": adapters}, "step": np.int32(7)}
        mngr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        mngr.wait_until_finished()

    out = tmp_path / "out"
    assert cli_main(["to-hf", "--hf-config-from", str(jax_dir), "--params",
                     str(jax_dir / "params"), "--lora", str(tmp_path / "run" / "checkpoints"),
                     "--lora-alpha", "6", "--out", str(out), "--tokenizer", str(tok)]) == 0
    assert (out / "tokenizer_config.json").exists()
    ref = tmp_path / "ref"
    convert.save_hf_llava(cfg, base["params"], ref, lora=adapters)
    with safe_open(os.path.join(out, "model.safetensors"), "numpy") as a, \
            safe_open(os.path.join(ref, "model.safetensors"), "numpy") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            np.testing.assert_allclose(a.get_tensor(k), b.get_tensor(k), atol=1e-6, err_msg=k)
    # clear CLI errors
    assert cli_main(["to-hf", "--preset", "nope", "--params", str(jax_dir / "params"),
                     "--out", str(tmp_path / "o2")]) == 2
