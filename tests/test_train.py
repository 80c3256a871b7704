"""The trainer end to end on the tiny demo model: sharding, reference modes, exact resume,
gradient accumulation, the prefix-shared DPO forward, divergence, learning, validation.

Everything runs on the 8 simulated CPU devices of conftest.py with tiny settings (64 demo
prompts, global batch 8, 3–6 steps). Compiled programs go to a per-session persistent
compilation cache so identical programs (a resumed run, a rerun) compile once.
"""
from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import subprocess_env

from mmalign_jax import parallel
from mmalign_jax.data import loader as loader_lib
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import checkpoint as ckpt_lib
from mmalign_jax.train import data as data_lib
from mmalign_jax.train import defaults, loop
from mmalign_jax.train import metrics as metrics_lib
from mmalign_jax.train import state as state_lib
from mmalign_jax.train import steps as steps_lib
from naive_dpo import naive_dpo_logps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_EVAL = 64, 16


def load_config(method: str, preset: str = "demo"):
    path = os.path.join(ROOT, "configs", f"{method}.py")
    spec = importlib.util.spec_from_file_location(f"_config_{method}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(preset)


# Test-sized settings on top of configs/<method>.py:demo; the same dict becomes the command
# line of a subprocess run (`--config.a.b=v`).
TINY = {
    "prepare": "",              # the session's prebuilt demo data instead of the demo's own
    "model.init_from": "",
    "model.vision_init": "",
    "data.source": "tfds",
    "data.response_len": 24,
    "data.seq_len": 144,
    "train.global_batch_size": 8,
    "train.max_steps": 6,      # the schedule; most tests run 3 of them (one compiled step)
    "train.log_every": 1,
    "train.eval_every": 0,
    "train.checkpoint_every": 100,
    "train.progress": False,
}
MESH_222 = {"mesh.shape.data": 2, "mesh.shape.fsdp": 2, "mesh.shape.tensor": 2}
MESH_1 = {"mesh.num_devices": 1, "mesh.shape.data": 1, "mesh.shape.fsdp": 1,
          "mesh.shape.tensor": 1}


def tiny(method: str, workdir, data_dir: str, *dicts):
    """(config, overrides): the demo config with test-sized settings reading the session's
    prebuilt demo data, then `dicts` of dotted-key overrides."""
    c = load_config(method)
    ov = {"workdir": str(workdir), "data.data_dir": data_dir, **TINY}
    if data_dir:   # demo_recipe.write_data puts the tokenizer beside the TFDS splits
        ov["data.tokenizer"] = os.path.join(os.path.dirname(data_dir), "tokenizer")
    for d in dicts:
        ov.update(d)
    for key, value in ov.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c, ov


def cli_args(ov: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in ov.items()]


# ------------------------------------------------------------------------------- fixtures

# Data and runs shared between tests (and with test_multihost.py, which imports this module):
# made by whichever test needs one first.
_RESULTS: dict = {}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The demo task written and built once per session (TFDS splits and tokenizer), as the
    demo presets' data stage does (test_multihost.py shares it)."""
    if "data_dir" not in _RESULTS:
        out = os.path.join(str(tmp_path_factory.mktemp("demo")), "data")
        made = demo_recipe.write_data(out, N_TRAIN, N_EVAL, 0, progress=False)
        assert os.path.isfile(os.path.join(made["tokenizer"], "tokenizer.json"))
        _RESULTS["data_dir"] = made["data_dir"]
    return _RESULTS["data_dir"]


# -------------------------------------------------------------------------------- helpers

def run_steps(c, n_steps: int, keep_initial: bool = False):
    """What `loop.train` does, minus checkpoints and logging: (run, per-step metrics, data);
    with keep_initial, run.initial holds the trainable variables before the first step."""
    defaults.validate(c, jax.device_count())
    os.makedirs(c.workdir, exist_ok=True)
    data = data_lib.TrainData(c, loop.model_config(c))
    run = loop.build(c, total_steps=c.train.max_steps)
    if c.method == "dpo" and c.dpo.reference == "precomputed":
        data.attach_reference_logps(run, steps_lib.make_reference_step(run.model))
        run.ref = None
        run.shardings["ref"] = None
    it = data.train_iterator()
    local = next(it)
    train_step, _ = loop.jit_steps(run, local)
    run.initial = jax.device_get(run.state.trainable) if keep_initial else None
    history = []
    for i in range(n_steps):
        if i:
            local = next(it)
        batch = parallel.global_batch(local, run.mesh, run.shardings["rules"])
        run.state, m = train_step(run.state, batch, run.frozen, run.ref)
        m = jax.device_get(m)
        assert bool(m["finite"]), f"step {i + 1} not finite: {m}"
        history.append({k: float(v) for k, v in m.items()})
    return run, history, data


def assert_same_weights(tree_a, tree_b):
    """Equal trained weights after Adam steps. Adam divides by sqrt(v): where a gradient is
    ~0, float-level differences in it move that element's update by a fraction of the update
    itself (~lr = 2e-3), so: every element within 5e-4, and all but 1% within 1e-5 relative
    (observed: 0.5% of the LoRA weights with the 9-image-token tiny preset, while the losses
    agree to 1e-5; with the activation sharding constraints in effect on the 8-device mesh,
    one element of 131072 (full) / 8192 (LoRA) 1.2-1.7e-4 apart while every gradient of a
    forward agrees to 3e-7)."""
    n = bad = 0
    for a, b in zip(jax.tree.leaves(jax.device_get(tree_a)),
                    jax.tree.leaves(jax.device_get(tree_b)), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=5e-4)
        n += a.size
        bad += int((~np.isclose(b, a, rtol=1e-5, atol=1e-7)).sum())
    assert n and bad <= 1e-2 * n, (bad, n)


def losses(history, key="loss"):
    return np.array([h[key] for h in history], np.float64)


def _spec_is_replicated(sharding) -> bool:
    return all(p is None for p in sharding.spec)


# ---------------------------------------------------------------------- 1. sharded == single

def _dpo_8dev(tmp_path_factory, data_dir, lora: bool):
    """The 3-step LoRA/full DPO run (online reference) on a data=2 × fsdp=2 × tensor=2 mesh,
    shared by the tests that need it."""
    key = ("dpo-222", lora)
    if key not in _RESULTS:
        c, _ = tiny("dpo", tmp_path_factory.mktemp("dpo222"), data_dir, MESH_222,
                    {"lora.enabled": lora})
        _RESULTS[key] = run_steps(c, 3)
    return _RESULTS[key]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_sharded_equals_single_device(tmp_path, tmp_path_factory, data_dir, lora):
    single, _ = tiny("dpo", tmp_path / "one", data_dir, MESH_1, {"lora.enabled": lora})
    run1, h1, _ = run_steps(single, 3)
    run8, h8, _ = _dpo_8dev(tmp_path_factory, data_dir, lora)
    assert run1.mesh.devices.size == 1 and run8.mesh.devices.size == 8
    assert dict(run8.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}

    print("losses 1 device", losses(h1).tolist(), "8 devices", losses(h8).tolist())
    np.testing.assert_allclose(losses(h8), losses(h1), rtol=1e-5, atol=1e-6)
    for k in ("rewards/margin", "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(losses(h8, k), losses(h1, k), rtol=1e-5, atol=1e-5)
    # The loss moves (it trains), so this is not two constant curves agreeing.
    assert abs(h1[-1]["loss"] - h1[0]["loss"]) > 1e-3

    # The 8-device run really is sharded: trained leaves (and under LoRA the frozen LM base
    # weights) are split over the mesh, each device holding a slice; the frozen vision tower
    # stays replicated by the rules; the single-device run is on one device.
    tr8 = jax.tree.leaves(run8.state.trainable)
    assert any(not _spec_is_replicated(x.sharding) for x in tr8)
    frozen_lm = jax.tree.leaves(run8.frozen["params"].get("language_model", {}))
    assert bool(frozen_lm) == lora
    assert all(not x.sharding.is_fully_replicated for x in frozen_lm if x.ndim == 3)
    assert all(x.sharding.is_fully_replicated
               for x in jax.tree.leaves(run8.frozen["params"]["vision_tower"]))
    big = max(tr8, key=lambda x: x.size)
    assert len(big.sharding.device_set) == 8
    assert not big.sharding.is_fully_replicated
    assert big.addressable_shards[0].data.size < big.size
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(run1.state.trainable))
    # Adam moments follow their parameter's sharding.
    mu = [x for x in jax.tree.leaves(run8.state.opt_state) if x.shape == big.shape]
    assert mu and all(m.sharding.spec == big.sharding.spec for m in mu)
    # The same trained weights, not only the same losses.
    assert_same_weights(run1.state.trainable, run8.state.trainable)


# --------------------------------------------------------------- 2. precomputed == online ref

def test_precomputed_reference_equals_online(tmp_path, tmp_path_factory, data_dir, monkeypatch):
    _, online, _ = _dpo_8dev(tmp_path_factory, data_dir, True)
    c, _ = tiny("dpo", tmp_path / "pre", data_dir, MESH_222, {"dpo.reference": "precomputed"})
    built = []
    real_build = loader_lib.build_examples
    monkeypatch.setattr(loader_lib, "build_examples",
                        lambda *a, **k: built.append(a[0]) or real_build(*a, **k))
    run, pre, data = run_steps(c, 3)
    assert run.ref is None   # the reference weights are not used by the step
    # The train split is tokenized once: the step count, the reference pass and the
    # training stream (with the log-probs attached) share it (eval_every=0: no eval split).
    assert built == ["dpo"]

    np.testing.assert_allclose(losses(pre), losses(online), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses(pre, "rewards/margin"), losses(online, "rewards/margin"),
                               rtol=1e-4, atol=1e-5)
    # Step 1: the policy is the reference (LoRA b = 0, projector not yet updated): loss = ln 2.
    assert pre[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(pre[-1]["loss"] - pre[0]["loss"]) > 1e-3

    path = os.path.join(c.workdir, "reference_logps.npz")
    assert os.path.exists(path)
    z = dict(np.load(path))
    assert set(z) == {"train_chosen", "train_rejected"}   # eval_every=0: no eval split
    n = data.num_examples
    assert z["train_chosen"].shape == (n,) and np.all(z["train_chosen"] < 0)
    assert np.all(z["train_rejected"] < 0)
    assert not np.allclose(z["train_chosen"], z["train_rejected"])

    # A rerun reads the file instead of recomputing (a reference step that is called fails).
    def must_not_run(*a):
        raise AssertionError("reference log-probs recomputed although the file exists")
    again = data_lib.TrainData(c, loop.model_config(c))
    again.attach_reference_logps(run, must_not_run)
    np.testing.assert_array_equal(again.ref_logps["train"]["chosen"], z["train_chosen"])
    np.testing.assert_array_equal(again.ref_logps["train"]["rejected"], z["train_rejected"])
    # ... and its batches carry them, by example index.
    b = next(again.train_iterator())
    np.testing.assert_array_equal(b["ref_chosen_logps"], z["train_chosen"][b["example_index"]])

    # A rerun that turns evaluation on computes the eval split only (this fake reference step
    # returns -1 everywhere: the stored train values must survive untouched).
    c.train.eval_every = 1
    with_eval = data_lib.TrainData(c, loop.model_config(c))
    with_eval.attach_reference_logps(run, lambda batch, frozen, ref: (
        -jnp.ones(batch["example_index"].shape), -jnp.ones(batch["example_index"].shape)))
    z2 = dict(np.load(path))
    assert set(z2) == {"train_chosen", "train_rejected", "eval_chosen", "eval_rejected"}
    np.testing.assert_array_equal(z2["train_chosen"], z["train_chosen"])
    assert np.all(z2["eval_chosen"] == -1) and len(z2["eval_chosen"]) > 0
    e = next(with_eval.eval_iterator())
    assert np.all(e["ref_chosen_logps"][e["weight"] > 0] == -1)


# ------------------------------------------------------------- 3. resume == uninterrupted

RESUME = {"train.checkpoint_every": 2, "train.keep_checkpoints": 10,
          "train.async_checkpointing": True, **MESH_222}
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin",
            "rewards/accuracy", "logps/chosen", "logps/rejected", "grad_norm", "lr")


def _finished_steps(ckpt_dir: str) -> list[int]:
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """Run A: 6 DPO steps, async checkpoints every 2 steps, never interrupted."""
    if "run_a" not in _RESULTS:
        c, ov = tiny("dpo", tmp_path_factory.mktemp("run_a"), data_dir, RESUME)
        loop.train(c)
        _RESULTS["run_a"] = c, ov, metrics_lib.read_metrics(
            os.path.join(c.workdir, "metrics.jsonl"))
    return _RESULTS["run_a"]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, data_dir, uninterrupted):
    _, ov_a, rows_a = uninterrupted
    assert [r["step"] for r in rows_a] == [1, 2, 3, 4, 5, 6]
    assert [r["stalled_steps"] for r in rows_a] == [0] * 6   # a live run is not called dead

    ov = {**ov_a, "workdir": str(tmp_path / "b")}
    ckpt_dir = os.path.join(ov["workdir"], "checkpoints")
    cmd = [sys.executable, "-m", "mmalign_jax.train", "--config",
           os.path.join(ROOT, "configs", "dpo.py"), *cli_args(ov)]
    log_path = tmp_path / "b.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 150
    try:
        while not _finished_steps(ckpt_dir):
            if proc.poll() is not None:
                pytest.fail("the run ended before its first checkpoint:\n"
                            + log_path.read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 150 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)   # mid-run, possibly mid-save: no clean-up runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _finished_steps(ckpt_dir)
    assert killed_at and killed_at[-1] in (2, 4), killed_at   # interrupted before the end
    rows_b = metrics_lib.read_metrics(os.path.join(ov["workdir"], "metrics.jsonl"))
    assert rows_b and rows_b[-1]["step"] < 6

    # Rerun with the same workdir: resumes from the last complete checkpoint.
    c, _ = tiny("dpo", ov["workdir"], data_dir, RESUME)
    summary = loop.train(c)
    assert summary["steps"] == 6
    rows = metrics_lib.read_metrics(os.path.join(c.workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]   # rows after the checkpoint redone
    exact = all(rb[k] == ra[k] for ra, rb in zip(rows_a, rows) for k in COMPARED)
    print(f"killed with checkpoints {killed_at}; resumed run bitwise equal: {exact}")
    for ra, rb in zip(rows_a, rows):
        for k in COMPARED:
            assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-7), (ra["step"], k)
    assert _finished_steps(os.path.join(c.workdir, "checkpoints"))[-1] == 6


