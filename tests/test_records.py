"""Record schema: readers for our/LLaVA/DPO formats, validation messages, lenient loading."""
import json
import logging
import os

import pytest
from PIL import Image

from mmalign_jax.data import records as R
from mmalign_jax.data.records import Record, RecordError, Response, load_records

SCORES = {"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 1}


def good(rid="r1", image="a.png", **over):
    row = {"id": rid, "images": [image] if image else [],
           "conversation": [{"role": "user",
                             "content": ("<image>\n" if image else "") + "What is this?"}],
           "responses": [{"text": "A cat.", "source": "m@T0.7", "scores": dict(SCORES)},
                         {"text": "A dog.", "scores": dict(SCORES)}]}
    row.update(over)
    return row


def write_lines(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(root / "a.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG garbage, not an image at all" * 4)
    return str(root)


# ------------------------------------------------------------------ dataclasses
def test_round_trip_ours():
    rec = Record.from_json(good())
    assert rec.responses[0].scores == SCORES and rec.responses[0].source == "m@T0.7"
    again = Record.from_json(json.loads(json.dumps(rec.to_json())))
    assert again == rec
    assert "meta" not in rec.responses[1].to_json() and "source" not in rec.responses[1].to_json()


def test_unscored_response_and_defaults():
    rec = Record.from_json({"id": 7, "conversation": [{"role": "user", "content": "hi"}],
                            "responses": [{"text": "x", "scores": None}]})
    assert rec.id == "7" and rec.images == [] and rec.meta == {}
    assert rec.responses[0].scores is None
    assert Response.from_json({"text": "y"}).text == "y"


# ------------------------------------------------------------------ strict errors
BAD = [
    ("missing field", lambda: {k: v for k, v in good().items() if k != "conversation"},
     "conversation", "missing"),
    ("ill-typed images", lambda: good(images="a.png"), "images", "must be list"),
    ("ill-typed text", lambda: good(responses=[{"text": 3}]), "responses[0].text", "must be str"),
    ("bad role", lambda: good(conversation=[{"role": "bot", "content": "<image>\nq"}]),
     "conversation[0].role", "not one of"),
    ("score missing", lambda: good(responses=[{"text": "x", "scores": {
        k: v for k, v in SCORES.items() if k != "verbosity"}}]),
     "responses[0].scores.verbosity", "score missing"),
    ("score not int", lambda: good(responses=[{"text": "x", "scores": {**SCORES, "correctness": 3.5}}]),
     "responses[0].scores.correctness", "must be an integer"),
    ("score out of range", lambda: good(responses=[{"text": "x", "scores": {**SCORES, "helpfulness": 5}}]),
     "responses[0].scores.helpfulness", "outside 0–4"),
    ("unknown attribute", lambda: good(responses=[{"text": "x", "scores": {**SCORES, "humor": 1}}]),
     "responses[0].scores.humor", "unknown attribute"),
    ("image count", lambda: good(images=["a.png", "a.png"]), "conversation", "placeholder"),
    ("empty text", lambda: good(responses=[{"text": "  "}]), "responses[0].text", "empty response"),
    ("unknown key", lambda: good(respones=[]), "respones", "unknown key"),
]


@pytest.mark.parametrize("name,make,field,words", BAD, ids=[b[0] for b in BAD])
def test_strict_names_line_id_field(tmp_path, name, make, field, words):
    path = write_lines(tmp_path / "d.jsonl", [good("ok1"), make()])
    with pytest.raises(RecordError) as ei:
        load_records(path)
    e = ei.value
    assert (e.file, e.line, e.field) == (path, 2, field)
    assert e.record_id == "r1"
    msg = str(e)
    assert f"{path}:2" in msg and "'r1'" in msg and field in msg and words in msg
    assert e.hint and e.hint in msg        # says what to do


def test_strict_duplicate_id_and_malformed_json(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [good("x"), "", good("x")])
    with pytest.raises(RecordError, match=r"d.jsonl:3: record 'x': id: duplicate id \(first at line 1\)"):
        load_records(path)
    path = write_lines(tmp_path / "e.jsonl", [good("x"), '{"id": "y", '])
    with pytest.raises(RecordError, match=r"e.jsonl:2: .*malformed JSON") as ei:
        load_records(path)
    assert ei.value.line == 2


def test_images_checked_only_with_root(tmp_path, image_root):
    path = write_lines(tmp_path / "d.jsonl", [good("m", image="missing.png")])
    assert len(load_records(path).records) == 1          # no root: paths not checked
    with pytest.raises(RecordError, match="missing.png not found") as ei:
        load_records(path, image_root=image_root)
    assert ei.value.field == "images[0]" and ei.value.record_id == "m"
    path = write_lines(tmp_path / "c.jsonl", [good("c", image="corrupt.png")])
    with pytest.raises(RecordError, match="corrupt.png unreadable") as ei:
        load_records(path, image_root=image_root)
    assert ei.value.field == "images[0]"


# ------------------------------------------------------------------ lenient mode
def test_lenient_keeps_good_and_rejects_exactly_the_bad(tmp_path, image_root, caplog):
    bad_score = good("bad-score", responses=[{"text": "x", "scores": {**SCORES, "coherence": 9}}])
    rows = [good("g1"), good("corrupt", image="corrupt.png"), "not json {",
            good("missing", image="missing.png"), bad_score, good("g2"), good("g1")]
    path = write_lines(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="mmalign_jax.data.records"):
        res = load_records(path, image_root=image_root, strict=False)
    assert [r.id for r in res.records] == ["g1", "g2"]
    assert res.n_read == 7
    assert [(ln, rid) for ln, rid, _ in res.rejected] == [
        (2, "corrupt"), (3, None), (4, "missing"), (5, "bad-score"), (7, "g1")]
    assert res.reject_path == path + ".rejects.jsonl"
    rej = [json.loads(l) for l in open(res.reject_path)]
    assert [r["line"] for r in rej] == [2, 3, 4, 5, 7]
    assert rej[1]["raw"] == "not json {" and "malformed JSON" in rej[1]["reason"]
    assert "unreadable" in rej[0]["reason"] and "not found" in rej[2]["reason"]
    assert "scores.coherence" in rej[3]["reason"] and "outside 0–4" in rej[3]["reason"]
    assert "duplicate id" in rej[4]["reason"]
    assert json.loads(rej[3]["raw"]) == bad_score
    assert f"kept 2, skipped 5 (see {res.reject_path})" in caplog.text


def test_lenient_custom_reject_path_and_stale_file(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [good("a", image=None), "{"])
    out = str(tmp_path / "rej" / "x.jsonl")
    res = load_records(path, strict=False, reject_path=out)
    assert res.reject_path == out and len(open(out).readlines()) == 1
    write_lines(tmp_path / "d.jsonl", [good("a", image=None)])
    res = load_records(path, strict=False, reject_path=out)
    assert res.rejected == [] and open(out).read() == ""     # stale rejects cleared


# ------------------------------------------------------------------ other formats
def test_llava_format(tmp_path):
    rows = [
        {"id": "l1", "image": "a.png", "model": "x", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": 2, "conversations": [{"from": "human", "value": "Hi"},
                                    {"from": "gpt", "value": "Hello"}]},
        {"id": "l3", "images": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "<image><image>\nCompare"}, {"from": "gpt", "value": "ok"}]},
    ]
    recs = load_records(write_lines(tmp_path / "l.jsonl", rows)).records
    assert recs[0].images == ["a.png"] and recs[0].responses == []
    assert [t["role"] for t in recs[0].conversation] == ["user", "assistant"] * 2
    assert recs[0].conversation[-1]["content"] == "Red." and recs[0].meta == {"model": "x"}
    assert recs[1].id == "2" and recs[1].images == []
    assert recs[2].images == ["a.png", "b.png"]
    bad = {"id": "b", "conversations": [{"from": "robot", "value": "x"}]}
    with pytest.raises(RecordError, match=r"conversations\[0\].from"):
        load_records(write_lines(tmp_path / "b.jsonl", [bad]))


