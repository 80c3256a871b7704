"""The demo task: determinism, images, scorer ordering, text subset, records, tokenizer."""
import collections
import json
import random

import pytest
from PIL import Image

from mmalign_jax.demo import generate as G
from mmalign_jax.demo import questions as Q
from mmalign_jax.demo import text_tasks as T
from mmalign_jax.demo import tokenizer as TK
from mmalign_jax.demo.answers import CORRECT_KINDS
from mmalign_jax.demo.scorer import ATTRIBUTES, DemoScorer, explain_answer, score_answer
from mmalign_jax.demo.shapes import Scene, SceneObject, draw_scene, random_scene

WRONG = ("wrong_attribute", "hallucinated", "incoherent")


def hcc(s):
    return s["helpfulness"] + s["correctness"] + s["coherence"]


def _check_scores(s):
    assert set(s) == set(ATTRIBUTES)
    assert all(isinstance(v, int) and 0 <= v <= 4 for v in s.values()), s


def _check_ordering(scores_by_kind, where):
    for good in CORRECT_KINDS:
        for bad in WRONG:
            assert hcc(scores_by_kind[good]) > hcc(scores_by_kind[bad]), (where, good, bad, scores_by_kind)
    assert scores_by_kind["correct_verbose"]["verbosity"] > scores_by_kind["correct_concise"]["verbosity"], \
        (where, scores_by_kind)


# ------------------------------------------------------------------ determinism
def test_records_are_deterministic_by_seed_and_index():
    a = G.make_records(12, seed=3)
    assert a == G.make_records(12, seed=3)
    assert a[:5] == G.make_records(5, seed=3)            # example i does not depend on n
    assert a[7:9] == G.make_records(2, seed=3, start=7)
    assert a != G.make_records(12, seed=4)
    ev = G.make_records(12, seed=3, split="eval")
    assert {r["id"] for r in a}.isdisjoint(r["id"] for r in ev)
    assert [r["meta"]["scene"] for r in a] != [r["meta"]["scene"] for r in ev]
    assert G.make_records(6, 3, kind="text") == G.make_records(6, 3, kind="text")
    assert G.make_sft_records(6, 3) == G.make_sft_records(6, 3)
    # SFT prompts come from their own stream
    assert [r["meta"]["scene"] for r in G.make_sft_records(6, 3)] != [r["meta"]["scene"] for r in a[:6]]


def test_scene_json_round_trip_and_validation():
    rng = random.Random(0)
    for _ in range(20):
        s = random_scene(rng)
        assert 1 <= len(s.objects) <= 4
        assert Scene.from_json(json.loads(json.dumps(s.to_json()))) == s
    with pytest.raises(ValueError):
        Scene((SceneObject("circle", "red", 0, 0), SceneObject("circle", "red", 1, 1)))
    with pytest.raises(ValueError):
        Scene((SceneObject("circle", "red", 0, 0), SceneObject("star", "blue", 0, 0)))


# ------------------------------------------------------------------ images
def test_images_are_64px_rgb_deterministic_and_differ():
    rng = random.Random(1)
    scenes = [random_scene(rng) for _ in range(12)]
    imgs = [draw_scene(s) for s in scenes]
    assert all(im.size == (64, 64) and im.mode == "RGB" for im in imgs)
    assert len({im.tobytes() for im in imgs}) == len(imgs)
    assert draw_scene(scenes[0]).tobytes() == imgs[0].tobytes()
    assert draw_scene(scenes[0], size=128).size == (128, 128)
    # the object's colour is where the scene says
    s = Scene((SceneObject("square", "red", 0, 0, size=0.8),))
    im = draw_scene(s)
    assert im.getpixel((10, 10)) == (222, 40, 40)
    assert im.getpixel((53, 53)) == (48, 48, 48)


