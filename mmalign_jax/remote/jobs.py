"""Running many remote calls as a batch job: a client-side rate limit, retries with
exponential backoff and full jitter, and a bounded thread pool that keeps going when single
items fail.

Why these three and nothing more: a paid API job over thousands of prompts fails in three
ordinary ways — it is throttled (so pace the requests yourself: `RateLimiter`), single
calls fail transiently (so retry *those*, with jittered backoff so that parallel workers do
not retry in lock-step: `retry_call`), and single items fail for good (so record them and
go on: `run_parallel`). Durability (what was already done) is the caller's business,
through `mmalign_jax.store.JsonlStore`.

    limiter = RateLimiter(per_minute=300)
    def work(item):
        def once():
            limiter.acquire()
            return client.complete([...])
        return retry_call(once, max_retries=5, base_delay=1.0, max_delay=60.0)
    outcomes = run_parallel(items, work, concurrency=8, desc="judging")
    failed = [o for o in outcomes if not o.ok]
"""
from __future__ import annotations

import logging
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from .client import PermanentError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Outcome", "RateLimiter", "retry_call", "run_parallel"]


class RateLimiter:
    """At most `per_minute` acquisitions per minute across all threads, evenly spaced
    (one every 60/per_minute s; no bursts, so a provider's per-minute quota is never hit
    by the first second of a job). `per_minute` ≤ 0 or None means no limit.
    `clock`/`sleep` are injectable for tests."""

    def __init__(self, per_minute: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep):
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute if per_minute and per_minute > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next = None   # the earliest time the next caller may go

    def acquire(self) -> float:
        """Block until this caller's slot; return the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:   # reserve a slot under the lock, wait outside it
            now = self._clock()
            slot = now if self._next is None else max(now, self._next)
            self._next = slot + self.interval
        wait_s = slot - now
        if wait_s > 0:
            self._sleep(wait_s)
        return wait_s

    __call__ = acquire


def backoff_delay(attempt: int, base_delay: float, max_delay: float,
                  rng: random.Random) -> float:
    """Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
    uniform(0, min(max_delay, base_delay * 2**attempt)), attempt counting from 0."""
    cap = min(max_delay, base_delay * (2 ** attempt))
    return rng.uniform(0.0, cap)


def retry_call(fn: Callable[[], T], *, max_retries: int, base_delay: float, max_delay: float,
               rng: random.Random | None = None, sleep: Callable[[float], Any] = time.sleep) -> T:
    """Call `fn()`; on `TransientError` wait (full-jitter exponential backoff, at least
    the server's Retry-After when it sent one, never more than max_delay) and call again,
    at most `max_retries` more times. The last TransientError is re-raised with
    `.attempts` set. PermanentError and any other exception propagate at once."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return fn()
        except PermanentError:
            raise
        except TransientError as e:
            e.attempts = attempt + 1
            if attempt >= max_retries:
                raise
            delay = backoff_delay(attempt, base_delay, max_delay, rng)
            if e.retry_after:
                delay = min(max_delay, max(delay, e.retry_after))
            log.info("transient error (attempt %d of %d), retrying in %.2fs: %s",
                     attempt + 1, max_retries + 1, delay, e)
            sleep(delay)
            attempt += 1


@dataclass
class Outcome:
    """The result of one item of `run_parallel`: `value` when `fn` returned, `error` when
    it raised (the item is kept for reports)."""
    index: int
    item: Any
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class JobAborted(RuntimeError):
    """Set as the error of items never started because an `abort_on` error stopped the job."""


def run_parallel(items: Sequence, fn: Callable[[Any], Any], *, concurrency: int, desc: str,
                 progress: bool = True,
                 abort_on: tuple[type[BaseException], ...] = ()) -> list[Outcome]:
    """`fn(item)` for every item on at most `concurrency` threads, with a tqdm bar on
    stderr; returns one `Outcome` per item, in input order. An exception in one item is
    recorded in its Outcome and the job goes on — except exceptions of a type in
    `abort_on` (e.g. rejected credentials), after which items not yet started are not run
    and get a `JobAborted` error. Ctrl-C cancels the items not yet started and re-raises
    once the running ones finish (their own writes complete)."""
    from tqdm import tqdm
    items = list(items)
    outcomes = [Outcome(i, item) for i, item in enumerate(items)]
    if not items:
        return outcomes
    concurrency = max(1, int(concurrency))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.05)
    n_failed = 0
    aborted: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=desc[:16] or "job")
    try:
        pending = {}
        todo = iter(range(len(items)))

        def submit_next() -> bool:
            i = next(todo, None)
            if i is None:
                return False
            pending[pool.submit(fn, items[i])] = i
            return True

        # Keep at most 2×concurrency submitted so an abort leaves the rest unstarted.
        for _ in range(2 * concurrency):
            if not submit_next():
                break
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                try:
                    outcomes[i].value = fut.result()
                except BaseException as e:   # noqa: BLE001 — recorded per item
                    outcomes[i].error = e
                    n_failed += 1
                    if abort_on and isinstance(e, abort_on) and aborted is None:
                        aborted = e
                bar.update(1)
                if n_failed:
                    bar.set_postfix(failed=n_failed, refresh=False)
                if aborted is None:
                    submit_next()
        if aborted is not None:
            for i in todo:
                outcomes[i].error = JobAborted(f"not started: the job stopped after {aborted}")
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    return outcomes