def test_json_array_file(tmp_path):
    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "q"}]},
                                {"id": "b", "conversations": [{"from": "alien", "value": "q"}]}]))
    with pytest.raises(RecordError, match=r"l.json \(item 2\): record 'b'"):
        load_records(str(path))
    res = load_records(str(path), strict=False)
    assert [r.id for r in res.records] == ["a"] and res.rejected[0][:2] == (2, "b")


def test_dpo_format(tmp_path):
    rows = [
        {"id": "d1", "image": "a.png", "question": "What is it?", "chosen": "A cat.",
         "rejected": "A car.", "ref_chosen_logp": -10.5, "ref_rejected_logp": -12.0,
         "ref_chosen_avg_logp": -1.2, "ref_chosen_per_token_logp": [-1.0, -2.0]},
        {"id": "d2", "image": "a.png", "prompt": "<image>\nDescribe.", "chosen": "c",
         "rejected": "r"},
        {"id": "d3", "question": "Text only?", "chosen": "c", "rejected": "r"},
    ]
    recs = load_records(write_lines(tmp_path / "p.jsonl", rows)).records
    d1 = recs[0]
    assert d1.conversation == [{"role": "user", "content": "<image>\nWhat is it?"}]
    assert [(r.text, r.meta["role"]) for r in d1.responses] == [("A cat.", "chosen"),
                                                                ("A car.", "rejected")]
    assert d1.meta == {"ref_chosen_logp": -10.5, "ref_rejected_logp": -12.0,
                       "ref_chosen_avg_logp": -1.2, "ref_chosen_per_token_logp": [-1.0, -2.0]}
    assert recs[1].conversation[0]["content"] == "<image>\nDescribe."   # not doubled
    assert recs[2].conversation[0]["content"] == "Text only?" and recs[2].images == []
    with pytest.raises(RecordError, match="rejected: missing"):
        Record.from_json({"id": "x", "question": "q", "chosen": "c"})