# ------------------------------------------------------------------ 4. divergence stops

def test_nan_stops_with_last_good_checkpoint(tmp_path, data_dir, uninterrupted, monkeypatch):
    """A NaN in step 3's batch: the step is not applied, the run stops naming the step, and
    the checkpoint of step 2 is intact and equal to the uninterrupted run's."""
    c_a = uninterrupted[0]
    c, _ = tiny("dpo", tmp_path / "nan", data_dir, RESUME)
    real = parallel.global_batch
    calls = []

    def poisoned(local, mesh, rules):
        calls.append(1)
        if len(calls) == 3:
            local = {**local, "pixel_values": np.full_like(local["pixel_values"], np.nan)}
        return real(local, mesh, rules)

    monkeypatch.setattr(parallel, "global_batch", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"^step 3: loss=nan") as e:
        loop.train(c)
    assert "step 2" in str(e.value) and "optim.lr" in str(e.value)
    rows = metrics_lib.read_metrics(os.path.join(c.workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert _finished_steps(os.path.join(c.workdir, "checkpoints")) == [2]

    got = ckpt_lib.restore_trainable(c.workdir, None)
    want = ckpt_lib.restore_trainable(c_a.workdir, None, step=2)
    leaves = jax.tree.leaves(got)
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    # A full restore into the train state (optimizer, step, data iterator) works too.
    data = data_lib.TrainData(c, loop.model_config(c))
    run = loop.build(c, total_steps=c.train.max_steps)
    it = data.train_iterator()
    ck = ckpt_lib.Checkpointer(c.workdir, 10, 2, False)
    try:
        state = ck.restore(run.state, it)
    finally:
        ck.close()
    assert int(state.step) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.opt_state)
               if jnp.issubdtype(x.dtype, jnp.floating))


