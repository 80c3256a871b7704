"""How good are a model's own answers on the demo task? Greedy answers to held-out prompts,
graded by the ground-truth scorer: accuracy, hallucination rate, incoherence, length.

The DPO metric `eval/rewards/accuracy` says whether the policy ranks the *given* candidates
better than the reference does; this says whether the model *answers* better, which is what
the study measures with its benchmarks (and what rejection sampling and SteerLM, which have
no reward, can be compared on).

    summary, rows = evaluate_model(model, variables, tokenizer, records, image_size=64)
    summary["accuracy"], summary["by_kind"]["count"]["accuracy"]
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from . import scorer as scorer_lib
from . import text_tasks
from .answers import words_of
from .generate import record_image
from .shapes import Scene

METRICS = ("accuracy", "strict_accuracy", "hallucination_rate", "incoherent_rate", "words")


def prompt_conversation(record: Mapping[str, Any]) -> list:
    """The conversation up to the turn to answer (an SFT record's answer is dropped)."""
    conv = list(record["conversation"])
    if conv and conv[-1]["role"] == "assistant":
        conv = conv[:-1]
    return conv


def grade(record: Mapping[str, Any], answer: str) -> Dict[str, Any]:
    """One answer against the record's ground truth (`meta.scene` / `meta.question`)."""
    meta = record.get("meta") or {}
    question = meta.get("question")
    if question is None:
        raise ValueError(f"record {record.get('id')!r} has no meta.question: not a demo record")
    if meta.get("task") == "text" or meta.get("scene") is None:
        e = text_tasks.explain_text_answer(question, answer)
        task = "text"
    else:
        e = scorer_lib.explain_answer(Scene.from_json(meta["scene"]), question, answer)
        task = "vqa"
    right = e["key"] == "right"
    return {"id": record.get("id"), "task": task, "kind": question.get("kind"),
            "answer": answer, "correct": right,
            "strict_correct": right and not e["false_claims"],
            "hallucinated": bool(e["false_claims"]),
            "incoherent": e["scores"]["coherence"] < 4,
            "words": len(words_of(answer)),
            "scores": e["scores"]}


def _summary(rows: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    n = len(rows)
    if not n:
        return {"n": 0}
    mean = lambda k: sum(float(r[k]) for r in rows) / n  # noqa: E731
    return {"n": n, "accuracy": mean("correct"), "strict_accuracy": mean("strict_correct"),
            "hallucination_rate": mean("hallucinated"), "incoherent_rate": mean("incoherent"),
            "words": mean("words"),
            "words_median": float(statistics.median(r["words"] for r in rows))}


def summarize(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Overall means plus the same per question kind (`by_kind`)."""
    out: Dict[str, Any] = _summary(rows)
    kinds = sorted({r["kind"] for r in rows})
    out["by_kind"] = {k: _summary([r for r in rows if r["kind"] == k]) for k in kinds}
    return out


def answer(generator, records: Sequence[Mapping[str, Any]], *, image_size: int,
           max_new_tokens: int = 64, seed: int = 0, sampling=None) -> List[str]:
    """Greedy (or `sampling`) answers of a `generate.Generator` to the records' prompts."""
    from mmalign_jax.generate import SamplingConfig

    convs = [prompt_conversation(r) for r in records]
    images = []
    for r in records:
        img = record_image(dict(r), size=image_size)
        images.append([img] if img is not None else [])
    sampling = sampling or SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    outs = generator.generate(convs, images, sampling, seed=seed)
    return [o[0] for o in outs]


def evaluate_model(model, variables, tokenizer, records: Sequence[Mapping[str, Any]], *,
                   image_size: Optional[int] = None, template: str = "vicuna_v1",
                   batch_size: int = 32, max_new_tokens: int = 64,
                   condition: Optional[Callable[[list], list]] = None) -> tuple:
    """(summary, graded rows) for greedy answers of `model` to `records`.

    `condition` rewrites each prompt conversation before it is asked (SteerLM's target
    attributes, `generate.candidates.condition`); grading always uses the plain question."""
    from mmalign_jax.generate import Generator

    asked = records
    if condition is not None:
        asked = [{**r, "conversation": condition(prompt_conversation(r))} for r in records]
    gen = Generator(model, variables, tokenizer, template, batch_size=batch_size)
    texts = answer(gen, asked, image_size=image_size or model.cfg.vision.image_size,
                   max_new_tokens=max_new_tokens)
    rows = [grade(r, t) for r, t in zip(records, texts)]
    return summarize(rows), rows
