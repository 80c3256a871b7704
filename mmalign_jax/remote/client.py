"""One small interface to the hosted models we call: Gemini (annotation, judging) and any
OpenAI-compatible chat-completions endpoint (judging, local servers).

Why our own thin layer instead of each SDK's: annotation and judging are paid batch jobs
whose robustness must be *one* policy we control and test — so clients here make exactly
one HTTP request per `complete` (the SDK's own retries are switched off) and sort every
failure into two kinds: `TransientError` (429, 408, 5xx, timeouts, broken connections —
worth retrying, see `jobs.retry_call`) and `PermanentError` (other 4xx, bad requests,
missing or rejected credentials — retrying cannot help).

    client = make_client("gemini", "gemini-2.5-flash")          # key from GEMINI_API_KEY
    reply = client.complete(["Describe:", Image.from_file("cat.png")],
                            json_schema={"type": "object", ...})
    reply.text, reply.input_tokens, reply.output_tokens

API keys come from the environment only and are never printed, logged, written or put in
an exception message: every message built from a server reply is scrubbed of the key, and
the SDK's exceptions are not chained (their repr may carry request details).
"""
from __future__ import annotations

import base64
import io
import os
import threading
from dataclasses import dataclass
from typing import Protocol, Sequence, Union

__all__ = [
    "AuthError", "Client", "GeminiClient", "Image", "OpenAIClient", "PermanentError",
    "PRICES_PER_MTOK", "RemoteError", "Reply", "TransientError", "estimate_cost",
    "make_client",
]

PROVIDERS = ("gemini", "openai")
GEMINI_KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
OPENAI_KEY_VARS = ("OPENAI_API_KEY",)
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Formats Gemini accepts inline; anything else PIL can read is re-encoded as PNG.
_INLINE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp",
                "HEIC": "image/heic", "HEIF": "image/heif"}
_RETRY_STATUS = (408, 429)
_MAX_MESSAGE = 600


# --------------------------------------------------------------------------- values
@dataclass
class Image:
    """An encoded image sent inline with a prompt."""
    data: bytes
    mime_type: str

    @classmethod
    def from_file(cls, path: str) -> "Image":
        """Read an image file; formats the APIs do not take inline (GIF, BMP, TIFF…) are
        re-encoded as PNG. Raises ValueError naming the file if it is not an image."""
        from PIL import Image as PILImage
        with open(path, "rb") as f:
            data = f.read()
        try:
            with PILImage.open(io.BytesIO(data)) as im:
                fmt = im.format
                if fmt in _INLINE_MIME:
                    return cls(data, _INLINE_MIME[fmt])
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                return cls(buf.getvalue(), "image/png")
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None

    def __repr__(self) -> str:   # never dump megabytes of bytes into a log
        return f"Image({self.mime_type}, {len(self.data)} bytes)"


@dataclass
class Reply:
    """What the model wrote, and the tokens billed for it (output includes any thinking
    tokens). `finish_reason` is the provider's word for why generation stopped, if given."""
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None


Part = Union[str, Image]


# --------------------------------------------------------------------------- errors
class RemoteError(Exception):
    """A call to a hosted model failed. `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class TransientError(RemoteError):
    """Worth retrying later: rate limited (429), server error (5xx), request timeout (408),
    client-side timeout, connection failure, unreadable reply. `retry_after` is the server's
    requested wait in seconds, when it sent one."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PermanentError(RemoteError):
    """Retrying cannot help: a bad request, an unknown model, a blocked prompt, no key."""


class AuthError(PermanentError):
    """The credentials are missing or rejected; every later call would fail the same way,
    so batch jobs stop instead of spending the rest of the queue on it."""


# --------------------------------------------------------------------------- helpers
def _redact(text: object, secret: str | None) -> str:
    s = str(text)
    if secret:
        s = s.replace(secret, "[redacted]")
    return s if len(s) <= _MAX_MESSAGE else s[:_MAX_MESSAGE] + "…"


def _api_key(var_names: Sequence[str], provider: str) -> str:
    for name in var_names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    names = " or ".join(var_names)
    raise AuthError(f"no API key for {provider}: set the environment variable {names} "
                    f"(the key is read from the environment only, never from a flag or file)")


def _retry_after(headers) -> float | None:
    try:
        value = headers.get("retry-after") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None   # an HTTP date: ignore, our backoff applies


def _status_error(status: int, message: str, headers=None) -> RemoteError:
    """The error class for an HTTP status (shared by both providers)."""
    if status in _RETRY_STATUS or status >= 500:
        return TransientError(message, status=status, retry_after=_retry_after(headers))
    if status in (401, 403):
        return AuthError(message + " — check the API key in the environment", status=status)
    if status == 400 and "api key" in message.lower():   # Gemini answers a bad key with 400
        return AuthError(message + " — check the API key in the environment", status=status)
    return PermanentError(message, status=status)


