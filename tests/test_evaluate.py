"""Evaluation pieces without a model: judge prompts, reply parsing and aggregation of each
benchmark on small hand-made files in the official formats (expected numbers worked out by
hand from the published formulas), the cached/resumable judge with an in-process fake
client (re-asks, failures, retries), and the report."""
from __future__ import annotations

import base64
import io
import json
import os

import pytest

from mmalign_jax.evaluate import judge as J
from mmalign_jax.evaluate import llava_bench, mmbench, mmvet, mtbench, pope, report
from mmalign_jax.evaluate import prompts as P
from mmalign_jax.evaluate.common import BenchmarkDataError
from mmalign_jax.remote.client import AuthError, Reply, TransientError


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


# ------------------------------------------------------------------------------ MT-Bench

MT_QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now in French."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+3?", "And times 4?"]},
]
MT_REFS = [{"question_id": 111, "answer_id": "x", "model_id": "gpt-4",
            "choices": [{"index": 0, "turns": ["5", "20"]}]}]


def test_mtbench_judge_prompts_are_fastchats():
    q, m = MT_QUESTIONS
    name, system, user = mtbench.judge_prompt(q, ["Leaves fall.", "Feuilles."], 1)
    assert name == "single-v1" and system == "You are a helpful assistant."
    assert user.startswith("[Instruction]\nPlease act as an impartial judge")
    assert user.endswith("[Question]\nWrite a haiku.\n\n[The Start of Assistant's Answer]\n"
                         "Leaves fall.\n[The End of Assistant's Answer]")
    name, system, user = mtbench.judge_prompt(q, ["Leaves fall.", "Feuilles."], 2)
    assert name == "single-v1-multi-turn"
    assert "focus on the assistant's answer to the second user question" in system
    assert user == ("<|The Start of Assistant A's Conversation with User|>\n\n### User:\n"
                    "Write a haiku.\n\n### Assistant A:\nLeaves fall.\n\n### User:\nNow in French."
                    "\n\n### Assistant A:\nFeuilles.\n\n<|The End of Assistant A's Conversation "
                    "with User|>")
    # math: the reference-answer prompts, with FastChat's reference answers
    name, _, user = mtbench.judge_prompt(m, ["6", "24"], 1, ["5", "20"])
    assert name == "single-math-v1"
    assert ("[The Start of Reference Answer]\n5\n[The End of Reference Answer]\n\n"
            "[The Start of Assistant's Answer]\n6\n") in user
    name, system, user = mtbench.judge_prompt(m, ["6", "24"], 2, ["5", "20"])
    assert name == "single-math-v1-multi-turn"
    assert user.startswith("<|The Start of Reference Answer|>\n\n### User:\nWhat is 2+3?\n\n"
                           "### Reference answer:\n5\n\n### User:\nAnd times 4?\n\n"
                           "### Reference answer:\n20\n\n<|The End of Reference Answer|>")
    # braces in answers are text, not format fields
    assert "{x}" in mtbench.judge_prompt(q, ["{x}", "y"], 1)[2]
    with pytest.raises(ValueError):
        mtbench.judge_prompt(m, ["6", "24"], 1, None)


@pytest.mark.parametrize("reply,rating", [
    ("Good answer. Rating: [[7]]", 7.0),
    ("Rating: [[8.5]] and later [[2]]", 8.5),
    ("The rating is [6].", 6.0),            # FastChat's fallback pattern
    ("[[3]] beats [9]", 3.0),               # [[x]] is looked for first
    ("Rating: 7/10", None), ("[[11]]", None), ("[[0]]", None), ("", None),
])
def test_mtbench_rating_parsing(reply, rating):
    if rating is None:
        with pytest.raises(J.Unparsable):
            mtbench.parse_rating(reply)
    else:
        assert mtbench.parse_rating(reply) == rating


def test_mtbench_aggregate_by_hand():
    recs = [{"question_id": 1, "category": "writing", "turn": 1, "score": 8.0},
            {"question_id": 1, "category": "writing", "turn": 2, "score": 6.0},
            {"question_id": 2, "category": "math", "turn": 1, "score": 3.0},
            {"question_id": 2, "category": "math", "turn": 2, "score": None},   # failed
            {"question_id": 3, "category": "math", "turn": 1, "score": 10.0},
            {"question_id": 3, "category": "math", "turn": 2, "score": 4.0}]
    m = mtbench.aggregate(recs)
    assert m["overall"] == pytest.approx((8 + 6 + 3 + 10 + 4) / 5)     # 6.2
    assert m["turn_1"] == pytest.approx(7.0) and m["turn_2"] == pytest.approx(5.0)
    assert m["categories"] == {"math": pytest.approx(17 / 3), "writing": pytest.approx(7.0)}
    assert (m["n_scored"], m["n_failed"]) == (5, 1)


