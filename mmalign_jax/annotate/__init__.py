"""Annotation: score every candidate answer of every prompt on the five HelpSteer
attributes (0–4), with a vision LLM (Gemini, as the study, or an OpenAI-compatible endpoint)
following our versioned guide, or with the demo task's ground truth (`mmalign_jax.demo`) —
one `Annotator` interface, one resumable job.

    from mmalign_jax import annotate
    from mmalign_jax.remote import make_client
    ann = annotate.LLMAnnotator(make_client("gemini", "gemini-2.5-flash"), image_root="img/")
    report = annotate.annotate_records(records, ann, "ann.jsonl", concurrency=8)
    scored = annotate.apply_annotations(records, "ann.jsonl")     # -> data.pairs.make_pairs
    stats = annotate.agreement("gemini.jsonl", "humans.jsonl")

Command line: `python -m mmalign_jax.annotate --records IN.jsonl --image-root DIR --out
OUT.jsonl` (see `__main__.py`).
"""
from .agreement import agreement, format_agreement, pearson, spearman
from .annotator import Annotation, AnnotationFailed, Annotator, candidates_hash
from .llm_judge import DEFAULT_MODEL, InvalidAnswer, LLMAnnotator, parse_answer
from .prompts import GUIDE, GUIDE_VERSION, build_prompt, response_schema
from .results import AnnotationFileError, apply_annotations, iter_rows, latest_rows
from .run import Report, annotate_records, output_paths

GeminiAnnotator = LLMAnnotator   # its name before it said that it drives any remote LLM

__all__ = [
    "Annotation", "AnnotationFailed", "AnnotationFileError", "Annotator", "DEFAULT_MODEL",
    "GUIDE", "GUIDE_VERSION", "GeminiAnnotator", "LLMAnnotator", "InvalidAnswer", "Report",
    "agreement", "annotate_records", "apply_annotations", "build_prompt", "candidates_hash",
    "format_agreement", "iter_rows", "latest_rows", "output_paths", "parse_answer", "pearson",
    "response_schema", "spearman",
]
