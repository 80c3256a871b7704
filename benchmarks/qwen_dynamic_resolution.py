"""Qwen2.5-VL with images of mixed sizes through the grain loader: how many distinct batch
shapes (= compilations of the train step) and how much padding, per loader setting.

    PYTHONPATH=. python benchmarks/qwen_dynamic_resolution.py --out /tmp/qwen_dynres

The demo task's records (`mmalign_jax.demo`: 3/4 with one image, 1/4 text only), their
images re-saved at random sizes and aspect ratios (each side uniform in --sides), tokenized
with the demo BPE plus Qwen's special tokens, batched by `data/loader.py` for SFT and DPO.
Every batch is made for real (images decoded, preprocessed, placed in their slots) and
measured from its arrays:

- shapes: distinct shape signatures over all batches of one epoch (each one compiles the
  train step once);
- patch padding: patch rows of `pixel_values` that hold no image patch (empty slots of text
  rows included) / all patch rows; "of image slots": the same over slots holding an image;
- token padding: SFT `1 - attention_mask.mean()`; DPO prompt and both responses together.

Scales: `demo` (the `qwen2.5-vl-demo` preset: 56–224 px, ≤ 256 patches) and `7b` (Qwen2.5-VL
7B's processor: min 56² / max 1280·28² px, ≤ 5120 patches; sides 200–1400 px).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np

from mmalign_jax.data import loader as loader_lib
from mmalign_jax.data import records as records_lib
from mmalign_jax.demo import generate, tokenizer as demo_tokenizer
from mmalign_jax.models import registry

SCALES = {
    # preset, sides (px), SFT seq_len + buckets, DPO prompt_len + buckets, finer image buckets
    "demo": ("qwen2.5-vl-demo", (56, 224), 160, (64, 96, 128, 160), 112, (48, 64, 80, 112),
             (16, 32, 48, 64, 96, 128, 192, 256)),
    "7b": ("qwen2.5-vl-7b", (200, 1400), 1408, (128, 256, 512, 768, 1024, 1408),
           1408, (128, 256, 512, 768, 1024, 1408),
           (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 5120)),
}
RESPONSE_LEN, RESPONSE_BUCKETS = 64, (16, 32, 64)


def write_records(out: str, n: int, sides, seed: int = 0) -> dict:
    """SFT and DPO records of the demo task with images of random sizes under `out`."""
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    n_text = n // 4
    sft = (generate.make_sft_records(n - n_text, seed, "train", "vqa")
           + generate.make_sft_records(n_text, seed, "train", "text"))
    dpo = (generate.make_records(n - n_text, seed, "train", "vqa")
           + generate.make_records(n_text, seed, "train", "text"))
    for r in sft + dpo:
        if r["images"]:
            w, h = generate.image_dims(r["id"], image_sizes=sides)
            path = os.path.join(img_dir, r["images"][0])
            if not os.path.exists(path):
                img = generate.record_image(r, 112)   # the scene, then stretched to w × h
                img.resize((w, h)).save(path)
    rng = random.Random(seed)
    rng.shuffle(sft)
    rng.shuffle(dpo)
    out_recs = {}
    for name, rows in (("sft", sft), ("dpo", dpo)):
        path = os.path.join(out, f"{name}.jsonl")
        records_lib.write_jsonl(path, rows)
        out_recs[name] = records_lib.load_records(path, img_dir).records
    return {"records": out_recs, "image_root": img_dir}


def measure(loader, cfg) -> dict:
    """Shapes and padding shares over every batch of the loader (one epoch)."""
    shapes = set()
    patch_rows = real_patches = image_slot_rows = 0
    tok_total = tok_real = 0
    n_batches = 0
    for b in loader:
        n_batches += 1
        shapes.add(tuple(sorted((k, v.shape) for k, v in b.items())))
        pv, grid, mask = b["pixel_values"], b["image_grid_thw"], b["image_mask"]
        rows, slots, p = pv.shape[:3]
        real = np.where(mask, grid.prod(-1), 0)
        patch_rows += rows * slots * p
        real_patches += int(real.sum())
        image_slot_rows += int(mask.sum()) * p
        if "attention_mask" in b:
            tok_total += b["attention_mask"].size
            tok_real += int(b["attention_mask"].sum())
        else:
            for k in ("prompt_mask", "chosen_mask", "rejected_mask"):
                tok_total += b[k].size
                tok_real += int(b[k].sum())
    return {"batches": n_batches, "shapes": len(shapes),
            "patch_padding": 1 - real_patches / patch_rows,
            "patch_padding_image_slots": 1 - real_patches / max(image_slot_rows, 1),
            "token_padding": 1 - tok_real / tok_total,
            "patch_rows_per_batch": patch_rows / n_batches}


def variants(cfg, family, seq, seq_buckets, prompt, prompt_buckets, fine):
    """(name, LoaderConfig overrides): from one static shape to buckets + grouping."""
    top = family.image_budgets(cfg)[-1]
    base = dict(seq_len=seq, prompt_len=prompt, response_len=RESPONSE_LEN)
    lengths = dict(buckets=seq_buckets, prompt_buckets=prompt_buckets,
                   response_buckets=RESPONSE_BUCKETS)
    return [
        ("one shape (max patches, max lengths)", dict(base, image_buckets=(top,))),
        ("patch buckets (family default)", dict(base)),
        ("patch + length buckets", dict(base, **lengths)),
        ("patch + length buckets, group_by_size=8", dict(base, **lengths, group_by_size=8)),
        ("finer patch buckets + length buckets, group_by_size=8",
         dict(base, **lengths, group_by_size=8, image_buckets=fine)),
    ]


# What configs/{sft,dpo}.py:qwen2.5-vl-demo use (mmalign_jax/demo/recipe.py, `_qwen`): few
# buckets, since on CPU a compile costs more than dozens of steps.
DEMO_PRESET = ("demo preset: patch (64, 256), SFT (96, 160) / prompt (64, 112), "
               "group_by_size=8", dict(seq_len=160, buckets=(96, 160), prompt_len=112,
                                       prompt_buckets=(64, 112), response_len=64,
                                       image_buckets=(64, 256), group_by_size=8))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/qwen_dynres")
    ap.add_argument("--scales", default="demo,7b")
    ap.add_argument("--n", type=int, default=1024, help="records per scale (SFT and DPO)")
    ap.add_argument("--n-7b", type=int, default=256, help="records for the 7b scale")
    ap.add_argument("--batch", type=int, default=16, help="global batch")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    tok = demo_tokenizer.load_qwen_tokenizer()
    family = registry.get("qwen2_5_vl")
    results = []
    for scale in a.scales.split(","):
        preset, sides, seq, seq_b, prompt, prompt_b, fine = SCALES[scale]
        cfg = registry.get_preset(preset)
        n = a.n_7b if scale == "7b" else a.n
        t0 = time.perf_counter()
        data = write_records(os.path.join(a.out, scale), n, sides)
        print(f"# {scale}: {preset}, sides {sides[0]}–{sides[1]} px, {n} records "
              f"({time.perf_counter() - t0:.0f}s to write), image buckets "
              f"{family.image_budgets(cfg)}, global batch {a.batch}")
        for kind in ("sft", "dpo"):
            runs = variants(cfg, family, seq, seq_b, prompt, prompt_b, fine)
            for name, ov in runs + ([DEMO_PRESET] if scale == "demo" else []):
                pcfg = loader_lib.LoaderConfig(
                    template="qwen2_vl", image_mode="native", image_token_id=cfg.image_token_id,
                    family=family, model_config=cfg, pad_token_id=tok.pad_token_id,
                    batch_size=a.batch, num_epochs=1, shuffle=True, seed=0, **ov)
                loader = loader_lib.make_loader(kind, data["records"][kind], tok, pcfg,
                                                image_root=data["image_root"],
                                                shard_index=0, shard_count=1)
                t0 = time.perf_counter()
                m = measure(loader, cfg)
                m.update(scale=scale, kind=kind, variant=name, examples=loader.num_examples,
                         seconds=round(time.perf_counter() - t0, 1))
                results.append(m)
                print(f"| {scale} | {kind.upper()} | {name} | {m['shapes']} | "
                      f"{m['patch_padding']:.1%} | {m['patch_padding_image_slots']:.1%} | "
                      f"{m['token_padding']:.1%} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
