"""MMBench-style multiple choice: accuracy with answer extraction, and circular evaluation
(a question counts as right only if it is answered right under every rotation of its
options — MMBench's CircularEval).

File: MMBench's TSV (e.g. `mmbench_dev_20230712.tsv`; `--data` is the file or a folder
holding one `.tsv`), columns `index, question, hint, A, B, C, D[, E…], answer, category,
image` (+ others, ignored); `image` is the base64-encoded image (or, in VLMEvalKit's
TSVs, the `index` of the row holding it). Options end at the first empty one.

Prompt (LLaVA-1.5, `model_vqa_mmbench.py --single-pred-prompt`): `<image>`, the hint and a
newline when there is one, the question, one line `X. option` per option, then "Answer
with the option's letter from the given choices directly."

Circular evaluation, as LLaVA's `--all-rounds`: round k shows the options rotated left by
k (the letters stay A, B, C…, the texts move), so the right letter moves with its text;
a question with n options is asked n times. A TSV that already holds the rotated copies
(VLMEvalKit's circular files: copies have `index` ≥ 1,000,000 and share `index % 1e6`) is
used as it is. Scores: `circular_accuracy` (all rounds right) and `accuracy` (round 0 only),
overall and per category; the headline is circular accuracy × 100.

Answer extraction (our heuristic, in the spirit of MMBench's matching stage; MMBench falls
back to a ChatGPT extractor, which we do not use): the option letter at the start of the
answer ("B", "B.", "(B)", "B) …"); else the only option letter standing alone as a word;
else the only option whose text appears in the answer; otherwise none — a wrong answer,
counted in `unextracted`.
"""
from __future__ import annotations

import base64
import csv
import glob
import os
import re
import string
import sys
from typing import Optional, Sequence

from mmalign_jax.evaluate import common
from mmalign_jax.evaluate import prompts as P
from mmalign_jax.evaluate.answers import AnswerItem, default_sampling, generate_answers

NAME = "mmbench"
CIRCULAR_OFFSET = 1_000_000
LETTERS = string.ascii_uppercase


def _is_none(v) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "nan", "none"))


def find_tsv(data: str) -> str:
    if os.path.isfile(data):
        return data
    files = sorted(glob.glob(os.path.join(data, "*.tsv")))
    if len(files) != 1:
        raise common.BenchmarkDataError(f"{data}: expected one MMBench .tsv file there; found "
                                        f"{[os.path.basename(f) for f in files] or 'none'}")
    return files[0]


def load(data: str, limit: Optional[int] = None) -> list:
    """`[{'index', 'question', 'hint', 'options': [...], 'answer': 'B', 'category', 'image':
    bytes}]`, one per row of the TSV (the first `limit` questions, circular copies kept)."""
    path = find_tsv(data)
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise common.BenchmarkDataError(f"{path}: empty")
    common.require(rows[0], ("index", "question", "A", "B", "image"), path)
    if "answer" not in rows[0]:
        raise common.BenchmarkDataError(f"{path}: no 'answer' column (a test split): its "
                                        "answers are scored only by the MMBench server")
    by_index = {r["index"]: r for r in rows}
    out = []
    for i, r in enumerate(rows, start=2):
        options = []
        for letter in LETTERS:
            if letter not in r or _is_none(r[letter]):
                break
            options.append(r[letter].strip())
        answer = (r.get("answer") or "").strip()
        if answer not in LETTERS[:len(options)]:
            raise common.BenchmarkDataError(f"{path}, line {i}: answer {answer!r} is not one of "
                                            f"the options {list(LETTERS[:len(options)])}")
        img = r["image"]
        if len(img) < 64 and img in by_index:  # a reference to the row holding the image
            img = by_index[img]["image"]
        try:
            img_bytes = base64.b64decode(img)
        except (ValueError, TypeError):
            raise common.BenchmarkDataError(f"{path}, line {i}: image is not base64") from None
        out.append({"index": int(float(r["index"])), "question": r["question"],
                    "hint": None if _is_none(r.get("hint")) else r["hint"],
                    "options": options, "answer": answer,
                    "category": r.get("category") or "", "image": img_bytes})
    if limit:
        keep = sorted({q["index"] % CIRCULAR_OFFSET for q in out})[:limit]
        keep = set(keep)
        out = [q for q in out if q["index"] % CIRCULAR_OFFSET in keep]
    return out


def build_prompt(question: str, options: Sequence[str], hint: Optional[str] = None,
                 suffix: str = P.MMBENCH_ANSWER_SUFFIX) -> str:
    text = (hint + "\n" + question) if hint else question
    for letter, option in zip(LETTERS, options):
        text += "\n" + letter + ". " + option
    return "<image>\n" + text + suffix


