"""Smoke tests of `python -m mmalign_jax.bench` (seconds: the tiny preset, forward only)."""
import math

import jax
import jax.numpy as jnp

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
