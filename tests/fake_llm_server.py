"""A local stand-in for hosted LLM APIs, for tests: speaks the Gemini REST API and the
OpenAI chat-completions API on 127.0.0.1, answers with a pluggable `responder`, injects
faults on a configurable share of calls, and logs every request (headers included).

    from fake_llm_server import FakeLLMServer, prompt_text

    def responder(request_json):              # the decoded request body, either API
        return '{"score": 3}'                 # the model's reply text

    with FakeLLMServer(responder, faults={"429": 0.1, "500": 0.1, "hang": 0.05,
                                          "malformed": 0.1}, seed=0, hang_s=2.0) as srv:
        client = make_client("gemini", "gemini-2.5-flash", base_url=srv.base_url, timeout=0.5)
        # or make_client("openai", "gpt-4o", base_url=srv.openai_base_url)
        ...
        assert not srv.key_leaks(API_KEY)     # the key only ever in the auth header

Endpoints
    POST /{version}/models/{model}:generateContent   (Gemini; version v1beta, v1, ...)
        → {"candidates": [{"content": {"role": "model", "parts": [{"text": TEXT}]},
           "finishReason": "STOP", "index": 0}], "usageMetadata": {...}, "modelVersion"}
    POST /v1/chat/completions (also /chat/completions)        (OpenAI-compatible)
        → {"choices": [{"message": {"role": "assistant", "content": TEXT},
           "finish_reason": "stop"}], "usage": {...}, ...}
    Errors use each API's error body ({"error": {"code", "message", "status"}}).

Faults (`faults={kind: probability}`; kinds are drawn in that order on one uniform draw)
    "429", "500", "503", "400", "401"  answer with that HTTP status (429/503 with
                                      `Retry-After: 0`)
    "hang"       wait `hang_s` seconds (longer than the client's timeout), then answer
    "malformed"  a 200 reply whose text is the responder's text cut in half (broken JSON)
    "empty"      a 200 reply with an empty text
Decisions are deterministic given `seed`, whatever the thread interleaving: the fault for
the k-th arrival of a given request body is a function of (seed, sha256(body), k). So a
retried request (same body) gets a fresh draw, and a whole test run is reproducible.
`max_faults_per_body` (default 3) caps faults for one body, so that clients with enough
retries always get through. `plan=[kind or None, ...]` instead dictates the faults of the
first calls in arrival order (for precise unit tests), then no faults.
`echo_key_in_errors=True` makes HTTP-status faults quote the received API key in the error
message, like a careless proxy — to test that clients scrub it.

Token counts: prompt = total text characters // 4 + 258 per image (Gemini's flat image
cost); reply = characters // 4 (at least 1).

Log: `srv.requests` is a list of dicts: `api` ("gemini"/"openai"), `method`, `path`,
`headers` (all, as sent), `body` (raw text), `json` (decoded or None), `model`, `fault`
(the kind injected, or None). `srv.key_leaks(secret)` lists every place the secret appears
other than the `x-goog-api-key` or `Authorization: Bearer` header.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

FAULT_KINDS = ("429", "500", "503", "400", "401", "hang", "malformed", "empty")
AUTH_HEADERS = ("x-goog-api-key", "authorization")
_GEMINI_PATH = re.compile(r"^/(?P<version>v\w+)/models/(?P<model>[^/:]+):generateContent$")
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 503: "UNAVAILABLE"}

Responder = Callable[[dict], str]


# --------------------------------------------------------------------------- helpers
def api_of(request_json: dict) -> str:
    """"gemini" or "openai", from the shape of a request body."""
    return "openai" if "messages" in request_json else "gemini"


def prompt_text(request_json: dict, include_system: bool = False) -> str:
    """All text of a request's user content (either API), joined by newlines — what a
    responder usually looks at."""
    out = []
    if api_of(request_json) == "openai":
        for m in request_json.get("messages", []):
            if m.get("role") == "system" and not include_system:
                continue
            content = m.get("content")
            if isinstance(content, str):
                out.append(content)
            else:
                out += [c.get("text", "") for c in content or [] if c.get("type") == "text"]
    else:
        if include_system:
            sys_parts = (request_json.get("systemInstruction") or {}).get("parts", [])
            out += [p.get("text", "") for p in sys_parts if "text" in p]
        for c in request_json.get("contents", []):
            out += [p["text"] for p in c.get("parts", []) if "text" in p]
    return "\n".join(out)


def count_images(request_json: dict) -> int:
    """Number of inline images in a request (either API)."""
    if api_of(request_json) == "openai":
        return sum(1 for m in request_json.get("messages", [])
                   if isinstance(m.get("content"), list)
                   for c in m["content"] if c.get("type") == "image_url")
    return sum(1 for c in request_json.get("contents", []) for p in c.get("parts", [])
               if "inlineData" in p or "inline_data" in p)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


# --------------------------------------------------------------------------- server
class FakeLLMServer:
    """See the module docstring. Start with `with FakeLLMServer(...) as srv:` or
    `.start()`/`.stop()`. `responder(request_json) -> str` must be thread-safe; an
    exception in it becomes an HTTP 500 (and is kept in `srv.responder_errors`)."""

    def __init__(self, responder: Optional[Responder] = None, *,
                 faults: Optional[dict] = None, seed: int = 0, hang_s: float = 5.0,
                 max_faults_per_body: Optional[int] = 3, plan: Optional[list] = None,
                 echo_key_in_errors: bool = False):
        self.responder = responder or (lambda req: "ok")
        self.faults = dict(faults or {})
        bad = [k for k in self.faults if k not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; use {FAULT_KINDS}")
        if sum(self.faults.values()) > 1:
            raise ValueError("fault probabilities sum to more than 1")
        self.seed, self.hang_s = seed, float(hang_s)
        self.max_faults_per_body = max_faults_per_body
        self.plan = list(plan) if plan is not None else None
        self.echo_key_in_errors = echo_key_in_errors
        self.requests: list[dict] = []
        self.responder_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._faulted: dict[str, int] = {}
        self._stopping = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------- lifecycle
    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm
                # and delayed ACKs add ~40 ms to every keep-alive request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):   # keep test output clean
                pass

            def do_POST(self):
                server._handle(self)

            def do_GET(self):
                server._send(self, 404, {"error": {"code": 404, "message": "not found"}})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="fake-llm-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()   # wakes hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """Gemini API root (pass as `base_url`; the SDK appends /v1beta/models/...)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """OpenAI-compatible prefix of /chat/completions."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ----------------------------------------------------------- inspection
    def calls(self, api: Optional[str] = None) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if api is None or r["api"] == api]

    def faults_injected(self) -> dict:
        """{kind: count} of the faults injected so far."""
        out: dict = {}
        for r in self.calls():
            if r["fault"]:
                out[r["fault"]] = out.get(r["fault"], 0) + 1
        return out

    def key_leaks(self, secret: str) -> list[str]:
        """Where `secret` appears in received requests other than the auth headers."""
        leaks = []
        for i, r in enumerate(self.calls()):
            if secret in r["path"]:
                leaks.append(f"request {i}: path")
            if secret in r["body"]:
                leaks.append(f"request {i}: body")
            for name, value in r["headers"].items():
                if secret in value and name.lower() not in AUTH_HEADERS:
                    leaks.append(f"request {i}: header {name}")
        return leaks

    # ----------------------------------------------------------- handling
    def _log_and_decide(self, entry: dict) -> Optional[str]:
        """Append the request to the log and pick its fault, atomically (so `plan`
        follows arrival order exactly)."""
        digest = hashlib.sha256(entry["body"].encode("utf-8", "replace")).hexdigest()
        with self._lock:
            n_call = len(self.requests)
            self.requests.append(entry)
            entry["fault"] = self._pick(digest, n_call)
            return entry["fault"]

    def _pick(self, digest: str, n_call: int) -> Optional[str]:
        """The fault for the next arrival of body `digest` (called under the lock)."""
        k = self._seen.get(digest, 0)
        self._seen[digest] = k + 1
        if self.plan is not None:
            return self.plan[n_call] if n_call < len(self.plan) else None
        if self.max_faults_per_body is not None and \
                self._faulted.get(digest, 0) >= self.max_faults_per_body:
            return None
        u = random.Random(f"{self.seed}/{digest}/{k}").random()
        acc = 0.0
        for kind in FAULT_KINDS:
            acc += self.faults.get(kind, 0.0)
            if u < acc:
                self._faulted[digest] = self._faulted.get(digest, 0) + 1
                return kind
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length).decode("utf-8", "replace")
        path = h.path.split("?", 1)[0]
        m = _GEMINI_PATH.match(path)
        if m:
            api, model = "gemini", m.group("model")
        elif path in ("/v1/chat/completions", "/chat/completions"):
            api, model = "openai", None
        else:
            self._send(h, 404, {"error": {"code": 404, "message": f"no route {path}"}})
            return
        try:
            req = json.loads(body) if body else {}
        except json.JSONDecodeError:
            req = None
        if api == "openai" and isinstance(req, dict):
            model = req.get("model")
        entry = {"api": api, "method": h.command, "path": h.path,
                 "headers": {k: v for k, v in h.headers.items()}, "body": body,
                 "json": req, "model": model, "fault": None, "time": time.time()}
        fault = self._log_and_decide(entry)
        if req is None:
            self._error(h, api, 400, "request body is not JSON")
            return
        if fault in ("429", "500", "503", "400", "401"):
            message = f"injected fault {fault}"
            if self.echo_key_in_errors:   # a careless server: clients must scrub this
                auth = {k.lower(): v for k, v in entry["headers"].items()}
                message += f" (you sent {auth.get('x-goog-api-key') or auth.get('authorization')})"
            self._error(h, api, int(fault), message)
            return
        if fault == "hang":
            self._stopping.wait(self.hang_s)
        try:
            text = self.responder(req)
        except Exception as e:   # noqa: BLE001 — reported to the client as a 500
            with self._lock:
                self.responder_errors.append(e)
            self._error(h, api, 500, f"responder failed: {type(e).__name__}")
            return
        if fault == "malformed":
            text = text[: max(1, len(text) // 2)]
        elif fault == "empty":
            text = ""
        n_in = _tokens(prompt_text(req, include_system=True)) + 258 * count_images(req)
        n_out = _tokens(text)
        if api == "gemini":
            payload = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                       "finishReason": "STOP", "index": 0}],
                       "usageMetadata": {"promptTokenCount": n_in, "candidatesTokenCount": n_out,
                                         "totalTokenCount": n_in + n_out},
                       "modelVersion": model}
        else:
            payload = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
                       "created": int(time.time()), "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                 "total_tokens": n_in + n_out}}
        self._send(h, 200, payload)

    def _error(self, h, api: str, status: int, message: str) -> None:
        err = {"code": status, "message": message}
        if api == "gemini":
            err["status"] = _STATUS_NAMES.get(status, "UNKNOWN")
        else:
            err["type"] = "fake_error"
        extra = {"Retry-After": "0"} if status in (429, 503) else {}
        self._send(h, status, {"error": err}, extra)

    @staticmethod
    def _send(h, status: int, payload: dict, headers: Optional[dict] = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass   # the client gave up (timed out) before we answered
