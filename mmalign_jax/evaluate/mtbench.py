"""MT-Bench: 80 two-turn questions, single-answer grading 1–10 by an LLM judge, as FastChat's
`llm_judge` (`gen_judgment.py --mode single`, `show_result.py`).

Files (FastChat's `fastchat/llm_judge/data/mt_bench/`; `--data` is that folder):

    question.jsonl                 {"question_id": 81, "category": "writing", "turns": [q1, q2]}
    reference_answer/gpt-4.jsonl   {"question_id": 111, "choices": [{"index": 0, "turns": [r1, r2]}]}

Grading (FastChat): turn 1 with `single-v1`, turn 2 with `single-v1-multi-turn` (the whole
conversation, focusing on the second answer); questions of the categories in
`MT_BENCH_NEED_REF_CATS` (math, reasoning, coding) use `single-math-v1[-multi-turn]` with
the reference answers. The rating is the first `[[x]]` in the reply, else the first `[x]`
(FastChat's fallback); we also require 1 ≤ x ≤ 10 and re-ask otherwise. FastChat drops a
judgment without a rating (score −1) from the means; so do we, and count it as a failure.
Score: the mean over every judged (question, turn); also per turn and per category (mean
over both turns of the category's questions).

Answers: the model answers turn 1, then turn 2 with its own turn-1 answer in the
conversation (greedy by default). `irrelevant_image` puts an image that has nothing to do
with the question into the first user turn (the study's Table 7, "MT-Bench with an
irrelevant image in context"); the judge still sees the text-only questions. The answers
are also written in FastChat's model-answer format (`model_answer.jsonl`) so FastChat's
own scripts can grade them.
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Optional, Sequence

from mmalign_jax.evaluate import common
from mmalign_jax.evaluate import prompts as P
from mmalign_jax.evaluate.answers import AnswerItem, default_sampling, generate_answers
from mmalign_jax.evaluate.judge import JudgeRequest, Unparsable, failure_summary

log = logging.getLogger("mmalign_jax.evaluate")

NAME = "mt-bench"
NAME_WITH_IMAGE = "mt-bench+image"
REFERENCE_MODEL = "gpt-4"

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


# ------------------------------------------------------------------------------ files


def load_questions(data_dir: str, limit: Optional[int] = None) -> list:
    path = os.path.join(data_dir, "question.jsonl")
    rows = common.read_jsonl(path)
    for i, q in enumerate(rows, start=1):
        common.require(q, ("question_id", "category", "turns"), f"{path}, question {i}")
        if not isinstance(q["turns"], list) or len(q["turns"]) != 2:
            raise common.BenchmarkDataError(f"{path}, question {q['question_id']}: MT-Bench "
                                            f"questions have 2 turns; got {len(q['turns'])}")
    return rows[:limit] if limit else rows


def load_references(data_dir: str, questions: Sequence[dict],
                    model: str = REFERENCE_MODEL) -> dict:
    """`{question_id: [ref turn 1, ref turn 2]}` for the questions that need one: from
    `reference_answer/<model>.jsonl`, else the question's own `reference` field."""
    path = os.path.join(data_dir, "reference_answer", f"{model}.jsonl")
    refs = {}
    if os.path.isfile(path):
        for row in common.read_jsonl(path):
            try:
                refs[row["question_id"]] = list(row["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise common.BenchmarkDataError(
                    f"{path}: question {row.get('question_id')}: expected "
                    "{'question_id', 'choices': [{'turns': [...]}]}") from None
    missing = []
    for q in questions:
        if q["category"] in P.MT_BENCH_NEED_REF_CATS and q["question_id"] not in refs:
            if isinstance(q.get("reference"), list) and len(q["reference"]) >= 2:
                refs[q["question_id"]] = list(q["reference"])
            else:
                missing.append(q["question_id"])
    if missing:
        raise common.BenchmarkDataError(
            f"no reference answers for {len(missing)} math/reasoning/coding questions "
            f"({missing[:5]}…): put FastChat's reference_answer/{model}.jsonl under {data_dir}")
    return refs


# ------------------------------------------------------------------------------ judging


def parse_rating(text: str) -> float:
    """FastChat's rating: the first `[[x]]`, else the first `[x]`; must lie in 1..10."""
    m = _RATING.search(text) or _RATING_BACKUP.search(text)
    if not m:
        raise Unparsable("no [[rating]] in the reply")
    rating = float(m.group(1))
    if not 1.0 <= rating <= 10.0:
        raise Unparsable(f"rating {rating} is outside 1-10")
    return rating


def judge_prompt(question: dict, answers: Sequence[str], turn: int,
                 reference: Optional[Sequence[str]] = None) -> tuple:
    """`(prompt name, system message, user message)` for grading `turn` (1 or 2) of
    `question` answered with `answers` (both turns for turn 2)."""
    need_ref = question["category"] in P.MT_BENCH_NEED_REF_CATS
    name = ("single-math-v1" if need_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    tpl = P.MT_BENCH_JUDGE_PROMPTS[name]
    kwargs = {}
    if need_ref:
        if reference is None:
            raise ValueError(f"question {question['question_id']} ({question['category']}) "
                             "needs a reference answer")
        kwargs["ref_answer_1"] = reference[0]
        if turn == 2:
            kwargs["ref_answer_2"] = reference[1]
    q = question["turns"]
    if turn == 1:
        user = tpl["prompt_template"].format(question=q[0], answer=answers[0], **kwargs)
    elif turn == 2:
        user = tpl["prompt_template"].format(question_1=q[0], question_2=q[1],
                                             answer_1=answers[0], answer_2=answers[1], **kwargs)
    else:
        raise ValueError(f"turn must be 1 or 2; got {turn}")
    return name, tpl["system_prompt"], user


def aggregate(records: Sequence[dict]) -> dict:
    """`records`: `{'question_id', 'category', 'turn', 'score'}` with `score` None for a
    failed judgment. Means over the scored ones: overall, per turn, per category."""
    scored = [r for r in records if r["score"] is not None]
    cats = {}
    for r in scored:
        cats.setdefault(r["category"], []).append(r["score"])
    return {
        "overall": common.mean([r["score"] for r in scored]),
        "turn_1": common.mean([r["score"] for r in scored if r["turn"] == 1]),
        "turn_2": common.mean([r["score"] for r in scored if r["turn"] == 2]),
        "categories": {c: common.mean(v) for c, v in sorted(cats.items())},
        "n_scored": len(scored),
        "n_failed": len(records) - len(scored),
    }


# ------------------------------------------------------------------------------ running


def noise_image(seed: int = 0, size: int = 336):
    """A fixed random-noise RGB image: an image unrelated to any question."""
    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _image_ref(irrelevant_image):
    if irrelevant_image is None:
        return None, None
    if isinstance(irrelevant_image, str) and irrelevant_image.startswith("noise"):
        seed = int(irrelevant_image.split(":", 1)[1]) if ":" in irrelevant_image else 0
        return noise_image(seed), f"noise:{seed}"
    if isinstance(irrelevant_image, str):
        if not os.path.isfile(irrelevant_image):
            raise FileNotFoundError(f"irrelevant image {irrelevant_image}: no such file")
        return irrelevant_image, os.path.abspath(irrelevant_image)
    return irrelevant_image, None  # a PIL image: hashed by its pixels


def run(answerer, data_dir: str, out_dir: str, *, judge, sampling=None, batch_size: int = 8,
        limit: Optional[int] = None, irrelevant_image=None, seed: int = 0,
        reference_model: str = REFERENCE_MODEL, progress: bool = True) -> dict:
    """Answer, judge and score MT-Bench; writes `out_dir/result.json` and returns it.

    answerer: `answers.load_model(...)` or any `Answerer`; judge: `judge.Judge`;
    irrelevant_image: None, an image path, a PIL image or 'noise[:seed]'."""
    common.need_judge(judge, NAME)
    sampling = sampling or default_sampling()
    os.makedirs(out_dir, exist_ok=True)
    questions = load_questions(data_dir, limit)
    refs = load_references(data_dir, questions, reference_model)
    image, image_id = _image_ref(irrelevant_image)
    prefix = "<image>\n" if image is not None else ""
    images = [image] if image is not None else []
    image_ids = [image_id] if image_id is not None else None
    store = os.path.join(out_dir, "answers.jsonl")

    def turn1(q):
        return [{"role": "user", "content": prefix + q["turns"][0]}]

    first = generate_answers(answerer, [
        AnswerItem(f"{q['question_id']}/1", turn1(q), images, image_ids) for q in questions],
        store, sampling=sampling, batch_size=batch_size, seed=seed, progress=progress)
    second = generate_answers(answerer, [
        AnswerItem(f"{q['question_id']}/2",
                   turn1(q) + [{"role": "assistant", "content": first[f"{q['question_id']}/1"]},
                               {"role": "user", "content": q["turns"][1]}], images, image_ids)
        for q in questions], store, sampling=sampling, batch_size=batch_size, seed=seed,
        progress=progress)
    model_name = getattr(answerer, "name", "model")
    common.write_jsonl(os.path.join(out_dir, "model_answer.jsonl"), [
        {"question_id": q["question_id"], "answer_id": f"{model_name}-{q['question_id']}",
         "model_id": model_name, "tstamp": time.time(),
         "choices": [{"index": 0, "turns": [first[f"{q['question_id']}/1"],
                                            second[f"{q['question_id']}/2"]]}]}
        for q in questions])

    requests, meta = [], []
    for q in questions:
        answers = [first[f"{q['question_id']}/1"], second[f"{q['question_id']}/2"]]
        for turn in (1, 2):
            name, system, user = judge_prompt(q, answers, turn, refs.get(q["question_id"]))
            requests.append(JudgeRequest(f"{q['question_id']}/turn{turn}", [user], system,
                                         P.MT_BENCH_JUDGE_TEMPERATURE,
                                         P.MT_BENCH_JUDGE_MAX_TOKENS, parse_rating))
            meta.append({"question_id": q["question_id"], "category": q["category"],
                         "turn": turn, "judge_prompt": name})
    verdicts = judge.judge_many(requests, desc=NAME)
    records = [dict(m, score=v.value if v.ok else None) for m, v in zip(meta, verdicts)]
    common.write_jsonl(os.path.join(out_dir, "scores.jsonl"),
                       [dict(r, judgment=v.text) for r, v in zip(records, verdicts)])
    metrics = aggregate(records)
    result = {
        "benchmark": NAME_WITH_IMAGE if image is not None else NAME,
        **common.model_info(answerer),
        "judge": judge.name,
        "score": metrics["overall"],
        "score_name": "overall (1-10)",
        "metrics": metrics,
        "n_questions": len(questions),
        "irrelevant_image": image_id if image is not None else None,
        "judge_failures": failure_summary(verdicts),
        "judge_usage": common.judge_usage(judge),
        "generation": common.generation_info(sampling, batch_size),
        "data": os.path.abspath(data_dir),
    }
    common.write_result(out_dir, result)
    return result
