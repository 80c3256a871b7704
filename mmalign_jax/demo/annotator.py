"""The demo task's ground truth behind the library's `Annotator` interface.

`DemoAnnotator` implements `mmalign_jax.annotate.annotator.Annotator` with the demo scorer
(`scorer.DemoScorer`), offline and exact: pass it to `annotate.annotate_records` like any
other annotator. The library does not import this module; `python -m mmalign_jax.annotate
--annotator demo` and the pipeline's `annotate.annotator=demo` load it when asked.
"""
from __future__ import annotations

from mmalign_jax.annotate.annotator import Annotation, AnnotationFailed
from mmalign_jax.data.records import ATTRIBUTES, Record

from .scorer import DemoScorer


class DemoAnnotator:
    """The demo task's ground-truth scorer (`scorer.DemoScorer`) behind the Annotator
    interface. Needs demo records (`meta.question`, and `meta.scene` for visual
    questions); other records fail with a reason naming the record."""

    guide_version = "demo-ground-truth"

    def __init__(self):
        self._scorer = DemoScorer()
        self.name = self._scorer.name

    def annotate(self, record: Record) -> Annotation:
        texts = [r.text for r in record.responses]
        try:
            scores = self._scorer.annotate(record, texts)
        except (ValueError, KeyError, TypeError) as e:
            raise AnnotationFailed(f"demo scorer cannot score record {record.id!r}: {e}") from None
        return Annotation([{a: int(s[a]) for a in ATTRIBUTES} for s in scores], attempts=0)
