"""Calling hosted models (Gemini, OpenAI-compatible endpoints) from batch jobs: annotation
(`mmalign_jax.annotate`) and evaluation judges (`mmalign_jax.evaluate`) share this layer.

`client`: `make_client(provider, model)` → `.complete(parts) -> Reply`, one HTTP request
per call, failures sorted into `TransientError` (retry) and `PermanentError` (don't).
`jobs`: `RateLimiter`, `retry_call` (exponential backoff, full jitter), `run_parallel`
(bounded thread pool, progress bar, per-item errors, results in input order).
"""
from .client import (AuthError, Client, Image, PermanentError, PRICES_PER_MTOK,
                     RemoteError, Reply, TransientError, estimate_cost, make_client)
from .jobs import JobAborted, Outcome, RateLimiter, retry_call, run_parallel

__all__ = ["AuthError", "Client", "Image", "JobAborted", "Outcome", "PermanentError",
           "PRICES_PER_MTOK", "RateLimiter", "RemoteError", "Reply", "TransientError",
           "estimate_cost", "make_client", "retry_call", "run_parallel"]