def test_mtbench_files(tmp_path):
    write_jsonl(tmp_path / "question.jsonl", MT_QUESTIONS)
    with pytest.raises(BenchmarkDataError, match="reference"):
        mtbench.load_references(str(tmp_path), mtbench.load_questions(str(tmp_path)))
    write_jsonl(tmp_path / "reference_answer" / "gpt-4.jsonl", MT_REFS)
    qs = mtbench.load_questions(str(tmp_path))
    assert mtbench.load_references(str(tmp_path), qs) == {111: ["5", "20"]}
    write_jsonl(tmp_path / "question.jsonl", [{"question_id": 1, "category": "x", "turns": ["a"]}])
    with pytest.raises(BenchmarkDataError, match="2 turns"):
        mtbench.load_questions(str(tmp_path))


# -------------------------------------------------------------------------------- MM-Vet

def test_mmvet_grader_prompt_and_parsing():
    text = mmvet.grader_prompt("What is x?", "-1<AND>-5", "x = -1")
    assert text == P.MM_VET_GRADER_PROMPT + "\nWhat is x? | -1 <AND> -5 | x = -1 | "
    assert P.MM_VET_GRADER_PROMPT.startswith("Compare the ground truth and prediction from AI models")
    assert text.count("\n") == 12
    retry = mmvet.grader_prompt("q", "a<OR>b", "p", retry=True)
    assert retry.endswith("q | a <OR> b | p | \nPredict the correctness of the answer (digit): ")
    assert mmvet.parse_score("0.7") == 0.7 and mmvet.parse_score(" 1.0\n") == 1.0
    for bad in ("Correctness: 0.5", "1.5", "-0.1", "", "zero"):
        with pytest.raises(J.Unparsable):
            mmvet.parse_score(bad)


