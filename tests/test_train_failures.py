"""What a training run does when something goes wrong around it (issue 25): a run whose
updates vanish, a full disk, a read-only workdir, a second run on the same workdir, a torn
or interrupted `metrics.jsonl`.

The disk failures are simulated (an `OSError` with the errno, or orbax's own wording of it)
since tests cannot fill or remount a disk; the README's "When something goes wrong" has the
same cases run for real on a small tmpfs.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env
from test_train import MESH_1, data_dir, tiny  # noqa: F401  (data_dir: the shared fixture)

from mmalign_jax import store
from mmalign_jax.train import checkpoint as ckpt_lib
from mmalign_jax.train import loop
from mmalign_jax.train import metrics as metrics_lib

# orbax's words for a full disk (a ValueError from tensorstore, no errno attached)
ORBAX_ENOSPC = ("RESOURCE_EXHAUSTED: Error writing \"trainable.params.x/0.0\" in OCDBT database "
                "at local file \"{d}/6.orbax-checkpoint-tmp/\": Failed to write 5652480 bytes "
                "to file 9: No space left on device [os_error_code='28']")


def _fake_checkpoints(workdir, *steps):
    for s in steps:
        os.makedirs(os.path.join(workdir, "checkpoints", str(s)))
    os.makedirs(os.path.join(workdir, "checkpoints", "8.orbax-checkpoint-tmp"))   # half-written


# ---------------------------------------------------------------- 3. updates that vanish

def test_update_watch_calls_out_a_run_that_stopped_learning():
    """The rule, step by step: a zero gradient norm always counts; an update that changed
    nothing counts unless the learning rate is under 1% of its peak (the warm-up's first
    step at lr 0, the decay's tail); the warning comes once per streak, at the n-th step."""
    watch = loop.UpdateWatch(peak_lr=1e-3, n=3)
    assert watch(1, 0.7, False, 0.0) is None and watch.streak == 0    # warm-up: lr 0
    assert watch(2, 0.0, True, 1e-4) is None and watch.streak == 1    # zero gradient
    assert watch(3, 1.5, True, 1e-4) is None and watch.streak == 0
    assert watch(4, 1.2, False, 1e-6) is None and watch.streak == 0   # lr < 1% of peak
    assert [watch(s, 0.0, True, 1e-3) for s in (5, 6)] == [None, None]
    msg = watch(7, 0.0, False, 1e-3)
    assert msg.startswith("step 7: updates vanished: steps 5-7 changed no trained value or "
                          "had a gradient norm of 0 (now 0); the run is not learning")
    assert "optim.lr (0.001" in msg
    assert watch(8, 0.0, False, 1e-3) is None and watch.streak == 4   # once per streak
    assert watch(9, 0.3, False, 1e-3) is None and watch.streak == 5   # nothing changed
    assert watch(10, 0.3, True, 1e-3) is None and watch.streak == 0


@pytest.fixture(scope="module")
def dead_run_on_full_disk(tmp_path_factory, data_dir):  # noqa: F811
    """SFT with optim.lr=1e6 (the issue's command; the model saturates and every gradient
    from step 2 on is exactly 0), checkpoints every 2 steps, and the disk full at the save
    of step 4, in orbax's own words. Returns (config, error, log text)."""
    c, _ = tiny("sft", tmp_path_factory.mktemp("dead"), data_dir, MESH_1,
                {"optim.lr": 1e6, "train.max_steps": 4, "train.checkpoint_every": 2,
                 "train.log_every": 2})
    real_save = ckpt_lib.Checkpointer.save

    def save(self, step, state, data_iterator=None, force=False):
        if step == 4:
            raise ValueError(ORBAX_ENOSPC.format(d=self.directory))
        return real_save(self, step, state, data_iterator, force)

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("mmalign_jax.train").addHandler(handler)
    mp = pytest.MonkeyPatch()
    mp.setattr(ckpt_lib.Checkpointer, "save", save)
    try:
        with pytest.raises(loop.WorkdirError) as e:
            loop.train(c)
    finally:
        mp.undo()
        logging.getLogger("mmalign_jax.train").removeHandler(handler)
    return c, e.value, "\n".join(r.getMessage() for r in records)


def test_vanishing_updates_are_a_warning_and_a_metric(dead_run_on_full_disk):
    """lr=1e6 gave grad_norm 0.0 from step 2 to the end and a silent exit 0: now the log
    says so at the third such step and metrics.jsonl counts them (`stalled_steps`)."""
    c, _, log_text = dead_run_on_full_disk
    assert ("step 4: updates vanished: steps 2-4 changed no trained value or had a gradient "
            "norm of 0 (now 0); the run is not learning — check optim.lr (1e+06") in log_text
    rows = metrics_lib.read_metrics(os.path.join(c.workdir, "metrics.jsonl"))
    assert [(r["step"], r["grad_norm"] == 0.0, r["stalled_steps"]) for r in rows] == [
        (2, True, 1), (4, True, 3)]
    assert rows[0]["grad_norm"] == 0.0


def test_a_full_disk_is_one_sentence_naming_the_last_good_checkpoint(dead_run_on_full_disk,
                                                                    data_dir):  # noqa: F811
    """Orbax's 'No space left on device' at step 4's save (53 tracebacks in the issue) is one
    sentence naming step 2; the checkpoint is intact, the lock released, and the same
    command resumes from it once there is space."""
    c, err, _ = dead_run_on_full_disk
    ckpt = os.path.join(os.path.abspath(c.workdir), "checkpoints", "2")
    assert str(err) == (f"no space left on device while writing into "
                        f"{os.path.abspath(c.workdir)}; the last good checkpoint is step 2 "
                        f"({ckpt}) — free some space and rerun the same command to resume "
                        "from it")
    assert ckpt_lib.complete_steps(c.workdir) == [2]
    summary = loop.train(c)               # space again: the rerun takes the lock and resumes
    assert summary["steps"] == 4 and ckpt_lib.complete_steps(c.workdir) == [2, 4]
    rows = metrics_lib.read_metrics(os.path.join(c.workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4]


def test_disk_errors_anywhere_in_the_chain_become_one_sentence(tmp_path):
    w = str(tmp_path / "w")
    _fake_checkpoints(w, 4, 6)
    full = OSError(errno.ENOSPC, "No space left on device", os.path.join(w, "metrics.jsonl"))
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("tensorboard flush failed")   # the context holds the cause
    except RuntimeError as e:
        msg = loop._disk_sentence(e, w)
    assert msg == (f"no space left on device while writing {w}/metrics.jsonl; the last good "
                   f"checkpoint is step 6 ({w}/checkpoints/6) — free some space and rerun "
                   "the same command to resume from it")
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", os.path.join(w, "x"))
    assert loop._disk_sentence(quota, w).startswith("disk quota exceeded while writing")
    elsewhere = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "a"))
    assert loop._disk_sentence(elsewhere, w) is None          # an input: its own error
    assert loop._disk_sentence(ValueError("shapes differ"), w) is None
    above = OSError(errno.EROFS, "Read-only file system", str(tmp_path))
    assert loop._disk_sentence(above, str(tmp_path / "new")).startswith(
        f"the workdir {tmp_path}/new cannot be written ({tmp_path}: read-only file system); "
        "no checkpoint was written yet — make it writable and rerun the same command (or "
        "pass another --config.workdir)")


