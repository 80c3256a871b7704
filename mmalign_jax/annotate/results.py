"""Reading annotation files back: rows by candidate, and scores merged into records.

An annotation file (written by `run.annotate_records`) holds one row per candidate:
``{"key", "id", "candidate", "n_candidates", "text", "candidates_hash", "scores",
"reasoning", "guide_version", "model", "call", "usage", "attempts", "time"}``.

`apply_annotations(records, path)` is how later stages consume it (the pipeline, the pair
builder): each record comes back with ``responses[i].scores`` filled from the row whose
record id, candidate index *and* candidate-texts hash match — so scores can never attach
to candidates that were regenerated after annotation.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Iterator

from ..data.records import ATTRIBUTES, Record
from .annotator import candidates_hash

MISSING_POLICIES = ("error", "drop", "keep")


class AnnotationFileError(ValueError):
    """An annotation file cannot be used as asked; the message says what to do."""


def iter_rows(path: str) -> Iterator[dict]:
    """Rows of an annotation file, read-only. A last line without its newline is a write in
    progress (or torn by a crash) and is ignored — the file may belong to a running job, so
    unlike `JsonlStore` this never truncates anything. Any other bad line is an error."""
    if not os.path.exists(path):
        raise AnnotationFileError(f"{path}: no such annotation file — run "
                                  "`python -m mmalign_jax.annotate` first")
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for n, raw in enumerate(lines[:-1], 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as e:
            raise AnnotationFileError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict) or "id" not in row or "scores" not in row:
            raise AnnotationFileError(f"{path}:{n}: not an annotation row (needs id, candidate, "
                                      "scores)")
        yield row


def latest_rows(path: str, *, model: str | None = None,
                guide_version: str | None = None) -> list[dict]:
    """The latest row per key, optionally only one annotator's (model / guide version).
    A file holding several annotators' rows must be narrowed down: mixing them would
    compare or train on two different labellings at once."""
    rows: dict = {}
    for row in iter_rows(path):
        if model is not None and row.get("model") != model:
            continue
        if guide_version is not None and row.get("guide_version") != guide_version:
            continue
        key = row.get("key") or json.dumps([row["id"], row.get("candidates_hash"),
                                            row.get("candidate")])
        rows[key] = row
    combos = sorted({(r.get("model"), r.get("guide_version")) for r in rows.values()},
                    key=str)
    if len(combos) > 1:
        listed = ", ".join(f"model={m!r} guide_version={g!r}" for m, g in combos)
        raise AnnotationFileError(f"{path} holds annotations from several annotators ({listed}); "
                                  "choose one with model= / guide_version= (--model-filter / "
                                  "--guide-version on the command line)")
    return list(rows.values())


def apply_annotations(records: Iterable[Record], out_path: str, *, model: str | None = None,
                      guide_version: str | None = None, missing: str = "error") -> list[Record]:
    """Copies of `records` with ``responses[i].scores`` filled from the annotation file
    `out_path`, matched by (record id, candidate index, hash of all candidate texts).

    missing: what to do with a record some of whose candidates have no annotation —
    "error" (default: raise, listing the record ids), "drop" (leave the record out) or
    "keep" (keep it, unannotated candidates with their scores as they were).
    The inputs are not modified. The result feeds `data.pairs.make_pairs` directly.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    table = {(r["id"], r.get("candidates_hash"), r.get("candidate")): r["scores"]
             for r in latest_rows(out_path, model=model, guide_version=guide_version)}
    out, incomplete = [], []
    for rec in records:
        h = candidates_hash([r.text for r in rec.responses])
        responses, complete = [], True
        for i, resp in enumerate(rec.responses):
            scores = table.get((rec.id, h, i))
            if scores is None:
                complete = False
                responses.append(resp)
            else:
                responses.append(dataclasses.replace(
                    resp, scores={a: int(scores[a]) for a in ATTRIBUTES},
                    meta=dict(resp.meta)))
        if not complete:
            incomplete.append(rec.id)
            if missing == "drop":
                continue
        out.append(dataclasses.replace(rec, responses=responses, meta=dict(rec.meta)))
    if incomplete and missing == "error":
        shown = ", ".join(repr(i) for i in incomplete[:10])
        more = f" and {len(incomplete) - 10} more" if len(incomplete) > 10 else ""
        raise AnnotationFileError(
            f"{out_path}: {len(incomplete)} record(s) have candidates without annotations: "
            f"{shown}{more} — rerun `python -m mmalign_jax.annotate` on these records (it "
            "redoes only what is missing), or pass missing='drop'")
    return out
