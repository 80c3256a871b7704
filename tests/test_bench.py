"""Smoke tests of `python -m mmalign_jax.bench` (seconds: the tiny preset)."""
import math

import jax
import jax.numpy as jnp
import pytest

from mmalign_jax import bench
from mmalign_jax.models import presets


def test_forward_bench_returns_finite_numbers():
    res = bench.main(["--what", "forward", "--preset", "tiny", "--steps", "2", "--warmup", "1",
                      "--no-write"])
    fwd = res["forward"]
    assert fwd["finite"]
    for k in ("s_per_step_median", "tokens_per_s", "compile_s", "analytic_flops", "jaxpr_flops"):
        assert math.isfinite(fwd[k]) and fwd[k] > 0, k
    n_img = presets.get_preset("tiny").num_image_tokens
    assert fwd["tokens_per_step"] == 4 * (n_img + 64 + 64)   # 4 rows × (image + text + response)
    assert len(fwd["step_seconds"]) == 2
    assert fwd["mfu"] is None                               # CPU: peak unknown
    assert "| forward |" in res["markdown"]


def test_jaxpr_flops_counts_scan_trips():
    # XLA's cost analysis counts a scan body once; the jaxpr count multiplies by the length.
    def f(w, x):
        return jax.lax.scan(lambda h, wi: (h @ wi, None), x, w)[0]
    w, x = jnp.ones((3, 16, 16)), jnp.ones((4, 16))
    assert bench.traced_flops(jax.jit(f), w, x) == 3 * 2 * 4 * 16 * 16
    assert bench.traced_flops(jax.jit(jax.grad(lambda w, x: f(w, x).sum())), w, x) == 3 * 3 * 2 * 4 * 16 * 16


def test_write_section_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "PERF.md"
    doc.write_text(f"# Perf\n\nintro\n\n{bench.BEGIN}\nold\n{bench.END}\n\nnotes\n")
    bench.write_section(str(doc), "new table")
    text = doc.read_text()
    assert "old" not in text and "new table" in text
    assert text.startswith("# Perf\n\nintro") and text.rstrip().endswith("notes")


def test_missing_baseline_packages_are_reported_not_estimated(monkeypatch):
    monkeypatch.setattr(bench, "missing_packages", lambda name: ["trl"])
    w = bench.Workload("tiny", 4, 8, 8)
    r = bench.run_baseline("trl", w, steps=1, warmup=0, timeout=10)
    assert "missing packages trl" in r["error"] and "s_per_step_median" not in r


def test_peak_table():
    class Dev:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"
    assert bench.peak_flops(Dev()) == 989e12
    Dev.device_kind = "TPU v5 lite"
    Dev.platform = "tpu"
    assert bench.peak_flops(Dev()) == 197e12
    Dev.platform, Dev.device_kind = "cpu", "cpu"
    assert bench.peak_flops(Dev()) is None


