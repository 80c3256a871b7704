"""Two local JAX processes (2 CPU devices each, gloo collectives, mesh data=4) train like one
process: `python -m mmalign_jax.train` started twice with JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, one shared workdir, per-host data shards assembled with
jax.make_array_from_process_local_data, checkpoints written jointly by orbax.

The single-process baseline is test_train's uninterrupted run (same config and data, one
process, 8 devices as data=2 × fsdp=2 × tensor=2): its compiled step is shared with the other
trainer tests, and test_sharded_equals_single_device shows that mesh trains like 1 device."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import test_train as tt   # helpers, configs and the demo data fixtures
from conftest import subprocess_env
from test_train import data_dir, uninterrupted  # noqa: F401  (fixtures)
from mmalign_jax.train import metrics as metrics_lib

pytestmark = pytest.mark.multihost
TIMEOUT_S = 200   # a hang fails the test instead of blocking CI
MESH_DATA4 = {"mesh.shape.data": 4, "mesh.shape.fsdp": 1, "mesh.shape.tensor": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path, data_dir, uninterrupted):  # noqa: F811
    _, ov_one, rows_one = uninterrupted      # 6 steps, checkpoints every 2 (async)
    workdir = tmp_path / "pod"
    ov = {**ov_one, **MESH_DATA4, "workdir": str(workdir)}
    cmd = [sys.executable, "-m", "mmalign_jax.train", "--config",
           os.path.join(tt.ROOT, "configs", "dpo.py"), *tt.cli_args(ov)]
    addr = f"127.0.0.1:{_free_port()}"
    procs, logs = [], []
    for i in range(2):
        env = subprocess_env(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=addr, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        log = open(tmp_path / f"process_{i}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, cwd=tt.ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        hung = [p for p in procs if p.poll() is None]
        for p in hung:
            p.kill()
            p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    tails = "\n".join(f"--- process {i}\n{o[-3000:]}" for i, o in enumerate(outputs))
    assert not hung, f"timed out after {TIMEOUT_S}s:\n{tails}"
    assert [p.returncode for p in procs] == [0, 0], tails
    for i, out in enumerate(outputs):
        assert f"process {i} of 2, 2 local / 4 global devices" in out, tails
    config = json.load(open(workdir / "config.json"))
    assert dict(config["mesh"]["shape"]) == {"data": 4, "fsdp": 1, "tensor": 1}

    rows = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]   # process 0 alone writes them
    multi = np.array([r["loss"] for r in rows])
    single = np.array([r["loss"] for r in rows_one])
    print("losses 2 processes", multi.tolist(), "1 process", single.tolist())
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-6)
    for k in ("rewards/margin", "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose([r[k] for r in rows], [r[k] for r in rows_one],
                                   rtol=1e-4, atol=1e-5)
    assert abs(multi[-1] - multi[0]) > 1e-3

    # Joint checkpoints every 2 steps, each holding every host's data-iterator state.
    ckpt = os.path.join(workdir, "checkpoints")
    assert tt._finished_steps(ckpt) == [2, 4, 6]
    data_states = sorted(f for f in os.listdir(os.path.join(ckpt, "6", "data"))
                         if f.endswith(".json"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"], data_states
    shards = [json.load(open(os.path.join(ckpt, "6", "data", f)))["fingerprint"]["shard"]
              for f in data_states]
    assert shards == [[0, 2], [1, 2]]
