"""TFDS builder: validation (strict / lenient + reject file), TF-free read-back, splits, CLI."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from mmalign_jax.data import records as records_lib
from mmalign_jax.data import tfds_builder

SCORES = {"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 1}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_data(root):
    img = os.path.join(root, "img")
    os.makedirs(os.path.join(img, "sub"))
    for i in range(3):
        Image.new("RGB", (10 + i, 8), (40 * i, 200, 10)).save(os.path.join(img, "sub", f"{i}.png"))
    with open(os.path.join(img, "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    q = [{"role": "user", "content": "<image>\nWhat colour?"}]
    rows = [
        {"id": "good0", "images": ["sub/0.png"], "conversation": q,
         "responses": [{"text": "Red.", "scores": SCORES},
                       {"text": "Blue.", "scores": dict(SCORES, correctness=0)}]},
        {"id": "corrupt", "images": ["corrupt.jpg"], "conversation": q},
        {"id": "good1", "images": ["sub/1.png"], "conversation": q + [
            {"role": "assistant", "content": "Green."}]},
        {"id": "missing", "images": ["sub/nope.png"], "conversation": q},
        {"id": "badscore", "images": ["sub/2.png"], "conversation": q,
         "responses": [{"text": "x", "scores": dict(SCORES, helpfulness=5)}]},
        {"id": "text", "conversation": [{"role": "user", "content": "Hi?"},
                                        {"role": "assistant", "content": "Hello."}]},
        {"id": "good2", "images": ["sub/2.png", "sub/0.png"], "conversation": [
            {"role": "user", "content": "<image>\n<image>\nSame?"}]},
    ]
    path = os.path.join(root, "records.jsonl")
    records_lib.write_jsonl(path, rows)
    return path, img, rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    path, img, rows = _write_data(root)
    out = os.path.join(root, "out")
    rej = os.path.join(root, "rejects.jsonl")
    summary = tfds_builder.build(path, img, out, split="train", reject_path=rej, progress=False)
    return dict(root=root, path=path, img=img, rows=rows, out=out, rej=rej, summary=summary)


def test_strict_names_first_bad_record(data, tmp_path):
    out = str(tmp_path / "strict")
    with pytest.raises(records_lib.RecordError) as ei:
        tfds_builder.build(data["path"], data["img"], out, strict=True, progress=False)
    msg = str(ei.value)
    assert "'corrupt'" in msg and "records.jsonl:2" in msg and "images[0]" in msg
    assert not os.path.exists(os.path.join(out, "mmalign_records"))   # nothing written


def test_lenient_keeps_good_and_rejects_exactly_the_bad(data):
    s = data["summary"]
    assert (s.n_read, s.kept, s.skipped) == (7, 4, 3)
    assert s.reject_path == data["rej"]
    rows = [json.loads(line) for line in open(data["rej"])]
    assert [r["id"] for r in rows] == ["corrupt", "missing", "badscore"]
    reasons = {r["id"]: r["reason"] for r in rows}
    assert "unreadable" in reasons["corrupt"]
    assert "not found" in reasons["missing"]
    assert "helpfulness" in reasons["badscore"] and "0–4" in reasons["badscore"]
    assert "train: kept 4 of 7 records, skipped 3" in str(s)


def test_reads_back_without_tensorflow(data):
    src = tfds_builder.open_split(data["out"], "train")
    assert len(src) == 4
    got = list(src)
    assert [e["id"] for e in got] == ["good0", "good1", "text", "good2"]   # record order
    by_id = {r["id"]: r for r in data["rows"]}
    for e in got:
        rec = records_lib.Record.from_json(by_id[e["id"]])
        assert e["record"] == rec.to_json()
        want = [open(os.path.join(data["img"], p), "rb").read() for p in rec.images]
        assert e["images"] == want                 # stored bytes, as on disk, in order
    assert got[2]["images"] == []
    assert src.record(3).images == ["sub/2.png", "sub/0.png"]
    # Picklable (grain worker processes), and the plain TFDS API reads it too.
    src2 = pickle.loads(pickle.dumps(src))
    assert src2[1]["id"] == "good1" and src2.__getitems__([0, 3])[1]["id"] == "good2"
    import tensorflow_datasets as tfds
    raw = tfds.data_source("mmalign_records", split="train", data_dir=data["out"])
    assert len(raw) == 4 and raw[0]["id"] == b"good0"
    assert "tensorflow" not in sys.modules


def test_second_split_overwrite_and_dict(data, tmp_path):
    out = data["out"]
    s = tfds_builder.build(data["path"], data["img"], out, split="eval",
                           reject_path=str(tmp_path / "rej_eval.jsonl"), progress=False)
    assert s.kept == 4
    assert tfds_builder.splits(out) == {"train": 4, "eval": 4}
    with pytest.raises(FileExistsError, match="overwrite"):
        tfds_builder.build(data["path"], data["img"], out, split="eval", progress=False)
    # Overwrite eval with a smaller file; train is untouched.
    small = str(tmp_path / "small.jsonl")
    with open(small, "w") as f:
        f.write(json.dumps(data["rows"][5]) + "\n")
    tfds_builder.build(small, data["img"], out, split="eval", overwrite=True, progress=False)
    assert tfds_builder.splits(out) == {"train": 4, "eval": 1}
    assert tfds_builder.open_split(out, "eval")[0]["id"] == "text"
    assert tfds_builder.open_split(out, "train")[3]["id"] == "good2"
    # Several splits in one call, reject paths per split.
    out2 = str(tmp_path / "multi")
    s = tfds_builder.build({"a": data["path"], "b": small}, data["img"], out2,
                           reject_path=str(tmp_path / "r.jsonl"), progress=False)
    assert {k: v.kept for k, v in s.splits.items()} == {"a": 4, "b": 1}
    assert os.path.exists(tmp_path / "r.a.jsonl")
    with pytest.raises(KeyError, match="has"):
        tfds_builder.open_split(out2, "train")


def test_cli(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    out = str(tmp_path / "cli")
    base = [sys.executable, "-m", "mmalign_jax.data", "build", "--records", data["path"],
            "--image-root", data["img"], "--out", out]
    p = subprocess.run(base + ["--strict"], capture_output=True, text=True, env=env)
    assert p.returncode == 1
    assert "'corrupt'" in p.stderr and "records.jsonl:2" in p.stderr
    rej = str(tmp_path / "cli_rej.jsonl")
    p = subprocess.run(base + ["--split", "eval", "--reject-file", rej],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "eval: kept 4 of 7 records, skipped 3" in p.stdout
    assert len(open(rej).readlines()) == 3
    p = subprocess.run(base + ["--split", "eval"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "overwrite" in p.stderr


def test_cli_demo(tmp_path):
    pytest.importorskip("mmalign_jax.demo.generate")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = str(tmp_path / "demo")
    p = subprocess.run([sys.executable, "-m", "mmalign_jax.data", "demo", "--out", out,
                        "--n-train", "4", "--n-eval", "2", "--seed", "1"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    got = tfds_builder.splits(os.path.join(out, "tfds"))
    assert got["train"] == 4 and got["eval"] == 2
    ex = tfds_builder.open_split(os.path.join(out, "tfds"), "train")[0]
    assert len(ex["images"]) == len(ex["record"]["images"]) >= 1
    Image.open(__import__("io").BytesIO(ex["images"][0])).verify()


def test_build_cli_keeps_the_good_records_around_a_non_utf8_line(data, tmp_path, capsys):
    """`python -m mmalign_jax.data build` on a file with one Latin-1 byte (issue 25, 1): lenient
    builds every other record and counts the bad line in the summary and the reject file;
    --strict fails with the file, line, id and byte offset (exit 1, nothing written)."""
    from mmalign_jax.data.__main__ import main
    lines = open(data["path"], "rb").read().splitlines()
    bad = lines[2].replace(b"Green.", b"Gr\xfcn.")          # record good1
    path = tmp_path / "bad_nonutf8.jsonl"
    path.write_bytes(b"\n".join([bad] + lines[:2] + lines[3:]) + b"\n")   # first
    offset = bad.index(b"\xfc")
    base = ["build", "--records", str(path), "--image-root", data["img"]]

    assert main(base + ["--out", str(tmp_path / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:1: record 'good1': not valid UTF-8: byte 0xfc at offset {offset}" in err
    assert not os.path.exists(tmp_path / "strict" / "mmalign_records")

    rej = str(tmp_path / "rej.jsonl")
    assert main(base + ["--out", str(tmp_path / "out"), "--reject-file", rej]) == 0
    assert "train: kept 3 of 7 records, skipped 4" in capsys.readouterr().out
    rows = {r["id"]: r for r in map(json.loads, open(rej, encoding="utf-8"))}
    assert sorted(rows) == ["badscore", "corrupt", "good1", "missing"]
    assert (rows["good1"]["line"], rows["good1"]["file"], rows["good1"]["offset"]) == (1, str(path), 0)
    assert rows["corrupt"]["offset"] == len(bad) + 1 + len(lines[0]) + 1   # line 3
    src = tfds_builder.open_split(str(tmp_path / "out"), "train")
    assert [ex["id"] for ex in src] == ["good0", "text", "good2"]


def test_an_image_over_the_pixel_budget_is_a_rejected_record(data, tmp_path):
    """Issue 25, case 8: a small PNG declaring 12000x12000 pixels was accepted into the
    dataset; the build now rejects its record (named, counted, the others kept) from the
    header, and --strict stops at it."""
    from conftest import bomb_png
    img = tmp_path / "img"
    shutil.copytree(data["img"], img)
    (img / "bomb.png").write_bytes(bomb_png())
    q = [{"role": "user", "content": "<image>\nWhat colour?"}]
    rows = [{"id": "ok", "images": ["sub/0.png"], "conversation": q},
            {"id": "bomb", "images": ["bomb.png"], "conversation": q},
            {"id": "ok2", "images": ["sub/1.png"], "conversation": q}]
    path = str(tmp_path / "r.jsonl")
    records_lib.write_jsonl(path, rows)
    rej = str(tmp_path / "rej.jsonl")
    s = tfds_builder.build(path, str(img), str(tmp_path / "out"), reject_path=rej,
                           progress=False)
    assert (s.n_read, s.kept, s.skipped) == (3, 2, 1)
    (row,) = [json.loads(x) for x in open(rej)]
    assert (row["id"], row["line"]) == ("bomb", 2)
    assert row["reason"].startswith(f"images[0]: image {img}/bomb.png is 12000x12000 = "
                                    "144.0 MP, over the budget of 100 MP per image")
    with pytest.raises(records_lib.RecordError, match=r"r.jsonl:2: record 'bomb': images\[0\]"):
        tfds_builder.build(path, str(img), str(tmp_path / "strict"), strict=True,
                           progress=False)