# ------------------------------------------------------------------ questions + scorer
def test_scorer_ranks_correct_above_every_wrong_answer():
    kinds = collections.Counter()
    variants = set()
    existence = collections.Counter()
    for seed in range(600):
        rng = random.Random(seed)
        scene = random_scene(rng)
        q = Q.make_question(scene, rng)
        kinds[q["kind"]] += 1
        variants.add((q["kind"], q["variant"]))
        if q["kind"] == "existence":
            existence[Q.truth(scene, q)] += 1
        cands = Q.make_candidates(scene, q, rng)
        assert [c["kind"] for c in cands] == list(Q.CANDIDATE_KINDS)
        scores = {c["kind"]: score_answer(scene, q, c["text"]) for c in cands}
        for s in scores.values():
            _check_scores(s)
        _check_ordering(scores, (seed, q["text"], [c["text"] for c in cands]))
    assert set(kinds) == set(Q.QUESTION_KINDS) and min(kinds.values()) >= 80
    assert {("position", "left_right"), ("position", "top_bottom"), ("count", "color"),
            ("count", "all"), ("count", "shape")} <= variants
    assert 0.4 < existence["yes"] / sum(existence.values()) < 0.6   # POPE-like balance


def test_scorer_reads_answers_like_a_labeller():
    scene = Scene((SceneObject("circle", "red", 0, 0), SceneObject("square", "blue", 1, 2),
                   SceneObject("star", "green", 2, 1)))
    color = {"kind": "color", "shape": "circle", "text": "What color is the circle?"}
    where = {"kind": "position", "shape": "circle", "color": "red", "text": "Where is the red circle?"}
    exist = {"kind": "existence", "shape": "star", "color": "blue", "text": "Is there a blue star?"}
    count = {"kind": "count", "shape": "circle", "text": "How many circles are there?"}
    desc = {"kind": "describe", "text": "Describe the image."}

    def key(q, text):
        return explain_answer(scene, q, text)["key"]

    assert key(color, "Red.") == "right" and key(color, "The circle is blue.") == "wrong"
    assert key(color, "The circle is not blue, it is red.") == "right"
    assert key(color, "I am not sure.") == "missing"
    assert key(where, "In the top left, there is a red circle.") == "right"
    assert key(where, "The red circle is on the left.") == "partial"     # less specific
    assert key(where, "The red circle is in the bottom right.") == "wrong"
    assert key(exist, "No, there isn't a blue star in the picture.") == "right"
    assert key(exist, "There is a blue star at the bottom.") == "wrong"
    assert key(count, "There is only one circle.") == "right" and key(count, "Two.") == "wrong"
    assert key(desc, "A red circle, a blue square and a green star.") == "right"
    assert key(desc, "There is a red circle.") == "partial"
    # a hallucinated object or a wrong position elsewhere costs correctness and helpfulness
    clean = score_answer(scene, color, "The circle is red.")
    halluc = score_answer(scene, color, "The circle is red. There is also a yellow triangle.")
    moved = score_answer(scene, color, "The circle is red. The blue square is at the top.")
    assert clean["correctness"] == 4 and halluc["correctness"] == 2 and moved["correctness"] == 2
    assert halluc["helpfulness"] < clean["helpfulness"]
    assert explain_answer(scene, desc, "There is a dog in the image.")["false_claims"]
    # denials are not hallucinations; "No ..., but there is X" checks X
    assert score_answer(scene, exist, "No, there is no blue star, but there is a green star.")["correctness"] == 4
    assert score_answer(scene, exist, "No, but there is a pink heart.")["correctness"] == 2
    # coherence: word salad, loops and truncation are penalised; clean text is not
    assert score_answer(scene, desc, "There is a red circle in the top left, a blue square "
                        "on the right and a green star at the bottom.")["coherence"] == 4
    assert score_answer(scene, desc, "square the a red is circle in and the of")["coherence"] <= 1
    assert score_answer(scene, desc, "red circle red circle red circle red circle")["coherence"] <= 2
    assert score_answer(scene, desc, "There is a red circle in the")["coherence"] <= 1
    # verbosity grows with length, complexity with vocabulary
    short, long_ = (score_answer(scene, color, t) for t in (
        "Red.", "The circle is red. It is located in the top left. There is also a blue square "
                "on the right. A green star can be seen at the bottom."))
    assert short["verbosity"] < long_["verbosity"] and short["complexity"] < long_["complexity"]


def test_scorer_survives_any_text():
    rng = random.Random(5)
    scene = random_scene(rng)
    alphabet = "abcdefgh XYZ .,;:!?'\"-0123456789\n\t\u00e9\u2581\u4e2d"
    for kind in Q.QUESTION_KINDS:
        if kind not in Q.feasible_kinds(scene):
            continue
        q = Q.make_question(scene, rng, kind)
        texts = ["", " ", "...", "'", "\n\n", "None", "no no no", "1 2 3 4 5", "x" * 5000,
                 " ".join(["the red circle"] * 300)]
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(40)]
        for t in texts:
            _check_scores(score_answer(scene, q, t))


