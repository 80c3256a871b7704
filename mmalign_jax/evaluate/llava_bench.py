"""LLaVA-Bench (in-the-wild): a judge scores the reference (GPT-4) answer and the model's
answer 1–10 each; the relative score is mean(model) / mean(reference) × 100, per category
(conv, detail, complex) and over all — LLaVA's `eval_gpt_review_bench.py` +
`summarize_gpt_review.py` with the `llava_bench_*` rules of `llava/eval/table/rule.json`.

Files (the Hugging Face dataset `liuhaotian/llava-bench-in-the-wild`; `--data` is its folder):

    questions.jsonl     {"question_id": 0, "image": "001.jpg", "text": "...", "category": "conv"}
    context.jsonl       {"id": "001", "image": "001.jpg", "caption": "..."}
    answers_gpt4.jsonl  {"question_id": 0, "text": "..."}            (the reference answers)
    images/             001.jpg, ...

Judge message (system: "You are a helpful and precise assistant for checking the quality of
the answer.", temperature 0.2, max 1024 tokens):

    [Context]\\n{caption}\\n\\n[Question]\\n{question}\\n\\n[Assistant 1]\\n{reference}\\n\\n
    [End of Assistant 1]\\n\\n[Assistant 2]\\n{model answer}\\n\\n[End of Assistant 2]\\n\\n
    [System]\\n{rule}\\n\\n

The two scores are the first line of the reply, separated by a space (or a comma). The
official script records an unparsable reply as (−1, −1) and averages it in; we re-ask,
and a reply that stays unparsable is left out of the means and reported as a failure.
A caption given as a list of sentences is joined with newlines, as the official script.
With `runs` > 1 (the LLaVA paper averages 3) each run is scored on its own and the result
is the mean, with the standard deviation, over runs.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from mmalign_jax.evaluate import common
from mmalign_jax.evaluate import prompts as P
from mmalign_jax.evaluate.answers import AnswerItem, default_sampling, generate_answers
from mmalign_jax.evaluate.judge import JudgeRequest, Unparsable, failure_summary

NAME = "llava-bench"
CATEGORIES = ("conv", "detail", "complex")


def load(data_dir: str, limit: Optional[int] = None) -> list:
    """`[{'question_id', 'image', 'text', 'category', 'caption', 'reference'}]`."""
    qpath = os.path.join(data_dir, "questions.jsonl")
    questions = common.read_jsonl(qpath)
    contexts = {c["image"]: c for c in common.read_jsonl(os.path.join(data_dir, "context.jsonl"))}
    refs = {r["question_id"]: r for r in common.read_jsonl(os.path.join(data_dir, "answers_gpt4.jsonl"))}
    out = []
    for i, q in enumerate(questions, start=1):
        common.require(q, ("question_id", "image", "text", "category"), f"{qpath}, line {i}")
        if f"llava_bench_{q['category']}" not in P.LLAVA_BENCH_RULES:
            raise common.BenchmarkDataError(f"{qpath}, line {i}: unknown category "
                                            f"{q['category']!r}; expected one of {CATEGORIES}")
        if q["image"] not in contexts:
            raise common.BenchmarkDataError(f"context.jsonl has no entry for image {q['image']}")
        if q["question_id"] not in refs:
            raise common.BenchmarkDataError(f"answers_gpt4.jsonl has no answer for question "
                                            f"{q['question_id']}")
        caption = contexts[q["image"]].get("caption", "")
        if isinstance(caption, list):
            caption = "\n".join(caption)
        out.append({"question_id": q["question_id"], "text": q["text"], "category": q["category"],
                    "image": os.path.join(data_dir, "images", q["image"]),
                    "caption": caption, "reference": refs[q["question_id"]]["text"]})
    return out[:limit] if limit else out


def review_content(caption: str, question: str, reference: str, answer: str, category: str) -> str:
    rule = P.LLAVA_BENCH_RULES[f"llava_bench_{category}"]
    role, prompt = rule["role"], rule["prompt"]
    return (f"[Context]\n{caption}\n\n"
            f"[Question]\n{question}\n\n"
            f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
            f"[System]\n{prompt}\n\n")


def parse_scores(text: str) -> list:
    """`[reference score, model score]` from the first line of the reply."""
    line = text.strip().split("\n")[0]
    first = line.replace(",", " ").split()
    if len(first) != 2:
        raise Unparsable(f"first line {line[:80]!r} is not two scores")
    try:
        return [float(first[0]), float(first[1])]
    except ValueError:
        raise Unparsable(f"first line {first!r} is not two numbers") from None


def relative_scores(pairs: Sequence[tuple]) -> dict:
    """`pairs`: `(category, [reference score, model score])` of the scored questions.
    Per category and 'all': mean of each score and 100 × mean(model) / mean(reference)."""
    groups = {"all": []}
    for cat, pair in pairs:
        groups.setdefault(cat, []).append(pair)
        groups["all"].append(pair)
    out = {}
    for k, v in groups.items():
        if not v:
            continue
        ref = common.mean([p[0] for p in v])
        model = common.mean([p[1] for p in v])
        out[k] = {"reference": ref, "model": model,
                  "relative": 100.0 * common.safe_div(model, ref), "n": len(v)}
    return out


def aggregate(per_run: Sequence[Sequence[tuple]]) -> dict:
    """Relative scores of each run, and their mean / std over runs."""
    runs = [relative_scores(p) for p in per_run]
    keys = ["all"] + [c for c in CATEGORIES if any(c in r for r in runs)]
    mean_rel = {k: common.mean([r[k]["relative"] for r in runs if k in r]) for k in keys}
    return {"relative": mean_rel,
            "relative_std": {k: common.std([r[k]["relative"] for r in runs if k in r]) for k in keys},
            "per_run": runs, "runs": len(runs)}


def run(answerer, data_dir: str, out_dir: str, *, judge, sampling=None, batch_size: int = 8,
        limit: Optional[int] = None, runs: int = 1, seed: int = 0, progress: bool = True) -> dict:
    """Answer, review (`runs` times) and score LLaVA-Bench; writes `out_dir/result.json`."""
    common.need_judge(judge, NAME)
    sampling = sampling or default_sampling()
    os.makedirs(out_dir, exist_ok=True)
    qs = load(data_dir, limit)
    missing = [q["image"] for q in qs if not os.path.isfile(q["image"])]
    if missing:
        raise common.BenchmarkDataError(f"{len(missing)} LLaVA-Bench images missing, e.g. {missing[0]}")
    answers = generate_answers(answerer, [
        AnswerItem(str(q["question_id"]), [{"role": "user", "content": "<image>\n" + q["text"]}],
                   [q["image"]]) for q in qs],
        os.path.join(out_dir, "answers.jsonl"), sampling=sampling, batch_size=batch_size,
        seed=seed, progress=progress)
    requests = []
    for r in range(runs):
        for q in qs:
            content = review_content(q["caption"], q["text"], q["reference"],
                                     answers[str(q["question_id"])], q["category"])
            requests.append(JudgeRequest(f"{q['question_id']}/run{r}", [content],
                                         P.LLAVA_BENCH_SYSTEM, P.LLAVA_BENCH_TEMPERATURE,
                                         P.LLAVA_BENCH_MAX_TOKENS, parse_scores))
    verdicts = judge.judge_many(requests, desc=NAME)
    n = len(qs)
    per_run = [[(q["category"], verdicts[r * n + i].value) for i, q in enumerate(qs)
                if verdicts[r * n + i].ok] for r in range(runs)]
    metrics = aggregate(per_run)
    common.write_jsonl(os.path.join(out_dir, "scores.jsonl"), [
        {"question_id": q["question_id"], "category": q["category"],
         "scores": [verdicts[r * n + i].value for r in range(runs)],
         "answer": answers[str(q["question_id"])]} for i, q in enumerate(qs)])
    result = {
        "benchmark": NAME, **common.model_info(answerer), "judge": judge.name,
        "score": metrics["relative"]["all"], "score_name": "relative score, all (%)",
        "metrics": metrics, "n_questions": n, "judge_failures": failure_summary(verdicts),
        "judge_usage": common.judge_usage(judge),
        "generation": common.generation_info(sampling, batch_size),
        "data": os.path.abspath(data_dir),
    }
    common.write_result(out_dir, result)
    return result
