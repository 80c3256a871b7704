"""Qwen2.5-VL shapes by name, and `config.json` both ways.

`qwen2.5-vl-3b` / `qwen2.5-vl-7b` are the published checkpoints' shapes (Qwen/Qwen2.5-VL-
3B-Instruct, -7B-Instruct config.json): load their weights, never train them from random.
`qwen2.5-vl-tiny` is a random-init shape for tests; `qwen-small` the benchmark's
(`python -m mmalign_jax.bench --preset qwen-small`, docs/PERFORMANCE.md).
Reads both config.json forms: the hub's (text fields at the top level, `rope_scaling`
with `"type": "mrope"`) and transformers ≥ 5's (`text_config`, `rope_parameters`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Mapping

from mmalign_jax.models.config import TextConfig
from mmalign_jax.models.family import read_hf_config
from mmalign_jax.models.qwen2_5_vl.config import Qwen25VLConfig, QwenImageConfig, QwenVisionConfig

ARCHITECTURES = ("Qwen2_5_VLForConditionalGeneration",)
MODEL_TYPE = "qwen2_5_vl"

_VISION_7B = QwenVisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                              out_hidden_size=3584, fullatt_block_indexes=(7, 15, 23, 31))


def qwen25_vl_7b() -> Qwen25VLConfig:
    return Qwen25VLConfig(vision=_VISION_7B, text=TextConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=128000, qkv_bias=True, mrope_section=(16, 24, 24),
        tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645))


def qwen25_vl_3b() -> Qwen25VLConfig:
    return Qwen25VLConfig(
        vision=dataclasses.replace(_VISION_7B, out_hidden_size=2048),
        text=TextConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
            max_position_embeddings=128000, qkv_bias=True, mrope_section=(16, 24, 24),
            tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645))


def qwen25_vl_tiny(vocab_size: int = 1024, image_token_id: int = 1000) -> Qwen25VLConfig:
    """A few-layer random model with every feature on: GQA, q/k/v biases, M-RoPE sections,
    two vision blocks of which one windowed and one full, untied head."""
    return Qwen25VLConfig(
        vision=QwenVisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                                out_hidden_size=64, fullatt_block_indexes=(1,)),
        text=TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=112,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=2048,
                        qkv_bias=True, mrope_section=(2, 3, 3), bos_token_id=vocab_size - 3,
                        eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1),
        image=QwenImageConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64),
        image_token_id=image_token_id, video_token_id=image_token_id + 1,
        vision_start_token_id=image_token_id + 2, vision_end_token_id=image_token_id + 3)


def qwen25_vl_demo() -> Qwen25VLConfig:
    """The demo task's model (`configs/dpo.py:qwen2.5-vl-demo`), trained from random weights
    on CPU in minutes: the demo tokenizer's ids (`demo.tokenizer.load_qwen_tokenizer`:
    `<|image_pad|>` 1000, `<|video_pad|>` 1001, `<|vision_start|>` 1002, `<|vision_end|>`
    1003, `<|im_end|>` 1005 = eos, `<|endoftext|>` 1006 = pad and bos as in Qwen's
    config); images of 56–224 px a side (4–64 image tokens: one per 28×28 block)."""
    return Qwen25VLConfig(
        vision=QwenVisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                out_hidden_size=128, fullatt_block_indexes=(1,)),
        text=TextConfig(vocab_size=1024, hidden_size=128, intermediate_size=352,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=512,
                        qkv_bias=True, mrope_section=(4, 6, 6), bos_token_id=1006,
                        eos_token_id=1005, pad_token_id=1006),
        image=QwenImageConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 64),
        image_token_id=1000, video_token_id=1001, vision_start_token_id=1002,
        vision_end_token_id=1003)


def qwen_small() -> Qwen25VLConfig:
    """The benchmark's random-init shape (`python -m mmalign_jax.bench --preset qwen-small`):
    a 4-block × 128-wide ViT (2 heads, the last block full attention, the others 112-px
    windows) and a 6-layer × 256-wide Qwen2 decoder (4 query / 2 KV heads of 64, MLP 1024,
    vocabulary 16384, untied head). Images up to 224×224 px = 256 patches = 64 tokens; the
    special tokens sit at the top of the vocabulary."""
    v = 16384
    return Qwen25VLConfig(
        vision=QwenVisionConfig(depth=4, hidden_size=128, intermediate_size=256, num_heads=2,
                                out_hidden_size=256, fullatt_block_indexes=(3,)),
        text=TextConfig(vocab_size=v, hidden_size=256, intermediate_size=1024,
                        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=4096,
                        qkv_bias=True, mrope_section=(8, 12, 12), tie_word_embeddings=False,
                        bos_token_id=v - 8, eos_token_id=v - 7, pad_token_id=v - 8),
        image=QwenImageConfig(min_pixels=56 * 56, max_pixels=224 * 224),
        image_token_id=v - 3, video_token_id=v - 2, vision_start_token_id=v - 5,
        vision_end_token_id=v - 4)


PRESET_BUILDERS: Dict[str, Callable[[], Qwen25VLConfig]] = {
    "qwen2.5-vl-3b": qwen25_vl_3b,
    "qwen2.5-vl-7b": qwen25_vl_7b,
    "qwen2.5-vl-tiny": qwen25_vl_tiny,
    "qwen2.5-vl-demo": qwen25_vl_demo,
    "qwen-small": qwen_small,
}
PRETRAINED = ("qwen2.5-vl-3b", "qwen2.5-vl-7b")


# ----------------------------------------------------------------------- config.json


def _rope(text: Mapping[str, Any], top: Mapping[str, Any]) -> tuple:
    """(rope_theta, mrope_section) from `rope_parameters` (transformers 5) or
    `rope_scaling` + `rope_theta` (the hub's config.json)."""
    params = text.get("rope_parameters") or top.get("rope_parameters") or {}
    scaling = text.get("rope_scaling") or top.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta", top.get("rope_theta", 1e6)))
    section = params.get("mrope_section") or scaling.get("mrope_section") or (16, 24, 24)
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in ("default", "mrope"):
        raise ValueError(f"<config dict>: rope type {kind!r} is not supported for Qwen2.5-VL "
                         "(only the default multimodal RoPE)")
    return float(theta), tuple(int(s) for s in section)


def from_hf_config(config) -> Qwen25VLConfig:
    """Our config from a Qwen2.5-VL `config.json` (a folder, the file or the parsed dict;
    either form). A folder's `preprocessor_config.json` sets the image settings."""
    raw, where = read_hf_config(config)
    try:
        cfg = _from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        msg = str(e) if isinstance(e, ValueError) else f"missing or malformed field {e}"
        raise ValueError(f"{where}: {msg}".replace("<config dict>: ", "")) from None
    if not isinstance(config, Mapping):
        folder = os.path.dirname(where)
        pre = os.path.join(folder, "preprocessor_config.json")
        if os.path.isfile(pre):
            try:
                with open(pre) as f:
                    cfg = cfg.replace(image=image_config_from_hf(json.load(f)))
            except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
                raise ValueError(f"{pre}: not a valid image processor config ({e})") from None
    return cfg


def _from_dict(raw: Mapping[str, Any]) -> Qwen25VLConfig:
    if raw.get("model_type") not in (MODEL_TYPE, None):
        raise ValueError(f"<config dict>: model_type {raw.get('model_type')!r} is not "
                         f"{MODEL_TYPE!r}")
    text = dict(raw.get("text_config") or raw)
    vis = dict(raw.get("vision_config") or {})
    theta, section = _rope(text, raw)
    tie = raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    eos = text.get("eos_token_id", raw.get("eos_token_id", 151645))
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    if text.get("use_sliding_window"):
        raise ValueError("<config dict>: use_sliding_window=true is not supported (every "
                         "published Qwen2.5-VL checkpoint has it off)")
    heads = int(text["num_attention_heads"])
    t = TextConfig(
        vocab_size=int(text["vocab_size"]), hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text["intermediate_size"]),
        num_hidden_layers=int(text["num_hidden_layers"]), num_attention_heads=heads,
        num_key_value_heads=int(text.get("num_key_value_heads") or heads),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(tie), qkv_bias=True, mrope_section=section,
        hidden_act=text.get("hidden_act", "silu"),
        pad_token_id=text.get("pad_token_id", raw.get("pad_token_id")),
        bos_token_id=int(text.get("bos_token_id", raw.get("bos_token_id", 151643)) or 151643),
        eos_token_id=int(eos))
    vrope = vis.get("rope_parameters") or {}
    v = QwenVisionConfig(
        depth=int(vis.get("depth", 32)), hidden_size=int(vis.get("hidden_size", 1280)),
        intermediate_size=int(vis.get("intermediate_size", 3420)),
        num_heads=int(vis.get("num_heads", 16)),
        in_channels=int(vis.get("in_channels", vis.get("in_chans", 3))),
        patch_size=int(vis.get("patch_size", 14)),
        temporal_patch_size=int(vis.get("temporal_patch_size", 2)),
        spatial_merge_size=int(vis.get("spatial_merge_size", 2)),
        window_size=int(vis.get("window_size", 112)),
        out_hidden_size=int(vis.get("out_hidden_size", t.hidden_size)),
        fullatt_block_indexes=tuple(int(i) for i in vis.get("fullatt_block_indexes",
                                                            (7, 15, 23, 31))),
        hidden_act=vis.get("hidden_act", "silu"),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        tokens_per_second=int(vis.get("tokens_per_second", 2)))
    if v.out_hidden_size != t.hidden_size:
        raise ValueError(f"<config dict>: vision_config.out_hidden_size {v.out_hidden_size} "
                         f"must equal the language model's hidden_size {t.hidden_size}")
    return Qwen25VLConfig(
        vision=v, text=t,
        image_token_id=int(raw.get("image_token_id", 151655)),
        video_token_id=int(raw.get("video_token_id", 151656)),
        vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(raw.get("vision_end_token_id", 151653)))


