"""The annotator interface: one prompt (record) in, five scores per candidate out.

Why a protocol: every later stage (pairs, rejection sampling, SteerLM, the pipeline) must be
the same code whether Gemini or the demo task's ground truth did the scoring; only the
object passed to `annotate_records` changes. Two real implementations:

- `GeminiAnnotator` (`gemini.py`): a hosted vision model following our guide.
- `DemoAnnotator` (here): the demo task's ground-truth scorer, offline and exact.

An annotator has a `name` (the model, e.g. "gemini:gemini-2.5-flash") and a
`guide_version`; both go into every output row and into the key that decides what is done.
`annotate(record)` returns an `Annotation` or raises `AnnotationFailed` (the job records the
reason and raw text and goes on); any other exception is a bug or an infrastructure failure
and is recorded the same way by the job, with its type.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from ..data.records import ATTRIBUTES, Record


@dataclass
class Annotation:
    """Scores for every candidate of one record, in response order."""
    scores: list[dict[str, int]]
    reasoning: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    attempts: int = 1          # requests that produced answers (1 + re-asks)
    raw: str | None = None     # the model's final text, for audits


class AnnotationFailed(Exception):
    """A record could not be annotated. `reason` says why; `raw` is the model's last text
    (if any) and `raws` every text it wrote for this record; tokens are what the failed
    attempts cost."""

    def __init__(self, reason: str, *, raw: str | None = None, raws: list | None = None,
                 input_tokens: int = 0, output_tokens: int = 0, attempts: int = 0):
        super().__init__(reason)
        self.reason, self.raw = reason, raw
        self.raws = list(raws) if raws is not None else ([raw] if raw is not None else [])
        self.input_tokens, self.output_tokens, self.attempts = input_tokens, output_tokens, attempts


@runtime_checkable
class Annotator(Protocol):
    name: str
    guide_version: str

    def annotate(self, record: Record) -> Annotation: ...


def candidates_hash(texts: Sequence[str]) -> str:
    """A short, stable fingerprint of a record's candidate texts, in order: part of the
    output key, so regenerated candidates are annotated afresh, never matched to old
    scores."""
    blob = json.dumps(list(texts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class DemoAnnotator:
    """The demo task's ground-truth scorer (`data.demo.scorer.DemoScorer`) behind the
    Annotator interface. Needs demo records (`meta.question`, and `meta.scene` for visual
    questions); other records fail with a reason naming the record."""

    guide_version = "demo-ground-truth"

    def __init__(self):
        from ..data.demo.scorer import DemoScorer
        self._scorer = DemoScorer()
        self.name = self._scorer.name

    def annotate(self, record: Record) -> Annotation:
        texts = [r.text for r in record.responses]
        try:
            scores = self._scorer.annotate(record, texts)
        except (ValueError, KeyError, TypeError) as e:
            raise AnnotationFailed(f"demo scorer cannot score record {record.id!r}: {e}") from None
        return Annotation([{a: int(s[a]) for a in ATTRIBUTES} for s in scores], attempts=0)
