"""Pluggable LLM judges with the robustness of annotation: cached and resumable, bounded
concurrency, a client-side rate limit, retries with backoff on 429/5xx/timeouts, and
unparsable replies re-asked, then counted and reported as failures.

    judge = make_judge("openai", "gpt-4", cache="out/mt-bench/judgments.jsonl")
    verdicts = judge.judge_many([JudgeRequest(key, [prompt], system=..., parse=parse_rating)])
    [v.value for v in verdicts if v.ok]

Any object with `.name` and `.complete(parts, *, system, json_schema, temperature,
max_output_tokens) -> Reply` (`mmalign_jax.remote.client.Client`) can be the judge's
client: `Judge(client, cache=...)` — tests inject fakes this way.

Cache: one `JsonlStore` row per request, keyed `"<judge name>|<request key>"`, holding the
prompt's hash, the reply and the parsed value. A rerun reuses a row only when the judge,
the prompt and the parse all still agree (the cached reply is parsed again), so a changed
answer or prompt is judged again; failed rows are retried on rerun (`retry_failed`).

What happens to a request:
1. each call waits for the rate limiter and is retried with full-jitter exponential backoff
   on `TransientError` (429, 408, 5xx, timeouts; the server's Retry-After is honoured);
2. a reply that `parse` rejects (raises `Unparsable`) is re-asked up to `max_reasks` times
   (the request's `reask` hook may change the prompt or temperature, as MM-Vet's grader
   does; by default the temperature rises by 0.5 per re-ask, capped at 1);
3. what still fails — unparsable after the re-asks, retries exhausted, a permanent error —
   becomes a `Verdict(ok=False, kind=...)` that the benchmark counts and reports. Rejected
   credentials (`AuthError`) stop the whole job at once instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence, Union

from mmalign_jax.store import JsonlStore

log = logging.getLogger("mmalign_jax.evaluate")

# Defaults when --judge-model is not given. The study's numbers were judged by GPT-4
# (gpt-4-0314 / gpt-4-0613); other judges give scores that are not comparable to them.
DEFAULT_JUDGE_MODELS = {"openai": "gpt-4", "gemini": "gemini-2.5-flash"}
# Gemini 2.5 models think before answering and count those tokens against the output limit;
# a grader asked for 3 tokens (MM-Vet) would return nothing, so Gemini judges get room.
DEFAULT_MIN_OUTPUT_TOKENS = {"openai": 0, "gemini": 2048}


class Unparsable(ValueError):
    """A judge reply that does not contain what the benchmark needs (e.g. no [[rating]])."""


@dataclasses.dataclass
class JudgeRequest:
    """One judgment. `parse(text) -> value` raises `Unparsable` on a bad reply.
    `reask(request, attempt, last_text) -> JudgeRequest` builds re-ask number `attempt`
    (1, 2, …); None = the same prompt with the temperature raised by 0.5 per re-ask."""
    key: str
    parts: list
    system: Optional[str] = None
    temperature: float = 0.0
    max_output_tokens: int = 2048
    parse: Optional[Callable[[str], Any]] = None
    reask: Optional[Callable[["JudgeRequest", int, str], "JudgeRequest"]] = None

    def prompt_hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.system, self.temperature], ensure_ascii=False).encode())
        for p in self.parts:
            if isinstance(p, str):
                h.update(b"T" + p.encode("utf-8"))
            else:  # remote.client.Image
                h.update(b"I" + hashlib.sha256(p.data).digest())
        return h.hexdigest()[:16]


@dataclasses.dataclass
class Verdict:
    """The outcome of one request. `ok`: a parsed `value`; otherwise `kind` is
    'unparsable' or 'error' and `error` says why. `replies`: every raw reply of this
    request (all the re-asks), kept for the failure report. `calls`: judge calls made now
    (0 when it came from the cache)."""
    key: str
    ok: bool
    value: Any = None
    text: str = ""
    kind: Optional[str] = None
    error: Optional[str] = None
    replies: list = dataclasses.field(default_factory=list)
    calls: int = 0
    cached: bool = False

    def as_failure(self) -> dict:
        return {"key": self.key, "kind": self.kind, "error": self.error,
                "replies": [r[:500] for r in self.replies]}


def _identity(text: str) -> str:
    return text


def _default_reask(req: JudgeRequest, attempt: int, last_text: str) -> JudgeRequest:
    return dataclasses.replace(req, temperature=min(1.0, req.temperature + 0.5 * attempt))


class Judge:
    """A judge model behind a cache. `client`: a `remote` client (or any object with
    `.name` and `.complete`). `cache`: a `JsonlStore`, its path, or None (no caching).

    concurrency: requests in flight at once; requests_per_minute: client-side pacing
    (None = none); max_retries/base_delay/max_delay: backoff on transient errors;
    max_reasks: extra asks after an unparsable reply; min_output_tokens: a floor on every
    request's output budget (thinking models); retry_failed: redo cached failures."""

    def __init__(self, client, *, cache: Union[str, JsonlStore, None] = None,
                 concurrency: int = 4, requests_per_minute: Optional[float] = None,
                 max_retries: int = 6, base_delay: float = 2.0, max_delay: float = 60.0,
                 max_reasks: int = 2, min_output_tokens: int = 0, retry_failed: bool = True,
                 progress: bool = True, sleep: Callable[[float], Any] = time.sleep, rng=None):
        from mmalign_jax.remote.jobs import RateLimiter

        self.client = client
        self.name = str(client.name)
        self.store = (cache if isinstance(cache, JsonlStore) or cache is None
                      else JsonlStore(cache, key="key"))
        self.concurrency = int(concurrency)
        self.limiter = RateLimiter(requests_per_minute)
        self.max_retries, self.base_delay, self.max_delay = int(max_retries), base_delay, max_delay
        self.max_reasks = int(max_reasks)
        self.min_output_tokens = int(min_output_tokens)
        self.retry_failed = retry_failed
        self.progress = progress
        self._sleep, self._rng = sleep, rng
        self._lock = threading.Lock()
        self.usage = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cached": 0}

    def with_cache(self, cache: Union[str, JsonlStore, None]) -> "Judge":
        """The same judge (client, limits, rate limiter shared) writing to another cache."""
        other = object.__new__(Judge)
        other.__dict__.update(self.__dict__)
        other.store = (cache if isinstance(cache, JsonlStore) or cache is None
                       else JsonlStore(cache, key="key"))
        return other

    # ------------------------------------------------------------------ one request
    def _cache_key(self, key: str) -> str:
        return f"{self.name}|{key}"

    def _cached(self, req: JudgeRequest, parse) -> Optional[Verdict]:
        if self.store is None:
            return None
        row = self.store.get(self._cache_key(req.key))
        if row is None or row.get("prompt_hash") != req.prompt_hash():
            return None
        if not row.get("ok"):
            if self.retry_failed:
                return None
            return Verdict(req.key, False, text=row.get("text", ""), kind=row.get("kind"),
                           error=row.get("error"), replies=row.get("replies", []), cached=True)
        try:
            value = parse(row["text"])
        except Unparsable:
            return None  # the parse changed since: ask again
        return Verdict(req.key, True, value, row["text"], replies=[row["text"]], cached=True)

    def _call(self, req: JudgeRequest) -> str:
        from mmalign_jax.remote.jobs import retry_call

        def once():
            self.limiter.acquire()
            return self.client.complete(
                list(req.parts), system=req.system, temperature=req.temperature,
                max_output_tokens=max(int(req.max_output_tokens), self.min_output_tokens))

        reply = retry_call(once, max_retries=self.max_retries, base_delay=self.base_delay,
                           max_delay=self.max_delay, rng=self._rng, sleep=self._sleep)
        with self._lock:
            self.usage["calls"] += 1
            self.usage["input_tokens"] += int(getattr(reply, "input_tokens", 0) or 0)
            self.usage["output_tokens"] += int(getattr(reply, "output_tokens", 0) or 0)
        return reply.text if hasattr(reply, "text") else str(reply)

    def _run(self, req: JudgeRequest) -> Verdict:
        from mmalign_jax.remote.client import AuthError, PermanentError, TransientError

        parse = req.parse or _identity
        hit = self._cached(req, parse)
        if hit is not None:
            with self._lock:
                self.usage["cached"] += 1
            return hit
        replies: list = []
        current = req
        verdict = None
        for attempt in range(self.max_reasks + 1):
            if attempt:
                current = (req.reask or _default_reask)(req, attempt, replies[-1])
            try:
                text = self._call(current)
            except AuthError:
                raise
            except (TransientError, PermanentError) as e:
                kind = "error"
                verdict = Verdict(req.key, False, kind=kind, replies=replies,
                                  error=f"{type(e).__name__}: {e}", calls=len(replies) + 1)
                break
            replies.append(text)
            try:
                value = parse(text)
            except Unparsable as e:
                verdict = Verdict(req.key, False, text=text, kind="unparsable",
                                  error=f"unparsable after {len(replies)} asks: {e}",
                                  replies=replies, calls=len(replies))
                continue
            verdict = Verdict(req.key, True, value, text, replies=replies, calls=len(replies))
            break
        if verdict.kind == "unparsable":
            log.warning("judge %s: %s unparsable after %d asks; last reply: %r", self.name,
                        req.key, len(replies), replies[-1][:200])
        if self.store is not None:
            self.store.append({"key": self._cache_key(req.key), "judge": self.name,
                               "request": req.key, "prompt_hash": req.prompt_hash(),
                               "ok": verdict.ok, "text": verdict.text,
                               "value": verdict.value if _jsonable(verdict.value) else None,
                               "kind": verdict.kind, "error": verdict.error,
                               "replies": replies, "time": time.time()})
        return verdict

    def judge(self, key: str, parts: Sequence, *, system: Optional[str] = None,
              parse: Optional[Callable[[str], Any]] = None, temperature: float = 0.0,
              max_output_tokens: int = 2048, reask=None) -> Verdict:
        """One cached judgment (see the module docstring)."""
        return self.judge_many([JudgeRequest(key, list(parts), system, temperature,
                                             max_output_tokens, parse, reask)])[0]

    def judge_many(self, requests: Sequence[JudgeRequest], desc: str = "judging") -> list:
        """Verdicts in input order; up to `concurrency` requests in flight."""
        from mmalign_jax.remote.client import AuthError
        from mmalign_jax.remote.jobs import run_parallel

        keys = [r.key for r in requests]
        if len(set(keys)) != len(keys):
            raise ValueError("judge request keys must be unique")
        outcomes = run_parallel(list(requests), self._run, concurrency=self.concurrency,
                                desc=f"{desc} ({self.name})", progress=self.progress,
                                abort_on=(AuthError,))
        for o in outcomes:  # rejected credentials, or a bug: stop loudly
            if isinstance(o.error, AuthError):
                raise o.error
        for o in outcomes:
            if o.error is not None:
                raise o.error
        return [o.value for o in outcomes]


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def make_judge(provider: str, model: Optional[str] = None, *, base_url: Optional[str] = None,
               timeout: float = 120.0, cache=None, min_output_tokens: Optional[int] = None,
               **kwargs) -> Judge:
    """A `Judge` on a `remote` client: `provider` 'gemini' (google-genai; key from
    GEMINI_API_KEY) or 'openai' (any OpenAI-compatible endpoint at `base_url`; key from
    OPENAI_API_KEY). `model` defaults to `DEFAULT_JUDGE_MODELS[provider]`; `kwargs` go to
    `Judge` (concurrency, requests_per_minute, max_retries, max_reasks, …)."""
    from mmalign_jax.remote.client import make_client

    if provider not in DEFAULT_JUDGE_MODELS:
        raise ValueError(f"--judge {provider!r}: choose one of {sorted(DEFAULT_JUDGE_MODELS)}")
    client = make_client(provider, model or DEFAULT_JUDGE_MODELS[provider], base_url=base_url,
                         timeout=timeout)
    if min_output_tokens is None:
        min_output_tokens = DEFAULT_MIN_OUTPUT_TOKENS[provider]
    return Judge(client, cache=cache, min_output_tokens=min_output_tokens, **kwargs)


def failure_summary(verdicts: Sequence[Verdict]) -> dict:
    """`{'count', 'unparsable', 'errors', 'items': [...]}` for a benchmark's result."""
    failed = [v for v in verdicts if not v.ok]
    return {"count": len(failed),
            "unparsable": sum(v.kind == "unparsable" for v in failed),
            "errors": sum(v.kind == "error" for v in failed),
            "items": [v.as_failure() for v in failed]}
