"""The annotation job: every candidate of every record scored once, durably, whatever
happens to the process.

Why it is built this way: annotation is a paid batch job that runs for hours. So

- output is append-only (`store.JsonlStore`: one fsynced line per scored candidate), keyed
  by (record id, hash of the record's candidate texts, guide version, annotator name,
  candidate index): a job killed at any moment (kill -9 included) and rerun redoes nothing
  that finished and loses nothing; changing the guide, the model or the candidates makes
  new keys, never a silent mix;
- the rows of one prompt are written one after another; a crash between two of them leaves
  that prompt partly written, and the rerun annotates it again and appends only the
  missing candidates (each candidate still has exactly one row; `call` tells which request
  produced it);
- failures never stop the job: each is appended to `<out>.failures.jsonl` with its reason
  and the model's raw text, and retried on the next run; only rejected credentials stop it;
- the report (`<out>.report.json`, and a summary on stderr) says what was done, what
  failed and why, which records were unusable, the tokens used and the estimated cost;
- one job per output file: a second job on the same file is refused (`<out>.lock`).

Paths: for ``--out ann.jsonl`` the job also writes ``ann.failures.jsonl``,
``ann.report.json``, ``ann.lock`` and, for unusable input rows, ``ann.rejects.jsonl``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..data.records import ATTRIBUTES, Record
from ..remote import PRICES_PER_MTOK, AuthError, estimate_cost, run_parallel
from ..remote.jobs import JobAborted
from ..store import JobLocked, JsonlStore, exclusive_lock  # noqa: F401 (JobLocked re-exported)
from .annotator import Annotation, AnnotationFailed, Annotator, candidates_hash

log = logging.getLogger(__name__)

RAW_IN_REPORT = 400   # characters of a failed answer quoted in the report (the file has all)


def output_paths(out_path: str) -> dict[str, str]:
    """Where the job writes besides `out_path` (next to it, same stem)."""
    stem = out_path[:-len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    return {"out": out_path, "failures": f"{stem}.failures.jsonl",
            "report": f"{stem}.report.json", "rejects": f"{stem}.rejects.jsonl",
            "lock": f"{stem}.lock"}


def row_key(record_id: str, chash: str, guide_version: str, model: str, index: int) -> str:
    return json.dumps([record_id, chash, guide_version, model, index], ensure_ascii=False)


def prompt_key(record_id: str, chash: str, guide_version: str, model: str) -> str:
    return json.dumps([record_id, chash, guide_version, model], ensure_ascii=False)


@dataclass
class Report:
    """What a run did. Counts are candidates unless named prompts."""
    annotator: str
    guide_version: str
    out: str
    prompts: int = 0
    candidates: int = 0
    scored: int = 0                    # candidates with a row now (before + this run)
    done_before: int = 0               # candidates already scored when the run started
    annotated_now: int = 0             # rows written by this run
    prompts_attempted: int = 0
    failed: list = field(default_factory=list)     # [{"id", "reason", "raw"}]
    not_started: list = field(default_factory=list)  # ids left when the job stopped
    rejected: list = field(default_factory=list)   # [{"id", "line", "reason"}] unusable input
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    price_per_mtok: list | None = None   # [input, output] USD per 1M tokens, when known
    wall_s: float = 0.0
    aborted: str | None = None

    @property
    def complete(self) -> bool:
        """Every candidate of every input record is scored, and no input row was unusable."""
        return self.scored == self.candidates and not self.rejected and not self.failed \
            and not self.not_started

    def to_json(self) -> dict:
        return {**asdict(self), "complete": self.complete}

    def summary(self) -> str:
        if self.cost_usd is None:
            cost = "unknown (no price for this model: pass --price IN,OUT)"
        elif self.price_per_mtok:
            cost = (f"${self.cost_usd:.4f} (at ${self.price_per_mtok[0]}/"
                    f"${self.price_per_mtok[1]} per 1M input/output tokens)")
        else:
            cost = f"${self.cost_usd:.4f}"
        lines = [
            f"annotation with {self.annotator} (guide {self.guide_version}) -> {self.out}",
            f"  candidates scored: {self.scored}/{self.candidates} of {self.prompts} prompts "
            f"({self.done_before} done before, {self.annotated_now} now, "
            f"{self.prompts_attempted} prompts sent)",
            f"  tokens this run: {self.input_tokens} in, {self.output_tokens} out; "
            f"estimated cost {cost}",
            f"  time: {self.wall_s:.1f}s"]
        if self.aborted:
            lines.append(f"  STOPPED: {self.aborted}")
        if self.failed:
            lines.append(f"  failed prompts ({len(self.failed)}; raw answers in the failures "
                         "file; rerun to retry them):")
            lines += [f"    {f['id']}: {f['reason']}" for f in self.failed[:20]]
            if len(self.failed) > 20:
                lines.append(f"    … and {len(self.failed) - 20} more (see the report file)")
        if self.not_started:
            lines.append(f"  not started: {len(self.not_started)} prompts")
        if self.rejected:
            lines.append(f"  unusable input records ({len(self.rejected)}):")
            lines += [f"    {r['id'] or '?'} (line {r['line']}): {r['reason']}"
                      for r in self.rejected[:20]]
            if len(self.rejected) > 20:
                lines.append(f"    … and {len(self.rejected) - 20} more (see the report file)")
        lines.append("  complete: every candidate is scored" if self.complete else
                     "  INCOMPLETE: rerun the same command to retry what is missing")
        return "\n".join(lines)


def write_report(report: Report, path: str) -> None:
    """Atomically (temp file + rename): a crash never leaves half a report."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def annotate_records(records: Sequence[Record], annotator: Annotator, out_path: str, *,
                     concurrency: int = 8, progress: bool = True,
                     rejected: Sequence[tuple] = (),
                     prices: dict[str, tuple[float, float]] | None = None) -> Report:
    """Annotate every candidate of `records` not yet in `out_path`; return the report (also
    written to `<out>.report.json`). `rejected`: (line, id, reason) of input rows that could
    not be read (`records.load_records(strict=False).rejected`), listed in the report.
    `prices`: {annotator name: (USD per 1M input, per 1M output tokens)} to override
    `remote.client.PRICES_PER_MTOK`."""
    t0 = time.time()
    paths = output_paths(out_path)
    lock = exclusive_lock(paths["lock"], "annotation job")
    try:
        return _annotate(records, annotator, out_path, paths, t0, concurrency, progress,
                         rejected, prices)
    finally:
        lock.close()


