"""The library's default XLA flags (GEMMs through cuBLAS on NVIDIA GPUs): added only where a GPU
is possible, never overriding the user's."""
import os
import subprocess
import sys

from conftest import ROOT, subprocess_env
from mmalign_jax import xla_flags

BOTH = ["--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"]


def test_adds_both_gpu_defaults_where_a_gpu_is_possible():
    env = {}
    assert xla_flags.apply_defaults(env, plugin=True) == BOTH
    assert env["XLA_FLAGS"] == " ".join(BOTH)


def test_leaves_xla_flags_alone_without_a_cuda_plugin_or_when_jax_platforms_excludes_it():
    env = {"XLA_FLAGS": "--a=1"}
    assert xla_flags.apply_defaults(env, plugin=False) == [] and env == {"XLA_FLAGS": "--a=1"}
    for platforms in ("cpu", "tpu", "cpu,tpu"):
        env = {"JAX_PLATFORMS": platforms}
        assert xla_flags.apply_defaults(env, plugin=True) == [] and "XLA_FLAGS" not in env
    for platforms in ("cuda", "cpu,cuda", "gpu"):
        assert xla_flags.apply_defaults({"JAX_PLATFORMS": platforms}, plugin=True) == BOTH


def test_cuda_plugin_detection_looks_for_jax_plugins_xla_cuda(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "jax_plugins" / "xla_rocm").mkdir(parents=True)
    assert not xla_flags.cuda_plugin_installed() or _real_cuda_plugin()
    (tmp_path / "jax_plugins" / "xla_cuda13").mkdir()
    assert xla_flags.cuda_plugin_installed()


def _real_cuda_plugin() -> bool:
    import importlib.util
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None or \
        importlib.util.find_spec("jax_plugins.xla_cuda13") is not None


def test_keeps_the_users_flags_and_their_values():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_gpu_autotune_level=4"}
    assert xla_flags.apply_defaults(env, plugin=True) == ["--xla_gpu_enable_triton_gemm=false"]
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                        "--xla_gpu_autotune_level=4",
                                        "--xla_gpu_enable_triton_gemm=false"]


def test_a_flag_named_without_value_counts_as_set_and_a_second_call_adds_nothing():
    env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm"}
    xla_flags.apply_defaults(env, plugin=True)
    assert xla_flags.apply_defaults(env, plugin=True) == []
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm --xla_gpu_autotune_level=0"


def test_opt_out():
    for off in ("0", "false", "OFF"):
        env = {"MMALIGN_JAX_XLA_DEFAULTS": off, "XLA_FLAGS": "--a=1"}
        assert xla_flags.apply_defaults(env, plugin=True) == []
        assert env["XLA_FLAGS"] == "--a=1"


def test_configure_process_applies_them_before_jax_starts_and_jax_still_runs(tmp_path):
    """A stand-in CUDA plugin folder on the path (JAX_PLATFORMS unset): the import alone adds
    nothing, `mmalign_jax.configure_process()` adds the flags (once: a second call adds
    nothing); XLA:CPU then still starts and accepts them beside the user's own."""
    (tmp_path / "jax_plugins" / "xla_cuda13").mkdir(parents=True)   # no plugin code: JAX skips it
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=3")
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    for unset in ("JAX_PLATFORMS", xla_flags.OPT_OUT):   # the flags need a GPU to be possible
        env.pop(unset, None)
    code = ("import os, mmalign_jax, jax, jax.numpy as jnp; print(os.environ['XLA_FLAGS']); "
            "print(mmalign_jax.configure_process()); print(mmalign_jax.configure_process()); "
            "print(os.environ['XLA_FLAGS']); "
            "print(jax.device_count(), float(jnp.ones(4) @ jnp.ones(4)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    imported, first, second, flags, result = out.stdout.strip().splitlines()[-5:]
    assert imported == "--xla_force_host_platform_device_count=3"      # importing: nothing
    assert first == str({"xla_flags": BOTH, "malloc": []})
    assert second == str({"xla_flags": [], "malloc": []})
    assert flags.split() == ["--xla_force_host_platform_device_count=3", *BOTH]
    assert result == "3 4.0"   # the user's flag still took effect; the GPU ones are inert on CPU


def test_warns_when_jax_started_before_the_flags_could_apply(monkeypatch):
    """Applied after the first JAX computation, the flags cannot take effect any more: say so
    (on a GPU the step would run many times slower), never silently."""
    import warnings

    import jax
    import pytest
    jax.devices()                                # backends started in this process
    assert xla_flags.backends_started()
    monkeypatch.delenv(xla_flags.OPT_OUT, raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    with pytest.warns(RuntimeWarning, match=r"before mmalign_jax.configure_process\(\) was called"):
        assert xla_flags.apply_defaults(plugin=True) == BOTH
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xla_flags.apply_defaults(plugin=True) == []     # now named: nothing to add
        assert xla_flags.apply_defaults({}, plugin=True) == BOTH   # another environment
