"""Qwen2.5-VL Hugging Face folders in and out: load both key layouts, train LoRA adapters,
export merged, and `from_pretrained` on the export gives our merged model's logits."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmalign_jax import loading  # noqa: E402
from mmalign_jax.models import lora as lora_lib  # noqa: E402
from mmalign_jax.models import registry  # noqa: E402
from mmalign_jax.models.config import LoraConfig  # noqa: E402
from mmalign_jax.models.family import CheckpointError  # noqa: E402
from mmalign_jax.models.qwen2_5_vl import hf, model as qm, presets  # noqa: E402

from test_qwen_model import CFG, _batch, _randomize  # noqa: E402

FAMILY = registry.get("qwen2_5_vl")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A checkpoint as transformers saves it (transformers >= 5 key layout), tied head."""
    cfg = CFG.replace(text=CFG.text.__class__(**{**CFG.text.__dict__, "tie_word_embeddings": True}))
    config = transformers.Qwen2_5_VLConfig(**presets.to_hf_config(cfg))
    torch.manual_seed(0)
    m = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
    m.load_state_dict(_randomize(m.state_dict()), strict=False)
    out = tmp_path_factory.mktemp("qwen_hf")
    m.save_pretrained(out)
    with open(out / "preprocessor_config.json", "w") as f:
        json.dump(presets.preprocessor_config(CFG), f)
    return str(out), m


@pytest.fixture(scope="module")
def images():
    from PIL import Image
    proc = transformers.Qwen2VLImageProcessor(min_pixels=CFG.image.min_pixels,
                                              max_pixels=CFG.image.max_pixels)
    rs = np.random.RandomState(3)
    out = []
    for w, h in [(230, 150), (90, 60), (40, 200)]:
        im = Image.fromarray(rs.randint(0, 255, (h, w, 3), dtype=np.uint8))
        enc = proc(images=[im], return_tensors="np")
        out.append((enc["pixel_values"].astype(np.float32), enc["image_grid_thw"][0]))
    return out


def _ours_logits(cfg, variables, ids, mask, pix, image_mask):
    return np.asarray(qm.Qwen25VL(cfg).apply(
        variables, jnp.asarray(ids, jnp.int32), pix, jnp.asarray(mask, jnp.int32),
        image_mask=jnp.asarray(image_mask)))


def test_load_saved_folder_and_hub_layout(hf_folder, images, tmp_path):
    path, m = hf_folder
    cfg, params = FAMILY.load_hf(path)
    assert cfg.text.tie_word_embeddings and cfg.image == CFG.image
    assert "lm_head" not in params["language_model"]
    ids, mask, ours, image_mask, hf_in = _batch(images, [[0, 1], [2]])
    with torch.no_grad():
        ref = m(**hf_in).logits.numpy()
    got = _ours_logits(cfg, {"params": params}, ids, mask, ours, image_mask)
    assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4
    # the hub's layout (visual.*, model.*) written by us loads to the same params
    hub = tmp_path / "hub"
    FAMILY.save_hf(cfg, params, hub, key_layout="hub")
    from mmalign_jax.models import hf_io
    header, _ = hf_io.read_safetensors_header(str(hub / "model.safetensors"))
    assert any(k.startswith("visual.blocks.") for k in header)
    assert any(k.startswith("model.layers.") for k in header)
    _, again = FAMILY.load_hf(hub)
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_lora_train_export_merged_from_pretrained(hf_folder, images, tmp_path):
    path, _ = hf_folder
    cfg, params = FAMILY.load_hf(path)
    cfg = cfg.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0,
                                      target_regex=FAMILY.lora_target_regex))
    adapters = lora_lib.init_lora(cfg, params, jax.random.key(1))
    ids, mask, ours, image_mask, _ = _batch(images, [[0, 1], [2]])
    model = qm.Qwen25VL(cfg)
    targets = jnp.asarray(np.roll(ids, -1, axis=1) % cfg.text.vocab_size, jnp.int32)

    def loss(ad):
        logits = model.apply({"params": params, "lora": ad}, jnp.asarray(ids, jnp.int32), ours,
                             jnp.asarray(mask, jnp.int32), image_mask=jnp.asarray(image_mask))
        lp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(lp, targets[..., None], -1) * mask[..., None])

    opt = optax.adam(1e-2)
    state = opt.init(adapters)

    @jax.jit
    def step(ad, state):
        value, g = jax.value_and_grad(loss)(ad)
        upd, state = opt.update(g, state)
        return optax.apply_updates(ad, upd), state, value

    values = []
    for _ in range(5):
        adapters, state, value = step(adapters, state)
        values.append(float(value))
    assert values[-1] < values[0]                             # the adapters trained
    assert any(float(jnp.abs(b).max()) > 0 for b in jax.tree.leaves(adapters))

    out = tmp_path / "export"
    FAMILY.save_hf(cfg, params, out, lora=adapters)
    assert os.path.isfile(out / "preprocessor_config.json")
    merged = lora_lib.merge(cfg, params, adapters)
    ours_merged = _ours_logits(cfg.replace(lora=None), {"params": merged}, ids, mask, ours,
                               image_mask)
    ours_adapted = _ours_logits(cfg, {"params": params, "lora": adapters}, ids, mask, ours,
                                image_mask)
    exported = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    _, _, _, _, hf_in = _batch(images, [[0, 1], [2]])
    with torch.no_grad():
        ref = exported(**hf_in).logits.numpy()
    m = mask.astype(bool)
    assert np.abs(ours_merged - ref)[m].max() <= 1e-4
    assert np.abs(ours_adapted - ref)[m].max() <= 1e-4


def test_load_model_reads_a_qwen_folder(hf_folder, tmp_path):
    """`loading.load_model` (what generate / evaluate use) on a Qwen folder: the family, the
    image settings of its preprocessor_config.json and the ChatML template."""
    path, _ = hf_folder
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>")
    fast.save_pretrained(tmp_path / "tok")
    m = loading.load_model(path, tokenizer=str(tmp_path / "tok"))
    assert m.family.name == "qwen2_5_vl" and m.template == "qwen2_vl"
    assert m.cfg.image == CFG.image and m.image_mode == "native"


def test_bad_folder_errors_name_the_tensor(hf_folder, tmp_path):
    path, _ = hf_folder
    cfg, params = FAMILY.load_hf(path)
    params = jax.tree.map(lambda x: x, params)
    params["merger"]["mlp_2"]["bias"] = jnp.zeros((3,))
    with pytest.raises(CheckpointError, match="merger/mlp_2/bias"):
        FAMILY.save_hf(cfg, params, tmp_path / "bad")