def test_fmt_override_and_undetectable():
    with pytest.raises(RecordError, match="conversations: missing"):
        Record.from_json(good(), fmt="llava")
    with pytest.raises(RecordError, match="cannot tell the format"):
        Record.from_json({"id": "x", "text": "y"})
    with pytest.raises(ValueError):
        Record.from_json(good(), fmt="sharegpt")


# ------------------------------------------------------------------ files
def test_write_records_atomic(tmp_path):
    path = str(tmp_path / "out" / "r.jsonl")
    recs = [Record.from_json(good("a")), Record.from_json(good("b"))]
    R.write_records(path, recs)
    assert [r.id for r in load_records(path).records] == ["a", "b"]
    assert list(R.iter_jsonl(path))[0] == recs[0].to_json()

    def boom():
        yield recs[0]
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError):
        R.write_records(path, boom())
    assert [r.id for r in load_records(path).records] == ["a", "b"]   # old file intact
    assert os.listdir(tmp_path / "out") == ["r.jsonl"]                 # no temp left


def test_iter_jsonl_malformed(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"a": 1}, "oops"])
    it = R.iter_jsonl(path)
    assert next(it) == {"a": 1}
    with pytest.raises(RecordError, match=r"x.jsonl:2"):
        next(it)


# ------------------------------------------------------------------ encoding (issue 25, 1)
def test_one_non_utf8_byte_is_one_rejected_line(tmp_path):
    """A Latin-1 'é' on line 41 of 60 used to lose the whole file ('utf-8' codec can't
    decode byte 0xe9 in position 3155, no file, no line): now the other 59 records are kept
    and line 41 is named with its file, line, byte offsets and id; strict names the same."""
    lines = [json.dumps(good(f"r{i:02d}", image=None, meta={"note": "café"}),
                        ensure_ascii=False).encode("utf-8") for i in range(60)]
    lines[40] = lines[40].replace("café".encode("utf-8"), b"caf\xe9")
    path = tmp_path / "bad_nonutf8.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    line_start = sum(len(x) + 1 for x in lines[:40])
    bad_byte = line_start + lines[40].index(b"\xe9")

    res = load_records(str(path), strict=False)
    assert [r.id for r in res.records] == [f"r{i:02d}" for i in range(60) if i != 40]
    assert res.n_read == 60 and len(res.rejected) == 1
    (row,) = [json.loads(x) for x in open(res.reject_path, encoding="utf-8")]
    assert (row["file"], row["line"], row["offset"], row["id"]) == (str(path), 41, line_start, "r40")
    assert f"byte 0xe9 at offset {bad_byte} of the file" in row["reason"]
    assert "\\xe9" in row["raw"] and "UTF-8" in row["reason"]

    with pytest.raises(RecordError) as ei:
        load_records(str(path))
    assert (ei.value.file, ei.value.line, ei.value.record_id) == (str(path), 41, "r40")
    assert f"{path}:41: record 'r40': not valid UTF-8: byte 0xe9 at offset {bad_byte}" in str(ei.value)


def test_byte_order_mark_and_crlf_still_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good("a", image=None)).encode() + b"\r\n"
                     + json.dumps(good("b", image=None)).encode() + b"\r\n")
    assert [r.id for r in load_records(str(path)).records] == ["a", "b"]
    arr = tmp_path / "arr.json"
    arr.write_bytes(b"[" + json.dumps(good("a", image=None)).encode() + b", \xe9]")
    with pytest.raises(RecordError, match=r"arr.json: record \?: not valid UTF-8: byte 0xe9 at offset"):
        load_records(str(arr), strict=False)
