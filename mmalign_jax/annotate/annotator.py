"""The annotator interface: one prompt (record) in, five scores per candidate out.

Why a protocol: every later stage (pairs, rejection sampling, SteerLM, the pipeline) must be
the same code whether Gemini or the demo task's ground truth did the scoring; only the
object passed to `annotate_records` changes. Two real implementations:

- `LLMAnnotator` (`gemini.py`): a hosted vision model following our guide.
- `DemoAnnotator` (`mmalign_jax/demo/annotator.py`): the demo task's ground-truth scorer,
  offline and exact.

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

from ..data.records import Record


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
