"""Append-only, keyed JSONL files for jobs that must survive `kill -9`: sampling, annotation,
judging. Each finished unit of work is one line, written with one `write` call, flushed and
fsynced before the job moves on, so after a crash a rerun reads which keys are done and
redoes nothing that finished.

A process killed in the middle of a write can leave a torn last line (no trailing newline,
or not JSON). Opening the store moves such a tail to `<path>.torn` (appending, so nothing is
ever deleted) and truncates the file back to its last complete line; any *earlier* line that
is not valid JSON means the file was edited or corrupted by something else and raises
`StoreError` naming the line, rather than being skipped silently.

    store = JsonlStore("out/annotations.jsonl", key="key")
    if not store.has(k):
        store.append({"key": k, ...})
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Union

KeyFn = Union[str, Callable[[dict], str]]


class StoreError(ValueError):
    pass


class JobLocked(RuntimeError):
    """Another process holds the job's lock file (it is writing the same output)."""


def exclusive_lock(path: str, what: str, target: Optional[str] = None):
    """An exclusive lock on `path` for the caller's lifetime (close the returned file to
    release it): two jobs appending to one output would redo and interleave each other's
    rows, two training runs on one workdir would write the same checkpoints. The OS drops
    the lock when the process dies (kill -9 included), so a crashed job never blocks its
    rerun: a stale lock file is simply taken over. The holder writes its pid, host and start
    time into the file, so a refused job can say who holds it. `what` names the job in the
    error ("annotation job", ...); `target` what it writes (default: `path` less `.lock`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
    try:
        import fcntl
    except ImportError:   # not POSIX: no lock, the rest still works
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            # A file system without locks (some network mounts): run unlocked, say so.
            logging.getLogger(__name__).warning(
                "cannot lock %s (%s): running without the lock, so nothing stops a second "
                "%s on the same output", path, e.strerror, what)
            return f
        holder, dead = _describe_holder(f)
        f.close()
        if target is None:
            target = path[:-len(".lock")] if path.endswith(".lock") else path
        then = ("that process is no longer running, so one it started (a data-loader worker?) "
                "still holds the lock: stop it, then rerun" if dead else
                "wait for it to finish or stop it, then rerun")
        raise JobLocked(f"another {what} is writing {target} ({holder} holds {path}); "
                        f"{then}") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    f.flush()
    return f


def _describe_holder(f) -> tuple:
    """('pid 123 on host h since ...', whether that pid is known dead) from the lock file
    the holder wrote."""
    try:
        f.seek(0)
        info = json.loads(f.read() or "{}")
        pid, host = int(info["pid"]), str(info["host"])
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that did not write its pid", False
    text = f"pid {pid} on host {host}" + (f" since {info['since']}" if info.get("since") else "")
    return text, host == socket.gethostname() and not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JsonlStore:
    """`key`: the field holding each row's key, or a function of the row. Later rows with
    the same key replace earlier ones in `get`/`rows` (a retried failure that later
    succeeded); `append` itself never rewrites the file. Thread-safe."""

    def __init__(self, path: str, key: KeyFn = "key"):
        self.path = os.fspath(path)
        self._key = (lambda row, f=key: row[f]) if isinstance(key, str) else key
        self._lock = threading.Lock()
        self._rows: Dict[str, dict] = {}
        self.torn_lines = 0
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        good_end = 0
        lines = data.split(b"\n")
        # The piece after the last newline is either b"" (clean file) or a torn write.
        complete, tail = lines[:-1], lines[-1]
        for i, raw in enumerate(complete, start=1):
            end = good_end + len(raw) + 1
            if not raw.strip():
                good_end = end
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                key = self._key(row)
            except (ValueError, KeyError, TypeError) as e:
                if i == len(complete) and not tail:
                    # A torn write that happened to end with a newline byte is impossible
                    # (we write line + "\n" at once), but a crash during fsync of a file
                    # system without ordering can leave garbage here: treat it as torn.
                    self._quarantine(data[good_end:])
                    self._truncate(good_end)
                    return
                raise StoreError(
                    f"{self.path}, line {i}: not a valid row ({e}); this file is written only "
                    "by mmalign-jax jobs — fix or remove that line and rerun") from None
            self._rows[str(key)] = row
            good_end = end
        if tail:
            self._quarantine(tail)
            self._truncate(good_end)

    def _quarantine(self, raw: bytes) -> None:
        self.torn_lines += 1
        with open(self.path + ".torn", "ab") as f:
            f.write(raw + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ the API
    def has(self, key: str) -> bool:
        with self._lock:
            return str(key) in self._rows

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            return self._rows.get(str(key))

    def keys(self) -> list:
        with self._lock:
            return list(self._rows)

    def rows(self) -> Iterator[dict]:
        """The latest row of every key, in the order keys were first written."""
        with self._lock:
            return iter(list(self._rows.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def __contains__(self, key: Any) -> bool:
        return self.has(key)

    def append(self, row: dict) -> None:
        """Write one row durably (one write, flush, fsync) before returning."""
        key = str(self._key(row))
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._rows[key] = row