def to_hf_config(cfg: Qwen25VLConfig, dtype: str = "float32") -> dict:
    """A transformers ≥ 5 `config.json` dict for `cfg`."""
    t, v = cfg.text, cfg.vision
    rope = {"rope_type": "default", "mrope_section": list(t.mrope_section or (16, 24, 24)),
            "rope_theta": t.rope_theta}
    return {
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": dtype,
        "text_config": {
            "model_type": "qwen2_5_vl_text", "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads, "hidden_act": t.hidden_act,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps, "rope_parameters": rope,
            "use_sliding_window": False, "tie_word_embeddings": t.tie_word_embeddings,
            "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id, "dtype": dtype,
        },
        "vision_config": {
            "model_type": "qwen2_5_vl_vision", "depth": v.depth,
            "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads, "in_channels": v.in_channels,
            "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size, "window_size": v.window_size,
            "out_hidden_size": v.out_hidden_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "hidden_act": v.hidden_act, "tokens_per_second": v.tokens_per_second,
            "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
            "dtype": dtype,
        },
    }


def preprocessor_config(cfg: Qwen25VLConfig) -> dict:
    """`preprocessor_config.json` for the image settings of `cfg` (Qwen2VLImageProcessor)."""
    v, im = cfg.vision, cfg.image
    return {"image_processor_type": "Qwen2VLImageProcessor", "do_resize": True,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "do_convert_rgb": True, "image_mean": list(im.image_mean),
            "image_std": list(im.image_std), "min_pixels": im.min_pixels,
            "max_pixels": im.max_pixels, "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size, "merge_size": v.spatial_merge_size,
            "processor_class": "Qwen2_5_VLProcessor"}


def image_config_from_hf(raw: Mapping[str, Any]) -> QwenImageConfig:
    """Image settings from a `preprocessor_config.json` dict (either `min_pixels` /
    `max_pixels` or the newer `size: {shortest_edge, longest_edge}`)."""
    size = raw.get("size") or {}
    d = QwenImageConfig()
    return QwenImageConfig(
        min_pixels=int(raw.get("min_pixels", size.get("shortest_edge", d.min_pixels))),
        max_pixels=int(raw.get("max_pixels", size.get("longest_edge", d.max_pixels))),
        image_mean=tuple(float(x) for x in raw.get("image_mean", d.image_mean)),
        image_std=tuple(float(x) for x in raw.get("image_std", d.image_std)))
