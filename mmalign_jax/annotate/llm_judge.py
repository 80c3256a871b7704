"""The LLM annotator: a vision LLM behind any `remote.Client` (Gemini, as the study used, or
an OpenAI-compatible endpoint) gets our guide, the record's images, conversation and all
candidates in one request; structured JSON back; every answer validated before it is trusted.

Why validate although the request carries a schema: schemas are honoured on a best-effort
basis (truncated output at the token limit, a proxy that drops the schema, a model that
rates candidate 5 of 4), and a wrong score silently becomes a wrong DPO pair. An answer that
is malformed JSON, misses a candidate, rates one twice, or gives a score that is not an
integer in 0–4 is re-asked — with a note saying what was wrong — up to `max_reasks` times,
then recorded as a failure with the raw text. Transient API errors are retried inside each
ask (`remote.jobs.retry_call`), each HTTP attempt paced by the shared rate limiter.
"""
from __future__ import annotations

import json
import os
import random
from typing import Sequence

from ..data.records import ATTRIBUTES, MAX_SCORE, MIN_SCORE, Record
from ..remote import (AuthError, Client, Image, PermanentError, RateLimiter, TransientError,
                      retry_call)
from .annotator import Annotation, AnnotationFailed
from .prompts import GUIDE, GUIDE_VERSION, build_prompt, reask_note, response_schema

DEFAULT_MODEL = "gemini-2.5-flash"


class InvalidAnswer(ValueError):
    """The model's text cannot be used; the message says why (and is sent back to it)."""


def _strip_fences(text: str) -> str:
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip()