def rounds(item: dict, circular: bool = True) -> list:
    """`[(round, options, answer letter)]`: rotation k moves the options left by k."""
    n = len(item["options"])
    gold = LETTERS.index(item["answer"])
    ks = range(n) if circular else range(1)
    return [(k, item["options"][k:] + item["options"][:k], LETTERS[(gold - k) % n]) for k in ks]


_LEAD = re.compile(r"^\s*[\(\[]?\s*([A-Z])\s*(?:[\)\]\.:,]|$)")


def extract_choice(answer: str, options: Sequence[str]) -> Optional[str]:
    """The option letter the answer picks, or None (see the module docstring)."""
    letters = LETTERS[:len(options)]
    text = answer.strip()
    m = _LEAD.match(text)
    if m and m.group(1) in letters:
        return m.group(1)
    words = re.sub(r"[\.\,\:\;\!\?\(\)\[\]\{\}\*\#\"']", " ", text).split()
    # An opening "A" followed by a lowercase word is the article ("A dog is …"), not option A.
    found = {w for i, w in enumerate(words) if w in letters and not (
        w == "A" and i == 0 and len(words) > 1 and words[1][:1].islower())}
    if len(found) == 1:
        return found.pop()
    low = text.lower()
    hits = [letters[i] for i, o in enumerate(options) if o and o.lower() in low]
    if len(hits) == 1:
        return hits[0]
    return None


def aggregate(records: Sequence[dict]) -> dict:
    """`records`: `{'group', 'round', 'category', 'correct', 'extracted'}` per asked
    prompt. A group (question) is circular-correct when all its rounds are correct."""
    groups = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    cats = {}
    for g, rs in groups.items():
        cats.setdefault(rs[0]["category"], []).append(g)

    def circ(gs):
        return common.safe_div(sum(all(r["correct"] for r in groups[g]) for g in gs), len(gs))

    def vanilla(gs):
        return common.safe_div(sum(min(groups[g], key=lambda r: r["round"])["correct"]
                                   for g in gs), len(gs))

    return {"circular_accuracy": circ(list(groups)), "accuracy": vanilla(list(groups)),
            "categories": {c: {"circular_accuracy": circ(gs), "accuracy": vanilla(gs), "n": len(gs)}
                           for c, gs in sorted(cats.items())},
            "n_questions": len(groups), "n_prompts": len(records),
            "unextracted": sum(not r["extracted"] for r in records)}


def run(answerer, data: str, out_dir: str, *, judge=None, sampling=None, batch_size: int = 8,
        limit: Optional[int] = None, circular: bool = True,
        answer_suffix: str = P.MMBENCH_ANSWER_SUFFIX, seed: int = 0,
        progress: bool = True) -> dict:
    """Answer and score a multiple-choice TSV (no judge); writes `out_dir/result.json`."""
    import hashlib

    sampling = sampling or default_sampling(max_new_tokens=128)
    os.makedirs(out_dir, exist_ok=True)
    items = load(data, limit)
    pre_rotated = any(q["index"] >= CIRCULAR_OFFSET for q in items)
    prompts = []  # (key, group, round, category, options, gold, item)
    for q in items:
        if pre_rotated:
            plan = [(q["index"] // CIRCULAR_OFFSET, q["options"], q["answer"])]
        else:
            plan = rounds(q, circular)
        for k, options, gold in plan:
            prompts.append((f"{q['index'] % CIRCULAR_OFFSET}/r{k}", q["index"] % CIRCULAR_OFFSET,
                            k, q["category"], options, gold, q))
    answers = generate_answers(answerer, [
        AnswerItem(key, [{"role": "user", "content": build_prompt(q["question"], options, q["hint"],
                                                                  answer_suffix)}],
                   [q["image"]], ["sha256:" + hashlib.sha256(q["image"]).hexdigest()[:16]])
        for key, _, _, _, options, _, q in prompts],
        os.path.join(out_dir, "answers.jsonl"), sampling=sampling, batch_size=batch_size,
        seed=seed, progress=progress)
    records = []
    for key, group, k, cat, options, gold, q in prompts:
        choice = extract_choice(answers[key], options)
        records.append({"key": key, "group": group, "round": k, "category": cat,
                        "gold": gold, "choice": choice, "extracted": choice is not None,
                        "correct": choice == gold, "answer": answers[key]})
    common.write_jsonl(os.path.join(out_dir, "scores.jsonl"), records)
    m = aggregate(records)
    m["circular"] = bool(circular or pre_rotated)
    headline = m["circular_accuracy"] if m["circular"] else m["accuracy"]
    result = {
        "benchmark": NAME, **common.model_info(answerer), "judge": None,
        "score": 100.0 * headline,
        "score_name": "circular accuracy (%)" if m["circular"] else "accuracy (%)",
        "metrics": m, "n_questions": m["n_questions"], "answer_suffix": answer_suffix,
        "generation": common.generation_info(sampling, batch_size),
        "data": os.path.abspath(data),
    }
    common.write_result(out_dir, result)
    return result
