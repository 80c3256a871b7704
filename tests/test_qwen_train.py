"""Qwen2.5-VL through the trainer (`configs/{sft,dpo}.py:qwen2.5-vl-demo`): every batch
mixes images of two sizes and aspect ratios with text-only rows, and

1. an SFT step (everything trained, the vision tower included) and a DPO step (LoRA on the
   LM + the merger, frozen tower shared with the online reference) give the same losses
   and the same weights on one device and on a data=2 × fsdp=2 × tensor=2 mesh;
2. DPO with precomputed reference log-probs equals the online reference;
3. the shared-prefix DPO pass (`steps.dpo_response_logps`) equals the KV-cache layout
   (`dpo_response_logps_cached`) and a naive full forward of each [prompt | response]
   (`naive_dpo.py`, with the model's own M-RoPE positions), log-probs and gradients.

The data: 8 SFT conversations and 8 DPO pairs (6 with an image, 56×84 or 140×112 px, 2
text only), so a global batch of 8 holds all of them every step.
"""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmalign_jax.data import records as records_lib
from mmalign_jax.data import tfds_builder
from mmalign_jax.demo import generate
from mmalign_jax.demo.tokenizer import load_qwen_tokenizer
from mmalign_jax.models import registry
from mmalign_jax.train import data as data_lib
from mmalign_jax.train import loop
from mmalign_jax.train import state as state_lib
from mmalign_jax.train import steps as steps_lib
from naive_dpo import naive_dpo_logps
from test_train import MESH_1, MESH_222, assert_same_weights, load_config, losses, run_steps

PRESET = "qwen2.5-vl-demo"
SIZES = ((56, 84), (140, 112))           # (width, height): 6×4 and 8×10 patch grids


@pytest.fixture(scope="module")
def qwen_data(tmp_path_factory):
    """TFDS splits 'sft' and 'dpo' (8 examples each, mixed as above) and the Qwen demo
    tokenizer."""
    root = str(tmp_path_factory.mktemp("qwen"))
    img = os.path.join(root, "images")
    os.makedirs(img)

    def save_image(r, k):
        w, h = SIZES[k % 2]
        generate.record_image(r, 112).resize((w, h)).save(os.path.join(img, r["images"][0]))

    sft = generate.make_sft_records(6, 0, "train", "vqa") + \
        generate.make_sft_records(2, 0, "train", "text")
    for k, r in enumerate(sft[:6]):
        save_image(r, k)
    dpo = []
    for k, r in enumerate(generate.make_records(6, 0, "train", "vqa")
                          + generate.make_records(2, 0, "train", "text")):
        ranked = sorted(r["responses"], key=lambda x: -sum(x["scores"].values()))
        row = {"id": r["id"], "question": r["conversation"][0]["content"],
               "chosen": ranked[0]["text"], "rejected": ranked[-1]["text"]}
        if r["images"]:
            save_image(r, k)
            row["image"] = r["images"][0]
        dpo.append(row)
    paths = {}
    for name, rows in (("sft", sft), ("dpo", dpo)):
        paths[name] = records_lib.write_jsonl(os.path.join(root, f"{name}.jsonl"), rows)
    tfds_builder.build(paths, img, os.path.join(root, "tfds"), strict=True, progress=False)
    load_qwen_tokenizer().save_pretrained(os.path.join(root, "tokenizer"))
    return {"data_dir": os.path.join(root, "tfds"), "tokenizer": os.path.join(root, "tokenizer")}


def qwen_config(method: str, workdir, data, *dicts):
    """`configs/<method>.py:qwen2.5-vl-demo` on the fixture's data, test-sized."""
    c = load_config(method, PRESET)
    ov = {"workdir": str(workdir), "prepare": "", "model.init_from": "",
          "data.data_dir": data["data_dir"], "data.tokenizer": data["tokenizer"],
          "data.train_split": method, "data.eval_split": "", "train.global_batch_size": 8,
          "train.max_steps": 6, "train.log_every": 1, "train.eval_every": 0,
          "train.checkpoint_every": 100, "train.progress": False}
    for d in dicts:
        ov.update(d)
    for key, value in ov.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


