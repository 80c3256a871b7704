"""`python -m mmalign_jax.generate` and `python -m mmalign_jax.evaluate` on a Qwen2.5-VL
Hugging Face folder (random tiny weights, a Qwen-like tokenizer with its chat template)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("transformers")

from conftest import subprocess_env  # noqa: E402
from test_chat_qwen import build_qwen_like  # noqa: E402

from mmalign_jax.models import registry  # noqa: E402
from mmalign_jax.models.qwen2_5_vl import presets  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(path, seed, size):
    from PIL import Image
    rs = np.random.RandomState(seed)
    Image.fromarray(rs.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tok = build_qwen_like()
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    cfg = presets.qwen25_vl_tiny(vocab_size=512, image_token_id=ids["<|image_pad|>"])
    cfg = cfg.replace(vision_start_token_id=ids["<|vision_start|>"],
                      vision_end_token_id=ids["<|vision_end|>"],
                      text=cfg.text.__class__(**{**cfg.text.__dict__,
                                                 "eos_token_id": ids["<|im_end|>"],
                                                 "pad_token_id": ids["<|endoftext|>"]}))
    family = registry.get("qwen2_5_vl")
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        return rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, family.abstract_params(cfg))
    out = tmp_path_factory.mktemp("qwen-folder")
    family.save_hf(cfg, params, out)
    tok.save_pretrained(out)
    return str(out)


def test_generate_cli_on_a_qwen_folder(folder, tmp_path):
    os.makedirs(tmp_path / "images")
    recs = []
    for i, size in enumerate([(120, 80), (60, 140), (200, 200)]):
        _image(str(tmp_path / "images" / f"{i}.png"), i, size)
        recs.append({"id": f"q{i}", "images": [f"{i}.png"],
                     "conversation": [{"role": "user", "content": "<image>\nWhat is in the picture?"}]})
    recs.append({"id": "text", "images": [],
                 "conversation": [{"role": "user", "content": "How many dogs are there?"}]})
    with open(tmp_path / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    ov = {"checkpoint": folder, "records": str(tmp_path / "prompts.jsonl"),
          "image_root": str(tmp_path / "images"), "out": str(tmp_path / "out.jsonl"),
          "batch_size": 2, "mesh.num_devices": 2, "mesh.shape.data": 2,
          "sampling.n": 2, "sampling.max_new_tokens": 6,
          "sampling.temperature": 0.7, "progress": False, "model_name": "qwen-tiny"}
    cmd = [sys.executable, "-m", "mmalign_jax.generate", "--config",
           os.path.join(ROOT, "configs", "generate.py"), *[f"--config.{k}={v}" for k, v in ov.items()]]
    r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert sorted(x["id"] for x in rows) == ["q0", "q1", "q2", "text"]
    assert all(len(x["responses"]) == 2 for x in rows)


def test_evaluate_cli_pope_on_a_qwen_folder(folder, tmp_path):
    pp = tmp_path / "pope"
    os.makedirs(pp / "images")
    for i, size in enumerate([(120, 80), (60, 140)]):
        _image(str(pp / "images" / f"COCO_{i}.jpg"), i + 5, size)
    for split in ("random", "popular", "adversarial"):
        with open(pp / f"coco_pope_{split}.json", "w") as f:
            for q in ({"question_id": 1, "image": "COCO_0.jpg", "label": "yes",
                       "text": "Is there a dog in the image?"},
                      {"question_id": 2, "image": "COCO_1.jpg", "label": "no",
                       "text": "Is there a cat in the image?"}):
                f.write(json.dumps(q) + "\n")
    cmd = [sys.executable, "-m", "mmalign_jax.evaluate", "--benchmark", "pope", "--data", str(pp),
           "--model", folder, "--out", str(tmp_path / "results"), "--max-new-tokens", "4",
           "--batch-size", "2"]
    r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.load(open(tmp_path / "results" / "pope" / "result.json"))
    assert result["n_questions"] == 6 and result["n_answers"] == 2