def test_mmvet_aggregate_by_hand():
    samples = [{"capability": ["rec"]}, {"capability": ["rec", "ocr"]},
               {"capability": ["ocr", "math"]}, {"capability": ["rec"]}]
    run0 = [1.0, 0.5, 0.0, 0.5]
    run1 = [1.0, 0.3, 0.2, 0.5]
    m = mmvet.aggregate(samples, [run0, run1])
    # totals per run: 2.0/4*100 = 50, 2.0/4*100 = 50
    assert m["total_runs"] == [pytest.approx(50.0), pytest.approx(50.0)]
    assert m["total"] == pytest.approx(50.0) and m["total_std"] == pytest.approx(0.0)
    # rec (samples 0,1,3): run0 2.0/3, run1 1.8/3 -> mean 1.9/3*100
    assert m["capabilities"]["rec"] == pytest.approx(190 / 3)
    # ocr (1,2): run0 0.5/2=25, run1 0.5/2=25
    assert m["capabilities"]["ocr"] == pytest.approx(25.0)
    assert m["capabilities"]["math"] == pytest.approx(10.0)   # (0.0 + 20.0) / 2
    assert list(m["capabilities"]) == ["rec", "ocr", "math"]  # by count, as MM-Vet's table
    assert m["integrations"]["ocr_rec"] == pytest.approx(40.0)  # (50 + 30) / 2
    m1 = mmvet.aggregate(samples, [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert m1["total"] == pytest.approx(12.5) and m1["total_std"] == pytest.approx(12.5)


def test_mmvet_file(tmp_path):
    data = {"v1_0": {"imagename": "v1_0.png", "capability": ["ocr"], "question": "q0",
                     "answer": "a"},
            "v1_1": {"imagename": "v1_1.jpg", "capability": ["rec", "know"], "question": "q1",
                     "answer": "b"}}
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    s = mmvet.load(str(tmp_path))
    assert [x["id"] for x in s] == ["v1_0", "v1_1"]
    assert s[1]["image"] == os.path.join(str(tmp_path), "images", "v1_1.jpg")
    assert len(mmvet.load(str(tmp_path), limit=1)) == 1


# --------------------------------------------------------------------------- LLaVA-Bench

def test_llava_bench_review_prompt_and_parsing():
    c = llava_bench.review_content("A cat on a mat.", "What is it?", "A cat.", "A dog.", "conv")
    assert c == ("[Context]\nA cat on a mat.\n\n[Question]\nWhat is it?\n\n[Assistant 1]\nA cat."
                 "\n\n[End of Assistant 1]\n\n[Assistant 2]\nA dog.\n\n[End of Assistant 2]\n\n"
                 "[System]\n" + P.LLAVA_BENCH_RULE + "\n\n")
    assert P.LLAVA_BENCH_RULE.startswith("We would like to request your feedback on the "
                                         "performance of two AI assistants")
    assert llava_bench.parse_scores("8 6\nAssistant 1 is better.") == [8.0, 6.0]
    assert llava_bench.parse_scores("9, 7.5\n") == [9.0, 7.5]
    for bad in ("8\nonly one", "Scores: 8 and 6", "eight six", ""):
        with pytest.raises(J.Unparsable):
            llava_bench.parse_scores(bad)


def test_llava_bench_relative_scores_by_hand():
    pairs = [("conv", [8, 6]), ("conv", [10, 9]), ("detail", [6, 3]), ("complex", [9, 9])]
    r = llava_bench.relative_scores(pairs)
    assert r["conv"]["relative"] == pytest.approx(100 * 7.5 / 9)       # means 9 and 7.5
    assert r["detail"]["relative"] == pytest.approx(50.0)
    assert r["complex"]["relative"] == pytest.approx(100.0)
    # 'all' is a ratio of means, not a mean of ratios: (27/4) / (33/4)
    assert r["all"]["relative"] == pytest.approx(100 * 27 / 33)
    agg = llava_bench.aggregate([pairs, [("conv", [10, 5])]])
    assert agg["relative"]["all"] == pytest.approx((100 * 27 / 33 + 50.0) / 2)
    assert agg["relative"]["conv"] == pytest.approx((100 * 7.5 / 9 + 50.0) / 2)
    assert agg["relative"]["detail"] == pytest.approx(50.0)   # only in run 0


def test_llava_bench_files(tmp_path):
    write_jsonl(tmp_path / "questions.jsonl", [
        {"question_id": 0, "image": "001.jpg", "text": "q0", "category": "conv"},
        {"question_id": 1, "image": "002.jpg", "text": "q1", "category": "detail"}])
    write_jsonl(tmp_path / "context.jsonl", [
        {"id": "001", "image": "001.jpg", "caption": "one"},
        {"id": "002", "image": "002.jpg", "caption": ["two", "lines"]}])
    write_jsonl(tmp_path / "answers_gpt4.jsonl", [{"question_id": 0, "text": "r0"},
                                                   {"question_id": 1, "text": "r1"}])
    qs = llava_bench.load(str(tmp_path))
    assert [(q["caption"], q["reference"]) for q in qs] == [("one", "r0"), ("two\nlines", "r1")]
    write_jsonl(tmp_path / "answers_gpt4.jsonl", [{"question_id": 0, "text": "r0"}])
    with pytest.raises(BenchmarkDataError, match="question 1"):
        llava_bench.load(str(tmp_path))


# ---------------------------------------------------------------------------------- POPE

@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("Yes, there is a dog.", "yes"),
    ("There is not a dog in the image.", "no"), ("No, there isn't.", "no"),
    ("Yes. But no cat.", "yes"),              # only the first sentence counts
    ("Nope", "yes"), ("NO", "yes"),          # the official rule is this literal
    ("I don't think so, no", "no"),
])
def test_pope_yes_no_extraction(text, expected):
    assert pope.extract_yes_no(text) == expected


def test_pope_metrics_by_hand():
    preds = ["yes", "yes", "no", "yes", "no", "no", "yes", "no"]
    labels = ["yes", "no", "no", "yes", "yes", "no", "yes", "no"]
    m = pope.metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 3, 1)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75) and m["yes_ratio"] == pytest.approx(0.5)
    agg = pope.aggregate({"random": (preds, labels), "adversarial": (["yes"] * 4, ["yes", "no", "no", "no"])})
    # adversarial: tp 1, fp 3 -> precision 1/4, recall 1, f1 = 2*(1/4)/(5/4) = 0.4
    assert agg["splits"]["adversarial"]["f1"] == pytest.approx(0.4)
    assert agg["mean_f1"] == pytest.approx((0.75 + 0.4) / 2)
    assert pope.metrics(["no", "no"], ["yes", "no"])["precision"] == 0.0   # no division error