def _transport_errors() -> tuple[type, ...]:
    """httpx/httpx2 exceptions for timeouts and broken connections (google-genai uses
    whichever is installed)."""
    out = []
    for name in ("httpx2", "httpx"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        out.append(mod.TransportError)   # TimeoutException, NetworkError, ProtocolError…
    return tuple(out)


class Client(Protocol):
    """What annotators and judges need from a hosted model."""
    name: str

    def complete(self, parts: list[Part], *, system: str | None = None,
                 json_schema: dict | None = None, temperature: float = 0.0,
                 max_output_tokens: int = 4096) -> Reply: ...


# --------------------------------------------------------------------------- Gemini
class GeminiClient:
    """Gemini through `google-genai`, one HTTP request per call (SDK retries off)."""

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None,
                 timeout: float = 120.0):
        from google import genai
        from google.genai import types
        self.model = model
        self.name = f"gemini:{model}"
        self.base_url = base_url
        self.timeout = float(timeout)
        self._key = api_key
        self._types = types
        options = types.HttpOptions(
            base_url=base_url, timeout=max(1, int(round(self.timeout * 1000))),
            retry_options=types.HttpRetryOptions(attempts=1))   # our retry policy rules
        self._client = genai.Client(api_key=api_key, vertexai=False, http_options=options)
        self._transport = _transport_errors()

    def __repr__(self) -> str:
        return f"GeminiClient({self.model!r}, base_url={self.base_url!r})"

    def _parts(self, parts: Sequence[Part]):
        out = []
        for p in parts:
            if isinstance(p, Image):
                out.append(self._types.Part.from_bytes(data=p.data, mime_type=p.mime_type))
            elif isinstance(p, str):
                out.append(self._types.Part.from_text(text=p))
            else:
                raise TypeError(f"prompt parts must be str or Image, got {type(p).__name__}")
        return out

    def complete(self, parts: list[Part], *, system: str | None = None,
                 json_schema: dict | None = None, temperature: float = 0.0,
                 max_output_tokens: int = 4096) -> Reply:
        from google.genai import errors
        types = self._types
        config = types.GenerateContentConfig(
            system_instruction=system, temperature=temperature,
            max_output_tokens=max_output_tokens,
            response_mime_type="application/json" if json_schema is not None else None,
            response_json_schema=json_schema)
        contents = [types.Content(role="user", parts=self._parts(parts))]
        try:
            resp = self._client.models.generate_content(model=self.model, contents=contents,
                                                        config=config)
        except errors.APIError as e:
            msg = f"{self.name}: HTTP {e.code} {e.status or ''}: {e.message or e.details}"
            raise _status_error(int(e.code or 0), _redact(msg, self._key),
                                getattr(e.response, "headers", None)) from None
        except errors.UnknownApiResponseError as e:
            msg = _redact(f"{self.name}: unreadable reply: {e}", self._key)
            raise TransientError(msg) from None
        except self._transport as e:
            msg = _redact(f"{self.name}: {type(e).__name__}: {e or 'timed out'}", self._key)
            if type(e).__name__ == "UnsupportedProtocol":
                raise PermanentError(msg + " — check --base-url") from None
            raise TransientError(msg) from None
        return self._reply(resp)

    def _reply(self, resp) -> Reply:
        usage = resp.usage_metadata
        tokens_in = int(getattr(usage, "prompt_token_count", None) or 0)
        tokens_out = int(getattr(usage, "candidates_token_count", None) or 0) + \
            int(getattr(usage, "thoughts_token_count", None) or 0)
        if not resp.candidates:
            feedback = getattr(resp, "prompt_feedback", None)
            reason = getattr(feedback, "block_reason", None)
            raise PermanentError(f"{self.name}: no answer (prompt blocked: {reason})"
                                 if reason else f"{self.name}: reply has no candidates")
        finish = resp.candidates[0].finish_reason
        finish = getattr(finish, "value", finish)
        return Reply(resp.text or "", tokens_in, tokens_out,
                     str(finish) if finish is not None else None)