# ---------------------------------------------------------------- 6. read-only workdir

def test_a_read_only_workdir_is_one_sentence(tmp_path, monkeypatch):
    """The first write into a read-only workdir (its lock file) was a 16-line traceback
    ending in `OSError: [Errno 30]`; now one sentence with the last good checkpoint."""
    c, _ = tiny("sft", tmp_path / "w", "/nonexistent/data")
    _fake_checkpoints(c.workdir, 2, 4)
    real_open = os.open
    workdir = os.path.abspath(c.workdir)

    def read_only(path, flags, *args, **kw):
        if os.path.abspath(path).startswith(workdir) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(loop.WorkdirError) as e:
        loop.train(c)
    assert str(e.value) == (
        f"the workdir {workdir} cannot be written ({workdir}/train.lock: read-only file "
        f"system); the last good checkpoint is step 4 ({workdir}/checkpoints/4) — make it "
        "writable and rerun the same command to resume from it (or pass another "
        "--config.workdir)")


# ------------------------------------------------------------ 7. two runs, one workdir

HOLD = ("import sys, time; from mmalign_jax.store import exclusive_lock; "
        "l = exclusive_lock(sys.argv[1], 'training run', target=sys.argv[2]); "
        "print('held', flush=True); time.sleep(120)")


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_holders_lock_taken_over(tmp_path,
                                                                                  monkeypatch):
    """Two runs on one workdir wrote steps 0-6 twice into metrics.jsonl and crashed orbax:
    the second is now refused before it touches anything, naming the holder's pid and host;
    once the holder is killed (-9: no clean-up) the next run takes the lock over."""
    c, _ = tiny("sft", tmp_path / "w", str(tmp_path / "no-data"))
    workdir = os.path.abspath(c.workdir)
    lock = os.path.join(workdir, "train.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, lock, workdir], cwd=ROOT,
                              env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(store.JobLocked) as e:
            loop.train(c)
        assert str(e.value).startswith(
            f"another training run is writing {workdir} (pid {holder.pid} on host "
            f"{socket.gethostname()} since ")
        assert str(e.value).endswith(f"holds {lock}); wait for it to finish or stop it, "
                                     "then rerun")
        assert sorted(os.listdir(workdir)) == ["train.lock"]          # nothing else written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.load(open(lock))["pid"] == holder.pid                  # the stale lock file
    seen = []
    monkeypatch.setattr(loop, "_train", lambda c: seen.append(json.load(open(lock))) or "ran")
    assert loop.train(c) == "ran"
    assert seen[0]["pid"] == os.getpid()                               # taken over...
    store.exclusive_lock(lock, "check").close()                        # ...and released


# --------------------------------------------------------------- 4. metrics.jsonl

def _rows(n):
    return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, n + 1))


