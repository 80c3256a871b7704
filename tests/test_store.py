"""The append-only store jobs rely on to survive kill -9."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from mmalign_jax.store import JsonlStore, StoreError


def test_append_reopen_and_latest_row_wins(tmp_path):
    p = tmp_path / "s.jsonl"
    s = JsonlStore(p)
    s.append({"key": "a", "v": 1})
    s.append({"key": "b", "v": 2})
    s.append({"key": "a", "v": 3})
    s2 = JsonlStore(p)
    assert s2.keys() == ["a", "b"] and s2.get("a")["v"] == 3 and "b" in s2 and len(s2) == 2
    assert len(p.read_text().splitlines()) == 3   # append-only: nothing rewritten


def test_torn_tail_is_quarantined_not_lost(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b", "v": [1, 2')
    s = JsonlStore(p)
    assert s.keys() == ["a"] and s.torn_lines == 1
    assert p.read_text() == '{"key": "a"}\n'
    assert (tmp_path / "s.jsonl.torn").read_text() == '{"key": "b", "v": [1, 2\n'
    s.append({"key": "b"})
    assert JsonlStore(p).keys() == ["a", "b"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"key": "a"}\nnot json\n{"key": "c"}\n')
    with pytest.raises(StoreError, match=r"s.jsonl, line 2"):
        JsonlStore(p)


def test_key_function(tmp_path):
    s = JsonlStore(tmp_path / "s.jsonl", key=lambda r: f"{r['id']}/{r['i']}")
    s.append({"id": "x", "i": 0})
    assert s.has("x/0") and not s.has("x/1")


def test_kill_9_while_appending_loses_only_the_unfinished_row(tmp_path):
    p = tmp_path / "s.jsonl"
    code = textwrap.dedent(f"""
        import os, signal
        from mmalign_jax.store import JsonlStore
        s = JsonlStore({str(p)!r})
        for i in range(100000):
            s.append({{"key": str(i), "pad": "x" * 5000}})
            if i == 300:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode == -9
    s = JsonlStore(p)
    assert s.keys() == [str(i) for i in range(301)]
    assert all(json.loads(l) for l in p.read_text().splitlines())