_RUNS: dict = {}


def _run(method, tmp_path_factory, data, mesh, *dicts, n=3):
    key = (method, tuple(sorted(mesh.items())), repr(dicts))
    if key not in _RUNS:
        c = qwen_config(method, tmp_path_factory.mktemp(method), data, mesh, *dicts)
        _RUNS[key] = run_steps(c, n)
    return _RUNS[key]


def _assert_mixed(batch, cfg):
    """Two image sizes and a text-only row in one batch; every image's tokens in place."""
    grids = {tuple(g) for g, m in zip(batch["image_grid_thw"][:, 0], batch["image_mask"][:, 0])
             if m}
    assert grids == {(1, 6, 4), (1, 8, 10)}
    assert (~batch["image_mask"][:, 0]).sum() == 2
    ids = batch["input_ids"] if "input_ids" in batch else batch["prompt_ids"]
    n_tok = (ids == cfg.image_token_id).sum(1)
    want = np.where(batch["image_mask"][:, 0], batch["image_grid_thw"][:, 0].prod(-1) // 4, 0)
    np.testing.assert_array_equal(n_tok, want)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_sharded_equals_single_device(tmp_path_factory, qwen_data, method):
    run1, h1, data1 = _run(method, tmp_path_factory, qwen_data, MESH_1)
    run8, h8, _ = _run(method, tmp_path_factory, qwen_data, MESH_222)
    assert run1.mesh.devices.size == 1 and dict(run8.mesh.shape) == {
        "data": 2, "fsdp": 2, "tensor": 2}
    assert run1.family.name == "qwen2_5_vl"
    _assert_mixed(next(data1.train_iterator()), run1.cfg)

    print(method, "losses 1 device", losses(h1).tolist(), "8 devices", losses(h8).tolist())
    np.testing.assert_allclose(losses(h8), losses(h1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses(h8, "grad_norm"), losses(h1, "grad_norm"), rtol=1e-5)
    assert abs(h1[-1]["loss"] - h1[0]["loss"]) > 1e-3        # it trains
    if method == "dpo":
        assert h1[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)   # policy = reference
        for k in ("rewards/margin", "logps/chosen", "logps/rejected"):
            np.testing.assert_allclose(losses(h8, k), losses(h1, k), rtol=1e-5, atol=1e-5)
    # What is trained: SFT everything (the tower too, from random weights); DPO LoRA on
    # the LM + the merger, the tower frozen.
    tr = run1.state.trainable
    if method == "sft":
        assert set(tr["params"]) == {"visual", "merger", "language_model"}
    else:
        assert set(tr) == {"params", "lora"} and set(tr["params"]) == {"merger"}
        assert "visual" in run1.frozen["params"]
    # Really sharded: trained leaves (and under LoRA the frozen LM weights) are split.
    tr8 = jax.tree.leaves(run8.state.trainable)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in tr8)
    if method == "dpo":
        frozen_lm = jax.tree.leaves(run8.frozen["params"]["language_model"])
        assert all(not x.sharding.is_fully_replicated for x in frozen_lm if x.ndim == 3)
    assert_same_weights(run1.state.trainable, run8.state.trainable)


def test_precomputed_reference_equals_online(tmp_path_factory, qwen_data):
    _, online, _ = _run("dpo", tmp_path_factory, qwen_data, MESH_222)
    run, pre, data = _run("dpo", tmp_path_factory, qwen_data, MESH_222,
                          {"dpo.reference": "precomputed"})
    assert run.ref is None
    assert set(data.ref_logps["train"]) == {"chosen", "rejected"}
    assert np.all(data.ref_logps["train"]["chosen"] < 0)
    np.testing.assert_allclose(losses(pre), losses(online), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses(pre, "rewards/margin"), losses(online, "rewards/margin"),
                               rtol=1e-4, atol=1e-5)


def test_shared_prefix_dpo_equals_cached_and_naive(tmp_path, qwen_data):
    c = qwen_config("dpo", tmp_path, qwen_data, MESH_1)
    run = loop.build(c, total_steps=c.train.max_steps)
    model, cfg = run.model, run.cfg
    variables = state_lib.merge(run.frozen, run.state.trainable)
    # Non-zero adapters (b starts at 0), so LoRA is part of what is compared.
    variables["lora"] = jax.jit(lambda t: jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape), t))(
        variables["lora"])
    batch = next(data_lib.TrainData(c, cfg).train_iterator())
    _assert_mixed(batch, cfg)
    assert len(set(batch["prompt_mask"].sum(1))) > 2   # different amounts of left padding
    assert registry.for_config(cfg).name == "qwen2_5_vl"

    shared = jax.device_get(jax.jit(
        lambda v, b: steps_lib.dpo_response_logps(model, v, b))(variables, batch))
    cached = jax.device_get(jax.jit(
        lambda v, b: steps_lib.dpo_response_logps_cached(model, v, b))(variables, batch))
    naive = jax.device_get(jax.jit(lambda v: naive_dpo_logps(model, v, batch))(variables))
    pc, pr, nc, nr = shared
    np.testing.assert_array_equal(nc, batch["chosen_mask"].sum(1))
    np.testing.assert_array_equal(nr, batch["rejected_mask"].sum(1))
    for got in (cached[:2], naive):
        np.testing.assert_allclose(pc, got[0], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(pr, got[1], rtol=1e-5, atol=1e-4)
    assert np.all(pc < 0) and np.abs(pc - pr).max() > 1.0

    # Gradients (LoRA and merger) of the summed log-probs: shared == naive.
    trainable, frozen = state_lib.split(variables, state_lib.param_groups(c, run.family))

    def total(fn):
        def f(tr):
            a, b = fn(state_lib.merge(frozen, tr))[:2]
            return (a - 0.5 * b).sum()
        return jax.jit(jax.grad(f))(trainable)
    g_shared = total(lambda v: steps_lib.dpo_response_logps(model, v, batch))
    g_naive = total(lambda v: naive_dpo_logps(model, v, batch))
    for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_naive), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_shared)) > 1e-3