def _annotate(records, annotator, out_path, paths, t0, concurrency, progress, rejected,
              prices) -> Report:
    """annotate_records, once the output is locked."""
    store = JsonlStore(out_path, key="key")
    failures = JsonlStore(paths["failures"], key="key")
    model, guide = annotator.name, annotator.guide_version
    report = Report(annotator=model, guide_version=guide, out=out_path,
                    rejected=[{"line": ln, "id": rid, "reason": why} for ln, rid, why in rejected])
    todo = []
    for rec in records:
        texts = [r.text for r in rec.responses]
        if not texts:
            report.rejected.append({"line": None, "id": rec.id,
                                    "reason": "no candidate responses to annotate"})
            continue
        h = candidates_hash(texts)
        missing = [i for i in range(len(texts))
                   if not store.has(row_key(rec.id, h, guide, model, i))]
        report.prompts += 1
        report.candidates += len(texts)
        report.done_before += len(texts) - len(missing)
        if missing:
            todo.append((rec, h, missing))

    def work(item):
        rec, h, missing = item
        try:
            ann = annotator.annotate(rec)
            if len(ann.scores) != len(rec.responses):
                raise AnnotationFailed(f"annotator returned {len(ann.scores)} score sets for "
                                       f"{len(rec.responses)} candidates", raw=ann.raw,
                                       input_tokens=ann.input_tokens,
                                       output_tokens=ann.output_tokens)
        except BaseException as e:
            _record_failure(failures, rec, h, model, guide, e)
            raise
        call = uuid.uuid4().hex[:12]
        for i in missing:
            store.append(_row(rec, h, i, ann, model, guide, call))
        return ann, len(missing)

    outcomes = run_parallel(todo, work, concurrency=concurrency, desc="annotating",
                            progress=progress, abort_on=(AuthError,))
    report.prompts_attempted = sum(1 for o in outcomes if not isinstance(o.error, JobAborted))
    for o in outcomes:
        rec = o.item[0]
        if o.ok:
            ann, n_new = o.value
            report.annotated_now += n_new
            report.input_tokens += ann.input_tokens
            report.output_tokens += ann.output_tokens
        elif isinstance(o.error, JobAborted):
            report.not_started.append(rec.id)
        else:
            e = o.error
            report.input_tokens += getattr(e, "input_tokens", 0)
            report.output_tokens += getattr(e, "output_tokens", 0)
            raw = getattr(e, "raw", None)
            report.failed.append({"id": rec.id, "reason": _reason(e),
                                  "raw": raw[:RAW_IN_REPORT] if raw else None})
            if isinstance(e, AuthError) and report.aborted is None:
                report.aborted = f"authentication failed: {e}"
    report.scored = report.done_before + report.annotated_now
    table = PRICES_PER_MTOK if prices is None else {**PRICES_PER_MTOK, **prices}
    report.cost_usd = estimate_cost(model, report.input_tokens, report.output_tokens, table)
    if model in table:
        report.price_per_mtok = list(table[model])
    elif report.input_tokens == report.output_tokens == 0:
        report.cost_usd = 0.0   # nothing was sent (e.g. the offline demo scorer)
    report.wall_s = round(time.time() - t0, 3)
    write_report(report, paths["report"])
    return report


def _reason(e: BaseException) -> str:
    if isinstance(e, AnnotationFailed):
        return e.reason
    return f"{type(e).__name__}: {e}"


def _record_failure(failures: JsonlStore, rec: Record, h: str, model: str, guide: str,
                    e: BaseException) -> None:
    failures.append({
        "key": prompt_key(rec.id, h, guide, model), "id": rec.id, "candidates_hash": h,
        "n_candidates": len(rec.responses), "model": model, "guide_version": guide,
        "reason": _reason(e), "raw": getattr(e, "raw", None),
        "raw_all": getattr(e, "raws", []),
        "attempts": getattr(e, "attempts", None),
        "usage": {"input_tokens": getattr(e, "input_tokens", 0),
                  "output_tokens": getattr(e, "output_tokens", 0)},
        "time": _now()})


def _row(rec: Record, h: str, i: int, ann: Annotation, model: str, guide: str,
         call: str) -> dict:
    return {"key": row_key(rec.id, h, guide, model, i), "id": rec.id, "candidate": i,
            "n_candidates": len(rec.responses), "text": rec.responses[i].text,
            "candidates_hash": h,
            "scores": {a: int(ann.scores[i][a]) for a in ATTRIBUTES},
            "reasoning": ann.reasoning, "guide_version": guide, "model": model,
            "call": call, "attempts": ann.attempts,
            "usage": {"input_tokens": ann.input_tokens, "output_tokens": ann.output_tokens},
            "time": _now()}


def print_summary(report: Report, stream=None) -> None:
    print(report.summary(), file=stream or sys.stderr, flush=True)