def test_a_torn_last_metrics_line_does_not_stop_the_resume(tmp_path):
    """A killed writer or a full disk leaves a torn last line; every later resume died with a
    JSONDecodeError in truncate_after. Now the line moves to metrics.jsonl.torn."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(6) + '{"step": 7, "lo')
    assert [r["step"] for r in metrics_lib.read_metrics(str(path))] == [1, 2, 3, 4, 5, 6]
    w = metrics_lib.MetricWriter(str(tmp_path))
    w.truncate_after(4)
    w.write(5, {"loss": 0.5})
    w.close()
    assert [r["step"] for r in metrics_lib.read_metrics(str(path))] == [1, 2, 3, 4, 5]
    assert (tmp_path / "metrics.jsonl.torn").read_text() == '{"step": 7, "lo\n'


def test_truncating_metrics_is_atomic(tmp_path, monkeypatch):
    """`truncate_after` rewrote the file in place: a kill 1.9 s into the rewrite of a
    200,000-row log left 79,065 rows. Killed halfway through now, the file is the old one,
    whole; a temporary file a kill -9 left behind is removed by the next resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(20000))
    w = metrics_lib.MetricWriter(str(tmp_path))
    dumps, calls = json.dumps, []

    class Killed(BaseException):
        pass

    def dying_dumps(obj, *a, **kw):
        calls.append(1)
        if len(calls) == 5000:
            raise Killed()
        return dumps(obj, *a, **kw)

    monkeypatch.setattr(json, "dumps", dying_dumps)
    with pytest.raises(Killed):
        w.truncate_after(10000)
    monkeypatch.undo()
    assert path.read_text() == _rows(20000)
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]
    (tmp_path / ".metrics.jsonl.abc123.tmp").write_text('{"step": 1}\n')   # as kill -9 leaves
    w.truncate_after(10000)
    w.close()
    assert path.read_text() == _rows(10000)
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]
