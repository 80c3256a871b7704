"""configs/rejection_sampling.py and configs/steerlm.py end to end on the tiny model: the SFT
targets are the best candidate (rejection sampling) / every candidate behind its own attribute
string (SteerLM), a few steps train, and SteerLM inference from the trained workdir puts the
target attributes into the prompt in the format the run was trained with."""
from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from mmalign_jax.data import chat
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import data as data_lib
from mmalign_jax.train import defaults, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_EVAL = 16, 4
ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
PAPER = ("\nPlease answer the question such that your response is in the following attributes "
         "in 5-point Likert scale:\n")
# Test-sized settings on top of the demo presets (as tests/test_train.py's TINY).
TINY = {"prepare": "", "model.init_from": "", "data.source": "tfds", "data.seq_len": 192,
        "train.global_batch_size": 8, "train.max_steps": 2, "train.log_every": 1,
        "train.eval_every": 0, "train.checkpoint_every": 100, "train.progress": False,
        "mesh.num_devices": 1, "mesh.shape.data": 1, "mesh.shape.fsdp": 1,
        "mesh.shape.tensor": 1}


def load_config(name: str, preset: str = "demo"):
    spec = importlib.util.spec_from_file_location(f"_config_{name}",
                                                  os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(preset)


def tiny(name: str, workdir, data_dir: str, **over):
    c = load_config(name)
    tok = os.path.join(os.path.dirname(data_dir), "tokenizer")
    for key, value in {"workdir": str(workdir), "data.data_dir": data_dir,
                       "data.tokenizer": tok, **TINY, **over}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(TFDS data dir, raw scored records by id): the demo task, 16 train / 4 eval prompts
    with 5 scored candidates each, built as the demo presets' data stage does."""
    out = os.path.join(str(tmp_path_factory.mktemp("demo")), "data")
    data_dir = demo_recipe.write_data(out, N_TRAIN, N_EVAL, 0, progress=False)["data_dir"]
    raw = {}
    for split in ("train", "eval"):
        with open(os.path.join(out, f"{split}.jsonl")) as f:
            raw.update({r["id"]: r for r in map(json.loads, f)})
    return data_dir, raw, out


def examples(c):
    """Every training example of `c`'s train split: (example id, prompt ids, target ids)."""
    data = data_lib.TrainData(c, loop.model_config(c))
    loader = data._loader("train", shuffle=False, epochs=1, drop_remainder=False)
    out = []
    for batch in loader:
        for row in range(len(batch["weight"])):
            idx = int(batch["example_index"][row])
            if idx < 0:
                continue
            ids, live = batch["input_ids"][row], batch["attention_mask"][row] > 0
            target = batch["target_mask"][row]
            first = int(np.argmax(target))
            assert target[first:live.sum()].all() and not target[:first].any()
            out.append((loader.example_ids[idx], ids[:first].tolist(),
                        ids[first:live.sum()].tolist()))
    return data.tokenizer, out


def pair_score(resp):
    return sum(resp["scores"][a] for a in ("helpfulness", "correctness", "coherence"))


# ------------------------------------------------------------------------------------ tests

def test_configs_are_the_papers_recipe():
    for name, mode in (("rejection_sampling", "best"), ("steerlm", "steerlm")):
        demo_c = load_config(name)
        assert demo_c.method == "sft" and demo_c.data.sft_mode == mode
        assert demo_c.prepare == demo_recipe.PREPARE and "demo_sft" in demo_c
        # the demo's SteerLM trains the whole LM (its attribute tokens need embeddings)
        assert demo_c.lora.enabled == (name == "rejection_sampling")
        assert demo_c.data.train_split == "train" and demo_c.data.eval_split == "eval"
        assert demo_c.workdir == f"workdir/{name}-demo"
        defaults.validate(demo_c, 1)
        for preset in ("llava-1.5-7b", "llava-1.5-13b"):
            c = load_config(name, preset)
            assert (c.optim.lr, c.train.num_epochs, c.train.global_batch_size,
                    c.data.seq_len) == (4e-4, 3, 128, 2048)
            assert (c.lora.rank, c.lora.alpha, c.lora.dropout) == (128, 256.0, 0.05)
            assert c.method == "sft" and c.data.sft_mode == mode
            assert c.workdir == f"workdir/{name}-{preset}" and c.model.preset == preset
    assert load_config("steerlm").data.steerlm_format == "paper"
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("steerlm", "llava-2")


def test_rejection_sampling_targets_the_best_candidate_and_trains(tmp_path, demo):
    data_dir, raw, _ = demo
    c = tiny("rejection_sampling", tmp_path / "rs", data_dir)
    tok, exs = examples(c)
    assert len(exs) == N_TRAIN
    for ex_id, prompt, target in exs:
        resp = raw[ex_id]["responses"]
        scores = [pair_score(r) for r in resp]
        best = resp[scores.index(max(scores))]["text"]          # first of the tops
        assert target[-1] == tok.eos_token_id
        assert tok.decode(target[:-1]).strip() == best.strip()
        others = {r["text"].strip() for r, s in zip(resp, scores) if s < max(scores)}
        assert others and tok.decode(target[:-1]).strip() not in others
        assert "Likert" not in tok.decode(prompt)
    summary = loop.train(c)
    assert summary["steps"] == 2 and math.isfinite(summary["loss"])
    assert os.path.isdir(os.path.join(c.workdir, "checkpoints", "2"))


@pytest.mark.parametrize("fmt", ["paper", "nemo"])
def test_steerlm_examples_carry_their_own_scores(tmp_path, demo, fmt):
    data_dir, raw, _ = demo
    c = tiny("steerlm", tmp_path / "s", data_dir, **{"data.steerlm_format": fmt})
    tok, exs = examples(c)
    assert len(exs) == 5 * N_TRAIN
    for ex_id, prompt, target in exs:
        rid, i = ex_id.rsplit("#", 1)
        rec = raw[rid]
        resp = rec["responses"][int(i)]
        if fmt == "paper":
            suffix = PAPER + ",".join(f"{a.capitalize()}:{resp['scores'][a]}" for a in ATTRS)
        else:
            suffix = "\n<extra_id_2>" + ",".join(f"{a}:{resp['scores'][a]}" for a in ATTRS)
        conv = [{"role": "user", "content": rec["conversation"][0]["content"] + suffix}]
        want = chat.tokenize(conv, tok, template="vicuna_v1", image_token_id=4,
                             num_image_tokens=prompt.count(4), add_generation_prompt=True)
        assert prompt == want.input_ids.tolist()
        assert suffix.strip().split("\n")[-1] in tok.decode(prompt)
        assert tok.decode(target[:-1]).strip() == resp["text"].strip()


def test_steerlm_trains_and_generation_uses_its_attribute_format(tmp_path, demo, monkeypatch):
    from mmalign_jax.generate import candidates

    data_dir, _, raw_dir = demo
    c = tiny("steerlm", tmp_path / "steerlm", data_dir, **{"data.steerlm_format": "nemo"})
    summary = loop.train(c)
    assert summary["steps"] == 2 and math.isfinite(summary["loss"])

    seen = []
    real = candidates.generate_tokens

    def spy(model, variables, prompt_ids, prompt_mask, *args, **kw):
        ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
        seen.extend(row[m > 0].tolist() for row, m in zip(ids, mask))
        return real(model, variables, prompt_ids, prompt_mask, *args, **kw)

    monkeypatch.setattr(candidates, "generate_tokens", spy)
    g = load_config("generate")
    g.checkpoint = c.workdir                 # a workdir of ours: format, template from it
    g.records = os.path.join(raw_dir, "eval.jsonl")
    g.image_root = os.path.join(raw_dir, "images")
    g.out = str(tmp_path / "steered.jsonl")
    g.attributes = "verbosity=0,complexity=1"
    g.batch_size, g.sampling.n, g.sampling.max_new_tokens = 4, 2, 8
    g.mesh.num_devices, g.mesh.shape.data = 1, 1
    g.progress = False
    out = candidates.run(g)
    assert out["generated"] == N_EVAL and out["settings"]["steerlm_format"] == "nemo"
    tok = data_lib.load_tokenizer(c)[0]
    line = "<extra_id_2>helpfulness:4,correctness:4,coherence:4,complexity:1,verbosity:0"
    assert len(seen) == N_EVAL and all(line in tok.decode(ids) for ids in seen)
    rows = [json.loads(x) for x in open(g.out)]
    assert all(r["responses"][0]["source"].startswith("steerlm@T0.7/seed=0/sample=0/attributes=")
               for r in rows)
    assert all("extra_id" not in r["conversation"][-1]["content"] for r in rows)
