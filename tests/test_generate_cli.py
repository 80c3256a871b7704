"""The candidate-sampling command (`python -m mmalign_jax.generate`, generate/candidates.py) on a
tiny random LLaVA saved as a llava-hf folder with the demo tokenizer: resume after a real
SIGKILL writes the same bytes as an uninterrupted run, n samples per prompt with distinct
seeds in `source`, SFT-style records answered at their last user turn, SteerLM attribute
strings in the tokenized prompt, argument errors that say what to change.

A workdir checkpoint of ours is exercised in test_steerlm_rs.py (generation from the SteerLM
run it trains)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import subprocess_env

from mmalign_jax.data import chat
from mmalign_jax.data import records as records_lib
from mmalign_jax.generate import candidates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PROMPTS = 12
MODEL = "tiny-random"
# batch 2 over data=2 devices: 6 batches, data-parallel; the same in-process and subprocess.
BASE = {"batch_size": 2, "mesh.num_devices": 2, "mesh.shape.data": 2, "sampling.n": 3,
        "sampling.temperature": 0.7, "sampling.max_new_tokens": 12, "progress": False,
        "model_name": MODEL}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(hf folder, demo data paths): a random `tiny` model + demo tokenizer, 12 demo prompts."""
    from mmalign_jax import convert
    from mmalign_jax.demo import generate as demo_gen
    from mmalign_jax.demo import tokenizer as demo_tok
    from mmalign_jax.models import presets

    root = tmp_path_factory.mktemp("gen")
    cfg = presets.get_preset("tiny")
    params = random_params(cfg)
    hf = str(root / "hf")
    convert.save_hf_llava(cfg, params, hf)
    demo_tok.load_tokenizer().save_pretrained(hf)
    paths = demo_gen.write_dataset(root / "data", N_PROMPTS, 2, seed=0, n_text_train=2,
                                   n_text_eval=1, n_sft_train=4, n_sft_eval=1)
    return hf, paths


def random_params(cfg, seed=0):
    """Random weights drawn in numpy from the abstract shapes (10-20x faster than running
    `llava.init_params` on this machine): N(0, 0.05) matrices, unit norm scales, zero biases."""
    from mmalign_jax.models import llava
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith("scale"):
            return np.ones(leaf.shape, leaf.dtype)
        if name.endswith("bias"):
            return np.zeros(leaf.shape, leaf.dtype)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    return jax.tree_util.tree_map_with_path(draw, llava.abstract_params(cfg))


