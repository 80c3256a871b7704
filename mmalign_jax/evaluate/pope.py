"""POPE (object hallucination): yes/no questions "Is there a <object> in the image?" on COCO
images, with three ways of picking the absent objects (random, popular, adversarial);
accuracy, precision, recall, F1 and the ratio of "yes" answers per split, as the official
evaluation (RUCAIBox/POPE `evaluate.py`, reproduced in LLaVA's `llava/eval/eval_pope.py`).

Files (POPE's `output/coco/`; `--data` is a folder holding them and the images):

    coco_pope_random.json       one JSON object per line:
    coco_pope_popular.json      {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
    coco_pope_adversarial.json   "text": "Is there a snowboard in the image?", "label": "yes"}
    images/   (or val2014/)     the COCO val2014 images named in the files

Any `<dataset>_pope_<split>.json` is read (A-OKVQA and GQA variants too); the split is the
last part of the name (prefixed by the dataset when several datasets are present).

Answers: the question with LLaVA-1.5's suffix "Answer the question using a single word or
phrase." (`answer_suffix`), greedy. The same image and question in several splits is
answered once. Yes/no extraction (official): keep the text before the first '.', drop
commas, split on spaces; the answer is "no" when one of the words is `No`, `not` or `no`,
otherwise "yes". Positive class: "yes". Score: F1 averaged over the splits (how LLaVA-1.5
and the study report POPE).
"""
from __future__ import annotations

import glob
import os
import re
from typing import Optional, Sequence

from mmalign_jax.evaluate import common
from mmalign_jax.evaluate import prompts as P
from mmalign_jax.evaluate.answers import AnswerItem, default_sampling, generate_answers

NAME = "pope"
SPLIT_ORDER = ("random", "popular", "adversarial")
_FILE = re.compile(r"^(?P<dataset>.+)_pope_(?P<split>[A-Za-z0-9]+)\.json$")


def find_splits(data_dir: str) -> dict:
    """`{split name: file}` for every `<dataset>_pope_<split>.json` in `data_dir`."""
    found = []
    for path in sorted(glob.glob(os.path.join(data_dir, "*_pope_*.json"))):
        m = _FILE.match(os.path.basename(path))
        if m:
            found.append((m.group("dataset"), m.group("split"), path))
    if not found:
        raise common.BenchmarkDataError(
            f"{data_dir}: no POPE files; expected coco_pope_{{random,popular,adversarial}}.json "
            "(POPE's output/coco folder)")
    datasets = {d for d, _, _ in found}
    return {(s if len(datasets) == 1 else f"{d}_{s}"): p for d, s, p in found}


def _split_key(name: str):
    base = name.rsplit("_", 1)[-1]
    return (name[: -len(base)], SPLIT_ORDER.index(base) if base in SPLIT_ORDER else 99, name)


def image_dir(data_dir: str) -> str:
    for sub in ("images", "val2014"):
        if os.path.isdir(os.path.join(data_dir, sub)):
            return os.path.join(data_dir, sub)
    return data_dir


def load(data_dir: str, limit: Optional[int] = None, images: Optional[str] = None) -> dict:
    """`{split: [{'question_id', 'image', 'text', 'label'}]}` (first `limit` of each split)."""
    root = images or image_dir(data_dir)
    out = {}
    for split, path in sorted(find_splits(data_dir).items(), key=lambda kv: _split_key(kv[0])):
        rows = common.read_jsonl(path)
        for i, r in enumerate(rows, start=1):
            common.require(r, ("question_id", "image", "text", "label"), f"{path}, line {i}")
            if r["label"] not in ("yes", "no"):
                raise common.BenchmarkDataError(f"{path}, line {i}: label must be 'yes' or "
                                                f"'no'; got {r['label']!r}")
        rows = rows[:limit] if limit else rows
        out[split] = [dict(r, image=os.path.join(root, r["image"])) for r in rows]
    return out


def extract_yes_no(text: str) -> str:
    """The official rule: 'no' if the first sentence has the word No / not / no, else 'yes'."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """Confusion counts and accuracy / precision / recall / F1 / yes-ratio, 'yes' positive.
    (A ratio whose denominator is 0 is reported as 0.0; the official script would divide
    by zero.)"""
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    tp = sum(p == "yes" and l == "yes" for p, l in zip(predictions, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(predictions, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(predictions, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(predictions, labels))
    precision = common.safe_div(tp, tp + fp)
    recall = common.safe_div(tp, tp + fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "accuracy": common.safe_div(tp + tn, tp + tn + fp + fn),
            "precision": precision, "recall": recall,
            "f1": common.safe_div(2 * precision * recall, precision + recall),
            "yes_ratio": common.safe_div(sum(p == "yes" for p in predictions), len(predictions)),
            "n": len(predictions)}


def aggregate(per_split: dict) -> dict:
    """`per_split`: `{split: (predictions, labels)}` → metrics per split and their means."""
    splits = {s: metrics(p, l) for s, (p, l) in per_split.items()}
    return {"splits": splits,
            "mean_f1": common.mean([m["f1"] for m in splits.values()]),
            "mean_accuracy": common.mean([m["accuracy"] for m in splits.values()])}


def _answer_key(q: dict) -> str:
    return f"{os.path.basename(q['image'])}|{q['text']}"


def run(answerer, data_dir: str, out_dir: str, *, judge=None, sampling=None,
        batch_size: int = 8, limit: Optional[int] = None, answer_suffix: str = P.POPE_ANSWER_SUFFIX,
        images: Optional[str] = None, seed: int = 0, progress: bool = True) -> dict:
    """Answer and score POPE (no judge); writes `out_dir/result.json`."""
    sampling = sampling or default_sampling(max_new_tokens=16)
    os.makedirs(out_dir, exist_ok=True)
    data = load(data_dir, limit, images)
    unique = {}
    for rows in data.values():
        for q in rows:
            unique.setdefault(_answer_key(q), q)
    missing = sorted({q["image"] for q in unique.values() if not os.path.isfile(q["image"])})
    if missing:
        raise common.BenchmarkDataError(f"{len(missing)} POPE images missing, e.g. {missing[0]} "
                                        "(put COCO val2014 under images/ or pass images=)")
    answers = generate_answers(answerer, [
        AnswerItem(k, [{"role": "user", "content": "<image>\n" + q["text"] + answer_suffix}],
                   [q["image"]], [os.path.basename(q["image"])]) for k, q in unique.items()],
        os.path.join(out_dir, "answers.jsonl"), sampling=sampling, batch_size=batch_size,
        seed=seed, progress=progress)
    per_split, detail = {}, []
    for split, rows in data.items():
        preds = [extract_yes_no(answers[_answer_key(q)]) for q in rows]
        per_split[split] = (preds, [q["label"] for q in rows])
        detail += [{"split": split, "question_id": q["question_id"], "label": q["label"],
                    "prediction": p, "answer": answers[_answer_key(q)]} for q, p in zip(rows, preds)]
    common.write_jsonl(os.path.join(out_dir, "scores.jsonl"), detail)
    m = aggregate(per_split)
    result = {
        "benchmark": NAME, **common.model_info(answerer), "judge": None,
        "score": m["mean_f1"], "score_name": "F1, mean over splits",
        "metrics": m, "n_questions": sum(len(r) for r in data.values()),
        "n_answers": len(unique), "answer_suffix": answer_suffix,
        "generation": common.generation_info(sampling, batch_size),
        "data": os.path.abspath(data_dir),
    }
    common.write_result(out_dir, result)
    return result