# ------------------------------------------------------------------ text-only subset
def test_text_scorer_ranks_correct_above_every_wrong_answer():
    kinds = collections.Counter()
    for seed in range(600):
        rng = random.Random(seed)
        task = T.make_task(rng)
        kinds[task["kind"]] += 1
        cands = T.make_text_candidates(task, rng)
        scores = {c["kind"]: T.score_text_answer(task, c["text"]) for c in cands}
        for s in scores.values():
            _check_scores(s)
        _check_ordering(scores, (seed, task, [c["text"] for c in cands]))
        by_kind = {c["kind"]: c["text"] for c in cands}
        assert T.is_correct(task, by_kind["correct_concise"], strict=True)
        assert not T.is_correct(task, by_kind["wrong_attribute"])
        assert T.is_correct(task, by_kind["hallucinated"]) and \
            not T.is_correct(task, by_kind["hallucinated"], strict=True)
    assert set(kinds) == set(T.TASK_KINDS)


def test_text_scorer_examples():
    add = {"kind": "add", "text": "What is 17 + 25?", "a": 17, "b": 25, "answer": "42"}
    assert T.is_correct(add, "17 + 25 = 42.") and T.is_correct(add, "The answer is 42.")
    assert not T.is_correct(add, "17 + 25 = 41.") and not T.is_correct(add, "It is 25.")
    assert T.score_text_answer(add, "42. 42 is an odd number.")["correctness"] == 2
    assert T.score_text_answer(add, "42. The image shows a red circle.")["correctness"] == 2
    rev = {"kind": "reverse", "text": "Reverse the word 'apple'.", "word": "apple", "answer": "elppa"}
    assert T.is_correct(rev, "The word 'apple' reversed is 'elppa'.")
    assert not T.is_correct(rev, "It is 'elpap'.")
    up = {"kind": "uppercase", "text": "Spell 'cat' in capitals.", "word": "cat", "answer": "CAT"}
    assert T.is_correct(up, "CAT.") and not T.is_correct(up, "Cat.")
    cmp_ = {"kind": "compare", "text": "Which is smaller, 17 or 25?", "a": 17, "b": 25,
            "which": "smaller", "answer": "17"}
    assert T.is_correct(cmp_, "17 is smaller.") and T.is_correct(cmp_, "25 is larger, so 17.")
    assert not T.is_correct(cmp_, "The smaller number is 25.")
    cnt = {"kind": "count_letter", "text": "How many times does the letter 'z' appear in 'apple'?",
           "word": "apple", "letter": "z", "answer": "0"}
    assert T.is_correct(cnt, "The letter 'z' does not appear in 'apple'.")
    assert T.is_correct(cnt, "Zero.") and not T.is_correct(cnt, "It appears 1 time.")


# ------------------------------------------------------------------ records + files
def _check_record(r, kind, sft=False):
    assert set(r) >= {"id", "images", "conversation", "responses", "meta"}
    n_img = sum(t["content"].count("<image>") for t in r["conversation"])
    assert n_img == len(r["images"])
    if kind == "vqa":
        assert r["images"] == [f"{r['id']}.png"]
        assert r["conversation"][0]["content"].startswith("<image>\n")
        assert r["meta"]["scene"] and r["meta"]["question"]["text"] in r["conversation"][0]["content"]
    else:
        assert r["images"] == [] and "scene" not in r["meta"]
    assert r["meta"]["task"] == kind and r["meta"]["answer"]
    assert r["conversation"][0]["role"] == "user"
    if sft:
        assert r["responses"] == [] and r["conversation"][-1]["role"] == "assistant"
    else:
        assert [x["source"] for x in r["responses"]] == [f"demo:{k}" for k in Q.CANDIDATE_KINDS]
        for x in r["responses"]:
            _check_scores(x["scores"])
            assert x["text"].strip() and "<image>" not in x["text"]


def test_demo_scorer_annotates_records():
    scorer = DemoScorer()
    for kind in G.KINDS:
        for r in G.make_records(10, seed=2, kind=kind):
            _check_record(r, kind)
            assert scorer.annotate(r) == [x["scores"] for x in r["responses"]]
            assert scorer.annotate(r, ["The answer is unknown."])[0]["helpfulness"] <= 1
    with pytest.raises(ValueError):
        scorer.annotate({"id": "x", "meta": {}, "responses": []})