def load_config(preset="demo"):
    spec = importlib.util.spec_from_file_location("_gen_config",
                                                  os.path.join(ROOT, "configs", "generate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(preset)


def config(setup, out, split="train", **over):
    hf, paths = setup
    c = load_config()
    ov = {"checkpoint": hf, "records": paths[split], "image_root": paths["image_root"],
          "out": str(out), **BASE, **over}
    for key, value in ov.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c, ov


def _cmd(ov: dict, *extra) -> list:
    return [sys.executable, "-m", "mmalign_jax.generate", "--config",
            os.path.join(ROOT, "configs", "generate.py"),
            *[f"--config.{k}={v}" for k, v in ov.items()], *extra]


def _complete_lines(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


_RUNS: dict = {}


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """Run A: the 12 prompts sampled in one go (in this process)."""
    if "a" not in _RUNS:
        out = tmp_path_factory.mktemp("run_a") / "cands.jsonl"
        c, _ = config(setup, out)
        summary = candidates.run(c)
        _RUNS["a"] = out, summary
    return _RUNS["a"]


# --------------------------------------------------------------------------------- tests

def test_resume_after_sigkill_equals_uninterrupted(setup, uninterrupted, tmp_path):
    out_a, summary_a = uninterrupted
    assert summary_a["generated"] == N_PROMPTS and summary_a["already_done"] == 0
    bytes_a = out_a.read_bytes()
    assert bytes_a.count(b"\n") == N_PROMPTS

    out_b = tmp_path / "cands.jsonl"
    _, ov = config(setup, out_b)
    log_path = tmp_path / "b.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_cmd(ov), cwd=ROOT, env=subprocess_env(), stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while _complete_lines(out_b) < 3:      # at least one whole batch of 2 written
            if proc.poll() is not None:
                pytest.fail("the run ended before writing a row:\n" + log_path.read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("no row after 120 s:\n" + log_path.read_text()[-3000:])
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)   # mid-run: no clean-up, no summary
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = _complete_lines(out_b)
    assert 3 <= written < N_PROMPTS, written          # interrupted before the end
    assert not os.path.exists(str(out_b) + ".summary.json")
    kept = out_b.read_bytes()
    assert bytes_a.startswith(kept[:kept.rindex(b"\n") + 1])

    # Make sure the rerun also meets a half-written batch (as a kill one row earlier would
    # leave) and, as a kill in the middle of a write would, a torn last line.
    if written % 2 == 0:
        lines = kept.split(b"\n")
        written -= 1
        kept = b"\n".join(lines[:written]) + b"\n" + lines[-1]
    with open(out_b, "wb") as f:
        f.write(kept + b'{"id": "demo-vqa-train-0000')
    c, _ = config(setup, out_b)
    summary = candidates.run(c)
    assert summary["already_done"] == written
    assert summary["generated"] == N_PROMPTS - written
    assert out_b.read_bytes() == bytes_a              # byte-identical records
    assert open(str(out_b) + ".torn", "rb").read().startswith(b'{"id": "demo-vqa-train-0000')

    # A third run has nothing left to do.
    again = candidates.run(c)
    assert again["generated"] == 0 and again["already_done"] == N_PROMPTS
    assert out_b.read_bytes() == bytes_a


def test_records_hold_n_samples_with_distinct_seeds(setup, uninterrupted, tmp_path):
    out_a, _ = uninterrupted
    _, paths = setup
    loaded = records_lib.load_records(str(out_a), paths["image_root"], strict=True)
    inputs = {r.id: r for r in records_lib.load_records(paths["train"]).records}
    assert [r.id for r in loaded.records] == list(inputs)        # input order, all of them
    texts = []
    for rec in loaded.records:
        src = inputs[rec.id]
        assert rec.conversation == src.conversation and rec.images == src.images
        assert rec.meta == src.meta                  # the demo scorer needs it
        assert [r.source for r in rec.responses] == [
            f"{MODEL}@T0.7/seed=0/sample={j}" for j in range(3)]
        assert all(r.scores is None and r.text.strip() for r in rec.responses)
        assert all(r.meta["tokens"] <= 12 for r in rec.responses)
        assert len({r.text for r in rec.responses}) == 3, rec.responses   # distinct samples
        texts.append([r.text for r in rec.responses])

    # Another seed gives other samples; the same seed the same ones whatever else is in the
    # batch (a prompt's randomness comes from (seed, record id)): here, two prompts alone.
    c, _ = config(setup, tmp_path / "seed1.jsonl", seed=1, limit=4)
    candidates.run(c)
    other = [[r["text"] for r in json.loads(line)["responses"]]
             for line in open(tmp_path / "seed1.jsonl")]
    assert all(a != b for a, b in zip(texts[:4], other))
    assert json.loads(open(tmp_path / "seed1.jsonl").readline())["responses"][0][
        "source"] == f"{MODEL}@T0.7/seed=1/sample=0"


def test_sft_records_and_attribute_strings_reach_the_prompt(setup, tmp_path, monkeypatch):
    from mmalign_jax.data import pairs
    from mmalign_jax.demo import tokenizer as demo_tok

    seen = []
    real = candidates.generate_tokens

    def spy(model, variables, prompt_ids, prompt_mask, *args, **kw):
        ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
        seen.extend(row[m > 0].tolist() for row, m in zip(ids, mask))
        return real(model, variables, prompt_ids, prompt_mask, *args, **kw)

    monkeypatch.setattr(candidates, "generate_tokens", spy)
    _, paths = setup
    out = tmp_path / "steer.jsonl"
    # SFT-style records (they end with the assistant answer): the prompt is the conversation
    # up to the last user turn; the nemo format chosen explicitly (an HF folder has none).
    c, _ = config(setup, out, split="sft_train", attributes="verbosity=1,Correctness:3",
                  steerlm_format="nemo", batch_size=4)
    summary = candidates.run(c)
    assert summary["generated"] == 4
    tok = demo_tok.load_tokenizer()
    targets = {"helpfulness": 4, "correctness": 3, "coherence": 4, "complexity": 4,
               "verbosity": 1}
    suffix = "\n<extra_id_2>helpfulness:4,correctness:3,coherence:4,complexity:4,verbosity:1"
    assert pairs.attribute_string(targets, "nemo") == suffix
    sft = records_lib.load_records(paths["sft_train"]).records
    rows = [json.loads(line) for line in open(out)]
    assert len(seen) == 4 and len(rows) == 4
    for rec, row, ids in zip(sft, rows, seen):
        assert rec.conversation[-1]["role"] == "assistant"
        question = rec.conversation[-2]
        assert row["conversation"] == [question]          # answer dropped, no attribute string
        assert all(r["source"].endswith("/attributes=helpfulness:4,correctness:3,coherence:4,"
                                         "complexity:4,verbosity:1") for r in row["responses"])
        want = chat.tokenize([{"role": "user", "content": question["content"] + suffix}], tok,
                             template="vicuna_v1", image_token_id=4,
                             num_image_tokens=ids.count(4), add_generation_prompt=True)
        assert ids == want.input_ids.tolist()
        text = tok.decode(ids, skip_special_tokens=False)
        assert "<extra_id_2>helpfulness:4,correctness:3,coherence:4,complexity:4,verbosity:1" in \
            text.replace(" ", "").replace("▁", "")
        assert text.rstrip().endswith("ASSISTANT:")


@pytest.mark.parametrize("value, message", [
    ("verbosity=5", "verbosity=5: value must be in 0–4"),
    ("humour=2", "unknown attribute 'humour'; choose from helpfulness"),
    ("verbosity", "write name=value"),
])
def test_bad_attributes_are_refused_with_a_reason(value, message):
    with pytest.raises(candidates.GenerateError, match="--attributes") as e:
        candidates.parse_targets(value)
    assert message in str(e.value)


def test_cli_errors_and_changed_settings(setup, uninterrupted, tmp_path):
    out_a, _ = uninterrupted
    _, ov = config(setup, out_a)
    res = subprocess.run(_cmd(ov, "--attributes", "helpfulness=4,verbosity=9"), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: --attributes 'helpfulness=4,verbosity=9': verbosity=9: value must be in 0–4" \
        in res.stderr
    # Resuming into an output written with other sampling settings is refused, not mixed.
    c, _ = config(setup, out_a, **{"sampling.n": 2})
    with pytest.raises(candidates.GenerateError, match=r"other settings \(n: 3 → 2\)"):
        candidates.run(c)
    # A second job on the same output is refused while the first holds <out>.lock.
    import fcntl
    with open(str(out_a) + ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        c, _ = config(setup, out_a)
        with pytest.raises(candidates.GenerateError, match="another sampling job is writing"):
            candidates.run(c)
    c, _ = config(setup, tmp_path / "x.jsonl", batch_size=3)
    with pytest.raises(candidates.GenerateError, match=r"batch_size=3 .*data×fsdp = 2"):
        candidates.validate(c, jax.device_count())


def test_prompt_conversation_and_layout():
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"}]
    assert candidates.prompt_conversation(conv) == conv[:4]
    assert candidates.prompt_conversation(conv[:4]) == conv[:4]
    with pytest.raises(ValueError, match="no user turn"):
        candidates.prompt_conversation(conv[:1])
    assert candidates.batch_layout(5, 2) == [[0, 1], [2, 3], [4]]
    keys = candidates.record_keys(0, ["a", "b", "a"])
    assert keys.shape == (3, 2) and (keys[0] == keys[2]).all() and (keys[0] != keys[1]).any()
    assert candidates.source_string("m", 0.7, 3, 1) == "m@T0.7/seed=3/sample=1"


def test_per_prompt_keys_do_not_depend_on_the_batch(setup):
    """With one key per prompt, a prompt's samples are the same whatever shares its batch;
    with one key per batch (the library default) they depend on the row."""
    from mmalign_jax import convert
    from mmalign_jax.generate import SamplingConfig, generate_tokens
    from mmalign_jax.models import llava

    hf, _ = setup
    cfg, params = convert.load_hf_llava(hf)
    model, variables = llava.Llava(cfg), {"params": params}
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(5, 1000, 7).astype(np.int32) for _ in range(3))
    mask = np.ones((2, 7), np.int32)
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, n=2)
    keys = candidates.record_keys(0, ["a", "b"])
    keys_c = candidates.record_keys(0, ["a", "c"])

    def run(rows, k):
        return np.asarray(generate_tokens(model, variables, np.stack(rows), mask, None, None,
                                          sampling, k).tokens)

    ab, ac = run([a, b], keys), run([a, c], keys_c)
    np.testing.assert_array_equal(ab[:2], ac[:2])     # prompt a's 2 samples: same
    assert (ab[0] != ab[1]).any()                     # its two samples differ
    ba = run([b, a], candidates.record_keys(0, ["b", "a"]))
    np.testing.assert_array_equal(ba[2:], ab[:2])     # and in another row
    one_key = run([b, a], jax.random.key(0))
    assert (one_key[2:] != ab[:2]).any()
    with pytest.raises(ValueError, match="one key per prompt"):
        run([a, b], candidates.record_keys(0, ["a", "b", "c"]))