def _score(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidAnswer(f"{where} = {json.dumps(value)} is not an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidAnswer(f"{where} = {value} is not an integer")
        value = int(value)
    if not MIN_SCORE <= value <= MAX_SCORE:
        raise InvalidAnswer(f"{where} = {value} is outside {MIN_SCORE}–{MAX_SCORE}")
    return value


def parse_answer(text: str, n_candidates: int) -> tuple[str, list[dict[str, int]]]:
    """(reasoning, one score dict per candidate in order) from the model's text, or
    InvalidAnswer saying exactly what is wrong."""
    s = _strip_fences(text or "")
    if not s:
        raise InvalidAnswer("the reply is empty")
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise InvalidAnswer(f"the reply is not valid JSON ({e.msg}; character {e.pos})") from None
    if not isinstance(obj, dict):
        raise InvalidAnswer("the reply is not a JSON object")
    reasoning = obj.get("reasoning")
    if not isinstance(reasoning, str):
        raise InvalidAnswer('"reasoning" is missing or not a string')
    ratings = obj.get("ratings")
    if not isinstance(ratings, list):
        raise InvalidAnswer('"ratings" is missing or not a list')
    by_number: dict[int, dict[str, int]] = {}
    for j, r in enumerate(ratings):
        if not isinstance(r, dict):
            raise InvalidAnswer(f"ratings[{j}] is not an object")
        c = r.get("candidate")
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= n_candidates:
            raise InvalidAnswer(f"ratings[{j}].candidate = {json.dumps(c)} is not a candidate "
                                f"number 1..{n_candidates}")
        if c in by_number:
            raise InvalidAnswer(f"candidate {c} is rated twice")
        missing = [a for a in ATTRIBUTES if a not in r]
        if missing:
            raise InvalidAnswer(f"the rating of candidate {c} lacks {', '.join(missing)}")
        by_number[c] = {a: _score(r[a], f"candidate {c} {a}") for a in ATTRIBUTES}
    absent = [c for c in range(1, n_candidates + 1) if c not in by_number]
    if absent:
        raise InvalidAnswer(f"no rating for candidate{'s' if len(absent) > 1 else ''} "
                            f"{', '.join(map(str, absent))}")
    return reasoning, [by_number[c] for c in range(1, n_candidates + 1)]


class LLMAnnotator:
    """Annotate records with a hosted model following `prompts.GUIDE`.

    client: a `remote.Client` (`remote.make_client("gemini", DEFAULT_MODEL)`).
    image_root: folder the records' image paths are relative to.
    max_reasks: extra asks after an unusable answer. max_retries/base_delay/max_delay:
    `retry_call` on transient errors, per ask. rate_limiter: shared by all threads.
    """

    guide_version = GUIDE_VERSION

    def __init__(self, client: Client, *, image_root: str | None, max_reasks: int = 2,
                 max_retries: int = 6, base_delay: float = 2.0, max_delay: float = 60.0,
                 rate_limiter: RateLimiter | None = None, temperature: float = 0.0,
                 max_output_tokens: int = 8192, seed: int | None = None):
        self.client = client
        self.name = client.name
        self.image_root = image_root
        self.max_reasks, self.max_retries = int(max_reasks), int(max_retries)
        self.base_delay, self.max_delay = float(base_delay), float(max_delay)
        self.rate_limiter = rate_limiter or RateLimiter(None)
        self.temperature, self.max_output_tokens = temperature, int(max_output_tokens)
        self._rng = random.Random(seed)

    def request(self, record: Record) -> tuple[str, list]:
        """(system instruction, parts): each image labelled `[image k]`, then the text."""
        parts: list = []
        for k, rel in enumerate(record.images, 1):
            path = os.path.join(self.image_root or "", rel)
            try:
                img = Image.from_file(path)
            except (OSError, ValueError) as e:
                raise AnnotationFailed(f"record {record.id!r}: images[{k - 1}]: cannot read "
                                       f"{path} ({e}) — fix the path or --image-root") from None
            parts += [f"[image {k}]", img]
        parts.append(build_prompt(record))
        return GUIDE, parts

    def _ask(self, system: str, parts: Sequence, n_candidates: int):
        """One ask: transient errors retried with backoff, each try rate limited."""
        schema = response_schema(n_candidates)

        def once():
            self.rate_limiter.acquire()
            return self.client.complete(list(parts), system=system, json_schema=schema,
                                        temperature=self.temperature,
                                        max_output_tokens=self.max_output_tokens)
        return retry_call(once, max_retries=self.max_retries, base_delay=self.base_delay,
                          max_delay=self.max_delay, rng=self._rng)

    def annotate(self, record: Record) -> Annotation:
        n = len(record.responses)
        if n == 0:
            raise AnnotationFailed(f"record {record.id!r} has no candidate responses")
        system, parts = self.request(record)
        tokens_in = tokens_out = 0
        problems: list[str] = []
        raws: list[str] = []

        def failed(reason: str) -> AnnotationFailed:
            return AnnotationFailed(reason, raw=raws[-1] if raws else None, raws=raws,
                                    input_tokens=tokens_in, output_tokens=tokens_out,
                                    attempts=len(raws))

        for attempt in range(1, self.max_reasks + 2):
            ask = parts if not problems else [*parts, reask_note(problems[-1], n)]
            try:
                reply = self._ask(system, ask, n)
            except AuthError:
                raise   # the job stops: every other record would fail the same way
            except TransientError as e:
                raise failed(f"gave up after {getattr(e, 'attempts', '?')} tries: {e}") from None
            except PermanentError as e:
                raise failed(f"request refused: {e}") from None
            tokens_in += reply.input_tokens
            tokens_out += reply.output_tokens
            raws.append(reply.text)
            try:
                reasoning, scores = parse_answer(reply.text, n)
            except InvalidAnswer as e:
                problem = str(e)
                if reply.finish_reason and reply.finish_reason.upper() not in ("STOP", "END_TURN"):
                    problem += f" (generation stopped: {reply.finish_reason})"
                problems.append(problem)
                continue
            return Annotation(scores, reasoning, tokens_in, tokens_out, attempt, reply.text)
        raise failed(f"no usable answer in {len(problems)} tries: " + "; ".join(problems))
