"""MM-Vet: open-ended questions graded 0.0–1.0 by an LLM with the official few-shot grader
prompt; scores per capability and in total (×100), averaged over k grading runs — as
`mm-vet_evaluator.py` of yuweihao/MM-Vet.

Files (`mm-vet.zip` of the MM-Vet release, unzipped; `--data` is the `mm-vet` folder):

    mm-vet.json    {"v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"],
                             "question": "...", "answer": "... <AND> ..."}, ...}
    images/        v1_0.png, ...

Grading: the grader gets `MM_VET_GRADER_PROMPT`, a newline, and
`question | ground truth | prediction | ` (`<AND>`/`<OR>` spaced out); the score is the
first word of the reply and must be a number in [0, 1]. Otherwise the grader is asked
again with "Predict the correctness of the answer (digit): " appended — at temperature 0,
then 0.5, 1.0, 1.5 — 5 parsed tries in all; a sample that never yields a score counts 0.0
(as the official evaluator) and is reported as a judge failure. With k runs (`runs=5` in
the paper) every sample is graded k times; each run gives per-capability scores
(sum of scores of the samples having that capability / their number × 100), and the
result is their mean over runs, with the standard deviation of the total.

The model's answers are also written as `results.json` (`{id: answer}`), the file the
official evaluator and its online grader take.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

from mmalign_jax.evaluate import common
from mmalign_jax.evaluate import prompts as P
from mmalign_jax.evaluate.answers import AnswerItem, default_sampling, generate_answers
from mmalign_jax.evaluate.judge import JudgeRequest, Unparsable, failure_summary

NAME = "mm-vet"


def load(data_dir: str, limit: Optional[int] = None) -> list:
    """`[{'id', 'image', 'capability', 'question', 'answer'}]` in file order."""
    path = os.path.join(data_dir, "mm-vet.json")
    data = common.read_json(path)
    if not isinstance(data, dict):
        raise common.BenchmarkDataError(f"{path}: expected an object {{id: sample}}")
    out = []
    for sid, s in data.items():
        common.require(s, ("imagename", "capability", "question", "answer"), f"{path}, {sid}")
        out.append({"id": sid, "image": os.path.join(data_dir, "images", s["imagename"]),
                    "capability": list(s["capability"]), "question": s["question"],
                    "answer": s["answer"]})
    return out[:limit] if limit else out


def grader_prompt(question: str, ground_truth: str, prediction: str, retry: bool = False) -> str:
    text = P.MM_VET_GRADER_PROMPT + "\n" + " | ".join([
        question, ground_truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "),
        prediction, ""])
    return text + P.MM_VET_RETRY_SUFFIX if retry else text


def parse_score(text: str) -> float:
    """The first word of the reply as a number in [0, 1]."""
    words = text.split()
    if not words:
        raise Unparsable("empty reply")
    try:
        score = float(words[0])
    except ValueError:
        raise Unparsable(f"{words[0]!r} is not a number") from None
    if not 0.0 <= score <= 1.0:
        raise Unparsable(f"score {score} is outside [0, 1]")
    return score


def _reask(sample_prompt_retry: str):
    def reask(req: JudgeRequest, attempt: int, last_text: str) -> JudgeRequest:
        return dataclasses.replace(req, parts=[sample_prompt_retry],
                                   temperature=req.temperature
                                   + P.MM_VET_TEMPERATURE_STEP * (attempt - 1))
    return reask


def aggregate(samples: Sequence[dict], scores: Sequence[Sequence[float]]) -> dict:
    """`samples[i]['capability']`: its capability codes; `scores[r][i]`: run r's score of
    sample i (failures already 0.0). Per-capability and total scores (0–100) and, for each
    capability *combination* as the MM-Vet paper's second table, their means over runs."""
    runs = len(scores)
    caps, combos = {}, {}
    for i, s in enumerate(samples):
        for c in set(s["capability"]):
            caps.setdefault(c, []).append(i)
        combos.setdefault("_".join(sorted(set(s["capability"]))), []).append(i)

    def per_run(idx):
        return [100.0 * sum(scores[r][i] for i in idx) / len(idx) for r in range(runs)]

    totals = per_run(range(len(samples)))
    order = sorted(caps, key=lambda c: (-len(caps[c]), c))
    return {
        "total": common.mean(totals),
        "total_std": common.std(totals),
        "total_runs": totals,
        "capabilities": {c: common.mean(per_run(caps[c])) for c in order},
        "capability_names": {c: P.MM_VET_CAPABILITIES.get(c, c) for c in order},
        "capability_counts": {c: len(caps[c]) for c in order},
        "integrations": {k: common.mean(per_run(v))
                         for k, v in sorted(combos.items(), key=lambda kv: -len(kv[1]))},
        "runs": runs,
    }


def run(answerer, data_dir: str, out_dir: str, *, judge, sampling=None, batch_size: int = 8,
        limit: Optional[int] = None, runs: int = 1, seed: int = 0, progress: bool = True) -> dict:
    """Answer, grade (`runs` times) and score MM-Vet; writes `out_dir/result.json`."""
    common.need_judge(judge, NAME)
    if runs < 1:
        raise ValueError(f"runs must be >= 1; got {runs}")
    sampling = sampling or default_sampling()
    os.makedirs(out_dir, exist_ok=True)
    samples = load(data_dir, limit)
    missing = [s["image"] for s in samples if not os.path.isfile(s["image"])]
    if missing:
        raise common.BenchmarkDataError(f"{len(missing)} MM-Vet images missing, e.g. {missing[0]}")
    answers = generate_answers(answerer, [
        AnswerItem(s["id"], [{"role": "user", "content": "<image>\n" + s["question"]}],
                   [s["image"]]) for s in samples],
        os.path.join(out_dir, "answers.jsonl"), sampling=sampling, batch_size=batch_size,
        seed=seed, progress=progress)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({s["id"]: answers[s["id"]] for s in samples}, f, indent=1, ensure_ascii=False)

    requests = []
    for r in range(runs):
        for s in samples:
            args = (s["question"], s["answer"], answers[s["id"]])
            requests.append(JudgeRequest(
                f"{s['id']}/run{r}", [grader_prompt(*args)], None, 0.0, 3, parse_score,
                _reask(grader_prompt(*args, retry=True))))
    judge = judge if judge.max_reasks == P.MM_VET_MAX_TRIES - 1 else _with_reasks(
        judge, P.MM_VET_MAX_TRIES - 1)
    verdicts = judge.judge_many(requests, desc=NAME)
    n = len(samples)
    scores = [[verdicts[r * n + i].value if verdicts[r * n + i].ok else 0.0 for i in range(n)]
              for r in range(runs)]
    metrics = aggregate(samples, scores)
    common.write_jsonl(os.path.join(out_dir, "scores.jsonl"), [
        {"id": s["id"], "capability": s["capability"], "scores": [scores[r][i] for r in range(runs)],
         "answer": answers[s["id"]]} for i, s in enumerate(samples)])
    result = {
        "benchmark": NAME, **common.model_info(answerer), "judge": judge.name,
        "score": metrics["total"], "score_name": "total (0-100)", "metrics": metrics,
        "n_questions": n, "judge_failures": failure_summary(verdicts),
        "judge_usage": common.judge_usage(judge),
        "generation": common.generation_info(sampling, batch_size),
        "data": os.path.abspath(data_dir),
    }
    common.write_result(out_dir, result)
    return result


def _with_reasks(judge, reasks: int):
    """The judge with MM-Vet's own number of tries (5), sharing client, cache and limits."""
    other = judge.with_cache(judge.store)
    other.max_reasks = reasks
    return other
