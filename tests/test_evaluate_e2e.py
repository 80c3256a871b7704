"""Every benchmark end to end on a tiny random LLaVA (saved as a llava-hf folder with the demo
tokenizer, loaded by `answers.load_model`) with the fake judge server on 127.0.0.1 speaking
the OpenAI and Gemini APIs: answers, judging with injected faults, result.json, resuming
(nothing finished is redone), the irrelevant-image mode, the workdir loader, the report."""
from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest

from fake_llm_server import FakeLLMServer, prompt_text
from mmalign_jax.evaluate import __main__ as cli
from mmalign_jax.evaluate import answers as A
from mmalign_jax.evaluate import judge as J
from mmalign_jax.evaluate import llava_bench, mmbench, mmvet, mtbench, pope
from mmalign_jax.generate import SamplingConfig

SAMPLING = SamplingConfig(max_new_tokens=8)
BATCH = 4


# ------------------------------------------------------------------------------ fixtures

def _image(path, seed):
    from PIL import Image
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (40 + 8 * seed, 48, 3), np.uint8)).save(path)


def _jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import jax

    from mmalign_jax import convert
    from mmalign_jax.demo.tokenizer import load_tokenizer
    from mmalign_jax.models import llava, presets

    # Random weights drawn with numpy on the abstract shapes: the same model as a seeded
    # init for this purpose, without compiling the init (~10 s on a loaded 2-core machine).
    cfg = presets.get_preset("tiny")
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        return rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, llava.abstract_params(cfg))
    path = tmp_path_factory.mktemp("tiny-llava")
    convert.save_hf_llava(cfg, params, str(path))
    load_tokenizer().save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(model_dir):
    m = A.load_model(model_dir, name="tiny", batch_size=BATCH)
    assert m.tokenizer.eos_token_id == 2 and m.template == "vicuna_v1"
    return m


