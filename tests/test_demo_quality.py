"""The demo's pretrained vision tower and the grading of a model's own answers."""
import numpy as np
import pytest

from mmalign_jax.demo import answer_quality as aq
from mmalign_jax.demo import generate as demo_gen
from mmalign_jax.demo import vision_pretrain as vp
from mmalign_jax.models import presets


def test_cell_labels_follow_the_patch_order():
    scene = {"grid": 3, "background": "dark gray",
             "objects": [{"shape": "star", "color": "red", "row": 0, "col": 2},
                         {"shape": "circle", "color": "blue", "row": 2, "col": 0}]}
    shape, colour = vp.cell_labels(scene)
    from mmalign_jax.demo.shapes import COLOR_NAMES, SHAPES
    want_s = np.zeros(9, int)
    want_c = np.zeros(9, int)
    want_s[2], want_c[2] = SHAPES.index("star") + 1, COLOR_NAMES.index("red") + 1
    want_s[6], want_c[6] = SHAPES.index("circle") + 1, COLOR_NAMES.index("blue") + 1
    np.testing.assert_array_equal(shape, want_s)
    np.testing.assert_array_equal(colour, want_c)


def test_head_labels_give_each_cell_its_object_and_place():
    scene = {"grid": 3, "background": "dark gray",
             "objects": [{"shape": "star", "color": "red", "row": 0, "col": 2},
                         {"shape": "circle", "color": "blue", "row": 2, "col": 0}]}
    from mmalign_jax.demo.shapes import COLOR_NAMES, SHAPES
    y = vp.head_labels(scene)
    assert set(y) == set(vp.HEADS)
    np.testing.assert_array_equal(y["row"], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(y["col"], [0, 1, 2] * 3)
    star_red = SHAPES.index("star") * len(COLOR_NAMES) + COLOR_NAMES.index("red") + 1
    circle_blue = SHAPES.index("circle") * len(COLOR_NAMES) + COLOR_NAMES.index("blue") + 1
    want = np.zeros(9, int)
    want[2], want[6] = star_red, circle_blue
    np.testing.assert_array_equal(y["object"], want)
    for h, n in vp.HEADS.items():       # every label fits its head
        assert 0 <= y[h].min() and y[h].max() < n, h
    # every (shape, colour) pair gets its own object class, and the classes fill 1..N
    pairs = [(sh, co) for sh in SHAPES for co in COLOR_NAMES]
    seen = {}
    for k in range(0, len(pairs), 9):
        chunk = pairs[k:k + 9]
        objs = [{"shape": sh, "color": co, "row": i // 3, "col": i % 3}
                for i, (sh, co) in enumerate(chunk)]
        got = vp.head_labels({"grid": 3, "background": "dark gray", "objects": objs})["object"]
        seen.update({pair: int(got[i]) for i, pair in enumerate(chunk)})
    assert sorted(seen.values()) == list(range(1, vp.HEADS["object"]))


def test_pretraining_learns_and_is_cached(tmp_path):
    cfg = presets.get_preset("tiny")
    recs = demo_gen.make_sft_records(200, seed=3)
    path = tmp_path / "recs.jsonl"
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    params, m = vp.pretrain(cfg, recs, steps=60, batch_size=32)
    # chance: colour 1/8 per cell class, but 5+ of 9 cells are empty -> majority ≈ 0.7
    assert m["eval/colour_accuracy"] > 0.9, m
    assert {f"eval/{h}_accuracy" for h in vp.HEADS} <= set(m)
    saved = vp.pretrained_vision_tower(cfg, str(path), str(tmp_path / "vp"), steps=5)
    again = vp.pretrained_vision_tower(cfg, str(path), str(tmp_path / "vp"), steps=999)
    import jax
    jax.tree.map(np.testing.assert_array_equal, saved, again)   # second call reads the file

    # the trainer places them into a randomly initialised model
    from mmalign_jax.train import defaults, loop
    c = defaults.base_config("sft")
    c.model.vision_init = str(tmp_path / "vp" / vp.PARAMS_FILE)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    from mmalign_jax.models import llava
    full_cfg = loop.model_config(c).replace(lora=None)
    shard = jax.tree.map(lambda _: dev, llava.abstract_params(full_cfg))
    p = loop.base_params(c, full_cfg, shard)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 p["vision_tower"], saved)


def test_pretraining_needs_patches_that_tile_the_grid():
    cfg = presets.get_preset("tiny")
    import dataclasses
    bad = cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=64, patch_size=16))  # 4x4
    with pytest.raises(ValueError, match="tiles"):
        vp.pretrain(bad, demo_gen.make_sft_records(4), steps=1)


def test_grading_of_graded_candidates():
    rec = demo_gen.make_record(5, seed=1)
    by_kind = {r["source"].split(":")[1]: r["text"] for r in rec["responses"]}
    right = aq.grade(rec, by_kind["correct_concise"])
    assert right["correct"] and right["strict_correct"] and not right["hallucinated"]
    assert not aq.grade(rec, by_kind["wrong_attribute"])["correct"]
    assert aq.grade(rec, by_kind["hallucinated"])["hallucinated"]
    assert aq.grade(rec, by_kind["incoherent"])["incoherent"]
    rows = [right, aq.grade(rec, by_kind["wrong_attribute"])]
    s = aq.summarize(rows)
    assert s["n"] == 2 and s["accuracy"] == 0.5
    assert s["words"] == (right["words"] + rows[1]["words"]) / 2
    assert s["by_kind"][rec["meta"]["question"]["kind"]]["n"] == 2


def test_text_records_are_graded_by_the_text_scorer():
    rec = demo_gen.make_record(2, seed=0, kind="text")
    by_kind = {r["source"].split(":")[1]: r["text"] for r in rec["responses"]}
    g = aq.grade(rec, by_kind["correct_concise"])
    assert g["task"] == "text" and g["correct"]
    assert aq.grade(rec, by_kind["hallucinated"])["hallucinated"]   # talks of an image


def test_prompt_conversation_drops_the_reference_answer():
    rec = demo_gen.make_sft_record(0)
    assert rec["conversation"][-1]["role"] == "assistant"
    assert aq.prompt_conversation(rec) == rec["conversation"][:-1]