def test_write_dataset(tmp_path):
    paths = G.write_dataset(tmp_path / "d", n_train=12, n_eval=4, seed=1, n_text_train=6,
                            n_text_eval=3)
    root = tmp_path / "d" / "images"
    assert paths["image_root"] == str(root)
    expect = {"train": (12, "vqa", False), "eval": (4, "vqa", False),
              "train_text": (6, "text", False), "eval_text": (3, "text", False),
              "sft_train": (12, "vqa", True), "sft_eval": (4, "vqa", True),
              "sft_text_train": (6, "text", True), "sft_text_eval": (3, "text", True)}
    ids = set()
    for name, (n, kind, sft) in expect.items():
        rows = [json.loads(line) for line in open(paths[name])]
        assert len(rows) == n, name
        for r in rows:
            _check_record(r, kind, sft)
            assert r["id"] not in ids
            ids.add(r["id"])
            for img in r["images"]:
                with Image.open(root / img) as im:
                    assert im.size == (64, 64) and im.mode == "RGB"
                    assert im.tobytes() == G.record_image(r).tobytes()
    manifest = json.loads(open(paths["manifest"]).read())
    assert manifest["counts"]["train"] == 12 and manifest["seed"] == 1
    try:
        from mmalign_jax.data import records as R
    except Exception:  # the schema module is another engineer's; check it when present
        return
    for name in ("train", "sft_train", "train_text"):
        res = R.load_records(paths[name], image_root=str(root), strict=True)
        assert len(res.records) == expect[name][0]


def test_generate_cli(tmp_path, capsys):
    G.main(["--out", str(tmp_path / "c"), "--n-train", "3", "--n-eval", "2", "--seed", "5"])
    out = json.loads(capsys.readouterr().out)
    assert len(open(out["train"]).readlines()) == 3 and len(open(out["eval"]).readlines()) == 2


# ------------------------------------------------------------------ tokenizer
@pytest.fixture(scope="module")
def tok():
    return TK.load_tokenizer()


def test_tokenizer_special_tokens_and_size(tok):
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<pad>", "<image>"]) == [0, 1, 2, 3, 4]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert len(tok) <= TK.MAX_VOCAB and len(tok) >= 900
    ids = tok("<image>\nWhat color is the circle?")["input_ids"]
    assert ids[:2] == [1, 4] and ids.count(4) == 1 and 2 not in ids   # <s> first, no </s>
    assert tok("USER: <image>\nHi", add_special_tokens=False)["input_ids"].count(4) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "\nWhat color is the circle?"
    no_bos = TK.load_tokenizer(add_bos_token=False)
    assert no_bos("Hi there")["input_ids"] == tok("Hi there")["input_ids"][1:]


def test_tokenizer_round_trips_demo_text(tok):
    texts = []
    for kind in G.KINDS:
        for r in G.make_records(60, seed=11, split="eval", kind=kind) + \
                G.make_sft_records(30, seed=11, split="eval", kind=kind):
            texts.append(r["conversation"][0]["content"].replace("<image>\n", ""))
            texts += [x["text"] for x in r["responses"]]
            texts += [t["content"] for t in r["conversation"][1:]]
    from mmalign_jax.demo.train_tokenizer import STEERLM_SUFFIX, SYSTEM_PROMPT
    texts += [SYSTEM_PROMPT, "USER:", "ASSISTANT:",
              STEERLM_SUFFIX.format(h=4, c=4, o=4, x=4, v=4).lstrip("\n")]
    for t in texts:
        ids = tok(t)["input_ids"]
        assert tok.unk_token_id not in ids, t
        assert tok.decode(ids, skip_special_tokens=True) == t
    # compact: demo answers are a few tokens per word
    ratio = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / \
        sum(len(t.split()) for t in texts)
    assert ratio < 2.0, ratio


def test_train_tokenizer_reproduces_shipped_file():
    from mmalign_jax.demo import train_tokenizer
    trained = json.loads(train_tokenizer.train().to_str())
    shipped = json.loads(TK.TOKENIZER_FILE.read_text())
    assert trained["model"]["vocab"] == shipped["model"]["vocab"]
    assert trained["model"]["merges"] == shipped["model"]["merges"]
    assert trained == shipped