def test_lora_bf16_step_trains_only_adapters_and_projector_in_bf16():
    # --lora/--dtype: the published recipe's kind of step (what the GPU figures time).
    w = bench.Workload("tiny", jax.device_count(), 8, 8)
    c = bench.train_config("dpo", w, lora_rank=8, dtype="bfloat16")
    assert c.lora.enabled and (c.lora.rank, c.lora.alpha) == (8, 16.0)
    tb = bench.TrainBench("dpo", w, lora_rank=8, dtype="bfloat16")
    assert 0 < bench._count(tb.run.state.trainable) < bench._count(tb.run.frozen) / 5
    assert {x.dtype for x in jax.tree.leaves(tb.run.frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(tb.run.state.trainable)} == {jnp.dtype(jnp.float32)}
    tb.timed(3, 0)   # policy = reference at the start (B = 0): loss log 2
    assert tb.finite and tb.losses[0] == pytest.approx(math.log(2), abs=1e-3)
    b = [x for path, x in jax.tree_util.tree_flatten_with_path(tb.run.state.trainable)[0]
         if getattr(path[-1], "key", None) == "b"]
    assert b and any(float(jnp.abs(x).max()) > 0 for x in b)   # the adapters trained


def test_llava_presets_may_start_random_in_the_bench_only():
    from mmalign_jax.train import defaults
    c = bench.train_config("dpo", bench.Workload("tiny", 2, 8, 8))
    c.model.preset = "llava-1.5-7b"
    with pytest.raises(defaults.ConfigError, match="hf_checkpoint"):
        defaults.validate(c, 1, needs_data=False)
    defaults.validate(c, 1, random_init_ok=True, needs_data=False)


def test_baselines_refused_when_they_cannot_run_our_workload(capsys):
    with pytest.raises(SystemExit):   # TRL's script fine-tunes fully in fp32 only
        bench.main(["--what", "dpo", "--preset", "tiny", "--lora", "8", "--baselines", "torch,trl"])
    assert "--baselines torch" in capsys.readouterr().err


def test_baseline_command_carries_the_device_arguments(monkeypatch):
    monkeypatch.setattr(bench, "missing_packages", lambda name: [])
    extra = bench.baseline_args("gpu", "default", 0, "float32")
    assert extra == ["--device", "cuda", "--tf32"]
    cmd, err = bench.baseline_command("torch", bench.Workload("tiny", 4, 8, 8), 1, 0, extra=extra)
    assert err is None and cmd[-3:] == ["--device", "cuda", "--tf32"]
    assert cmd[1:3] == ["-m", "mmalign_jax.bench_baselines.torch_dpo_step"]   # a module of the package
    # CPU, fp32, full fine-tuning: nothing added (nothing left over from an earlier call)
    assert bench.baseline_args("cpu", "highest", 0, "float32") == []
    assert bench.baseline_args("cpu", "highest", 8, "bfloat16") == ["--lora", "8", "--dtype", "bfloat16"]


def test_baseline_shapes_match_our_presets():
    # The baseline modules keep their own copy of the shapes (they must not import JAX); a
    # preset changed on one side only would compare different models.
    from mmalign_jax.bench_baselines import torch_dpo_step as lean
    assert set(bench.BASELINE_PRESETS) <= set(lean.PRESETS)
    for name in bench.BASELINE_PRESETS:
        hf = presets.to_hf_config(presets.get_preset(name))
        theirs = lean.PRESETS[name]
        for k, v in theirs["vision"].items():
            assert hf["vision_config"][k] == v, (name, "vision", k)
        for k, v in theirs["text"].items():
            assert hf["text_config"][k] == v, (name, "text", k)
        assert hf["image_token_index"] == theirs["image_token_id"], name
        assert lean.num_image_tokens(name) == presets.get_preset(name).num_image_tokens, name


def test_attention_kernel_is_a_training_setting():
    # --attention / model.attention_impl reach the model; an unknown kernel is refused up front.
    from mmalign_jax.train import defaults, loop
    c = bench.train_config("dpo", bench.Workload("tiny", 2, 8, 8))
    assert loop.model_config(c).attention_impl == "auto"
    c.model.attention_impl = "dot_product"
    assert loop.model_config(c).attention_impl == "dot_product"
    c.model.attention_impl = "flash"
    with pytest.raises(defaults.ConfigError, match="attention_impl"):
        defaults.validate(c, 1, needs_data=False)   # the bench feeds its own batches
    del c.model["attention_impl"]   # a config.json written before the setting existed
    assert loop.model_config(c).attention_impl == "auto"


def _benchmark_script(name: str):
    """A developer script of benchmarks/ (not a package; the library never runs them)
    imported as a module."""
    import importlib.util
    import os

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_matmul_ceiling_counts_the_flops_its_cases_do():
    """benchmarks/jax_matmul_ceiling.py: each case's FLOP count (its TFLOP/s figures) equals
    the matmul FLOPs of the traced function, and every option set compiles and runs on CPU."""
    mod = _benchmark_script("jax_matmul_ceiling")
    m, d, f, r = 32, 16, 48, 4
    for name, (fn, specs, flops) in mod.cases(m, d, f, r, jnp.float32).items():
        args = [jnp.ones(s, dt) for s, dt in specs]
        assert bench.traced_flops(jax.jit(fn), *args) == flops, name
    rows = mod.main(["--m", str(m), "--d", str(d), "--f", str(f), "--r", str(r), "--reps", "1",
                     "--dtype", "float32"])
    assert {(row["case"], row["options"]) for row in rows} == {
        (c, o) for c in ("dot", "mlp", "lora") for o in mod.OPTION_SETS}
    assert all(row["ms"] > 0 and "error" not in row for row in rows)


def test_profile_attributes_the_op_time_to_phases_and_modules(tmp_path):
    """`--profile DIR`: one traced step, its XLA op time added up by phase · module (from the
    compiled HLO's op_name metadata) — the table docs/PERFORMANCE.md reads."""
    res = bench.main(["--what", "dpo", "--preset", "tiny", "--steps", "1", "--warmup", "1",
                      "--pairs", str(jax.device_count()), "--prompt-text", "8",
                      "--response-len", "8", "--baselines", "none", "--no-eval",
                      "--profile", str(tmp_path), "--no-write"])
    prof = res["dpo"]["profile"]
    assert "error" not in prof, prof
    assert (tmp_path / "train_step.hlo.txt").exists()
    assert prof["op_seconds_total"] > 0 and prof["step_wall_s"] > 0
    cats = {c for c, _, _ in prof["by_category"]}
    for want in ("forward · mlp", "backward · mlp", "forward · attention core"):
        assert want in cats, cats
    shares = [share for _, _, share in prof["by_category"]]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9
    assert "Profile of one DPO step" in res["markdown"]


def test_spawn_order_starts_every_process_first_equally_often(tmp_path):
    """benchmarks/spawn_order.py: one measurement per rotation of the start order (each
    process started first once), and the geometric mean over those orders per process."""
    import json

    mod = _benchmark_script("spawn_order")
    out = mod.main(["--impls", "ours,ours", "--rounds", "2", "--warmup", "0", "--preset", "tiny",
                    "--pairs", str(jax.device_count()), "--prompt-text", "8",
                    "--response-len", "8", "--json", str(tmp_path / "order.json")])
    assert [r["start_order"] for r in out["runs"]] == [["ours#1", "ours#2"], ["ours#2", "ours#1"]]
    for run in out["runs"]:
        for label, times in run["step_seconds"].items():
            assert len(times) == 2 and all(t > 0 for t in times)
            assert math.isclose(run["median_s"][label], (times[0] + times[1]) / 2)
    for label in ("ours#1", "ours#2"):
        medians = [run["median_s"][label] for run in out["runs"]]
        assert math.isclose(out["geometric_mean_s"][label], math.sqrt(medians[0] * medians[1]))
    assert sorted(out["by_start_position"]) == [1, 2]
    assert json.loads((tmp_path / "order.json").read_text())["geometric_mean_s"] == pytest.approx(
        out["geometric_mean_s"])


def test_bench_balances_the_start_order_of_ours_and_the_baselines():
    """Default interleaved comparison: ours served from its own process like the baselines,
    the measurement repeated once per rotation of the start order (each started first once),
    s/step = the geometric mean of the per-order medians; ours also timed in-process."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    res = bench.main(["--what", "dpo", "--preset", "tiny", "--steps", "2", "--warmup", "0",
                      "--pairs", str(jax.device_count()), "--prompt-text", "8",
                      "--response-len", "8", "--baselines", "torch", "--no-eval", "--no-write"])
    assert res["mode"] == "balanced"
    ours, torch_row = res["dpo"], res["baselines"]["torch"]
    assert "error" not in ours and "error" not in torch_row, (ours.get("error"), torch_row.get("error"))
    orders = [o["start_order"] for o in ours["by_start_order"]]
    assert orders == [["ours:none", "torch"], ["torch", "ours:none"]]
    for label, row in (("ours:none", ours), ("torch", torch_row)):
        medians = [o["median_s"][label] for o in ours["by_start_order"]]
        assert row["s_per_step_median"] == pytest.approx(math.sqrt(medians[0] * medians[1]))
        assert row["pairs_per_s"] == pytest.approx(jax.device_count() / row["s_per_step_median"])
        assert len(row["step_seconds"]) == 4                  # 2 steps × 2 start orders
    assert ours["in_process_s_median"] > 0 and ours["trainable_params"] == torch_row["trainable_params"]
    ratio = ours["pairs_per_s"] / torch_row["pairs_per_s"]
    assert f"**{ratio:.2f}×**" in res["markdown"]
    assert "repeated once per rotation of the order in which the processes start" in res["markdown"]


# ------------------------------------------------------------------ qwen-small (Qwen2.5-VL)

def test_qwen_small_workload_shapes():
    """`--preset qwen-small`: 224² px images = 256 patches = 64 tokens, prompt =
    <|vision_start|> + 64 image tokens + <|vision_end|> + text, the pipeline's DPO layout
    with Qwen's image keys (no compile: shapes, data and FLOP bookkeeping only)."""
    w = bench.Workload("qwen-small", 2, 64, 64)
    cfg = w.cfg
    assert (w.n_img, w.vision_tokens, w.image_side, w.prompt_len) == (64, 256, 224, 128)
    b = w.dpo_batch()
    assert b["pixel_values"].shape == (2, 1, 256, cfg.vision.patch_dim)
    assert (b["image_grid_thw"] == [1, 16, 16]).all() and b["image_mask"].all()
    p = b["prompt_ids"]
    assert p.shape == (2, 128) and (p[:, 0] == cfg.vision_start_token_id).all()
    assert (p[:, 1:65] == cfg.image_token_id).all() and (p[:, 65] == cfg.vision_end_token_id).all()
    from mmalign_jax.bench_baselines import qwen_data
    lo, hi = qwen_data.token_range(cfg)
    for k in ("chosen_ids", "rejected_ids"):
        assert b[k].shape == (2, 64) and lo <= b[k].min() and b[k].max() < hi
    assert (p[:, 66:] >= lo).all() and (p[:, 66:] < hi).all()
    again = w.dpo_batch()   # the same data every time (and on TRL's side: qwen_data)
    assert all((again[k] == b[k]).all() for k in b)
    n = bench.param_counts(cfg)
    assert n["vision"] > 0 and n["projector"] > 0
    an = bench.analytic_flops("dpo", w)
    assert an["model_flops"] < an["model_flops_concat_layout"]
    s = bench.Workload("qwen-small", 2, 64, 64).sft_batch()
    assert s["input_ids"].shape == (2, 192) and s["target_mask"][:, 128:].all()


def test_qwen_dpo_step_runs_through_the_trainer():
    """Our side of the qwen workload: the trainer's DPO step on Qwen2.5-VL batches (the tiny
    preset here, for speed), full fine-tuning of LM + merger, ViT frozen."""
    w = bench.Workload("qwen2.5-vl-tiny", jax.device_count(), 8, 8)
    tb = bench.TrainBench("dpo", w)
    assert "visual" in tb.run.frozen["params"] and "merger" in tb.run.state.trainable["params"]
    tb.timed(2, 0)
    assert tb.finite and tb.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    r = tb.result()
    assert r["initial_logps_chosen_mean"] < 0 and r["jaxpr_flops"] > 0


def test_qwen_baseline_routing(monkeypatch):
    monkeypatch.setattr(bench, "missing_packages", lambda name: [])
    w = bench.Workload("qwen-small", 4, 64, 64)
    assert bench.default_baselines("qwen-small") == "trl"
    assert bench.default_baselines("bench-small") == "torch,trl"
    cmd, err = bench.baseline_command("trl", w, 1, 0)
    assert err is None and cmd[1:3] == ["-m", "mmalign_jax.bench_baselines.trl_qwen_dpo_step"]
    assert "--model-dir" not in cmd            # standalone: the script exports its own
    w.hf_dir = "/tmp/x"
    cmd, _ = bench.baseline_command("trl-gc", w, 1, 0, serve=True)
    assert cmd[-4:] == ["--gradient-checkpointing", "--model-dir", "/tmp/x", "--serve"]
    cmd, _ = bench.baseline_command("trl-1t", w, 1, 0)   # diagnostic: one torch thread
    assert cmd[-4:] == ["--threads", "1", "--model-dir", "/tmp/x"]
    _, err = bench.baseline_command("torch", w, 1, 0)
    assert "no torch baseline for qwen-small" in err["error"]


def test_exported_hf_folder_holds_our_initial_weights(tmp_path):
    """What the Qwen TRL baseline loads is what our trainer starts from."""
    pytest.importorskip("safetensors")
    from mmalign_jax.train import state as state_lib
    w = bench.Workload("qwen2.5-vl-tiny", jax.device_count(), 8, 8)
    bench.export_hf_checkpoint(w, str(tmp_path))
    cfg, loaded = w.family.load_hf(str(tmp_path))
    assert cfg.text == w.cfg.text and cfg.vision == w.cfg.vision
    tb = bench.TrainBench("dpo", w)
    ours = state_lib.merge(tb.run.frozen, tb.run.state.trainable)["params"]
    flat_l = jax.tree_util.tree_leaves_with_path(loaded)
    flat_o = dict(jax.tree_util.tree_leaves_with_path(ours))
    assert len(flat_l) == len(flat_o)
    for path, x in flat_l:
        assert (jnp.asarray(x) == flat_o[path]).all(), path


def test_write_section_uses_a_presets_own_block(tmp_path):
    doc = tmp_path / "PERF.md"
    b, e = bench.section_markers("qwen-small")
    doc.write_text(f"{bench.BEGIN}\nllava\n{bench.END}\n\n{b}\nold\n{e}\n")
    bench.write_section(str(doc), "qwen table", "qwen-small")
    text = doc.read_text()
    assert "llava" in text and "old" not in text and f"{b}\nqwen table\n{e}" in text
    bench.write_section(str(doc), "llava table", "bench-small")   # no own block: the default
    assert "llava table" in doc.read_text() and "qwen table" in doc.read_text()


def test_trl_qwen_baseline_trains_the_same_model_on_the_same_batch(tmp_path):
    """TRL's DPOTrainer on Qwen2_5_VLForConditionalGeneration with our exported weights and
    the workload's data: the collator's batch is checked against ours inside the script
    (ids exactly, pixels to 1e-5); trainable parameters and the log-probs before the first
    update equal ours. Needs requirements-bench.txt (not installed in CI)."""
    for mod in ("torch", "transformers", "trl", "accelerate", "datasets"):
        pytest.importorskip(mod)
    from mmalign_jax.bench_baselines import trl_qwen_dpo_step
    pairs = jax.device_count()
    w = bench.Workload("qwen2.5-vl-tiny", pairs, 8, 8)
    bench.export_hf_checkpoint(w, str(tmp_path / "model"))
    theirs = trl_qwen_dpo_step.main([
        "--preset", "qwen2.5-vl-tiny", "--steps", "1", "--warmup", "0", "--pairs", str(pairs),
        "--prompt-text", "8", "--response-len", "8", "--threads", "1",
        "--model-dir", str(tmp_path / "model")])
    tb = bench.TrainBench("dpo", w)
    tb.timed(1, 0)
    ours = tb.result()
    assert theirs["trainable_params"] == ours["trainable_params"]
    assert theirs["reference"] == "online copy" and theirs["prompt_len"] == w.prompt_len
    for k in ("initial_logps_chosen_mean", "initial_logps_rejected_mean"):
        assert theirs[k] == pytest.approx(ours[k], abs=2e-3), k