# --------------------------------------------------------------------------- OpenAI
class OpenAIClient:
    """Any OpenAI-compatible `POST {base_url}/chat/completions` endpoint (OpenAI, vLLM,
    SGLang, LiteLLM, OpenRouter…), through `requests`; images as data: URLs."""

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None,
                 timeout: float = 120.0):
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = (base_url or OPENAI_DEFAULT_BASE_URL).rstrip("/")
        self.timeout = float(timeout)
        self._key = api_key
        self._local = threading.local()   # requests.Session is not thread-safe

    def __repr__(self) -> str:
        return f"OpenAIClient({self.model!r}, base_url={self.base_url!r})"

    def _session(self):
        import requests
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    @staticmethod
    def _content(parts: Sequence[Part]) -> list[dict]:
        out = []
        for p in parts:
            if isinstance(p, Image):
                url = f"data:{p.mime_type};base64,{base64.b64encode(p.data).decode('ascii')}"
                out.append({"type": "image_url", "image_url": {"url": url}})
            elif isinstance(p, str):
                out.append({"type": "text", "text": p})
            else:
                raise TypeError(f"prompt parts must be str or Image, got {type(p).__name__}")
        return out

    def complete(self, parts: list[Part], *, system: str | None = None,
                 json_schema: dict | None = None, temperature: float = 0.0,
                 max_output_tokens: int = 4096) -> Reply:
        import requests
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": self._content(parts)}]
        body = {"model": self.model, "messages": messages, "temperature": temperature,
                "max_completion_tokens": max_output_tokens}
        if json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "response", "schema": json_schema, "strict": False}}
        url = f"{self.base_url}/chat/completions"
        try:
            r = self._session().post(url, json=body, timeout=self.timeout, headers={
                "Authorization": f"Bearer {self._key}"})
        except (requests.Timeout, requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError) as e:
            raise TransientError(_redact(f"{self.name}: {type(e).__name__} calling {url}",
                                         self._key)) from None
        if r.status_code != 200:
            try:
                detail = r.json().get("error", {}).get("message") or r.text
            except ValueError:
                detail = r.text
            msg = f"{self.name}: HTTP {r.status_code}: {detail}"
            raise _status_error(r.status_code, _redact(msg, self._key), r.headers)
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise TransientError(_redact(f"{self.name}: unreadable reply: {r.text}",
                                         self._key)) from None
        usage = data.get("usage") or {}
        return Reply(text, int(usage.get("prompt_tokens") or 0),
                     int(usage.get("completion_tokens") or 0), choice.get("finish_reason"))


# --------------------------------------------------------------------------- factory
def make_client(provider: str, model: str, *, base_url: str | None = None,
                timeout: float = 120.0) -> Client:
    """A client for `provider` ("gemini" or "openai") and `model`.

    Keys: Gemini reads GEMINI_API_KEY, then GOOGLE_API_KEY; OpenAI-compatible endpoints read
    OPENAI_API_KEY (any non-empty value for a local server that checks none). A missing key
    is an `AuthError` (a PermanentError) naming the variable to set. `base_url`: for Gemini
    the API root (the SDK appends `/v1beta/models/...`), for OpenAI the prefix of
    `/chat/completions` (default https://api.openai.com/v1). `timeout` is per request, in s.
    """
    if provider == "gemini":
        return GeminiClient(model, api_key=_api_key(GEMINI_KEY_VARS, provider),
                            base_url=base_url, timeout=timeout)
    if provider == "openai":
        return OpenAIClient(model, api_key=_api_key(OPENAI_KEY_VARS, provider),
                            base_url=base_url, timeout=timeout)
    raise ValueError(f"unknown provider {provider!r}; choose one of {PROVIDERS}")


# --------------------------------------------------------------------------- prices
# USD per million tokens (input, output; output includes thinking tokens), standard paid
# tier, prompts ≤ 200k tokens, text/image input — from ai.google.dev/gemini-api/docs/pricing
# and openai.com/api/pricing as of late 2025. Estimates for a report, not a bill: check
# the provider's page, and pass your own with `prices=` / `--price` when they change.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gemini:gemini-3-pro-preview": (2.00, 12.00),
    "gemini:gemini-3-flash-preview": (0.50, 3.00),
    "gemini:gemini-2.5-pro": (1.25, 10.00),
    "gemini:gemini-2.5-flash": (0.30, 2.50),
    "gemini:gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini:gemini-2.0-flash": (0.10, 0.40),
    "gemini:gemini-2.0-flash-lite": (0.075, 0.30),
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:gpt-4.1": (2.00, 8.00),
    "openai:gpt-4.1-mini": (0.40, 1.60),
}


def estimate_cost(name: str, input_tokens: int, output_tokens: int,
                  prices: dict[str, tuple[float, float]] | None = None) -> float | None:
    """Estimated USD for a client `name` ("gemini:gemini-2.5-flash"); None when the model
    is not in the table (the report then says the price is unknown)."""
    table = PRICES_PER_MTOK if prices is None else prices
    if name not in table:
        return None
    p_in, p_out = table[name]
    return (input_tokens * p_in + output_tokens * p_out) / 1e6
