"""Annotation: the Gemini annotator against a local fake of the Gemini API with injected
faults, a kill -9 mid-job, the demo ground-truth annotator, merging annotations into
records, and agreement statistics against hand-computed values."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from PIL import Image as PILImage

from fake_llm_server import FakeLLMServer, count_images, prompt_text
from mmalign_jax.annotate import (GUIDE_VERSION, AnnotationFileError, LLMAnnotator,
                                  InvalidAnswer, agreement, annotate_records,
                                  apply_annotations, parse_answer)
from mmalign_jax.annotate.__main__ import main as cli_main
from mmalign_jax.data.pairs import make_pairs
from mmalign_jax.data.records import ATTRIBUTES, Record, Response, load_records
from mmalign_jax.demo.annotator import DemoAnnotator
from mmalign_jax.remote import RateLimiter, make_client

KEY = "FAKE-KEY-annotate-5b2e8d41c9"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATE = re.compile(r'<candidate number="(\d+)">\n(.*?)\n</candidate>', re.S)


# --------------------------------------------------------------------------- fixtures
def expected_scores(text: str) -> dict:
    """What the fake model answers for a candidate: a function of its text only."""
    q = int(re.search(r"quality (\d)", text).group(1))
    return {"helpfulness": q, "correctness": min(4, q + 1), "coherence": 4,
            "complexity": (q + 2) % 5, "verbosity": 2}


def responder(req: dict) -> str:
    """A fake annotator model: rates each candidate from the 'quality N' in its text;
    a candidate containing POISON always gets an out-of-range score."""
    cands = CANDIDATE.findall(prompt_text(req))
    assert cands, "the prompt shows the candidates"
    ratings = []
    for num, text in cands:
        s = expected_scores(text)
        if "POISON" in text:
            s["correctness"] = 7
        ratings.append({"candidate": int(num), **s})
    return json.dumps({"reasoning": f"compared {len(cands)} answers", "ratings": ratings})


def write_records(folder, n_prompts, n_cands=3, poison=(), extra_rows=()):
    img_dir = folder / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_prompts):
        PILImage.new("RGB", (6, 6), (p * 9 % 256, 40, 90)).save(img_dir / f"p{p}.png")
        texts = [f"Answer {c} to prompt {p}: quality {(p + c) % 5}." for c in range(n_cands)]
        if p in poison:
            texts[-1] += " POISON"
        rows.append({"id": f"rec-{p:03d}", "images": [f"p{p}.png"],
                     "conversation": [{"role": "user",
                                       "content": f"<image>\nWhat is in picture {p}?"}],
                     "responses": [{"text": t, "source": "test"} for t in texts]})
    path = folder / "records.jsonl"
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_rows:
            f.write(line + "\n")
    return path, img_dir, rows


@pytest.fixture
def env_key(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_no_key_in_files(folder):
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert KEY.encode() not in f.read(), f"API key found in {name}"


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("text,problem", [
    ("", "empty"),
    ('{"reasoning": "x", "ratings": [', "not valid JSON"),
    ('{"ratings": []}', "reasoning"),
    ('{"reasoning": "x", "ratings": [{"candidate": 1, "helpfulness": 1, "correctness": 1, '
     '"coherence": 1, "complexity": 1, "verbosity": 1}]}', "no rating for candidate 2"),
    ('{"reasoning": "x", "ratings": [{"candidate": 3}]}', "not a candidate number 1..2"),
    ('{"reasoning": "x", "ratings": [{"candidate": 1, "helpfulness": 5, "correctness": 1, '
     '"coherence": 1, "complexity": 1, "verbosity": 1}]}',
     "candidate 1 helpfulness = 5 is outside"),
    ('{"reasoning": "x", "ratings": [{"candidate": 1, "helpfulness": 2.5, "correctness": 1, '
     '"coherence": 1, "complexity": 1, "verbosity": 1}]}', "2.5 is not an integer"),
    ('{"reasoning": "x", "ratings": [{"candidate": 1, "helpfulness": "3", "correctness": 1, '
     '"coherence": 1, "complexity": 1, "verbosity": 1}]}', "not an integer"),
    ('{"reasoning": "x", "ratings": [{"candidate": 1, "helpfulness": 1, "correctness": 1}]}',
     "lacks coherence, complexity, verbosity"),
])
def test_parse_answer_rejects_unusable_answers(text, problem):
    with pytest.raises(InvalidAnswer, match=re.escape(problem)):
        parse_answer(text, 2)


def test_parse_answer_accepts_a_good_answer_in_any_rating_order():
    r = {a: 2 for a in ATTRIBUTES}
    text = "```json\n" + json.dumps({"reasoning": "ok", "ratings": [
        {"candidate": 2, **r, "verbosity": 4.0}, {"candidate": 1, **r}]}) + "\n```"
    reasoning, scores = parse_answer(text, 2)
    assert reasoning == "ok"
    assert scores == [r, {**r, "verbosity": 4}] and type(scores[1]["verbosity"]) is int


# --------------------------------------------------------------------------- the job
def test_job_survives_faults_records_failures_and_resumes(tmp_path, env_key):
    path, img_dir, rows = write_records(tmp_path, 12, poison={5})
    records = load_records(str(path), image_root=str(img_dir)).records
    out = str(tmp_path / "ann.jsonl")
    faults = {"429": 0.15, "500": 0.15, "hang": 0.06, "malformed": 0.15}
    with FakeLLMServer(responder, faults=faults, seed=3, hang_s=3.0) as srv:
        client = make_client("gemini", "gemini-2.5-flash", base_url=srv.base_url, timeout=0.8)
        ann = LLMAnnotator(client, image_root=str(img_dir), max_reasks=3, max_retries=5,
                              base_delay=0.01, max_delay=0.05, seed=0,
                              rate_limiter=RateLimiter(6000))
        report = annotate_records(records, ann, out, concurrency=4, progress=False)
        injected = srv.faults_injected()
        assert {"429", "500", "hang", "malformed"} <= set(injected), injected
        # Every request shows the image and all candidates; only the header carries the key.
        assert all(count_images(r["json"]) == 1 for r in srv.requests)
        assert srv.key_leaks(KEY) == []
        n_requests = len(srv.requests)

        # Exactly one row per candidate of every good record, with the right scores.
        got = read_lines(out)
        assert Counter((r["id"], r["candidate"]) for r in got).most_common(1)[0][1] == 1
        good = [r for r in rows if r["id"] != "rec-005"]
        assert {(r["id"], r["candidate"]) for r in got} == \
            {(r["id"], c) for r in good for c in range(3)}
        for row in got:
            assert row["text"] == rows[int(row["id"][4:])]["responses"][row["candidate"]]["text"]
            assert row["scores"] == expected_scores(row["text"])
            assert row["guide_version"] == GUIDE_VERSION
            assert row["model"] == "gemini:gemini-2.5-flash"
            assert row["reasoning"] == "compared 3 answers"

        # The poisoned record is a failure, listed with its reason and raw answer.
        assert [f["id"] for f in report.failed] == ["rec-005"]
        assert "correctness = 7 is outside 0–4" in report.failed[0]["reason"]
        failures = read_lines(str(tmp_path / "ann.failures.jsonl"))
        assert [f["id"] for f in failures] == ["rec-005"]
        assert failures[0]["attempts"] == 4 == len(failures[0]["raw_all"])   # 1 ask + 3 re-asks
        assert failures[0]["raw"] == failures[0]["raw_all"][-1]
        assert any('"correctness": 7' in raw for raw in failures[0]["raw_all"])
        assert report.scored == 33 and report.candidates == 36 and not report.complete
        assert report.input_tokens > 0 and report.output_tokens > 0
        assert report.cost_usd == pytest.approx(
            (report.input_tokens * 0.30 + report.output_tokens * 2.50) / 1e6)
        saved = json.loads((tmp_path / "ann.report.json").read_text())
        assert saved["failed"][0]["id"] == "rec-005" and saved["complete"] is False

        # Rerun: nothing finished is redone; only the failed record is asked again.
        report2 = annotate_records(records, ann, out, concurrency=4, progress=False)
        assert report2.done_before == 33 and report2.annotated_now == 0
        assert report2.prompts_attempted == 1
        assert {r["json"] and CANDIDATE.findall(prompt_text(r["json"]))[0][1][:21]
                for r in srv.requests[n_requests:]} == {"Answer 0 to prompt 5:"}
        assert len(read_lines(out)) == 33
    assert_no_key_in_files(tmp_path)


def test_kill_minus_9_mid_job_then_rerun_loses_and_repeats_nothing(tmp_path):
    path, img_dir, rows = write_records(tmp_path, 24, n_cands=4)
    out = tmp_path / "out" / "ann.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "OPENAI_API_KEY")}
    env.update(GEMINI_API_KEY=KEY, PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    faults = {"429": 0.15, "500": 0.15, "malformed": 0.1, "hang": 0.03}
    with FakeLLMServer(responder, faults=faults, seed=11, hang_s=3.0) as srv:
        def cli(rate):
            return [sys.executable, "-m", "mmalign_jax.annotate", "--records", str(path),
                    "--image-root", str(img_dir), "--out", str(out), "--model",
                    "gemini-2.5-flash", "--base-url", srv.base_url, "--concurrency", "3",
                    "--rate-per-minute", str(rate), "--timeout", "1.0", "--max-retries", "6",
                    "--retry-base-delay", "0.01", "--retry-max-delay", "0.05"]

        logs = []
        with open(tmp_path / "run1.out", "w") as so, open(tmp_path / "run1.err", "w") as se:
            proc = subprocess.Popen(cli(240), cwd=str(tmp_path), env=env, stdout=so, stderr=se)
            deadline = time.time() + 60
            while time.time() < deadline:
                n = len(out.read_bytes().splitlines()) if out.exists() else 0
                if n >= 12 or proc.poll() is not None:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
        n_at_kill = len(out.read_bytes().splitlines())
        assert 12 <= n_at_kill < 96, n_at_kill

        run2 = subprocess.run(cli(0), cwd=str(tmp_path), env=env, capture_output=True,
                              text=True, timeout=120)
        logs += [(tmp_path / "run1.out").read_text(), (tmp_path / "run1.err").read_text(),
                 run2.stdout, run2.stderr]
        assert run2.returncode == 0, run2.stderr[-3000:]
        assert srv.key_leaks(KEY) == []
        assert all(r["headers"].get("x-goog-api-key") == KEY for r in srv.requests)

    got = read_lines(out)
    counts = Counter((r["id"], r["candidate"]) for r in got)
    assert set(counts) == {(r["id"], c) for r in rows for c in range(4)}   # nothing lost
    assert max(counts.values()) == 1                                       # nothing twice
    for row in got:
        assert row["scores"] == expected_scores(row["text"])
    report = json.loads((tmp_path / "out" / "ann.report.json").read_text())
    assert report["complete"] and report["scored"] == 96 and report["candidates"] == 96
    assert report["done_before"] >= n_at_kill - 1     # a torn last line may be redone
    assert "complete: every candidate is scored" in run2.stderr
    for text in logs:
        assert KEY not in text
    assert_no_key_in_files(tmp_path)


def test_bad_records_are_reported_by_id_and_exit_nonzero(tmp_path, env_key, capsys):
    bad = [
        json.dumps({"id": "bad-empty", "conversation": [{"role": "user", "content": "q"}],
                    "responses": [{"text": "ok quality 1"}, {"text": "   "}]}),
        json.dumps({"id": "bad-image", "images": ["missing.png"],
                    "conversation": [{"role": "user", "content": "<image>\nq"}],
                    "responses": [{"text": "a quality 1"}]}),
        json.dumps({"id": "bad-none", "conversation": [{"role": "user", "content": "q"}]}),
        "{not json",
    ]
    path, img_dir, rows = write_records(tmp_path, 2, extra_rows=bad)
    out = tmp_path / "ann.jsonl"
    with FakeLLMServer(responder) as srv:
        rc = cli_main(["--records", str(path), "--image-root", str(img_dir), "--out", str(out),
                       "--base-url", srv.base_url, "--no-progress", "--rate-per-minute", "0"])
    err = capsys.readouterr().err
    assert rc == 1
    report = json.loads((tmp_path / "ann.report.json").read_text())
    assert {r["id"] for r in report["rejected"]} == {"bad-empty", "bad-image", "bad-none", None}
    reasons = {r["id"]: r["reason"] for r in report["rejected"]}
    assert "responses[1].text" in reasons["bad-empty"]
    assert "missing.png" in reasons["bad-image"]
    assert "no candidate responses" in reasons["bad-none"]
    for rid in ("bad-empty", "bad-image", "bad-none"):
        assert rid in err
    assert report["scored"] == 6 == len(read_lines(out))     # the good records are done
    assert (tmp_path / "ann.rejects.jsonl").exists()


def test_auth_error_stops_the_job(tmp_path, env_key):
    path, img_dir, _ = write_records(tmp_path, 20)
    records = load_records(str(path), image_root=str(img_dir)).records
    with FakeLLMServer(responder, plan=["401"] * 200) as srv:
        client = make_client("gemini", "gemini-2.5-flash", base_url=srv.base_url, timeout=2)
        ann = LLMAnnotator(client, image_root=str(img_dir), base_delay=0.01, max_delay=0.02)
        report = annotate_records(records, ann, str(tmp_path / "a.jsonl"), concurrency=1,
                                  progress=False)
        assert len(srv.requests) <= 3
    assert report.aborted and "check the API key" in report.aborted
    assert len(report.not_started) >= 17 and not report.complete
    assert KEY not in json.dumps(report.to_json())


# --------------------------------------------------------------------------- demo + merge
def test_demo_annotator_reproduces_demo_scores_and_feeds_pairs(tmp_path):
    from mmalign_jax.demo import write_dataset
    paths = write_dataset(str(tmp_path / "demo"), n_train=12, n_eval=2, n_text_train=4)
    records = load_records(paths["train"]).records + load_records(paths["train_text"]).records
    out = str(tmp_path / "demo_ann.jsonl")
    report = annotate_records(records, DemoAnnotator(), out, progress=False)
    assert report.complete and report.scored == sum(len(r.responses) for r in records)
    rows = {(r["id"], r["candidate"]): r for r in read_lines(out)}
    for rec in records:
        for i, resp in enumerate(rec.responses):
            assert rows[(rec.id, i)]["scores"] == resp.scores, (rec.id, i)

    stripped = [Record(r.id, r.images, r.conversation,
                       [Response(x.text, x.source) for x in r.responses], r.meta)
                for r in records]
    merged = apply_annotations(stripped, out)
    assert [[x.scores for x in r.responses] for r in merged] == \
        [[x.scores for x in r.responses] for r in records]
    assert all(x.scores is None for r in stripped for x in r.responses)   # inputs untouched
    assert make_pairs(merged) == make_pairs(records)

    # Candidates changed after annotation: their old scores must not be reused.
    changed = stripped[:1] + [Record(r.id, r.images, r.conversation,
                                     [Response(x.text + " (edited)") for x in r.responses],
                                     r.meta) for r in stripped[1:3]]
    with pytest.raises(AnnotationFileError, match=re.escape(repr(stripped[1].id))):
        apply_annotations(changed, out)
    assert [r.id for r in apply_annotations(changed, out, missing="drop")] == [stripped[0].id]
    kept = apply_annotations(changed, out, missing="keep")
    assert kept[1].responses[0].scores is None and kept[0].responses[0].scores is not None


def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    from mmalign_jax.store import JobLocked, exclusive_lock
    from mmalign_jax.demo import write_dataset
    records = load_records(write_dataset(str(tmp_path / "d"), n_train=2, n_eval=1)["train"]).records
    out = str(tmp_path / "ann.jsonl")
    held = exclusive_lock(str(tmp_path / "ann.lock"), "test")   # as if another job ran
    with pytest.raises(JobLocked, match="another annotation job"):
        annotate_records(records, DemoAnnotator(), out, progress=False)
    held.close()
    assert annotate_records(records, DemoAnnotator(), out, progress=False).complete


def test_demo_cli_and_non_demo_records_fail_by_id(tmp_path, capsys):
    path, img_dir, _ = write_records(tmp_path, 2)
    rc = cli_main(["--records", str(path), "--image-root", str(img_dir),
                   "--out", str(tmp_path / "d.jsonl"), "--annotator", "demo", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "rec-000" in err and "not a demo record" in err


# --------------------------------------------------------------------------- agreement
def _write_ann(path, table, model):
    with open(path, "w") as f:
        for rid, cands in table.items():
            for i, (h, c, coh, cx, v) in enumerate(cands):
                f.write(json.dumps({
                    "key": json.dumps([rid, i, model]), "id": rid, "candidate": i,
                    "text": f"{rid} answer {i}", "model": model, "guide_version": "g",
                    "scores": {"helpfulness": h, "correctness": c, "coherence": coh,
                               "complexity": cx, "verbosity": v}}) + "\n")


# (helpfulness, correctness, coherence, complexity, verbosity) per candidate
TABLE_A = {"p1": [(4, 4, 4, 2, 0), (2, 2, 3, 2, 1), (1, 0, 2, 2, 2)],     # sums 12, 7, 3
           "p2": [(3, 3, 3, 2, 3), (3, 4, 3, 2, 4), (0, 1, 1, 2, 0)],     # sums 9, 10, 2
           "p3": [(4, 4, 4, 2, 1), (1, 1, 1, 2, 2)]}                      # sums 12, 3
TABLE_B = {"p1": [(3, 4, 4, 1, 0), (3, 3, 3, 2, 1), (2, 1, 1, 3, 2)],     # sums 11, 9, 4
           "p2": [(4, 3, 4, 1, 3), (3, 3, 3, 2, 4), (3, 4, 3, 3, 0)],     # sums 11, 9, 10
           "p3": [(2, 2, 2, 1, 1), (2, 2, 2, 2, 2)]}                      # sums 6, 6


def test_agreement_equals_hand_computed_values(tmp_path, capsys):
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    _write_ann(a, TABLE_A, "A")
    _write_ann(b, TABLE_B, "B")
    res = agreement(a, b)
    assert res["candidates_matched"] == 8 and res["prompts_matched"] == 3

    # helpfulness A = [4,2,1,3,3,0,4,1] (mean 9/4), B = [3,3,2,4,3,3,2,2] (mean 11/4).
    # 4(A-mean) = [7,-1,-5,3,3,-9,7,-5], 4(B-mean) = [1,1,-3,5,1,1,-3,-3]:
    # Σxy = 24, Σx² = 248, Σy² = 56 (all ×16, which cancels).
    h = res["attributes"]["helpfulness"]
    assert h["pearson"] == pytest.approx(24 / math.sqrt(248 * 56))
    # average ranks A = [7.5,4,2.5,5.5,5.5,1,7.5,2.5], B = [5.5,5.5,2,8,5.5,5.5,2,2], mean 4.5:
    # Σxy = 6, Σx² = 40.5, Σy² = 35.
    assert h["spearman"] == pytest.approx(6 / math.sqrt(40.5 * 35))
    assert h["exact"] == pytest.approx(1 / 8)
    assert h["mean_abs_diff"] == pytest.approx(10 / 8)
    # complexity is constant in A: correlation undefined; verbosity identical in A and B.
    assert res["attributes"]["complexity"]["pearson"] is None
    assert res["attributes"]["complexity"]["spearman"] is None
    assert res["attributes"]["verbosity"]["pearson"] == pytest.approx(1.0)
    assert res["attributes"]["verbosity"]["exact"] == 1.0

    # Published rule (H+C+Coh, margin 2). From A: p1 (0, 1|2) B agrees (11 > 9, 4);
    # p2 (1, 2) B disagrees (9 < 10); p3 (0, 1) B ties (6 = 6).
    assert res["pairs_a_judged_by_b"] == {"pairs": 3, "agree": 1, "tie": 1, "disagree": 1,
                                          "agreement": pytest.approx(1 / 3)}
    # From B: p1 (0, 1|2) A agrees (12 > 7, 3); p2 (0, 1) A disagrees (9 < 10); p3 no pair.
    assert res["pairs_b_judged_by_a"] == {"pairs": 2, "agree": 1, "tie": 0, "disagree": 1,
                                          "agreement": pytest.approx(0.5)}

    # Score differences over unordered pairs (both orders are in the data, means are 0):
    # p1 (5,2) (9,7) (4,5); p2 (-1,2) (7,1) (8,-1); p3 (9,0)
    # Σ dA·dB = 90, Σ dA² = 317, Σ dB² = 84.
    d = res["score_differences"]
    assert d["n"] == 14
    assert d["pearson"] == pytest.approx(90 / math.sqrt(317 * 84))

    rc = cli_main(["agreement", a, b, "--json", str(tmp_path / "agr.json")])
    text = capsys.readouterr().out
    assert rc == 0 and "helpfulness" in text and "agreement 0.333" in text
    saved = json.loads((tmp_path / "agr.json").read_text())
    assert saved["score_differences"]["pearson"] == pytest.approx(d["pearson"])


def test_agreement_refuses_mixed_annotators_unless_told(tmp_path):
    a = tmp_path / "a.jsonl"
    _write_ann(str(a), TABLE_A, "A")
    _write_ann(str(tmp_path / "b.jsonl"), TABLE_B, "B")
    with open(a, "a") as f:
        f.write((tmp_path / "b.jsonl").read_text())
    with pytest.raises(AnnotationFileError, match="several annotators"):
        agreement(str(a), str(tmp_path / "b.jsonl"))
    res = agreement(str(a), str(tmp_path / "b.jsonl"), model_a="B")
    assert res["attributes"]["helpfulness"]["pearson"] == pytest.approx(1.0)