# ------------------------------------------------------------------ the demo, end to end

@pytest.mark.slow
def test_demo_preset_runs_data_sft_dpo_and_writes_metrics(tmp_path):
    """`configs/dpo.py:qwen2.5-vl-demo` shortened (16 prompts, 2 SFT + 2 DPO steps, one
    bucket per shape so each step compiles once): the data stage (mixed image sizes, the
    Qwen tokenizer), the SFT stage and DPO all run, and the metrics are written."""
    from mmalign_jax import configs
    c = configs.load("dpo", PRESET)
    c.workdir = str(tmp_path / "dpo")
    c.data.demo.n_train, c.data.demo.n_eval = 16, 8
    c.mesh.num_devices, c.mesh.shape.data = 1, 1
    for run in (c, c.demo_sft):
        run.train.progress = False
        run.train.global_batch_size = 8
        run.train.max_steps, run.train.eval_every, run.train.checkpoint_every = 2, 2, 100
        run.data.image_buckets = (256,)
    c.demo_sft.data.seq_buckets = (160,)
    c.data.prompt_buckets = (112,)
    summary = loop.train(c)

    assert summary["steps"] == 2 and os.path.isfile(os.path.join(c.workdir, "summary.json"))
    with open(os.path.join(c.workdir, "sft", "summary.json")) as f:
        assert json.load(f)["steps"] == 2
    rows = [json.loads(line) for line in open(os.path.join(c.workdir, "metrics.jsonl"))]
    acc = {r["step"]: r["eval/rewards/accuracy"] for r in rows if "eval/rewards/accuracy" in r}
    assert set(acc) == {0, 2} and acc[0] == 0.0      # step 0: policy = reference, all ties
    assert any("loss" in r and r["step"] == 2 for r in rows)
    tok = load_qwen_tokenizer(os.path.join(c.workdir, "data", "tokenizer"))
    assert tok.convert_tokens_to_ids("<|image_pad|>") == registry.get_preset(PRESET).image_token_id
    images = os.path.join(c.workdir, "data", "images")
    sizes = {Image.open(os.path.join(images, f)).size for f in os.listdir(images)}
    assert len(sizes) > 10                             # mixed sizes and aspect ratios