# -------------------------------------------------------------- 5. gradient accumulation

SFT_MESH = MESH_222   # micro-batches of 4 over data × fsdp = 4 devices


def test_gradient_accumulation_equals_one_batch(tmp_path, data_dir):
    one, _ = tiny("sft", tmp_path / "one", data_dir, SFT_MESH)
    acc, _ = tiny("sft", tmp_path / "acc", data_dir, SFT_MESH, {"train.micro_batch_size": 4})
    run1, h1, _ = run_steps(one, 1, keep_initial=True)
    run2, h2, _ = run_steps(acc, 1)

    # The two micro-batches hold different numbers of target tokens, so a mean of per-micro
    # means would differ from the token-weighted mean this must equal.
    b = next(data_lib.TrainData(one, loop.model_config(one)).train_iterator())
    tokens = (b["target_mask"][:, 1:] & (b["attention_mask"][:, 1:] > 0)).sum(1)
    assert tokens[0::2].sum() != tokens[1::2].sum()

    assert h2[0]["loss"] == pytest.approx(h1[0]["loss"], rel=1e-5)
    assert h2[0]["grad_norm"] == pytest.approx(h1[0]["grad_norm"], rel=1e-5)
    assert h2[0]["tokens"] == h1[0]["tokens"]
    p1 = jax.device_get(run1.state.trainable)
    assert_same_weights(p1, run2.state.trainable)
    # ... and the step did change them.
    assert max(float(np.abs(a - i).max())
               for a, i in zip(jax.tree.leaves(p1), jax.tree.leaves(run1.initial))) > 1e-3


