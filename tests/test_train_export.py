"""The trainer's final export loads in transformers with the trained model's logits, and
bf16 compute trains with fp32 weights close to the fp32 run."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mmalign_jax.train import checkpoint as ckpt_lib
from mmalign_jax.train import loop
from mmalign_jax.train import state as state_lib

from test_train import MESH_1, data_dir, run_steps, tiny  # noqa: F401


def test_export_hf_equals_trained_model(tmp_path, data_dir):
    torch = pytest.importorskip("torch")
    import transformers

    out = tmp_path / "hf"
    c, _ = tiny("dpo", tmp_path / "run", data_dir, MESH_1,
                {"train.max_steps": 2, "train.export_hf": str(out), "lora.rank": 4,
                 "lora.alpha": 8.0})
    loop.train(c)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()

    # Our side: the trained state restored from the run's last checkpoint, LoRA applied.
    run = loop.build(c, total_steps=c.train.max_steps)
    ckpt = ckpt_lib.Checkpointer(c.workdir, 2, 100, async_save=False)
    run.state = ckpt.restore(run.state)
    ckpt.close()
    assert int(run.state.step) == 2
    variables = state_lib.merge(run.frozen, run.state.trainable)
    lora_b = [v for k, v in traverse_util.flatten_dict(variables["lora"]).items() if k[-1] == "b"]
    assert lora_b and all(float(jnp.abs(b).max()) > 0 for b in lora_b), "LoRA did not train"

    cfg = run.cfg
    rng = np.random.default_rng(0)
    n_img = cfg.num_image_tokens
    ids = np.concatenate([[1], [cfg.image_token_id] * n_img, rng.integers(5, 900, 12)])[None]
    ids = ids.astype(np.int32)
    pixels = rng.standard_normal((1, 1, cfg.vision.image_size, cfg.vision.image_size, 3),
                                 dtype=np.float32)
    mask = np.ones_like(ids)
    ours = np.asarray(run.model.apply(variables, ids, pixels, mask))

    hf = transformers.LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    pixel_values=torch.from_numpy(pixels[:, 0].transpose(0, 3, 1, 2).copy()),
                    attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


def test_bf16_compute_keeps_fp32_weights_and_tracks_fp32(tmp_path, data_dir):
    c32, _ = tiny("dpo", tmp_path / "f32", data_dir, MESH_1)
    c16, _ = tiny("dpo", tmp_path / "bf16", data_dir, MESH_1,
                  {"model.dtype": "bfloat16", "model.param_dtype": "bfloat16"})
    _, h32, _ = run_steps(c32, 3)
    run16, h16, _ = run_steps(c16, 3)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(run16.state.trainable))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(run16.frozen))
    l32 = np.array([m["loss"] for m in h32])
    l16 = np.array([m["loss"] for m in h16])
    assert np.all(np.isfinite(l16))
    # Step 1 is ln 2 in both (policy == reference); after that bf16 rounding of the frozen
    # weights and activations shifts the loss by a few 1e-2 at most, and it falls the same way.
    assert l16[0] == pytest.approx(np.log(2), abs=1e-3)
    np.testing.assert_allclose(l16, l32, atol=0.05)
    assert np.all(np.diff(l16) < 0) and np.all(np.diff(l32) < 0)
