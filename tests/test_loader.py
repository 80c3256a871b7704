"""Grain pipeline: batch layouts, too-long handling, exact resume, sharding, shuffling."""
import json
import os
import random
import string
import sys

import numpy as np
import pytest
from PIL import Image

from mmalign_jax.data import chat, images, tfds_builder
from mmalign_jax.data import loader as loader_lib
from mmalign_jax.data import pairs as pairs_lib
from mmalign_jax.data import records as records_lib

ATTR = records_lib.ATTRIBUTES
IMAGE_TOKEN_ID = 4
N_IMG_TOK = 3
S = 8


def _local_tokenizer():
    """Character-level fast tokenizer with LLaMA-like specials (<s> prepended, </s>)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image_tok>"]
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def _tokenizer():
    try:   # the demo tokenizer when it exists and handles our texts
        from mmalign_jax.demo.tokenizer import load_tokenizer
        tok = load_tokenizer()
        chat.tokenize([{"role": "user", "content": "<image>\nSay 3."},
                       {"role": "assistant", "content": "Answer 1 Same."}], tok,
                      image_token_id=IMAGE_TOKEN_ID, num_image_tokens=N_IMG_TOK)
        return tok
    except Exception:
        return _local_tokenizer()


def _scores(v):
    return {a: (v if a in pairs_lib.PAIR_ATTRIBUTES else 2) for a in ATTR}


def _write(root):
    rng = random.Random(0)
    img = os.path.join(root, "img")
    os.makedirs(img)

    def image(name, w, h):
        Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), 30)).save(
            os.path.join(img, name))
        return name

    rows = []
    for i in range(6):
        rows.append({"id": f"p{i}", "images": [image(f"p{i}.png", 6 + i, 12 - i)],
                     "conversation": [{"role": "user", "content": f"<image>\nColour {i}?"}],
                     "responses": [{"text": "Answer " * (j + 1) + str(i), "scores": _scores(4 - j)}
                                   for j in range(4)]})
        rows.append({"id": f"t{i}", "conversation": [{"role": "user", "content": f"Say {i}."}],
                     "responses": [{"text": f"{i} {i}", "scores": _scores(4)},
                                   {"text": "no", "scores": _scores(1)}]})
        rows.append({"id": f"s{i}", "images": [image(f"s{i}a.png", 9, 5), image(f"s{i}b.png", 5, 9)],
                     "conversation": [
                         {"role": "user", "content": f"<image>\n<image>\nCompare {i}."},
                         {"role": "assistant", "content": "Same. " * (i + 1)}]})
    rows.append({"id": "longq", "images": [image("lq.png", 7, 7)], "conversation": [
        {"role": "user", "content": "<image>\nWhy " + "very " * 300 + "long?"}],
        "responses": [{"text": "Yes.", "scores": _scores(4)},
                      {"text": "No.", "scores": _scores(0)}]})
    rows.append({"id": "longr", "conversation": [{"role": "user", "content": "Talk."}],
                 "responses": [{"text": "blah " * 200, "scores": _scores(4)},
                               {"text": "No.", "scores": _scores(0)}]})
    path = os.path.join(root, "records.jsonl")
    records_lib.write_jsonl(path, rows)
    return path, img, rows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipe"))
    path, img, rows = _write(root)
    tfds_builder.build(path, img, os.path.join(root, "tfds"), split="train", strict=True,
                       progress=False)
    src = tfds_builder.open_split(os.path.join(root, "tfds"), "train")
    tok = _tokenizer()
    kw = dict(image_token_id=IMAGE_TOKEN_ID, num_image_tokens=N_IMG_TOK)
    recs = src.records()
    # Lengths from the data, so the test does not depend on the tokenizer.
    prs = {p["id"]: p for p in pairs_lib.make_pairs(recs)}
    plen, rlen = {}, {}
    for pid, p in prs.items():
        pi, ri = chat.tokenize_prompt_response(p["conversation"], p["chosen"], tok, **kw)
        _, rj = chat.tokenize_prompt_response(p["conversation"], p["rejected"], tok, **kw)
        plen[pid], rlen[pid] = len(pi), max(len(ri), len(rj))
    prompt_len = max(v for k, v in plen.items() if k != "longq")
    response_len = max(v for k, v in rlen.items() if k != "longr")
    assert plen["longq"] > prompt_len and rlen["longr"] > response_len
    sft_lens = sorted(len(chat.tokenize(r.conversation, tok, **kw).input_ids)
                      for r in recs if r.id.startswith("s"))
    buckets = [sft_lens[1], sft_lens[3], sft_lens[-1] + 5]
    cfg = loader_lib.LoaderConfig(
        image_size=S, max_images=2, seq_len=None, buckets=buckets, prompt_len=prompt_len,
        response_len=response_len, pad_token_id=tok.pad_token_id or 0, batch_size=2,
        num_epochs=1, drop_remainder=False, read_threads=2, **kw)
    return dict(root=root, img=img, rows=rows, src=src, tok=tok, cfg=cfg, recs=recs, prs=prs,
                kw=kw)


def _cfg(env_or_cfg, **kw):
    import dataclasses
    base = env_or_cfg["cfg"] if isinstance(env_or_cfg, dict) else env_or_cfg
    return dataclasses.replace(base, **kw)


def _all(loader):
    return list(loader)


def _check_pixels(env, b, i, rec_index):
    want = [images.preprocess(images.load_image(x), S, mode="pad")
            for x in env["src"].image_bytes(rec_index)]
    n = len(want)
    assert b["image_mask"][i].tolist() == [True] * n + [False] * (2 - n)
    for j in range(2):
        if j < n:
            np.testing.assert_array_equal(b["pixel_values"][i, j], want[j])
        else:
            assert not b["pixel_values"][i, j].any()


# ------------------------------------------------------------------------------ layouts
def test_dpo_batch_layout_and_reports(env):
    cfg = _cfg(env, shuffle=False, batch_size=4)
    loader = loader_lib.make_loader("dpo", env["src"], env["tok"], cfg, shard_index=0,
                                  shard_count=1)
    assert [s["id"] for s in loader.skipped] == ["longq"]
    assert "prompt_len" in loader.skipped[0]["reason"]
    assert [(t["id"], t["side"]) for t in loader.truncated] == [("longr", "chosen")]
    n = loader.num_examples
    assert n == len(env["prs"]) - 1 == 13
    assert loader.total_steps == loader.steps_per_epoch == 4   # 13 → 16, 3 padding rows
    P, R, pad = cfg.prompt_len, cfg.response_len, cfg.pad_token_id
    rec_index = {r.id: i for i, r in enumerate(env["recs"])}
    seen = []
    for b in _all(loader):
        assert b["prompt_ids"].shape == (4, P) and b["chosen_ids"].shape == (4, R)
        assert b["pixel_values"].shape == (4, 2, S, S, 3) and b["pixel_values"].dtype == np.float32
        assert b["prompt_ids"].dtype == np.int32 and b["chosen_mask"].dtype == np.int32
        assert "ref_chosen_logps" not in b
        for i in range(4):
            idx = int(b["example_index"][i])
            if idx < 0:
                assert b["weight"][i] == 0 and not b["prompt_mask"][i].any()
                assert not b["image_mask"][i].any() and not b["pixel_values"][i].any()
                continue
            assert b["weight"][i] == 1
            seen.append(idx)
            pid = loader.example_ids[idx]
            p = env["prs"][pid]
            pm, cm, rm = b["prompt_mask"][i], b["chosen_mask"][i], b["rejected_mask"][i]
            k = int(pm.sum())
            assert pm.tolist() == [0] * (P - k) + [1] * k                 # left padded
            assert (b["prompt_ids"][i][pm == 0] == pad).all()
            for ids, m in ((b["chosen_ids"][i], cm), (b["rejected_ids"][i], rm)):
                r = int(m.sum())
                assert m.tolist() == [1] * r + [0] * (R - r)             # right padded
                assert (ids[m == 0] == pad).all()
            prompt = b["prompt_ids"][i][pm == 1]
            n_img = len(p["images"])
            assert int(b["image_mask"][i].sum()) == n_img
            assert int((prompt == IMAGE_TOKEN_ID).sum()) == N_IMG_TOK * n_img
            _check_pixels(env, b, i, rec_index[p["record_id"]])
            for side in ("chosen", "rejected"):
                full = chat.tokenize(p["conversation"] + [{"role": "assistant",
                                                           "content": p[side]}],
                                     env["tok"], **env["kw"])
                got = np.concatenate([prompt, b[f"{side}_ids"][i][b[f"{side}_mask"][i] == 1]])
                if pid == "longr" and side == "chosen":                   # cut at the end
                    assert len(got) == k + R
                    np.testing.assert_array_equal(got, full.input_ids[:k + R])
                else:
                    np.testing.assert_array_equal(got, full.input_ids)
                    # the response is exactly the trained target tokens
                    assert int(full.target_mask.sum()) == len(got) - k
    assert sorted(seen) == list(range(n))
    assert "tensorflow" not in sys.modules


def test_sft_buckets_and_modes(env):
    cfg = _cfg(env, shuffle=False, batch_size=2)
    loader = loader_lib.make_loader("sft", env["src"], env["tok"], cfg, shard_index=0,
                                  shard_count=1)
    assert loader.num_examples == 6 and loader.skipped == []
    recs = {r.id: r for r in env["recs"]}
    rec_index = {r.id: i for i, r in enumerate(env["recs"])}
    seen = []
    for b in _all(loader):
        T = b["input_ids"].shape[1]
        assert T in cfg.buckets
        lens = b["attention_mask"].sum(1)
        assert T == min(x for x in cfg.buckets if x >= lens.max())      # smallest that fits
        for i in range(2):
            idx = int(b["example_index"][i])
            seen.append(idx)
            rec = recs[loader.example_ids[idx]]
            tk = chat.tokenize(rec.conversation, env["tok"], **env["kw"])
            n = len(tk.input_ids)
            assert b["attention_mask"][i].tolist() == [1] * n + [0] * (T - n)
            np.testing.assert_array_equal(b["input_ids"][i, :n], tk.input_ids)
            assert (b["input_ids"][i, n:] == cfg.pad_token_id).all()
            np.testing.assert_array_equal(b["target_mask"][i, :n], tk.target_mask)
            assert not b["target_mask"][i, n:].any()
            _check_pixels(env, b, i, rec_index[rec.id])
    assert sorted(seen) == list(range(6))
    # Rejection sampling: best response per record with responses; two are too long.
    best = loader_lib.make_loader("sft", env["src"], env["tok"],
                                _cfg(env, sft_mode="best", buckets=None, seq_len=400),
                                shard_index=0, shard_count=1)
    n_best = len(pairs_lib.best_responses(env["recs"]))
    skipped = {s["id"]: s["reason"] for s in best.skipped}
    assert set(skipped) == {"longq", "longr"} and "seq_len 400" in skipped["longq"]
    assert best.num_examples + len(best.skipped) == n_best
    b = next(iter(best))
    assert b["input_ids"].shape == (2, 400)
    steer = loader_lib.make_loader("sft", env["src"], env["tok"],
                                 _cfg(env, sft_mode="steerlm", buckets=None, seq_len=400),
                                 shard_index=0, shard_count=1)
    n_steer = len(pairs_lib.steerlm_examples(env["recs"]))
    assert steer.num_examples + len(steer.skipped) == n_steer
    assert {s["id"] for s in steer.skipped} == {"longq#0", "longq#1", "longr#0"}


def test_records_input_dpo_form_and_ref_logps(env):
    """In-memory records (images by path), DPO-form rows with stored reference log-probs,
    and ref_logps= by example_index."""
    rows = [{"id": f"d{i}", "image": f"p{i}.png", "question": f"Colour {i}?",
             "chosen": f"Red {i}.", "rejected": "Blue.", "ref_chosen_logp": -1.0 - i,
             "ref_rejected_logp": -10.0 - i} for i in range(3)]
    recs = [records_lib.Record.from_json(r) for r in rows]
    cfg = _cfg(env, shuffle=True, batch_size=2)
    loader = loader_lib.make_loader("dpo", recs, env["tok"], cfg, image_root=env["img"],
                                  shard_index=0, shard_count=1)
    got = {}
    for b in loader:
        for i in range(2):
            idx = int(b["example_index"][i])
            if idx >= 0:
                got[loader.example_ids[idx]] = (float(b["ref_chosen_logps"][i]),
                                                float(b["ref_rejected_logps"][i]))
                want = images.preprocess(images.load_image(
                    os.path.join(env["img"], rows[int(loader.example_ids[idx][1:])]["image"])),
                    S)
                np.testing.assert_array_equal(b["pixel_values"][i, 0], want)
            else:
                assert b["ref_chosen_logps"][i] == 0
    assert got == {f"d{i}": (-1.0 - i, -10.0 - i) for i in range(3)}
    ref = {"chosen": np.arange(13, dtype=np.float32), "rejected": -np.arange(13.0)}
    loader = loader_lib.make_loader("dpo", env["src"], env["tok"], cfg, ref_logps=ref,
                                  shard_index=0, shard_count=1)
    for b in loader:
        idx, w = b["example_index"], b["weight"] > 0
        np.testing.assert_array_equal(b["ref_chosen_logps"][w], ref["chosen"][idx[w]])
        np.testing.assert_array_equal(b["ref_rejected_logps"][w], ref["rejected"][idx[w]])
    with pytest.raises(ValueError, match="example_index"):
        loader_lib.make_loader("dpo", env["src"], env["tok"], cfg,
                             ref_logps={"chosen": [0.0], "rejected": [0.0]},
                             shard_index=0, shard_count=1)


# ------------------------------------------------------------------------------ order
def _indices(loader):
    return [b["example_index"].tolist() for b in loader]


def test_shards_disjoint_and_global_batches(env):
    cfg = _cfg(env, shuffle=True, seed=3, batch_size=2)
    shards = [_indices(loader_lib.make_loader("dpo", env["src"], env["tok"], cfg,
                                            shard_index=h, shard_count=2)) for h in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4                 # same step count per host
    flat = [[i for b in s for i in b if i >= 0] for s in shards]
    assert not set(flat[0]) & set(flat[1])
    assert sorted(flat[0] + flat[1]) == list(range(13))
    # Global batch k is the same examples as one host with batch 4: topology-independent.
    single = _indices(loader_lib.make_loader("dpo", env["src"], env["tok"],
                                           _cfg(env, shuffle=True, seed=3, batch_size=4),
                                           shard_index=0, shard_count=1))
    for k in range(4):
        assert sorted(shards[0][k] + shards[1][k]) == sorted(single[k])


def test_shuffle_per_epoch_deterministic(env):
    def order(seed):
        cfg = _cfg(env, shuffle=True, seed=seed, batch_size=1, num_epochs=2)
        return [i for b in _indices(loader_lib.make_loader(
            "dpo", env["src"], env["tok"], cfg, shard_index=0, shard_count=1)) for i in b]
    a = order(0)
    assert len(a) == 26
    e1, e2 = a[:13], a[13:]
    assert sorted(e1) == sorted(e2) == list(range(13))
    assert e1 != e2 and e1 != list(range(13))
    assert order(0) == a and order(1) != a


# ------------------------------------------------------------------------------ resume
def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
            assert x[k].tobytes() == y[k].tobytes(), k


def _resume_check(env, kind, cfg, k, via_orbax=None):
    def mk():
        return loader_lib.make_loader(kind, env["src"], env["tok"], cfg, shard_index=0,
                                    shard_count=1)
    full = mk()
    ref = _all(full)
    full.close()
    assert len(ref) == full.total_steps
    first = mk()
    head = [next(first) for _ in range(k)]
    _assert_batches_equal(head, ref[:k])
    if via_orbax:
        via_orbax(first)
        first.close()
        fresh = mk()
        via_orbax(fresh, restore=True)
    else:
        state = json.loads(json.dumps(first.get_state()))     # survives JSON
        first.close()
        fresh = mk()
        fresh.set_state(state)
    tail = _all(fresh)
    fresh.close()
    _assert_batches_equal(tail, ref[k:])
    return ref


def test_resume_exact_in_process_and_orbax(env, tmp_path):
    cfg = _cfg(env, shuffle=True, seed=5, num_epochs=2, drop_remainder=True, batch_size=3)
    _resume_check(env, "dpo", cfg, k=3)                      # 26 → 8 batches; crosses epochs
    _resume_check(env, "sft", _cfg(cfg, buckets=None, seq_len=300, num_epochs=3), k=4)

    import orbax.checkpoint as ocp

    def via_orbax(loader, restore=False, explicit=True):
        # As train/checkpoint.py does: explicit item handlers, async saving.
        kw = dict(item_handlers={"data": loader_lib.LoaderCheckpointHandler()},
                  options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True))
        mngr = ocp.CheckpointManager(str(tmp_path / ("ckpt" if explicit else "ckpt2")),
                                     **(kw if explicit else {}))
        if restore:
            out = mngr.restore(7, args=ocp.args.Composite(data=loader_lib.restore_args(loader)))
            assert out["data"] is loader
        else:
            mngr.save(7, args=ocp.args.Composite(data=loader_lib.checkpoint_args(loader)))
            mngr.wait_until_finished()
        mngr.close()
    _resume_check(env, "dpo", cfg, k=5, via_orbax=via_orbax)
    assert (tmp_path / "ckpt" / "7" / "data" / "process_0-of-1.json").exists()
    # Handlers resolved from the args registry (no item_handlers) work too.
    _resume_check(env, "dpo", cfg, k=2,
                  via_orbax=lambda l, restore=False: via_orbax(l, restore, explicit=False))

    # A state from another pipeline is refused, not silently misapplied.
    other = loader_lib.make_loader("dpo", env["src"], env["tok"], _cfg(cfg, seed=6),
                                 shard_index=0, shard_count=1)
    state = loader_lib.make_loader("dpo", env["src"], env["tok"], cfg, shard_index=0,
                                 shard_count=1).get_state()
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_resume_exact_with_worker_processes(env):
    cfg = _cfg(env, shuffle=True, seed=2, num_epochs=2, drop_remainder=True, batch_size=2,
               worker_count=2)
    ref = _resume_check(env, "dpo", cfg, k=5)
    # Worker processes change nothing about the data: same batches as in-process.
    in_process = loader_lib.make_loader("dpo", env["src"], env["tok"], _cfg(cfg, worker_count=0),
                                      shard_index=0, shard_count=1)
    _assert_batches_equal(_all(in_process), ref)