class Counting:
    """Wraps an answerer; records every prompt it is asked to answer."""

    def __init__(self, inner):
        self.inner, self.name, self.path = inner, inner.name, getattr(inner, "path", None)
        self.asked = []

    def answer(self, conversations, images, sampling, seed=0):
        self.asked += [(c, len(i)) for c, i in zip(conversations, images)]
        return self.inner.answer(conversations, images, sampling, seed=seed)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    # MT-Bench (FastChat layout); question 91 makes the judge reply without a rating.
    mt = root / "mt_bench"
    _jsonl(str(mt / "question.jsonl"), [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem about shapes.",
                                                             "Make it shorter."]},
        {"question_id": 111, "category": "math", "turns": ["What is two plus three?",
                                                           "And times four?"]},
        {"question_id": 91, "category": "roleplay", "turns": ["Pretend to be UNRATABLE.",
                                                              "Say more."]}])
    _jsonl(str(mt / "reference_answer" / "gpt-4.jsonl"), [
        {"question_id": 111, "model_id": "gpt-4",
         "choices": [{"index": 0, "turns": ["REF-FIVE", "REF-TWENTY"]}]}])
    # MM-Vet
    mv = root / "mm-vet"
    os.makedirs(mv / "images")
    samples = {}
    for i, caps in enumerate([["rec"], ["ocr", "math"], ["rec", "know"]]):
        _image(str(mv / "images" / f"v1_{i}.png"), i)
        samples[f"v1_{i}"] = {"imagename": f"v1_{i}.png", "capability": caps,
                              "question": f"What is shown {i}?", "answer": "a red circle<OR>a circle"}
    (mv / "mm-vet.json").write_text(json.dumps(samples))
    # LLaVA-Bench in-the-wild
    lb = root / "llava-bench"
    os.makedirs(lb / "images")
    for i in range(2):
        _image(str(lb / "images" / f"00{i}.jpg"), i + 3)
    _jsonl(str(lb / "questions.jsonl"), [
        {"question_id": k, "image": f"00{k % 2}.jpg", "text": f"Describe it ({k}).", "category": c}
        for k, c in enumerate(["conv", "detail", "complex"])])
    _jsonl(str(lb / "context.jsonl"), [{"id": f"00{i}", "image": f"00{i}.jpg",
                                        "caption": f"Caption {i}."} for i in range(2)])
    _jsonl(str(lb / "answers_gpt4.jsonl"), [{"question_id": k, "text": f"Reference {k}."}
                                            for k in range(3)])
    # POPE: the same positive question in every split (answered once)
    pp = root / "pope"
    os.makedirs(pp / "images")
    for i in range(3):
        _image(str(pp / "images" / f"COCO_{i}.jpg"), i + 5)
    neg = {"random": "kite", "popular": "person", "adversarial": "chair"}
    for split, obj in neg.items():
        _jsonl(str(pp / f"coco_pope_{split}.json"), [
            {"question_id": 1, "image": "COCO_0.jpg", "text": "Is there a circle in the image?",
             "label": "yes"},
            {"question_id": 2, "image": "COCO_1.jpg", "text": f"Is there a {obj} in the image?",
             "label": "no"},
            {"question_id": 3, "image": "COCO_2.jpg", "text": "Is there a square in the image?",
             "label": "yes"}])
    # MMBench TSV
    buf = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (20, 30), (0, 0, 255)).save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    rows = [["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"],
            ["0", "What color is it?", "nan", "red", "blue", "", "", "B", "color", img],
            ["1", "How many shapes?", "Count them.", "one", "two", "three", "", "A", "count", "0"]]
    (root / "mmbench").mkdir()
    (root / "mmbench" / "mmbench_dev.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return root


def responder(req):
    """The fake judge: MT-Bench 7 (no rating for the UNRATABLE question), MM-Vet 0.6,
    LLaVA-Bench 8 for the reference and 6 for the model."""
    text = prompt_text(req, include_system=True)
    if "Compare the ground truth and prediction" in text:
        return "0.6"
    if "[Assistant 1]" in text:
        return "8 6\nAssistant 1 is more detailed."
    if "impartial judge" in text:
        if "UNRATABLE" in text:
            return "I cannot rate this."
        return "The answer is weak. Rating: [[7]]"
    raise AssertionError("unexpected judge prompt: " + text[:200])


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer(responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


def _mt_cli(model_dir, data, out_root, server):
    return cli.main([
        "--benchmark", "mt-bench", "--data", str(data / "mt_bench"), "--model", model_dir,
        "--name", "tiny", "--out", str(out_root), "--judge", "openai", "--judge-model", "gpt-4",
        "--judge-base-url", server.openai_base_url, "--max-new-tokens", "8",
        "--batch-size", str(BATCH), "--judge-reasks", "1", "--no-progress"])


@pytest.fixture(scope="module")
def mt_bench_run(model_dir, data, out_root, server):
    os.environ.setdefault("OPENAI_API_KEY", "test-key")
    n0 = len(server.calls())
    assert _mt_cli(model_dir, data, out_root, server) == 0
    return {"calls": server.calls()[n0:]}


# --------------------------------------------------------------------------------- tests

def test_mtbench_cli_end_to_end_and_resume(mt_bench_run, model_dir, data, out_root, server,
                                           monkeypatch):
    out = out_root / "mt-bench"
    result = json.load(open(out / "result.json"))
    # 2 questions x 2 turns rated 7; question 91 (both turns) never gets a rating
    assert result["score"] == pytest.approx(7.0) and result["judge"] == "openai:gpt-4"
    assert result["metrics"]["categories"] == {"math": 7.0, "writing": 7.0}
    assert result["metrics"]["n_failed"] == 2
    fails = result["judge_failures"]
    assert (fails["count"], fails["unparsable"]) == (2, 2)
    assert sorted(f["key"] for f in fails["items"]) == ["91/turn1", "91/turn2"]
    assert all(f["replies"] == ["I cannot rate this."] * 2 for f in fails["items"])  # re-asked once
    calls = mt_bench_run["calls"]
    assert len(calls) == 4 + 2 * 2 and all(c["api"] == "openai" for c in calls)
    assert all(c["json"]["model"] == "gpt-4" for c in calls)
    temps = sorted(c["json"]["temperature"] for c in calls)
    assert temps == [0.0] * 6 + [0.5] * 2          # FastChat's 0; a re-ask goes warmer
    math = [prompt_text(c["json"]) for c in calls if "REF-FIVE" in prompt_text(c["json"])]
    assert len(math) == 2 and any("REF-TWENTY" in m for m in math)     # turn 2 has both refs
    # FastChat's model-answer file, both turns
    ma = [json.loads(l) for l in open(out / "model_answer.jsonl")]
    assert [m["question_id"] for m in ma] == [81, 111, 91]
    assert all(len(m["choices"][0]["turns"]) == 2 for m in ma)
    # rerun: no generation, no judge call for what succeeded (the failures are asked again)
    generated = []
    real = A.EvalModel.answer
    monkeypatch.setattr(A.EvalModel, "answer",
                        lambda self, *a, **k: generated.append(1) or real(self, *a, **k))
    n0 = len(server.calls())
    assert _mt_cli(model_dir, data, out_root, server) == 0
    assert generated == []
    again = server.calls()[n0:]
    assert len(again) == 4 and all("UNRATABLE" in prompt_text(c["json"]) for c in again)
    assert json.load(open(out / "result.json"))["score"] == pytest.approx(7.0)


def test_mtbench_turn_two_sees_turn_one_and_irrelevant_image(model, data, out_root, server,
                                                             tmp_path):
    judge = J.Judge(_openai(server), cache=str(tmp_path / "j.jsonl"), progress=False)
    m = Counting(model)
    r = mtbench.run(m, str(data / "mt_bench"), str(out_root / "mt-bench+image"), judge=judge,
                    sampling=SAMPLING, batch_size=BATCH, irrelevant_image="noise", progress=False)
    assert r["benchmark"] == "mt-bench+image" and r["irrelevant_image"] == "noise:0"
    assert r["score"] == pytest.approx(7.0)
    assert len(m.asked) == 6 and all(n == 1 for _, n in m.asked)       # one image per prompt
    turn2 = [c for c, _ in m.asked if len(c) == 3]
    assert len(turn2) == 3
    first = {json.loads(l)["key"]: json.loads(l)["answer"]
             for l in open(out_root / "mt-bench+image" / "answers.jsonl")}
    for conv in turn2:
        assert conv[0]["content"].startswith("<image>\n")
        qid = {"Write": 81, "What ": 111, "Prete": 91}[conv[0]["content"][8:13]]
        assert conv[1] == {"role": "assistant", "content": first[f"{qid}/1"]}


def _openai(server):
    os.environ.setdefault("OPENAI_API_KEY", "test-key")
    from mmalign_jax.remote.client import make_client
    return make_client("openai", "gpt-4", base_url=server.openai_base_url, timeout=10)


def test_mmvet_and_llava_bench_with_a_faulty_gemini_judge(model, data, out_root, monkeypatch,
                                                          tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", "test-gemini-key")
    with FakeLLMServer(responder, faults={"429": 0.25, "500": 0.15, "empty": 0.1},
                       seed=3) as srv:
        def judge(cache):
            return J.make_judge("gemini", "gemini-2.5-flash", base_url=srv.base_url, timeout=10,
                                cache=cache, base_delay=0.01, max_delay=0.05, progress=False)
        m = Counting(model)
        mv = mmvet.run(m, str(data / "mm-vet"), str(out_root / "mm-vet"),
                       judge=judge(str(out_root / "mm-vet" / "judgments.jsonl")),
                       sampling=SAMPLING, batch_size=BATCH, runs=2, progress=False)
        lb = llava_bench.run(m, str(data / "llava-bench"), str(out_root / "llava-bench"),
                             judge=judge(str(out_root / "llava-bench" / "judgments.jsonl")),
                             sampling=SAMPLING, batch_size=BATCH, runs=1, progress=False)
        assert srv.faults_injected()          # the retries got through them
        assert not srv.key_leaks("test-gemini-key")
        n_calls = len(srv.calls())
        # MM-Vet: every sample graded 0.6 in both runs -> 60 everywhere
        assert mv["judge"] == "gemini:gemini-2.5-flash" and mv["judge_failures"]["count"] == 0
        assert mv["score"] == pytest.approx(60.0) and mv["metrics"]["total_std"] == pytest.approx(0.0)
        assert mv["metrics"]["capabilities"] == {c: pytest.approx(60.0)
                                                 for c in ("rec", "know", "math", "ocr")}
        assert json.load(open(out_root / "mm-vet" / "results.json")).keys() == {"v1_0", "v1_1", "v1_2"}
        # LLaVA-Bench: 6 / 8 * 100 in every category
        assert lb["score"] == pytest.approx(75.0) and lb["judge_failures"]["count"] == 0
        assert lb["metrics"]["relative"] == {k: pytest.approx(75.0)
                                             for k in ("all", "conv", "detail", "complex")}
        # LLaVA's review format: system message, reference as Assistant 1
        req = next(c["json"] for c in srv.calls() if "[Assistant 1]" in prompt_text(c["json"]))
        assert req["systemInstruction"]["parts"][0]["text"].startswith("You are a helpful and precise")
        assert "[Assistant 1]\nReference " in prompt_text(req)
        assert len(m.asked) == 3 + 3
        # rerun: nothing generated, nothing judged
        m2 = Counting(model)
        mv2 = mmvet.run(m2, str(data / "mm-vet"), str(out_root / "mm-vet"),
                        judge=judge(str(out_root / "mm-vet" / "judgments.jsonl")),
                        sampling=SAMPLING, batch_size=BATCH, runs=2, progress=False)
        lb2 = llava_bench.run(m2, str(data / "llava-bench"), str(out_root / "llava-bench"),
                              judge=judge(str(out_root / "llava-bench" / "judgments.jsonl")),
                              sampling=SAMPLING, batch_size=BATCH, progress=False)
        assert m2.asked == [] and len(srv.calls()) == n_calls
        assert (mv2["score"], lb2["score"]) == (mv["score"], lb["score"])


def test_pope_and_mmbench_on_the_tiny_model(model, data, out_root):
    m = Counting(model)
    r = pope.run(m, str(data / "pope"), str(out_root / "pope"), sampling=SAMPLING,
                 batch_size=BATCH, progress=False)
    assert r["n_questions"] == 9 and r["n_answers"] == 5 == len(m.asked)  # shared question once
    assert all(c[0]["content"].endswith("Answer the question using a single word or phrase.")
               for c, _ in m.asked)
    rows = [json.loads(l) for l in open(out_root / "pope" / "scores.jsonl")]
    for split in ("random", "popular", "adversarial"):
        preds = [x["prediction"] for x in rows if x["split"] == split]
        assert r["metrics"]["splits"][split]["yes_ratio"] == pytest.approx(preds.count("yes") / 3)
    m = Counting(model)
    r = mmbench.run(m, str(data / "mmbench"), str(out_root / "mmbench"), sampling=SAMPLING,
                    batch_size=BATCH, progress=False)
    assert len(m.asked) == 2 + 3 and r["metrics"]["n_questions"] == 2   # one prompt per rotation
    assert 0.0 <= r["score"] <= 100.0 and r["judge"] is None


class Scripted:
    """An answerer with fixed answers (checks the scoring path end to end by hand)."""
    name, path = "scripted", None

    def __init__(self, fn):
        self.fn = fn

    def answer(self, conversations, images, sampling, seed=0):
        return [self.fn(c[-1]["content"]) for c in conversations]


def test_pope_and_mmbench_scores_by_hand(data, tmp_path):
    # says yes to circles only: random/popular/adversarial each get tp 1, fn 1, tn 1
    r = pope.run(Scripted(lambda q: "Yes, there is." if "circle" in q else "No, there is not."),
                 str(data / "pope"), str(tmp_path / "pope"), progress=False)
    for s in r["metrics"]["splits"].values():
        assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (1, 0, 1, 1)
        assert s["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert r["score"] == pytest.approx(2 / 3)

    # always the text "blue": right on every rotation of question 0; question 1 has no blue
    r = mmbench.run(Scripted(lambda q: "blue"), str(data / "mmbench"), str(tmp_path / "mmb"),
                    progress=False)
    assert r["metrics"]["circular_accuracy"] == pytest.approx(0.5)
    assert r["metrics"]["unextracted"] == 3 and r["score"] == pytest.approx(50.0)
    # always "A": right on round 0 of question 1 only
    r = mmbench.run(Scripted(lambda q: "A"), str(data / "mmbench"), str(tmp_path / "mmb2"),
                    progress=False)
    assert r["metrics"]["accuracy"] == pytest.approx(0.5)
    assert r["metrics"]["circular_accuracy"] == 0.0


def test_answers_are_cached_by_prompt(tmp_path):
    calls = []
    s = Scripted(lambda q: calls.append(q) or q.upper())
    items = [A.AnswerItem("a", [{"role": "user", "content": "one"}]),
             A.AnswerItem("b", [{"role": "user", "content": "two"}])]
    store = str(tmp_path / "answers.jsonl")
    assert A.generate_answers(s, items, store, progress=False) == {"a": "ONE", "b": "TWO"}
    assert A.generate_answers(s, items, store, progress=False) == {"a": "ONE", "b": "TWO"}
    assert calls == ["one", "two"]
    items[1] = A.AnswerItem("b", [{"role": "user", "content": "two, edited"}])
    assert A.generate_answers(s, items, store, progress=False)["b"] == "TWO, EDITED"
    assert calls == ["one", "two", "two, edited"]
    # other decoding settings: answered again
    A.generate_answers(s, items, store, sampling=SamplingConfig(max_new_tokens=3), progress=False)
    assert calls[3:] == ["one", "two, edited"] or calls[3:] == ["two, edited", "one"]


def test_report_cli(mt_bench_run, out_root, tmp_path, capsys):
    assert cli.main(["report", str(out_root), "--out", str(tmp_path), "--title", "tiny"]) == 0
    md = open(tmp_path / "table.md").read()
    assert "| tiny |" in md and "MT-Bench" in md and "openai:gpt-4" in md
    assert "not comparable" in md
    assert os.path.getsize(tmp_path / "table.png") > 1000
    row = json.load(open(tmp_path / "table.json"))["rows"][0]
    assert row["model"] == "tiny" and row["scores"]["mt-bench"] == pytest.approx(7.0)


def test_cli_needs_a_judge_for_judged_benchmarks(model_dir, data, tmp_path, capsys):
    assert cli.main(["--benchmark", "mm-vet", "--data", str(data / "mm-vet"), "--model",
                     model_dir, "--out", str(tmp_path)]) == 2
    assert "--judge" in capsys.readouterr().err


def test_load_model_from_a_training_workdir(model_dir, tmp_path):
    """A workdir of ours (here a LoRA run on top of the llava-hf folder): its base weights
    + the checkpointed trainable variables, LoRA merged; tokenizer and template from its
    config."""
    import importlib.util

    import jax
    import jax.numpy as jnp

    from mmalign_jax import convert
    from mmalign_jax.models import lora as lora_lib
    from mmalign_jax.train import checkpoint as ckpt_lib
    from mmalign_jax.train import loop
    from mmalign_jax.train import state as state_lib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("_cfg_dpo", os.path.join(root, "configs", "dpo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("demo")
    c.workdir = str(tmp_path / "dpo-run")
    c.model.init_from, c.model.hf_checkpoint = "", model_dir
    c.lora.enabled, c.lora.rank = True, 4
    # What the run trained: LoRA adapters (b != 0) and the projector.
    cfg = loop.model_config(c)
    _, params = convert.load_hf_llava(model_dir)
    lora = jax.tree.map(lambda x: x + 0.01, lora_lib.init_lora(cfg, params, jax.random.PRNGKey(1)))
    params["multi_modal_projector"] = jax.tree.map(lambda x: x * 1.5,
                                                   params["multi_modal_projector"])
    trainable, _ = state_lib.split({"params": params, "lora": lora}, state_lib.param_groups(c, loop.loading.model_family(c)))
    assert set(trainable) == {"params", "lora"}
    ck = ckpt_lib.Checkpointer(c.workdir, keep=1, every=1, async_save=False)
    ck.save(7, {"trainable": trainable, "step": jnp.int32(7)}, force=True)
    ck.close()
    with open(os.path.join(c.workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))

    m = A.load_model(c.workdir)
    # the run's data.template is '' (the family's default): LLaVA-1.5's vicuna_v1
    assert m.name == "dpo-run" and m.cfg.lora is None and c.data.template == ""
    assert m.template == "vicuna_v1" and m.image_mode == "pad"
    want = lora_lib.merge(cfg, params, lora)
    for path in (("language_model", "layers", "self_attn", "q_proj", "kernel"),
                 ("language_model", "layers", "mlp", "down_proj", "kernel"),
                 ("multi_modal_projector", "linear_1", "kernel"),
                 ("vision_tower", "pre_layrnorm", "scale")):
        got, exp = m.variables["params"], want
        for k in path:
            got, exp = got[k], exp[k]
        assert np.allclose(np.asarray(got), np.asarray(exp), atol=1e-6), path
    _, base = convert.load_hf_llava(model_dir)
    assert not np.allclose(
        np.asarray(m.variables["params"]["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]),
        np.asarray(base["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]))
    out = m.answer([[{"role": "user", "content": "What color?"}]], [[]], SAMPLING)
    assert len(out) == 1 and isinstance(out[0], str)