def test_pope_files(tmp_path):
    for split in ("adversarial", "random", "popular"):
        write_jsonl(tmp_path / f"coco_pope_{split}.json",
                    [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?",
                      "label": "yes"}])
    (tmp_path / "images").mkdir()
    data = pope.load(str(tmp_path))
    assert list(data) == ["random", "popular", "adversarial"]
    assert data["random"][0]["image"] == os.path.join(str(tmp_path), "images", "a.jpg")
    write_jsonl(tmp_path / "coco_pope_random.json",
                [{"question_id": 1, "image": "a.jpg", "text": "?", "label": "maybe"}])
    with pytest.raises(BenchmarkDataError, match="label"):
        pope.load(str(tmp_path))


# ------------------------------------------------------------------------------- MMBench

@pytest.mark.parametrize("answer,expected", [
    ("B", "B"), ("B.", "B"), ("(C) a cat", "C"), ("D) the last", "D"), ("C: blue", "C"),
    ("The answer is B.", "B"), ("I think it's option C", "C"),
    ("A dog is sitting on the sofa", None),   # an article, not option A
    ("red", "A"),                              # the option's text
    ("Either A or B", None), ("E", None), ("", None),
])
def test_mmbench_answer_extraction(answer, expected):
    assert mmbench.extract_choice(answer, ["red", "green", "blue", "yellow"]) == expected


def test_mmbench_rotations_and_circular_by_hand():
    item = {"options": ["red", "green", "blue"], "answer": "B"}
    assert mmbench.rounds(item) == [(0, ["red", "green", "blue"], "B"),
                                    (1, ["green", "blue", "red"], "A"),
                                    (2, ["blue", "red", "green"], "C")]
    assert mmbench.rounds(item, circular=False) == [(0, ["red", "green", "blue"], "B")]
    recs = []
    for g, cat, correct in [(1, "color", [1, 1, 1]), (2, "color", [1, 0, 1]),
                            (3, "count", [0, 1, 1]), (4, "count", [1, 1])]:
        for k, c in enumerate(correct):
            recs.append({"group": g, "round": k, "category": cat, "correct": bool(c),
                         "extracted": k != 1})
    m = mmbench.aggregate(recs)
    assert m["circular_accuracy"] == pytest.approx(2 / 4)      # groups 1 and 4
    assert m["accuracy"] == pytest.approx(3 / 4)               # round 0 of groups 1, 2, 4
    assert m["categories"]["color"] == {"circular_accuracy": 0.5, "accuracy": 1.0, "n": 2}
    assert m["categories"]["count"]["circular_accuracy"] == pytest.approx(0.5)
    assert m["unextracted"] == 4 and m["n_prompts"] == 11


