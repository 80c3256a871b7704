"""Property: random byte corruptions of a valid records file lose nothing silently.

Truncations, flipped bytes, inserted NULs and invalid UTF-8 sequences are applied to a valid
JSONL file (seeded, a few hundred variants); after each, the lenient reader must account for
every non-blank line — kept as a record or named in the reject file at its line and byte
offset — keep every line the corruption did not touch, and never raise. Strict mode must
stop exactly at the first rejected line. A few variants also go through the TFDS build,
whose split must hold exactly the records the reader kept (issue 25).
"""
from __future__ import annotations

import json
import os
import random
import time

from PIL import Image

from mmalign_jax.data import records as R
from mmalign_jax.data import tfds_builder

SCORES = {"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 1}
INVALID_UTF8 = [b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]


def _valid_lines(n: int) -> list[bytes]:
    """Records with multi-byte text (so flips land inside UTF-8 sequences) and, every
    fourth one, an image (so the build copies image bytes too)."""
    out = []
    for i in range(n):
        img = i % 4 == 0
        row = {"id": f"rec-{i:03d}", "images": ["a.png"] if img else [],
               "conversation": [{"role": "user", "content": ("<image>\n" if img else "")
                                 + f"Qu'est-ce que c'est, n°{i} — 形は?"}],
               "responses": [{"text": f"Un carré rouge ({i}).", "scores": dict(SCORES)},
                             {"text": "Ein grünes Dreieck.", "scores": None}]}
        out.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    return out


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("truncate", "flip", "nul", "utf8"))
        pos = rng.randrange(len(b) + 1)
        if kind == "truncate":
            del b[max(pos, 1):]
        elif kind == "flip" and pos < len(b):
            b[pos] ^= rng.randrange(1, 256)
        elif kind == "nul":
            b[pos:pos] = b"\x00" * rng.randint(1, 3)
        else:
            b[pos:pos] = rng.choice(INVALID_UTF8)
    return bytes(b)


def _lines(data: bytes) -> list[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes without the newline) of every line, as a reader
    that splits on b'\\n' only sees them."""
    out, offset = [], 0
    for n, piece in enumerate(data.split(b"\n"), 1):
        out.append((n, offset, piece))
        offset += len(piece) + 1
    if out and out[-1][2] == b"":
        out.pop()
    return out


def _blank(piece: bytes) -> bool:
    try:
        return not piece.decode("utf-8").rstrip("\r").strip()
    except UnicodeDecodeError:
        return False


def _check(path: str, original: set[bytes], data: bytes, rej_path: str) -> R.LoadResult:
    res = R.load_records(path, image_root=os.path.dirname(path), strict=False,
                         reject_path=rej_path)
    lines = [x for x in _lines(data) if not _blank(x[2])]
    by_line = {n: (offset, piece) for n, offset, piece in lines}
    # Every non-blank line is a record or a reject: nothing is lost without a word.
    assert res.n_read == len(lines)
    assert len(res.records) + len(res.rejected) == len(lines)
    rows = [json.loads(x) for x in open(rej_path, encoding="utf-8")] if res.rejected else []
    assert [r["line"] for r in rows] == [ln for ln, _, _ in res.rejected]
    assert len({r["line"] for r in rows}) == len(rows)
    for r in rows:
        offset, piece = by_line[r["line"]]
        assert (r["file"], r["offset"]) == (path, offset) and r["reason"]
        assert r["raw"] == piece.decode("utf-8", "backslashreplace").rstrip("\r")
    # Every line the corruption left intact is kept (unless a corrupted line before it
    # turned into a valid record with the same id: then it is the reported duplicate).
    kept = {r.id for r in res.records}
    dup = {r["line"] for r in rows if "duplicate id" in r["reason"]}
    for n, (_, piece) in by_line.items():
        if piece in original and n not in dup:
            assert json.loads(piece)["id"] in kept, (n, piece[:60])
    # Strict stops at the first rejected line, with the same location.
    try:
        strict = R.load_records(path, image_root=os.path.dirname(path))
    except R.RecordError as e:
        assert rows and (e.file, e.line) == (path, rows[0]["line"])
    else:
        assert not rows and [r.id for r in strict.records] == [r.id for r in res.records]
    return res


def test_random_corruptions_keep_every_good_record_and_report_every_bad_line(tmp_path):
    Image.new("RGB", (6, 5), (200, 30, 30)).save(tmp_path / "a.png")
    valid = _valid_lines(40)
    original = set(valid)
    clean = b"\n".join(valid) + b"\n"
    rng = random.Random(25)
    path, rej = str(tmp_path / "records.jsonl"), str(tmp_path / "rejects.jsonl")
    t0 = time.perf_counter()
    n_rejected = 0
    built = 0
    for trial in range(250):
        data = _corrupt(clean, rng)
        with open(path, "wb") as f:
            f.write(data)
        res = _check(path, original, data, rej)
        n_rejected += len(res.rejected)
        if trial % 80 == 0 and res.records:   # and through the build: the same records land
            out = str(tmp_path / f"tfds{trial}")
            s = tfds_builder.build(path, str(tmp_path), out, reject_path=rej, progress=False)
            assert (s.n_read, s.kept, s.skipped) == (res.n_read, len(res.records),
                                                     len(res.rejected))
            got = [ex["id"] for ex in tfds_builder.open_split(out, "train")]
            assert got == [r.id for r in res.records]
            built += 1
    assert n_rejected > 250 and built >= 3    # the corruptions did hit records
    assert time.perf_counter() - t0 < 60
