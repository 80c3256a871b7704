"""The remote-call layer: clients against a local fake of the Gemini and OpenAI APIs,
error classification, retries with backoff, the rate limiter, the bounded job runner."""
import io
import json
import random
import threading
import time

import pytest
from PIL import Image as PILImage

from fake_llm_server import FakeLLMServer, count_images, prompt_text
from mmalign_jax.remote import (AuthError, Image, JobAborted, PermanentError, RateLimiter,
                                TransientError, estimate_cost, make_client, retry_call,
                                run_parallel)

KEY = "FAKE-KEY-remote-7f3a9c1e"


@pytest.fixture
def keys(monkeypatch):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def png_bytes(color="red"):
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- retry_call
def test_retry_call_backs_off_with_full_jitter_then_succeeds():
    calls, sleeps = [], []

    def fn():
        calls.append(1)
        if len(calls) <= 3:
            raise TransientError("HTTP 503", status=503)
        return "ok"

    out = retry_call(fn, max_retries=5, base_delay=1.0, max_delay=3.0,
                     rng=random.Random(7), sleep=sleeps.append)
    assert out == "ok" and len(calls) == 4
    ref = random.Random(7)   # full jitter: uniform(0, min(max, base * 2**attempt))
    assert sleeps == [ref.uniform(0, 1.0), ref.uniform(0, 2.0), ref.uniform(0, 3.0)]


def test_retry_call_raises_permanent_at_once_and_gives_up_on_transient():
    sleeps = []

    def permanent():
        raise PermanentError("HTTP 400 bad request", status=400)

    with pytest.raises(PermanentError):
        retry_call(permanent, max_retries=5, base_delay=1, max_delay=1, sleep=sleeps.append)
    assert sleeps == []

    n = []

    def always():
        n.append(1)
        raise TransientError("HTTP 429", status=429)

    with pytest.raises(TransientError) as ei:
        retry_call(always, max_retries=3, base_delay=0.0, max_delay=0.0, sleep=sleeps.append)
    assert len(n) == 4 and ei.value.attempts == 4 and len(sleeps) == 3


def test_retry_call_honours_retry_after_within_max_delay():
    sleeps, n = [], []

    def fn():
        n.append(1)
        if len(n) == 1:
            raise TransientError("429", status=429, retry_after=5.0)
        if len(n) == 2:
            raise TransientError("429", status=429, retry_after=500.0)
        return 1

    retry_call(fn, max_retries=3, base_delay=0.1, max_delay=10.0, rng=random.Random(0),
               sleep=sleeps.append)
    assert sleeps[0] == 5.0 and sleeps[1] == 10.0


