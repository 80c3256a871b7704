"""The family-neutral checkpoint machinery (models/hf_io.py) on what LLaVA does not use: the
'flatT' transform and two stacked towers of different depths, through a tiny fake mapping."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest

from safetensors.numpy import load_file, save_file

from mmalign_jax.models import hf_io
from mmalign_jax.models.family import CheckpointError
from mmalign_jax.models.hf_io import Entry


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    a_layers: int = 2
    b_layers: int = 5
    dtype: str = "float32"
    param_dtype: str = "float32"
    lora: object = None

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


def _entries(cfg):
    out = [Entry("patch.weight", ("patch", "kernel"), (4, 3, 2, 2, 2), "flatT")]
    for i in range(cfg.a_layers):  # three entries per layer, stacked cfg.a_layers deep
        k, s = f"a.layers.{i}.", dict(layer=i, stack=cfg.a_layers)
        out += [Entry(k + "fc.weight", ("a", "fc", "kernel"), (6, 4), "T", **s),
                Entry(k + "fc.bias", ("a", "fc", "bias"), (6,), **s),
                Entry(k + "norm.weight", ("a", "norm", "scale"), (4,), **s)]
    for i in range(cfg.b_layers):  # two entries per layer, stacked cfg.b_layers deep
        k, s = f"b.layers.{i}.", dict(layer=i, stack=cfg.b_layers)
        out += [Entry(k + "proj.weight", ("b", "proj", "kernel"), (4, 6), "T", **s),
                Entry(k + "norm.weight", ("b", "norm", "scale"), (4,), **s)]
    out.append(Entry("head.weight", ("head", "kernel"), (7, 4), "T"))
    return out


def _layout_key(canonical, layout):
    return {"plain": canonical, "prefixed": "model." + canonical}[layout]


MAPPING = hf_io.HFMapping(
    name="fake",
    hf_class="FakeForConditionalGeneration",
    entries=_entries,
    canonical_key=lambda k: k[len("model."):] if k.startswith("model.") else k,
    layout_key=_layout_key,
    layouts=("plain", "prefixed"),
    detect_layout=lambda k: "prefixed" if k.startswith("model.") else None,
    ignored=re.compile(r".*\.inv_freq$"),
    tied_head_key=None,
    config_from_hf=lambda d: FakeConfig(d["a_layers"], d["b_layers"]),
    config_to_hf=lambda cfg, dtype=None: {"a_layers": cfg.a_layers, "b_layers": cfg.b_layers,
                                          "torch_dtype": dtype},
    generation_config=lambda cfg: {"eos_token_id": 1},
    extra_files=lambda cfg: {"preprocessor_config.json": {"patch_size": 2}},
    tied=lambda cfg: False,
)


def _hf_tensors(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {e.hf_key: rng.standard_normal(e.hf_shape).astype(np.float32)
            for e in _entries(cfg)}


def _write_checkpoint(path, cfg, tensors):
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"a_layers": cfg.a_layers, "b_layers": cfg.b_layers}, f)


def test_flatT_round_trips_and_is_the_conv():
    e = Entry("w", ("k",), (8, 3, 2, 4, 4), "flatT")
    x = np.random.default_rng(0).standard_normal(e.hf_shape).astype(np.float32)
    ours = hf_io._to_ours(x, e)
    assert ours.shape == e.shape == (3 * 2 * 4 * 4, 8)
    np.testing.assert_array_equal(hf_io._to_hf(ours, e), x)
    # a Dense on a (c, t, h, w)-flattened patch equals the conv over that patch
    patch = np.random.default_rng(1).standard_normal(e.hf_shape[1:]).astype(np.float32)
    np.testing.assert_allclose(patch.reshape(-1) @ ours, np.einsum("octhw,cthw->o", x, patch),
                               rtol=1e-5, atol=1e-5)


def test_two_stacks_of_different_depths_load_and_save(tmp_path):
    cfg = FakeConfig(a_layers=2, b_layers=5)
    tensors = _hf_tensors(cfg)
    ignored = {"a.layers.0.rotary.inv_freq": np.ones(2, np.float32)}
    _write_checkpoint(tmp_path / "in", cfg, {**tensors, **ignored})

    got_cfg, params = hf_io.load(MAPPING, tmp_path / "in")
    assert (got_cfg.a_layers, got_cfg.b_layers) == (2, 5)
    shapes = {p: tuple(x.shape) for p, x in hf_io._flatten(params).items()}
    assert shapes == hf_io.param_shapes(MAPPING, cfg) == {
        ("patch", "kernel"): (24, 4), ("a", "fc", "kernel"): (2, 4, 6), ("a", "fc", "bias"): (2, 6),
        ("a", "norm", "scale"): (2, 4), ("b", "proj", "kernel"): (5, 6, 4),
        ("b", "norm", "scale"): (5, 4), ("head", "kernel"): (4, 7)}
    for i in range(2):
        np.testing.assert_array_equal(params["a"]["fc"]["kernel"][i], tensors[f"a.layers.{i}.fc.weight"].T)
        np.testing.assert_array_equal(params["a"]["norm"]["scale"][i], tensors[f"a.layers.{i}.norm.weight"])
    for i in range(5):
        np.testing.assert_array_equal(params["b"]["proj"]["kernel"][i], tensors[f"b.layers.{i}.proj.weight"].T)
        np.testing.assert_array_equal(params["b"]["norm"]["scale"][i], tensors[f"b.layers.{i}.norm.weight"])
    np.testing.assert_array_equal(params["patch"]["kernel"], tensors["patch.weight"].reshape(4, -1).T)

    in_memory = hf_io.state_dict_to_params(MAPPING, cfg, {**tensors, **ignored})
    for p, x in hf_io._flatten(params).items():
        np.testing.assert_array_equal(hf_io._flatten(in_memory)[p], x)

    written = hf_io.save(MAPPING, got_cfg, params, tmp_path / "out")
    assert sorted(os.path.basename(f) for f in written) == [
        "config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json"]
    back = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(back) == set(tensors)
    for k, x in tensors.items():
        assert back[k].dtype == x.dtype and back[k].tobytes() == x.tobytes(), k
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f) == {"a_layers": 2, "b_layers": 5, "torch_dtype": "float32"}

    # the other layout, in shards, loads to the same params
    hf_io.save(MAPPING, got_cfg, params, tmp_path / "sharded", key_layout="prefixed",
               max_shard_size=200)
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    _, again = hf_io.load(MAPPING, tmp_path / "sharded")
    for p, x in hf_io._flatten(params).items():
        np.testing.assert_array_equal(hf_io._flatten(again)[p], x)


def test_missing_layer_of_the_deeper_stack_is_named_in_the_checkpoints_layout(tmp_path):
    cfg = FakeConfig()
    tensors = {"model." + k: v for k, v in _hf_tensors(cfg).items()
               if not k.startswith("b.layers.4.")}
    _write_checkpoint(tmp_path, cfg, tensors)
    with pytest.raises(CheckpointError, match="missing tensors") as e:
        hf_io.load(MAPPING, tmp_path)
    assert "model.b.layers.4.proj.weight [4, 6]" in str(e.value)
    assert "a.layers" not in str(e.value)


def test_extra_files_yield_to_the_tokenizer_folders(tmp_path):
    cfg = FakeConfig()
    _write_checkpoint(tmp_path / "in", cfg, _hf_tensors(cfg))
    _, params = hf_io.load(MAPPING, tmp_path / "in")
    src = tmp_path / "tok"
    src.mkdir()
    (src / "preprocessor_config.json").write_text('{"patch_size": 99}\n')
    hf_io.save(MAPPING, cfg, params, tmp_path / "out", tokenizer_dir=src)
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text()) == {"patch_size": 99}


def test_bad_table_is_reported():
    bad = dataclasses.replace(MAPPING, entries=lambda cfg: [
        Entry("x.0", ("x",), (2,), layer=0, stack=1), Entry("x.1", ("x",), (2,), layer=1, stack=1)])
    with pytest.raises(ValueError, match="layer 1 outside its stack of 1"):
        hf_io.param_shapes(bad, FakeConfig())
    with pytest.raises(ValueError, match="save_hf\\(lora=...\\) needs cfg.lora"):
        hf_io.save(MAPPING, FakeConfig(), {}, "/nonexistent", lora={})
