"""The library's default XLA flags (GEMMs through cuBLAS on GPU): added, never overriding."""
import os
import subprocess
import sys

from mmalign_jax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_adds_both_gpu_defaults_to_an_empty_environment():
    env = {}
    added = xla_flags.apply_defaults(env)
    assert added == ["--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"]
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0"


def test_keeps_the_users_flags_and_their_values():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_gpu_autotune_level=4"}
    added = xla_flags.apply_defaults(env)
    assert added == ["--xla_gpu_enable_triton_gemm=false"]
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                        "--xla_gpu_autotune_level=4",
                                        "--xla_gpu_enable_triton_gemm=false"]


def test_a_flag_named_without_value_counts_as_set_and_a_second_call_adds_nothing():
    env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm"}
    xla_flags.apply_defaults(env)
    assert xla_flags.apply_defaults(env) == []
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm --xla_gpu_autotune_level=0"


def test_opt_out():
    for off in ("0", "false", "OFF"):
        env = {"MMALIGN_JAX_XLA_DEFAULTS": off, "XLA_FLAGS": "--a=1"}
        assert xla_flags.apply_defaults(env) == []
        assert env["XLA_FLAGS"] == "--a=1"


def test_importing_the_package_sets_them_before_jax_starts_and_jax_still_runs():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT)}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
    code = ("import os, mmalign_jax, jax, jax.numpy as jnp; print(os.environ['XLA_FLAGS']); "
            "print(jax.device_count(), float(jnp.ones(4) @ jnp.ones(4)))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": REPO},
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    flags, result = out.stdout.strip().splitlines()[-2:]
    assert flags.split() == ["--xla_force_host_platform_device_count=3",
                             "--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"]
    assert result == "3 4.0"   # the user's flag still took effect; the GPU ones are inert on CPU
