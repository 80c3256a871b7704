"""The data of the `qwen-small` DPO workload, the same on every side of the comparison.

`python -m mmalign_jax.bench --preset qwen-small` (ours, JAX) and `trl_qwen_dpo_step.py`
(TRL) both call `make_pairs` with the same arguments and get the same token ids and the
same images; numpy only (no JAX, no PyTorch), so either process can import it.

Each pair: one RGB image of `image_side(cfg)`² pixels (random uint8; Qwen's image processor
keeps that size: a multiple of 28 within `[min_pixels, max_pixels]`), a prompt of
`<|vision_start|>` + one `<|image_pad|>` per merged 2×2 patch unit + `<|vision_end|>` +
`prompt_text - 2` ordinary tokens, and chosen / rejected responses of `response_len`
ordinary tokens. "Ordinary" ids lie in `token_range(cfg)`: above 4 and below every special
token, so the word-level tokenizer of the TRL side (`w<id>` words) reads them back exactly.
"""
from __future__ import annotations

import math

import numpy as np


def special_ids(cfg) -> list[int]:
    t = cfg.text
    ids = [cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id,
           cfg.vision_end_token_id, t.bos_token_id, t.eos_token_id, t.pad_token_id]
    return sorted({int(i) for i in ids if i is not None})


def token_range(cfg) -> tuple[int, int]:
    """[lo, hi) of the ordinary ids the workload draws from."""
    return 5, min([i for i in special_ids(cfg) if i >= 5] + [cfg.text.vocab_size])


def image_side(cfg) -> int:
    """The largest square side (a multiple of 28) Qwen's processor keeps as it is: the
    image then fills its slot, `cfg.num_image_tokens` tokens."""
    unit = cfg.vision.patch_size * cfg.vision.spatial_merge_size
    return math.isqrt(cfg.image.max_pixels) // unit * unit


def image_tokens(cfg) -> int:
    side = image_side(cfg) // cfg.vision.patch_size
    return side * side // cfg.vision.merge_unit


def make_pairs(cfg, pairs: int, prompt_text: int, response_len: int, seed: int = 0) -> dict:
    """`{"images": uint8[B, S, S, 3], "prompt_ids": int32[B, image_tokens + prompt_text],
    "prompt_words": int32[B, prompt_text - 2], "chosen_ids", "rejected_ids": int32[B, R]}`;
    `prompt_ids` is the whole prompt (vision markers and image pads included)."""
    if prompt_text < 2:
        raise ValueError("prompt_text counts <|vision_start|> and <|vision_end|>: at least 2")
    rng = np.random.default_rng(seed)
    s = image_side(cfg)
    lo, hi = token_range(cfg)
    images = rng.integers(0, 256, (pairs, s, s, 3), dtype=np.uint8)
    words = rng.integers(lo, hi, (pairs, prompt_text - 2)).astype(np.int32)
    chosen = rng.integers(lo, hi, (pairs, response_len)).astype(np.int32)
    rejected = rng.integers(lo, hi, (pairs, response_len)).astype(np.int32)
    n = image_tokens(cfg)
    head = np.asarray([cfg.vision_start_token_id] + [cfg.image_token_id] * n
                      + [cfg.vision_end_token_id], np.int32)
    prompt = np.concatenate([np.broadcast_to(head, (pairs, n + 2)), words], axis=1)
    return {"images": images, "prompt_ids": prompt, "prompt_words": words,
            "chosen_ids": chosen, "rejected_ids": rejected}
