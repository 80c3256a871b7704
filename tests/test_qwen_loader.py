"""The grain loader with a native-resolution family (Qwen2.5-VL): each image takes its own
token count and patches, batches take the smallest patch/length buckets that hold them —
chosen per *global* batch, so hosts agree — size grouping is deterministic and resumable,
grain worker processes give the same batches, and an image no bucket holds is an error."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmalign_jax.data import loader as loader_lib
from mmalign_jax.data import records as records_lib
from mmalign_jax.data import tfds_builder
from mmalign_jax.demo import generate
from mmalign_jax.demo.tokenizer import load_qwen_tokenizer
from mmalign_jax.models import registry
from mmalign_jax.models.qwen2_5_vl import processor

CFG = registry.get_preset("qwen2.5-vl-demo")
FAMILY = registry.get("qwen2_5_vl")
SIZES = [(56, 56), (84, 60), (200, 90), (130, 170), (224, 224), (60, 150)]   # (w, h)
N_IMG, N_TEXT = 12, 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("qwen-loader"))
    img = os.path.join(root, "img")
    os.makedirs(img)
    rows = []
    for k, r in enumerate(generate.make_records(N_IMG, 0, "train", "vqa")):
        w, h = SIZES[k % len(SIZES)]
        generate.record_image(r, 112).resize((w, h)).save(os.path.join(img, r["images"][0]))
        rows.append(r)
    rows += generate.make_records(N_TEXT, 0, "train", "text")
    sft = [generate.make_sft_record(k, 0, "train", "vqa") for k in range(N_IMG)]
    for k, r in enumerate(sft):
        w, h = SIZES[(k + 1) % len(SIZES)]
        generate.record_image(r, 112).resize((w, h)).save(os.path.join(img, r["images"][0]))
    sft += generate.make_sft_records(N_TEXT, 0, "train", "text")
    paths = {name: records_lib.write_jsonl(os.path.join(root, f"{name}.jsonl"), rs)
             for name, rs in (("dpo", rows), ("sft", sft))}
    tfds_builder.build(paths, img, os.path.join(root, "tfds"), strict=True, progress=False)
    cfg = loader_lib.LoaderConfig(
        template="qwen2_vl", image_mode="native", image_token_id=CFG.image_token_id,
        family=FAMILY, model_config=CFG, seq_len=None, buckets=(64, 96, 128, 160),
        prompt_len=112, response_len=64, pad_token_id=1006, batch_size=4, num_epochs=1,
        drop_remainder=False, read_threads=2)
    return {"src": {k: tfds_builder.open_split(os.path.join(root, "tfds"), k)
                    for k in ("dpo", "sft")},
            "tok": load_qwen_tokenizer(), "cfg": cfg, "img": img, "root": root}


def _loader(env, kind="dpo", shard=(0, 1), **kw):
    return loader_lib.make_loader(kind, env["src"][kind], env["tok"],
                                  dataclasses.replace(env["cfg"], **kw),
                                  shard_index=shard[0], shard_count=shard[1])


def _ids(b):
    return b["input_ids"] if "input_ids" in b else b["prompt_ids"]


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_each_image_takes_its_own_tokens_and_patches(env, kind):
    loader = _loader(env, kind)
    buckets = FAMILY.image_budgets(CFG)
    assert buckets == (64, 128, 256)
    shapes, seen = set(), 0
    for b in loader:
        p = b["pixel_values"].shape[2]
        shapes.add((p, _ids(b).shape[1]))
        real = np.where(b["image_mask"][:, 0], b["image_grid_thw"][:, 0].prod(-1), 0)
        assert p == min(x for x in buckets if x >= real.max())    # the smallest that holds it
        np.testing.assert_array_equal((_ids(b) == CFG.image_token_id).sum(1), real // 4)
        for i in np.flatnonzero(b["weight"]):
            refs = env["src"][kind].image_bytes(loader.table.record_index[b["example_index"][i]])
            if not refs:
                assert not b["image_mask"][i].any() and not b["pixel_values"][i].any()
                assert not b["image_grid_thw"][i].any()
                continue
            seen += 1
            im = Image.open(__import__("io").BytesIO(refs[0]))
            want = FAMILY.preprocess_image(CFG, im, "native")
            n = len(want["pixel_values"])
            assert tuple(b["image_grid_thw"][i, 0]) == processor.grid_for_size(*im.size)
            np.testing.assert_array_equal(b["pixel_values"][i, 0, :n], want["pixel_values"])
            assert not b["pixel_values"][i, 0, n:].any()
    assert seen == int((loader.table.num_images > 0).sum()) >= N_IMG
    assert len({s[0] for s in shapes}) > 1                        # mixed sizes, few shapes
    assert {s[0] for s in shapes} <= set(buckets)


def test_hosts_pad_to_the_global_batchs_shapes(env):
    for group in (0, 2):
        single = list(_loader(env, "sft", batch_size=4, group_by_size=group, shuffle=True))
        hosts = [list(_loader(env, "sft", (h, 2), batch_size=2, group_by_size=group,
                              shuffle=True)) for h in range(2)]
        assert len(hosts[0]) == len(hosts[1]) == len(single)
        for k, g in enumerate(single):
            for h in range(2):
                assert {n: v.shape for n, v in hosts[h][k].items()} == \
                    {n: (v.shape[0] // 2,) + v.shape[1:] for n, v in g.items()}
            rows = sorted(int(i) for h in range(2) for i in hosts[h][k]["example_index"])
            assert rows == sorted(int(i) for i in g["example_index"])


def _padding(batches):
    rows = real = 0
    for b in batches:
        rows += b["pixel_values"].shape[0] * b["pixel_values"].shape[2]
        real += int(np.where(b["image_mask"][:, 0], b["image_grid_thw"][:, 0].prod(-1), 0).sum())
    return 1 - real / rows


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].shape == y[k].shape and x[k].tobytes() == y[k].tobytes(), k


def test_group_by_size_is_a_deterministic_resumable_per_epoch_permutation(env):
    kw = dict(batch_size=4, group_by_size=2, num_epochs=3, shuffle=True, seed=1,
              drop_remainder=False)
    loader = _loader(env, **kw)
    ref, n = list(loader), loader.num_examples
    order = [int(i) for b in ref for i in b["example_index"] if i >= 0]
    assert len(order) == 3 * n
    for e in range(3):
        assert sorted(order[e * n:(e + 1) * n]) == list(range(n))
    _same(ref, list(_loader(env, **kw)))
    plain = list(_loader(env, **dict(kw, group_by_size=0)))
    assert [int(i) for b in plain for i in b["example_index"] if i >= 0] != order
    assert _padding(ref) < _padding(plain)

    first = _loader(env, **kw)
    head = [next(first) for _ in range(5)]
    state = json.loads(json.dumps(first.get_state()))
    fresh = _loader(env, **kw)
    fresh.set_state(state)
    _same(head + list(fresh), ref)
    with pytest.raises(ValueError, match="group_by_size"):
        _loader(env, **dict(kw, group_by_size=3)).set_state(state)


def test_worker_processes_give_the_same_batches(env):
    kw = dict(batch_size=4, group_by_size=2, num_epochs=1, shuffle=True, seed=2)
    _same(list(_loader(env, "sft", worker_count=1, **kw)), list(_loader(env, "sft", **kw)))


def test_an_image_no_bucket_holds_is_an_error(env):
    with pytest.raises(ValueError, match=r"224x224.*256 patches.*largest image bucket 128"):
        _loader(env, image_buckets=(64, 128))
    # The records-and-paths input reads the same headers.
    recs = records_lib.load_records(os.path.join(env["root"], "sft.jsonl"), env["img"]).records
    loader = loader_lib.make_loader("sft", recs, env["tok"], env["cfg"], image_root=env["img"],
                                    shard_index=0, shard_count=1)
    assert loader.num_examples == N_IMG + N_TEXT
    assert sorted(loader.table.patches.tolist()) == sorted(
        [0] * N_TEXT + [FAMILY.image_budget_for_size(CFG, SIZES[(k + 1) % len(SIZES)])
                        for k in range(N_IMG)])
