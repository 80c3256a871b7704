"""Write the demo task as records (DESIGN.md "Records") plus PNG images.

    python -m mmalign_jax.demo.generate --out DIR --n-train N --n-eval M --seed S

Every record is a pure function of (stream, split, seed, index): example i of the train split
is the same whatever n is, and train / eval / SFT / text use separate random streams, so the
splits never share a stream. Files written by `write_dataset`:

    images/<id>.png          one per visual record (64×64 by default)
    train.jsonl eval.jsonl   visual prompts with 5 scored candidates each (preference data)
    train_text.jsonl eval_text.jsonl        text-only prompts with scored candidates
    sft_train.jsonl sft_eval.jsonl          visual prompts with a correct assistant turn
    sft_text_train.jsonl sft_text_eval.jsonl  text-only SFT
    manifest.json            counts, seed, paths
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

from . import questions as Q
from . import text_tasks as T
from .scorer import score_answer
from .shapes import Scene, draw_scene, random_scene

IMAGE_TOKEN = "<image>"
KINDS = ("vqa", "text")


def _rng(stream: str, split: str, seed: int, index: int) -> random.Random:
    # str seeds go through SHA-512 in `random`: stable across runs and PYTHONHASHSEED.
    return random.Random(f"mmalign-demo/{stream}/{split}/{int(seed)}/{int(index)}")


def _record_id(stream: str, kind: str, split: str, index: int) -> str:
    prefix = "demo" if stream == "pref" else f"demo-{stream}"
    return f"{prefix}-{kind}-{split}-{index:06d}"


def make_record(index: int, seed: int = 0, split: str = "train", kind: str = "vqa",
                with_candidates: bool = True) -> dict:
    """Example `index` of a split: a prompt (image + question, or a text task) with, when
    `with_candidates`, five candidate answers scored by the ground-truth scorer."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = _rng(f"pref-{kind}", split, seed, index)
    rid = _record_id("pref", kind, split, index)
    if kind == "vqa":
        scene = random_scene(rng)
        q = Q.make_question(scene, rng)
        responses = []
        if with_candidates:
            for c in Q.make_candidates(scene, q, rng):
                responses.append({"text": c["text"], "source": f"demo:{c['kind']}",
                                  "scores": score_answer(scene, q, c["text"])})
        return {"id": rid, "images": [f"{rid}.png"],
                "conversation": [{"role": "user", "content": f"{IMAGE_TOKEN}\n{q['text']}"}],
                "responses": responses,
                "meta": _vqa_meta(scene, q, split, seed, index)}
    task = T.make_task(rng)
    responses = []
    if with_candidates:
        for c in T.make_text_candidates(task, rng):
            responses.append({"text": c["text"], "source": f"demo:{c['kind']}",
                              "scores": T.score_text_answer(task, c["text"])})
    return {"id": rid, "images": [],
            "conversation": [{"role": "user", "content": task["text"]}],
            "responses": responses,
            "meta": {"task": "text", "question": task, "answer": T.canonical_text_answer(task),
                     "truth": task["answer"], "split": split, "seed": seed, "index": index}}


def _vqa_meta(scene: Scene, q: dict, split: str, seed: int, index: int) -> dict:
    truth = Q.truth(scene, q)
    if isinstance(truth, list):
        truth = ", ".join(truth)
    return {"task": "vqa", "scene": scene.to_json(), "question": q,
            "answer": Q.canonical_answer(scene, q), "truth": str(truth), "split": split,
            "seed": seed, "index": index}


def make_records(n: int, seed: int = 0, split: str = "train", kind: str = "vqa",
                 with_candidates: bool = True, start: int = 0) -> List[dict]:
    """Records `start .. start+n-1` of a split (see `make_record`)."""
    return [make_record(i, seed, split, kind, with_candidates) for i in range(start, start + n)]


def make_sft_record(index: int, seed: int = 0, split: str = "train", kind: str = "vqa",
                    style: str = "mixed") -> dict:
    """A prompt with a correct answer as the assistant turn (`style`: 'concise', 'verbose' or
    'mixed' = either, by coin flip). Its own random stream, separate from `make_record`'s."""
    if style not in ("concise", "verbose", "mixed"):
        raise ValueError(f"style must be concise, verbose or mixed, got {style!r}")
    rng = _rng(f"sft-{kind}", split, seed, index)
    rid = _record_id("sft", kind, split, index)
    pick = style if style != "mixed" else rng.choice(["concise", "verbose"])
    which = "correct_concise" if pick == "concise" else "correct_verbose"
    if kind == "vqa":
        scene = random_scene(rng)
        q = Q.make_question(scene, rng)
        answer = Q.make_candidates(scene, q, rng, kinds=(which,))[0]["text"]
        return {"id": rid, "images": [f"{rid}.png"],
                "conversation": [{"role": "user", "content": f"{IMAGE_TOKEN}\n{q['text']}"},
                                 {"role": "assistant", "content": answer}],
                "responses": [], "meta": _vqa_meta(scene, q, split, seed, index)}
    if kind != "text":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    task = T.make_task(rng)
    answer = T.make_text_candidates(task, rng, kinds=(which,))[0]["text"]
    return {"id": rid, "images": [],
            "conversation": [{"role": "user", "content": task["text"]},
                             {"role": "assistant", "content": answer}],
            "responses": [],
            "meta": {"task": "text", "question": task, "answer": T.canonical_text_answer(task),
                     "truth": task["answer"], "split": split, "seed": seed, "index": index}}


