"""host_malloc: where glibc's malloc settings can be set, and that with them a freed block is reused."""
import json
import os
import subprocess
import sys

import pytest

from mmalign_jax import bench, host_malloc

GLIBC = sys.platform.startswith("linux") and host_malloc.glibc()


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's (Linux)")
def test_possible_only_where_jax_runs_on_the_cpu_and_asked_for_only_by_the_variable():
    assert host_malloc.possible({}, accelerator=False)
    assert not host_malloc.possible({}, accelerator=True)               # a GPU/TPU runtime is there
    assert host_malloc.possible({"JAX_PLATFORMS": "cpu"}, accelerator=True)
    assert not host_malloc.possible({"JAX_PLATFORMS": "cuda,cpu"}, accelerator=True)
    assert host_malloc.possible({"JAX_PLATFORMS": "cuda,cpu"}, accelerator=False)
    assert not host_malloc.possible({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, accelerator=False)
    assert host_malloc.possible({"GLIBC_TUNABLES": "glibc.cpu.x86_rep_movsb_threshold=2048"},
                                accelerator=False)
    assert not host_malloc.requested({}) and not host_malloc.requested({host_malloc.ENV: "0"})
    assert host_malloc.requested({host_malloc.ENV: "1"}) and host_malloc.requested({host_malloc.ENV: "on"})


# A jitted function whose 128 MiB output is allocated, written and freed on every call: the
# minor page faults of the later calls tell whether the freed block came back from the process
# (settings on) or as fresh pages from the kernel (glibc's default: mmap/munmap per call).
# Dispatch is synchronous, as a train step's temporaries are freed when the step ends: with
# asynchronous dispatch an output can be freed after the next call allocated its own, and
# glibc 2.36 then grows the heap by a few more blocks before the calls settle (module doc).
_PROBE = r"""
import json, os, resource, sys
import mmalign_jax
from mmalign_jax import host_malloc
imported = list(host_malloc.applied)       # importing alone: nothing
configured = mmalign_jax.configure_process()["malloc"]
import jax, jax.numpy as jnp
jax.config.update("jax_cpu_enable_async_dispatch", False)
f = jax.jit(lambda x: x * 2.0)
x = jnp.ones((32 * 1024 * 1024,), jnp.float32)
for _ in range(10):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"faults_per_call": faults, "applied": host_malloc.applied,
                  "imported": imported, "configured": configured, "late": host_malloc.apply()}))
"""


def _probe(**env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", host_malloc.ENV, "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, "JAX_PLATFORMS": "cpu", **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's (Linux)")
def test_a_freed_step_block_is_reused_instead_of_faulted_in_again():
    pages = 128 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    on = _probe(**{host_malloc.ENV: "1"})
    off = _probe()                                       # not asked for: glibc as it comes
    assert off["faults_per_call"] > 0.9 * pages, off     # glibc as it comes: fresh pages per call
    assert on["faults_per_call"] < 0.25 * pages, on      # the settings: none (measured 0) or a rare call
    assert on["applied"] == [s[0] for s in host_malloc.SETTINGS] and off["applied"] == []
    assert on["imported"] == [] and on["configured"] == on["applied"]   # by configure_process
    assert on["late"] == []                              # once JAX runs, setting them is too late


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's (Linux)")
def test_bench_children_start_with_the_same_settings_through_glibc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.x86_rep_movsb_threshold=4096")
    monkeypatch.setattr(host_malloc, "applied", [])                      # --malloc default
    assert bench.child_env()["GLIBC_TUNABLES"] == "glibc.cpu.x86_rep_movsb_threshold=4096"
    monkeypatch.setattr(host_malloc, "applied", [s[0] for s in host_malloc.SETTINGS])
    tunables = bench.child_env()["GLIBC_TUNABLES"]
    assert tunables.startswith("glibc.cpu.x86_rep_movsb_threshold=4096:glibc.malloc.arena_max=1:")
    # the string does in a child that does not set anything itself what mallopt does here
    child = _probe(GLIBC_TUNABLES=tunables)
    assert child["applied"] == [] and child["faults_per_call"] < 0.25 * (
        128 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")), child