def _png_b64(color=(255, 0, 0)) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_mmbench_tsv(path, rows):
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    with open(path, "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(str(r.get(c, "")) for c in cols) + "\n")


def test_mmbench_tsv(tmp_path):
    img = _png_b64()
    write_mmbench_tsv(tmp_path / "mmbench_dev.tsv", [
        {"index": 0, "question": "Color?", "hint": "nan", "A": "red", "B": "blue", "C": "nan",
         "answer": "A", "category": "color", "image": img},
        {"index": 1, "question": "Shape?", "hint": "Look closely.", "A": "a", "B": "b", "C": "c",
         "D": "d", "answer": "D", "category": "shape", "image": "0"}])   # image of row 0
    items = mmbench.load(str(tmp_path))
    assert [q["options"] for q in items] == [["red", "blue"], ["a", "b", "c", "d"]]
    assert items[0]["hint"] is None and items[1]["image"] == items[0]["image"]
    assert items[1]["image"].startswith(b"\x89PNG")
    assert mmbench.build_prompt("Shape?", ["a", "b"], "Look closely.") == (
        "<image>\nLook closely.\nShape?\nA. a\nB. b\n"
        "Answer with the option's letter from the given choices directly.")
    write_mmbench_tsv(tmp_path / "mmbench_dev.tsv", [
        {"index": 0, "question": "Q", "A": "x", "B": "y", "answer": "C", "image": img}])
    with pytest.raises(BenchmarkDataError, match="answer"):
        mmbench.load(str(tmp_path))


# --------------------------------------------------------------------------------- judge

class FakeClient:
    """In-process stand-in for a remote client: replies from a script, per prompt text."""

    def __init__(self, script):
        self.name = "fake:judge"
        self.script = script      # function(prompt, temperature, n_call_for_prompt) -> str | Exception
        self.calls = []

    def complete(self, parts, *, system=None, json_schema=None, temperature=0.0,
                 max_output_tokens=4096):
        prompt = "".join(p for p in parts if isinstance(p, str))
        n = sum(1 for c in self.calls if c[0] == prompt)
        self.calls.append((prompt, temperature, max_output_tokens, system))
        out = self.script(prompt, temperature, n)
        if isinstance(out, Exception):
            raise out
        return Reply(out, input_tokens=10, output_tokens=2)


def _judge(client, tmp_path, **kw):
    kw.setdefault("progress", False)
    return J.Judge(client, cache=str(tmp_path / "judgments.jsonl"), base_delay=0.0,
                   max_delay=0.0, **kw)


def test_judge_reasks_unparsable_then_reports_failure(tmp_path):
    def script(prompt, temperature, n):
        if prompt == "good":
            return "Rating: [[7]]"
        if prompt == "late":
            return "no rating" if n == 0 else "ok now [[4]]"
        return "I refuse to rate."
    client = FakeClient(script)
    judge = _judge(client, tmp_path, max_reasks=2)
    reqs = [J.JudgeRequest(k, [k], "sys", parse=mtbench.parse_rating) for k in ("good", "late", "bad")]
    v = judge.judge_many(reqs)
    assert [x.ok for x in v] == [True, True, False]
    assert v[0].value == 7.0 and v[1].value == 4.0
    assert v[1].calls == 2 and v[2].calls == 3 and v[2].kind == "unparsable"
    assert v[2].replies == ["I refuse to rate."] * 3
    # re-asks raise the temperature (0 -> 0.5 -> 1.0) by default
    assert [c[1] for c in client.calls if c[0] == "bad"] == [0.0, 0.5, 1.0]
    fs = J.failure_summary(v)
    assert (fs["count"], fs["unparsable"], fs["errors"]) == (1, 1, 0)
    assert fs["items"][0]["key"] == "bad"
    # rerun: successes come from the cache, the failure is asked again
    client2 = FakeClient(lambda p, t, n: "[[9]]")
    v2 = _judge(client2, tmp_path).judge_many(reqs)
    assert [c[0] for c in client2.calls] == ["bad"]
    assert [x.value for x in v2] == [7.0, 4.0, 9.0] and v2[0].cached
    # a third run makes no call at all
    client3 = FakeClient(lambda p, t, n: pytest.fail("called"))
    assert [x.value for x in _judge(client3, tmp_path).judge_many(reqs)] == [7.0, 4.0, 9.0]
    # a changed prompt for the same key is judged again
    client4 = FakeClient(lambda p, t, n: "[[2]]")
    changed = [J.JudgeRequest("good", ["good, edited"], "sys", parse=mtbench.parse_rating)]
    assert _judge(client4, tmp_path).judge_many(changed)[0].value == 2.0
    assert len(client4.calls) == 1


def test_judge_retries_transient_errors_and_stops_on_auth(tmp_path):
    def script(prompt, temperature, n):
        if prompt == "flaky" and n < 2:
            return TransientError("HTTP 429", status=429)
        if prompt == "down":
            return TransientError("HTTP 503", status=503)
        return "[[5]]"
    client = FakeClient(script)
    judge = _judge(client, tmp_path, max_retries=3, min_output_tokens=64)
    v = judge.judge_many([J.JudgeRequest("flaky", ["flaky"], parse=mtbench.parse_rating,
                                         max_output_tokens=3),
                          J.JudgeRequest("down", ["down"], parse=mtbench.parse_rating)])
    assert v[0].ok and v[0].value == 5.0
    flaky = [c for c in client.calls if c[0] == "flaky"]
    assert len(flaky) == 3
    assert flaky[0][2] == 64                   # the floor on the output budget (its request asked 3)
    assert not v[1].ok and v[1].kind == "error" and "503" in v[1].error
    assert len([c for c in client.calls if c[0] == "down"]) == 4     # 1 + 3 retries
    assert judge.usage["calls"] == 1           # replies received (errors are not replies)
    auth = FakeClient(lambda p, t, n: AuthError("no key"))
    with pytest.raises(AuthError):
        _judge(auth, tmp_path / "a").judge_many([J.JudgeRequest(str(i), [str(i)]) for i in range(5)])


def test_mmvet_reask_uses_the_official_retry_prompt(tmp_path):
    seen = []

    def script(prompt, temperature, n):
        seen.append((prompt.endswith(P.MM_VET_RETRY_SUFFIX), temperature))
        good = "q | a | p | " in prompt       # sample v1_0 gets a score on its 4th try
        return "0.8" if good and prompt.endswith(P.MM_VET_RETRY_SUFFIX) and n == 2 else "Correctness"
    req = J.JudgeRequest("v1_0/run0", [mmvet.grader_prompt("q", "a", "p")], None, 0.0, 3,
                         mmvet.parse_score, mmvet._reask(mmvet.grader_prompt("q", "a", "p", True)))
    judge = mmvet._with_reasks(_judge(FakeClient(script), tmp_path), P.MM_VET_MAX_TRIES - 1)
    v = judge.judge_many([req])[0]
    assert v.ok and v.value == 0.8
    # as mm-vet_evaluator.py: the retry prompt at temperature 0, then 0.5, 1.0, …
    assert seen == [(False, 0.0), (True, 0.0), (True, 0.5), (True, 1.0)]
    bad = J.JudgeRequest("v1_1/run0", [mmvet.grader_prompt("q", "b", "p")], None, 0.0, 3,
                         mmvet.parse_score, mmvet._reask(mmvet.grader_prompt("q", "b", "p", True)))
    seen.clear()
    v = judge.judge_many([bad])[0]
    assert not v.ok and len(seen) == P.MM_VET_MAX_TRIES and v.kind == "unparsable"


# -------------------------------------------------------------------------------- report

def _result(model, bench, score, judge=None, fails=0):
    return {"benchmark": bench, "model": model, "score": score, "judge": judge,
            "score_name": "s", "n_questions": 3, "finished": "2026-01-01T00:00:00Z",
            "judge_failures": {"count": fails}}


def test_report_table(tmp_path):
    results = [_result("llava", "mt-bench", 5.991, "openai:gpt-4o"),
               _result("llava", "pope", 0.8591),
               _result("dpo", "pope", 0.87),
               _result("dpo", "mt-bench", 6.734, "openai:gpt-4o", fails=2),
               _result("dpo", "mm-vet", 41.23, "gemini:gemini-2.5-flash"),
               dict(_result("dpo", "pope", 0.5), finished="2025-01-01T00:00:00Z")]  # older: ignored
    table = report.collect(results)
    assert [c.key for c in table.columns] == ["mm-vet", "pope", "mt-bench"]   # Table 4 order
    assert [r.model for r in table.rows] == ["llava", "dpo"]
    md = report.render_markdown(table)
    assert "| Model | MM-Vet | POPE | MT-Bench |" in md
    assert "| llava | – | 0.859 | 5.99 |" in md
    assert "| dpo | 41.2 | 0.870 | 6.73 |" in md
    assert "MT-Bench: openai:gpt-4o" in md and "MM-Vet: gemini:gemini-2.5-flash" in md
    assert "not comparable" in md and "dpo, MT-Bench: 2 judgment(s) failed" in md
    paths = report.write_report(table, str(tmp_path))
    assert json.load(open(paths["json"]))["rows"][1]["scores"]["mt-bench"] == 6.734
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # generic use: mean ± std cells
    t = report.Table([report.Column("acc", "Accuracy", "{:.2f}")],
                     [report.Row("sft", {"acc": {"mean": 0.5, "std": 0.125}}),
                      report.Row("dpo", {"acc": None})])
    md = report.render_markdown(t)
    assert "| sft | 0.50 ± 0.12 |" in md and "| dpo | – |" in md
    report.plot(t, str(tmp_path / "g.png"))
    # reading result.json files from folders
    os.makedirs(tmp_path / "runs" / "a" / "pope")
    json.dump(results[1], open(tmp_path / "runs" / "a" / "pope" / "result.json", "w"))
    found = report.find_results([str(tmp_path / "runs")])
    assert len(found) == 1 and found[0]["score"] == 0.8591
