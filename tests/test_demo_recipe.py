"""The demo presets' `prepare` hook (`demo/recipe.py`): the data and the SFT model a demo run
starts from are stages of `mmalign_jax.stages` — made once, skipped on rerun, made again when
their settings change — and the config it returns holds only ordinary values."""
from __future__ import annotations

import json
import os

from mmalign_jax import configs, stages
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.demo import vision_pretrain


def _tiny_demo(workdir):
    c = configs.load("dpo", "demo")
    c.workdir = str(workdir)
    c.data.demo.n_train, c.data.demo.n_eval = 16, 8
    c.train.progress = False
    c.mesh.num_devices, c.mesh.shape.data = 1, 1
    s = c.demo_sft
    s.data.demo.vision_pretrain_steps = 2
    s.train.max_steps, s.train.eval_every, s.train.checkpoint_every = 2, 0, 100
    return c


def test_prepare_makes_data_and_sft_once_and_again_when_their_settings_change(tmp_path):
    c = _tiny_demo(tmp_path / "dpo")
    got = demo_recipe.prepare(c)
    w = c.workdir
    assert c.prepare == demo_recipe.PREPARE          # the caller's config is left as it was
    assert got.prepare == "" and got.data.source == "tfds"
    assert got.data.data_dir == os.path.join(w, "data", "tfds")
    assert os.path.isfile(os.path.join(got.data.tokenizer, "tokenizer.json"))
    assert got.model.init_from == os.path.join(w, "sft")
    with open(os.path.join(w, "sft", "summary.json")) as f:
        assert json.load(f)["steps"] == 2
    with open(os.path.join(w, "sft", "config.json")) as f:
        sft = json.load(f)
    tower = os.path.join(w, "sft", "vision_pretrain", vision_pretrain.PARAMS_FILE)
    assert sft["model"]["vision_init"] == tower and os.path.isfile(tower)
    assert (sft["prepare"], sft["data"]["tokenizer"]) == ("", got.data.tokenizer)
    markers = os.path.join(w, "stages")
    assert sorted(os.listdir(markers)) == ["data.json", "sft.json"]

    # A rerun skips both stages: nothing is made again.
    before = os.path.getmtime(os.path.join(w, "sft", "summary.json"))
    assert demo_recipe.prepare(c).to_dict() == got.to_dict()
    assert os.path.getmtime(os.path.join(w, "sft", "summary.json")) == before

    # --config.demo_sft.* changed: the SFT stage runs again, the old run is moved aside.
    c.demo_sft.train.max_steps = 3
    demo_recipe.prepare(c)
    with open(os.path.join(w, "sft", "summary.json")) as f:
        assert json.load(f)["steps"] == 3
    assert any(".superseded-" in name for name in os.listdir(w))
    fp = stages.Stages.fingerprint
    with open(os.path.join(markers, "data.json")) as f:
        assert json.load(f)["fingerprint"] == fp({"demo": c.data.demo.to_dict(), "seed": c.seed})