# ----------------------------------------------------- 6. prefix-shared DPO forward == naive

def test_prefix_shared_dpo_logps_equal_naive_forward(tmp_path, data_dir):
    c, _ = tiny("dpo", tmp_path, data_dir, MESH_1)
    run = loop.build(c, total_steps=c.train.max_steps)   # base weights + LoRA, one device
    model, cfg = run.model, run.cfg
    variables = state_lib.merge(run.frozen, run.state.trainable)
    # Non-zero adapters (b starts at 0), so LoRA is part of what is compared.
    variables["lora"] = jax.jit(lambda t: jax.tree.map(
        lambda x: x + 0.02 * jax.random.normal(jax.random.PRNGKey(3), x.shape), t))(
        variables["lora"])
    batch = next(data_lib.TrainData(c, cfg).train_iterator())
    pm = batch["prompt_mask"]
    assert len(set(pm.sum(1))) > 1   # rows with different amounts of left padding

    shared = jax.jit(lambda v, b: steps_lib.dpo_response_logps(model, v, b))
    pc, pr, nc, nr = jax.device_get(shared(variables, batch))

    # Naive: one full forward per [prompt | response], no padding inside.
    ref_c, ref_r = jax.device_get(jax.jit(lambda v: naive_dpo_logps(model, v, batch))(variables))
    np.testing.assert_array_equal(nc, batch["chosen_mask"].sum(1))
    np.testing.assert_array_equal(nr, batch["rejected_mask"].sum(1))
    np.testing.assert_allclose(pc, ref_c, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(pr, ref_r, rtol=1e-6, atol=1e-4)
    assert np.all(pc < 0) and np.abs(pc - pr).max() > 1.0


# ---------------------------------------------------------------------- 7. SFT learns

def test_sft_demo_eval_loss_decreases(tmp_path, data_dir):
    c, _ = tiny("sft", tmp_path, data_dir, SFT_MESH, {"train.eval_every": 6})
    data = data_lib.TrainData(c, loop.model_config(c))
    run = loop.build(c, total_steps=c.train.max_steps)
    _, eval_step = loop.jit_steps(run, next(data.train_iterator()))
    before = loop.run_eval(run, eval_step, data.eval_iterator, 0)["eval/loss"]
    assert math.isfinite(before) and before > 3.0   # ~ln(1024) from a random init
    again = loop.run_eval(run, eval_step, data.eval_iterator, 0)["eval/loss"]
    assert again == pytest.approx(before, rel=1e-6)   # the cached eval loader restarts whole

    summary = loop.train(c)
    after = summary["eval/loss"]
    assert after < before - 0.5, (before, after)
    rows = metrics_lib.read_metrics(os.path.join(c.workdir, "metrics.jsonl"))
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    assert [s for s, _ in evals] == [0, 6]
    assert evals[0][1] == pytest.approx(before, rel=1e-5)   # step 0: the model before training
    train_losses = [r["loss"] for r in rows if "loss" in r]
    assert train_losses[-1] < train_losses[0]


# -------------------------------------------------------------------- 8. validation

def _err(c, n=8):
    with pytest.raises(defaults.ConfigError) as e:
        defaults.validate(c, n)
    return str(e.value)


def test_config_validation_says_what_to_change(tmp_path, data_dir):
    c, _ = tiny("dpo", tmp_path, data_dir)
    defaults.validate(c, 8)                      # the test config itself is fine

    c.method = "ppo"
    msg = _err(c)
    assert "ppo" in msg and "sft" in msg and "dpo" in msg

    c, _ = tiny("dpo", tmp_path, data_dir, {"train.global_batch_size": 12})
    msg = _err(c)                                # 12 rows over data=8 devices
    assert "12" in msg and "data×fsdp = 8" in msg and "mesh.shape" in msg

    c, _ = tiny("dpo", tmp_path, data_dir, {"train.micro_batch_size": 3})
    assert "multiple of train.micro_batch_size=3" in _err(c)

    c, _ = tiny("dpo", tmp_path, data_dir, {"mesh.shape.data": 3})
    msg = _err(c)                                # 8 devices cannot be 3 × 1 × 1
    assert "mesh" in msg and "8" in msg and "3" in msg

    c, _ = tiny("dpo", tmp_path, data_dir, {"mesh.shape.data": -1, "mesh.shape.fsdp": -1})
    assert "at most one mesh axis may be -1" in _err(c)

    c, _ = tiny("dpo", tmp_path, data_dir, {"mesh.num_devices": 16})
    assert "mesh.num_devices=16" in _err(c)

    c, _ = tiny("dpo", tmp_path, data_dir, {"dpo.reference": "offline"})
    assert "dpo.reference" in _err(c)

    c, _ = tiny("dpo", tmp_path, data_dir, {"data.source": "tfds", "data.data_dir": ""})
    assert "data.data_dir" in _err(c)

    # A mesh the model cannot be split over (hidden size 128 over tensor=3) passes the
    # device arithmetic and is refused when the shardings are derived, naming the parameter.
    c, _ = tiny("dpo", tmp_path, data_dir, {"mesh.num_devices": 6, "mesh.shape.data": 2,
                                            "mesh.shape.tensor": 3})
    defaults.validate(c, 8)
    with pytest.raises(ValueError, match=r"not divisible by mesh axes.*change mesh.shape") as e:
        loop.build(c, total_steps=3)
    assert "language_model/" in str(e.value)


def test_demo_sft_stage_takes_the_command_lines_settings():
    """`--config.demo_sft.*` reaches the SFT run a demo DPO / RS / SteerLM run trains first
    (made by the demo's prepare stage, not by anything the core config names)."""
    data = {"data_dir": "/d", "tokenizer": "/t"}
    for name in ("dpo", "rejection_sampling", "steerlm"):
        c = load_config(name)
        c.workdir = "/w"
        assert c.prepare == demo_recipe.PREPARE and c.model.init_from == ""
        s = demo_recipe.sft_stage_config(c, data)
        assert (s.train.max_steps, s.train.global_batch_size, s.optim.train_vision) == (4800, 8, False)
        c.demo_sft.train.max_steps, c.demo_sft.optim.lr = 7, 1e-4
        s = demo_recipe.sft_stage_config(c, data)
        assert (s.method, s.train.max_steps, s.optim.lr) == ("sft", 7, 1e-4)
        assert (s.workdir, s.data.source, s.data.data_dir) == ("/w/sft", "tfds", "/d")
        assert (s.prepare, s.data.tokenizer) == ("", "/t")


def test_every_numeric_field_is_range_checked_whatever_the_other_settings(tmp_path):
    """Issue 25, case 3: `optim.lr=-0.002` with LoRA on passed (the check read
    `lora.enabled or lr > 0`) and trained away from the data; `global_batch_size=0` was a
    ZeroDivisionError. Each bad value is now one sentence naming the field, its range and
    the value — before any arithmetic, with LoRA on or off."""
    cases = [
        ({"optim.lr": -0.002}, "optim.lr must be a number > 0, got -0.002"),
        ({"optim.lr": float("nan")}, "optim.lr must be a number > 0, got nan"),
        ({"optim.lr": float("inf")}, "optim.lr must be a number > 0, got inf"),
        ({"optim.projector_lr": 0.0}, "optim.projector_lr must be a number > 0, got 0.0"),
        ({"train.global_batch_size": 0}, "train.global_batch_size must be an integer >= 1, got 0"),
        ({"train.micro_batch_size": -4}, "train.micro_batch_size must be an integer >= 0"),
        ({"train.checkpoint_every": 0}, "train.checkpoint_every must be an integer >= 1"),
        ({"train.log_every": 0}, "train.log_every must be an integer >= 1, got 0"),
        ({"train.keep_checkpoints": 0}, "train.keep_checkpoints must be an integer >= 1"),
        ({"lora.rank": 0}, "lora.rank must be an integer >= 1, got 0"),
        ({"lora.alpha": -1.0}, "lora.alpha must be a number > 0"),
        ({"lora.dropout": 1.0}, "lora.dropout must be a number in [0, 1)"),
        ({"optim.b2": 1.0}, "optim.b2 must be a number in [0, 1)"),
        ({"optim.eps": 0.0}, "optim.eps must be a number > 0"),
        ({"optim.weight_decay": -0.1}, "optim.weight_decay must be a number >= 0"),
        ({"data.pair_margin": -1}, "data.pair_margin must be a number >= 0, got -1"),
        ({"data.response_len": 1}, "data.response_len must be an integer >= 2"),
        ({"dpo.beta": 0.0}, "dpo.beta must be > 0"),
        ({"dpo.beta": float("inf")}, "dpo.beta must be > 0"),
        ({"dpo.label_smoothing": 0.5}, "dpo.label_smoothing must be in [0, 0.5)"),
        ({"dpo.sft_weight": -1.0}, "dpo.sft_weight must be >= 0"),
    ]
    for lora in (True, False):
        for over, want in cases:
            c, _ = tiny("dpo", tmp_path, "/data", {"lora.enabled": lora, **over})
            assert want in _err(c), (lora, over)
    c, _ = tiny("simpo", tmp_path, "/data", {"simpo.gamma": -0.5})
    assert "simpo.gamma (the target margin) must be >= 0" in _err(c)
    c, _ = tiny("simpo", tmp_path, "/data", {"simpo.sft_weight": float("nan")})
    assert "simpo.sft_weight must be >= 0" in _err(c)