def make_sft_records(n: int, seed: int = 0, split: str = "train", kind: str = "vqa",
                     style: str = "mixed", start: int = 0) -> List[dict]:
    return [make_sft_record(i, seed, split, kind, style) for i in range(start, start + n)]


def record_image(record: dict, size: int = 64):
    """The PIL image of a visual record, drawn from its scene (None for text records)."""
    scene = (record.get("meta") or {}).get("scene")
    return None if scene is None else draw_scene(Scene.from_json(scene), size=size)


def iter_records(seed: int = 0, split: str = "train", kind: str = "vqa",
                 with_candidates: bool = True) -> Iterator[dict]:
    """An endless stream of records of one split."""
    i = 0
    while True:
        yield make_record(i, seed, split, kind, with_candidates)
        i += 1


def _write_jsonl(path: Path, records: List[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def image_dims(record_id: str, size: int = 64,
               image_sizes: Optional[Sequence[int]] = None) -> Tuple[int, int]:
    """`(width, height)` of a record's image: `size` square, or with `image_sizes = (lo,
    hi)` each side drawn from [lo, hi] by the record id (mixed sizes and aspect ratios,
    for native-resolution models)."""
    if not image_sizes:
        return size, size
    lo, hi = (int(x) for x in image_sizes)
    rng = random.Random(f"mmalign-demo/image-size/{record_id}")
    return rng.randint(lo, hi), rng.randint(lo, hi)


def _write_images(records: List[dict], image_dir: Path, size: int,
                  image_sizes: Optional[Sequence[int]] = None) -> None:
    for r in records:
        if r["images"]:
            w, h = image_dims(r["id"], size, image_sizes)
            img = record_image(r, max(w, h))
            if (w, h) != img.size:   # the scene stretched to the record's aspect ratio
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            img.save(image_dir / r["images"][0], format="PNG")


def write_dataset(out_dir, n_train: int, n_eval: int, seed: int = 0,
                  n_text_train: Optional[int] = None, n_text_eval: Optional[int] = None,
                  n_sft_train: Optional[int] = None, n_sft_eval: Optional[int] = None,
                  image_size: int = 64, sft_style: str = "mixed",
                  image_sizes: Optional[Sequence[int]] = None) -> Dict[str, str]:
    """Write the demo dataset under `out_dir` and return {name: path} (names: train, eval,
    train_text, eval_text, sft_train, sft_eval, sft_text_train, sft_text_eval, image_root,
    manifest). Image paths in records are relative to `image_root`. Text and SFT counts
    default to n_train / n_eval. Images are `image_size` squares, or with `image_sizes =
    (lo, hi)` of mixed sizes (`image_dims`)."""
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    n_text_train = n_train if n_text_train is None else n_text_train
    n_text_eval = n_eval if n_text_eval is None else n_text_eval
    n_sft_train = n_train if n_sft_train is None else n_sft_train
    n_sft_eval = n_eval if n_sft_eval is None else n_sft_eval
    plan = {
        "train": lambda: make_records(n_train, seed, "train", "vqa"),
        "eval": lambda: make_records(n_eval, seed, "eval", "vqa"),
        "train_text": lambda: make_records(n_text_train, seed, "train", "text"),
        "eval_text": lambda: make_records(n_text_eval, seed, "eval", "text"),
        "sft_train": lambda: make_sft_records(n_sft_train, seed, "train", "vqa", sft_style),
        "sft_eval": lambda: make_sft_records(n_sft_eval, seed, "eval", "vqa", sft_style),
        "sft_text_train": lambda: make_sft_records(n_text_train, seed, "train", "text", sft_style),
        "sft_text_eval": lambda: make_sft_records(n_text_eval, seed, "eval", "text", sft_style),
    }
    paths: Dict[str, str] = {}
    counts: Dict[str, int] = {}
    for name, build in plan.items():
        records = build()
        _write_images(records, images, image_size, image_sizes)
        path = out / f"{name}.jsonl"
        _write_jsonl(path, records)
        paths[name] = str(path)
        counts[name] = len(records)
    paths["image_root"] = str(images)
    manifest = {"seed": seed, "image_size": image_size, "sft_style": sft_style,
                **({"image_sizes": [int(x) for x in image_sizes]} if image_sizes else {}),
                "counts": counts, "files": {k: Path(v).name for k, v in paths.items()},
                "image_root": "images"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    paths["manifest"] = str(out / "manifest.json")
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmalign_jax.demo.generate",
                                 description="Write the synthetic demo dataset (images + JSONL).")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-text-train", type=int, default=None, help="default: --n-train")
    ap.add_argument("--n-text-eval", type=int, default=None, help="default: --n-eval")
    ap.add_argument("--n-sft-train", type=int, default=None, help="default: --n-train")
    ap.add_argument("--n-sft-eval", type=int, default=None, help="default: --n-eval")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--sft-style", choices=("concise", "verbose", "mixed"), default="mixed")
    a = ap.parse_args(argv)
    paths = write_dataset(a.out, a.n_train, a.n_eval, a.seed, a.n_text_train, a.n_text_eval,
                          a.n_sft_train, a.n_sft_eval, a.image_size, a.sft_style)
    print(json.dumps(paths, indent=2))


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    main()