# --------------------------------------------------------------------------- RateLimiter
def test_rate_limiter_spaces_calls_evenly():
    now = [100.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    lim = RateLimiter(120, clock=lambda: now[0], sleep=sleep)   # one per 0.5 s
    for _ in range(5):
        lim.acquire()
    assert waits == [0.5, 0.5, 0.5, 0.5]
    assert now[0] == pytest.approx(102.0)
    now[0] += 10.0            # idle: the next call goes at once, no burst credit piles up
    assert lim.acquire() == 0.0
    assert lim.acquire() == pytest.approx(0.5)
    assert RateLimiter(0).acquire() == 0.0


def test_rate_limiter_is_shared_across_threads():
    lim = RateLimiter(1200)   # 50 ms apart
    stamps, lock = [], threading.Lock()

    def worker():
        for _ in range(4):
            lim.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 16
    assert stamps[-1] - stamps[0] >= 15 * 0.05 - 0.02


# --------------------------------------------------------------------------- run_parallel
def test_run_parallel_keeps_order_bounds_concurrency_and_collects_errors():
    active, peak, lock = [0], [0], threading.Lock()

    def fn(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01 * (x % 3))
        with lock:
            active[0] -= 1
        if x % 5 == 0:
            raise ValueError(f"bad {x}")
        return x * x

    out = run_parallel(range(20), fn, concurrency=3, desc="test", progress=False)
    assert [o.index for o in out] == list(range(20))
    assert [o.value for o in out if o.ok] == [x * x for x in range(20) if x % 5]
    assert [str(o.error) for o in out if not o.ok] == ["bad 0", "bad 5", "bad 10", "bad 15"]
    assert 1 < peak[0] <= 3


def test_run_parallel_abort_on_stops_unstarted_items():
    def fn(x):
        if x == 0:
            raise AuthError("HTTP 401: key rejected", status=401)
        time.sleep(0.01)
        return x

    out = run_parallel(range(50), fn, concurrency=1, desc="test", progress=False,
                       abort_on=(AuthError,))
    assert isinstance(out[0].error, AuthError)
    aborted = [o for o in out if isinstance(o.error, JobAborted)]
    assert len(aborted) >= 45           # at most 2×concurrency were queued
    assert all(o.ok for o in out if o.error is None and o.index)


# --------------------------------------------------------------------------- clients
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"]}


def test_gemini_client_request_reply_and_key_hygiene(keys):
    seen = []

    def responder(req):
        seen.append(req)
        return json.dumps({"answer": len(prompt_text(req))})

    with FakeLLMServer(responder) as srv:
        client = make_client("gemini", "gemini-2.5-flash", base_url=srv.base_url, timeout=5)
        assert client.name == "gemini:gemini-2.5-flash"
        assert KEY not in repr(client)
        reply = client.complete(["look:", Image(png_bytes(), "image/png"), "how long?"],
                                system="be brief", json_schema=SCHEMA, temperature=0.0,
                                max_output_tokens=77)
        assert json.loads(reply.text) == {"answer": len("look:\nhow long?")}
        assert reply.input_tokens == len("be brief\nlook:\nhow long?") // 4 + 258
        assert reply.output_tokens == max(1, len(reply.text) // 4)
        req = srv.requests[0]
        assert req["path"].endswith("/models/gemini-2.5-flash:generateContent")
        body = req["json"]
        cfg = body["generationConfig"]
        assert cfg["responseMimeType"] == "application/json"
        assert cfg["responseJsonSchema"] == SCHEMA
        assert cfg["maxOutputTokens"] == 77 and cfg["temperature"] == 0.0
        assert body["systemInstruction"]["parts"][0]["text"] == "be brief"
        assert count_images(body) == 1
        assert req["headers"]["x-goog-api-key"] == KEY
        assert srv.key_leaks(KEY) == []


@pytest.mark.parametrize("fault,kind,status", [
    ("429", TransientError, 429), ("500", TransientError, 500), ("503", TransientError, 503),
    ("hang", TransientError, None), ("400", PermanentError, 400), ("401", AuthError, 401)])
def test_gemini_client_classifies_errors_and_makes_one_request(keys, fault, kind, status):
    with FakeLLMServer(lambda r: "x", plan=[fault], hang_s=3.0) as srv:
        client = make_client("gemini", "gemini-2.5-flash", base_url=srv.base_url, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(kind) as ei:
            client.complete(["hi"])
        assert time.monotonic() - t0 < 2.5     # the hang was cut by our timeout
        assert ei.value.status == status
        if kind is not TransientError:
            assert not isinstance(ei.value, TransientError)
        assert len(srv.requests) == 1          # the SDK's own retries are off
        assert KEY not in str(ei.value) and KEY not in repr(ei.value)
        assert ei.value.__cause__ is None and ei.value.__suppress_context__
        assert client.complete(["again"]).text == "x"   # the next call is fine


def test_malformed_fault_breaks_the_text_but_not_the_reply(keys):
    good = json.dumps({"answer": 12345, "pad": "x" * 20})
    with FakeLLMServer(lambda r: good, plan=["malformed", "empty"]) as srv:
        client = make_client("gemini", "m", base_url=srv.base_url, timeout=5)
        broken = client.complete(["q"]).text
        assert broken and good.startswith(broken) and broken != good
        with pytest.raises(json.JSONDecodeError):
            json.loads(broken)
        assert client.complete(["q"]).text == ""
        assert client.complete(["q"]).text == good


def test_openai_client_request_reply_errors_and_key_hygiene(keys):
    with FakeLLMServer(lambda r: '{"answer": 1}', plan=[None, "429", "500", "hang", "400",
                                                       "401"], hang_s=3.0) as srv:
        client = make_client("openai", "gpt-4o-mini", base_url=srv.openai_base_url,
                             timeout=0.5)
        assert client.name == "openai:gpt-4o-mini"
        reply = client.complete(["look:", Image(png_bytes(), "image/png")], system="sys",
                                json_schema=SCHEMA, max_output_tokens=33)
        assert reply.text == '{"answer": 1}' and reply.input_tokens > 258
        assert reply.finish_reason == "stop"
        req = srv.requests[0]
        assert req["path"] == "/v1/chat/completions"
        body = req["json"]
        assert body["model"] == "gpt-4o-mini" and body["max_completion_tokens"] == 33
        assert body["messages"][0] == {"role": "system", "content": "sys"}
        image = body["messages"][1]["content"][1]
        assert image["type"] == "image_url"
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA
        assert req["headers"]["Authorization"] == f"Bearer {KEY}"
        for kind, status in ((TransientError, 429), (TransientError, 500),
                             (TransientError, None), (PermanentError, 400), (AuthError, 401)):
            with pytest.raises(kind) as ei:
                client.complete(["hi"])
            assert ei.value.status == status and KEY not in str(ei.value)
        assert srv.key_leaks(KEY) == []


@pytest.mark.parametrize("provider", ["gemini", "openai"])
def test_a_key_echoed_by_the_server_is_scrubbed_from_errors(keys, provider):
    with FakeLLMServer(plan=["400", "500"], echo_key_in_errors=True) as srv:
        url = srv.base_url if provider == "gemini" else srv.openai_base_url
        client = make_client(provider, "m", base_url=url, timeout=5)
        for kind in (PermanentError, TransientError):
            with pytest.raises(kind) as ei:
                client.complete(["hi"])
            assert "you sent" in str(ei.value) and "[redacted]" in str(ei.value)
            assert KEY not in str(ei.value) and KEY not in repr(ei.value.args)


def test_missing_key_names_the_variable(monkeypatch):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AuthError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        make_client("gemini", "gemini-2.5-flash")
    with pytest.raises(AuthError, match="OPENAI_API_KEY"):
        make_client("openai", "gpt-4o")
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)          # the fallback variable works
    assert make_client("gemini", "gemini-2.5-flash").name == "gemini:gemini-2.5-flash"
    with pytest.raises(ValueError, match="unknown provider"):
        make_client("claude", "x")


def test_image_from_file_reencodes_formats_apis_do_not_take(tmp_path):
    PILImage.new("RGB", (4, 4), "blue").save(tmp_path / "a.bmp")
    PILImage.new("RGB", (4, 4), "blue").save(tmp_path / "b.jpg")
    bmp, jpg = Image.from_file(str(tmp_path / "a.bmp")), Image.from_file(str(tmp_path / "b.jpg"))
    assert bmp.mime_type == "image/png" and bmp.data.startswith(b"\x89PNG")
    assert jpg.mime_type == "image/jpeg" and jpg.data == (tmp_path / "b.jpg").read_bytes()
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="c.png"):
        Image.from_file(str(tmp_path / "c.png"))


def test_fake_server_faults_are_seeded_and_capped(keys):
    def run(seed):
        with FakeLLMServer(lambda r: "ok", faults={"429": 0.3, "500": 0.3}, seed=seed,
                           max_faults_per_body=2) as srv:
            client = make_client("gemini", "m", base_url=srv.base_url, timeout=5)
            for i in range(30):
                for _ in range(3):          # the third try of a body never faults
                    try:
                        client.complete([f"q{i}"])
                        break
                    except TransientError:
                        pass
                else:
                    raise AssertionError("a body faulted more than max_faults_per_body")
            return [r["fault"] for r in srv.requests]

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert {"429", "500"} <= set(a)


def test_estimate_cost_uses_the_price_table():
    assert estimate_cost("gemini:gemini-2.5-flash", 1_000_000, 1_000_000) == pytest.approx(2.80)
    assert estimate_cost("gemini:no-such-model", 10, 10) is None
    assert estimate_cost("x:y", 2_000_000, 0, {"x:y": (1.0, 5.0)}) == pytest.approx(2.0)
