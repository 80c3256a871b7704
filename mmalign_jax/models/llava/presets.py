"""Named model shapes, and conversion to and from Hugging Face `config.json` (llava-hf).

    cfg = get_preset("llava-1.5-7b")          # exact published llava-hf/llava-1.5-7b-hf shapes
    cfg = from_hf_config("/ckpt/llava-1.5-7b-hf")   # folder, config.json path or dict
    d   = to_hf_config(cfg)                   # dict that transformers.LlavaConfig(**d) accepts

Presets describe the architecture only; numerics (`dtype`, `param_dtype`, `remat_policy`) and
`lora` keep the `LlavaConfig` defaults and are set by the training configs.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional, Union

from mmalign_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from mmalign_jax.models.family import read_hf_config

# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


def _tiny() -> LlavaConfig:
    # Demo tokenizer reserves <unk>=0 <s>=1 </s>=2 <pad>=3 <image>=4. The demo scenes are a
    # 3×3 grid: 48-px images with 16-px patches give one image token per grid cell (9 in
    # all), so a from-scratch ViT this small learns to see shapes within a few hundred
    # steps; 64-px / 8-px patches (64 tokens straddling cells) stayed near chance on colour
    # and existence after 600 SFT steps.
    return LlavaConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, image_size=48, patch_size=16),
        text=TextConfig(vocab_size=1024, hidden_size=128, intermediate_size=352,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-5, max_position_embeddings=512,
                        pad_token_id=3, bos_token_id=1, eos_token_id=2),
        image_token_id=4,
    )


def _bench_small() -> LlavaConfig:
    # CLIP-style ViT at 224/14 (256 image tokens) + a ~50M-parameter LLaMA; a throughput
    # benchmark shape that fits one accelerator comfortably. The vocabulary has 32000 entries,
    # so the <image> and <pad> ids are the last two of it.
    return LlavaConfig(
        vision=VisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                            num_attention_heads=6, image_size=224, patch_size=14),
        text=TextConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                        rms_norm_eps=1e-5, max_position_embeddings=4096,
                        pad_token_id=31998, bos_token_id=1, eos_token_id=2),
        image_token_id=31999,
    )


_CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, image_size=336, patch_size=14,
                   layer_norm_eps=1e-5, hidden_act="quick_gelu")


def _llava15(hidden: int, inter: int, layers: int, heads: int) -> LlavaConfig:
    # llava-hf/llava-1.5-{7b,13b}-hf config.json (Vicuna-1.5 / Llama-2 decoder, vocab 32064 with
    # <image>=32000 and <pad>=32001 added, 4096 positions, rms_norm_eps 1e-5).
    return LlavaConfig(
        vision=VisionConfig(**_CLIP_L_336),
        text=TextConfig(vocab_size=32064, hidden_size=hidden, intermediate_size=inter,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        num_key_value_heads=heads, rms_norm_eps=1e-5, rope_theta=10000.0,
                        max_position_embeddings=4096, tie_word_embeddings=False,
                        pad_token_id=32001, bos_token_id=1, eos_token_id=2),
        projector_type="mlp2x_gelu",
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_token_id=32000,
    )


PRESET_BUILDERS: Dict[str, Callable[[], LlavaConfig]] = {
    "tiny": _tiny,
    "bench-small": _bench_small,
    "llava-1.5-7b": lambda: _llava15(4096, 11008, 32, 32),
    "llava-1.5-13b": lambda: _llava15(5120, 13824, 40, 40),
}
PRESETS = tuple(PRESET_BUILDERS)


def get_preset(name: str) -> LlavaConfig:
    """The `LlavaConfig` of a named preset (see `PRESETS`)."""
    try:
        return PRESET_BUILDERS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------------------
# Hugging Face config.json <-> LlavaConfig
# --------------------------------------------------------------------------------------

# Defaults of the HF config classes, used for fields a config.json leaves out (llava-hf 1.5
# omits most LlamaConfig fields). `LlavaConfig` builds sub-configs from these when the
# sub-config is given as a dict; when a sub-config is absent altogether HF uses the
# `_ABSENT_*` defaults instead.
_HF_LLAMA_DEFAULTS: Dict[str, Any] = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=None, hidden_act="silu",
    max_position_embeddings=2048, rms_norm_eps=1e-6, pad_token_id=None, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
    attention_bias=False, mlp_bias=False, head_dim=None,
)
_HF_CLIP_VISION_DEFAULTS: Dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
_ABSENT_VISION_CONFIG: Dict[str, Any] = dict(
    model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, patch_size=14,
    image_size=336, num_hidden_layers=24, num_attention_heads=16,
)
_ABSENT_TEXT_CONFIG: Dict[str, Any] = dict(model_type="llama")

ARCHITECTURES = ("LlavaForConditionalGeneration", "LlavaForCausalLM")  # the latter: early llava-hf
_TEXT_MODEL_TYPES = ("llama",)
_VISION_MODEL_TYPES = ("clip_vision_model",)


def _rope_from_hf(tc: Mapping[str, Any]):
    """(rope_theta, rope_scaling pairs or None) from `rope_theta`/`rope_scaling` (transformers
    4.x) or `rope_parameters` (transformers 5.x)."""
    theta = tc.get("rope_theta")
    scaling = tc.get("rope_scaling")
    params = tc.get("rope_parameters")
    if isinstance(params, Mapping):
        params = dict(params)
        if theta is None and params.get("rope_theta") is not None:
            theta = params["rope_theta"]
        params.pop("rope_theta", None)
        kind = params.get("rope_type", params.get("type", "default"))
        if scaling is None and kind != "default":
            scaling = params
    if theta is None:
        theta = _HF_LLAMA_DEFAULTS["rope_theta"]
    if scaling:
        scaling = dict(scaling)
        if "type" in scaling and "rope_type" not in scaling:  # old spelling
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    pairs = None
    if scaling:
        pairs = tuple(sorted((str(k), _hashable(v)) for k, v in scaling.items()))
    return float(theta), pairs


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _unhashable(v):
    if isinstance(v, tuple):
        return [_unhashable(x) for x in v]
    return v


def from_hf_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> LlavaConfig:
    """`LlavaConfig` from a llava-hf `config.json` (a folder, the file, or the parsed dict).

    Fields the file omits take the Hugging Face defaults. Raises ValueError naming the file
    and the field for anything this library cannot represent (another architecture, a
    non-LLaMA decoder, a non-CLIP vision tower, several vision feature layers).
    """
    d, where = read_hf_config(config)

    def bad(field, value, expected):
        return ValueError(f"{where}: unsupported {field}={value!r}; mmalign_jax converts "
                          f"{expected} (LLaVA-1.5 style: CLIP ViT + MLP projector + LLaMA)")

    model_type = d.get("model_type")
    if model_type != "llava":
        raise bad("model_type", model_type, "model_type 'llava'")
    archs = d.get("architectures")
    if archs is not None and not any(a in ARCHITECTURES for a in archs):
        raise bad("architectures", archs, "'LlavaForConditionalGeneration'")

    tc_raw = d.get("text_config")
    tc = dict(_ABSENT_TEXT_CONFIG if tc_raw is None else tc_raw)
    vc_raw = d.get("vision_config")
    vc = dict(_ABSENT_VISION_CONFIG if vc_raw is None else vc_raw)
    if tc.get("model_type", "llama") not in _TEXT_MODEL_TYPES:
        raise bad("text_config.model_type", tc.get("model_type"), "model_type 'llama'")
    if vc.get("model_type", "clip_vision_model") not in _VISION_MODEL_TYPES:
        raise bad("vision_config.model_type", vc.get("model_type"),
                  "model_type 'clip_vision_model'")

    def t(name):
        v = tc.get(name)
        return _HF_LLAMA_DEFAULTS[name] if v is None else v

    def v(name):
        x = vc.get(name)
        return _HF_CLIP_VISION_DEFAULTS[name] if x is None else x

    # Old llava-hf files keep vocab_size at the top level only.
    if tc.get("vocab_size") is None and d.get("vocab_size") is not None:
        tc["vocab_size"] = d["vocab_size"]

    hidden, heads = int(t("hidden_size")), int(t("num_attention_heads"))
    kv = tc.get("num_key_value_heads")
    head_dim = tc.get("head_dim")
    head_dim_override = None
    if head_dim is not None and int(head_dim) != hidden // heads:
        head_dim_override = int(head_dim)
    theta, scaling = _rope_from_hf(tc)
    pad = tc.get("pad_token_id")
    if pad is None:
        pad = d.get("pad_token_id")
    eos = t("eos_token_id")
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    tie = bool(d.get("tie_word_embeddings") or tc.get("tie_word_embeddings"))
    text = TextConfig(
        vocab_size=int(t("vocab_size")), hidden_size=hidden,
        intermediate_size=int(t("intermediate_size")),
        num_hidden_layers=int(t("num_hidden_layers")), num_attention_heads=heads,
        num_key_value_heads=int(kv) if kv is not None else heads,
        head_dim_override=head_dim_override, rms_norm_eps=float(t("rms_norm_eps")),
        rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(t("max_position_embeddings")),
        tie_word_embeddings=tie, attention_bias=bool(t("attention_bias")),
        mlp_bias=bool(t("mlp_bias")), hidden_act=str(t("hidden_act")),
        pad_token_id=None if pad is None else int(pad),
        bos_token_id=int(t("bos_token_id")) if t("bos_token_id") is not None else 1,
        eos_token_id=int(eos) if eos is not None else 2,
    )
    vision = VisionConfig(
        hidden_size=int(v("hidden_size")), intermediate_size=int(v("intermediate_size")),
        num_hidden_layers=int(v("num_hidden_layers")),
        num_attention_heads=int(v("num_attention_heads")), image_size=int(v("image_size")),
        patch_size=int(v("patch_size")), num_channels=int(v("num_channels")),
        layer_norm_eps=float(v("layer_norm_eps")), hidden_act=str(v("hidden_act")),
    )

    layer = d.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise bad("vision_feature_layer", layer, "a single vision feature layer (an int)")
    if not -(vision.num_hidden_layers + 1) <= layer <= vision.num_hidden_layers:
        raise ValueError(f"{where}: vision_feature_layer={layer} is outside the "
                         f"{vision.num_hidden_layers + 1} CLIP hidden states")
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise bad("vision_feature_select_strategy", strategy, "'default' or 'full'")
    image_token = d.get("image_token_index", d.get("image_token_id"))
    if image_token is None:
        image_token = 32000
    act = d.get("projector_hidden_act", "gelu")
    # `multimodal_projector_bias: false` is loaded as zero biases (models/llava/hf.py fills them), so
    # it needs no field here.
    return LlavaConfig(
        vision=vision, text=text, projector_type="mlp2x_gelu", projector_hidden_act=str(act),
        vision_feature_layer=int(layer), vision_feature_select_strategy=str(strategy),
        image_token_id=int(image_token),
    )


def to_hf_config(cfg: LlavaConfig, dtype: Optional[str] = None) -> Dict[str, Any]:
    """A llava-hf `config.json` dict for `cfg` that `transformers.LlavaConfig` accepts.

    Written in the shape both transformers 4.x and 5.x read: rope as `rope_theta` and
    `rope_scaling` plus the 5.x `rope_parameters`. `dtype` (e.g. 'bfloat16') is recorded as
    the checkpoint dtype; default `cfg.param_dtype`.
    """
    if cfg.projector_type != "mlp2x_gelu":
        raise ValueError(
            f"projector_type={cfg.projector_type!r} has no transformers LlavaForConditionalGeneration "
            "equivalent (it always has linear_1 -> act -> linear_2); use 'mlp2x_gelu' to export")
    t, v = cfg.text, cfg.vision
    dtype = dtype or cfg.param_dtype
    scaling = ({k: _unhashable(x) for k, x in t.rope_scaling} if t.rope_scaling else None)
    rope_parameters = dict(scaling) if scaling else {"rope_type": "default"}
    rope_parameters["rope_theta"] = t.rope_theta
    text = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim,
        "hidden_act": t.hidden_act,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": rope_parameters,
        "attention_bias": t.attention_bias,
        "mlp_bias": t.mlp_bias,
        "tie_word_embeddings": t.tie_word_embeddings,
        "pad_token_id": t.pad_token_id,
        "bos_token_id": t.bos_token_id,
        "eos_token_id": t.eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_hidden_layers,
        "num_attention_heads": v.num_attention_heads,
        "num_channels": v.num_channels,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_act": v.hidden_act,
        "layer_norm_eps": v.layer_norm_eps,
        "projection_dim": 768 if v.hidden_size == 1024 else v.hidden_size,
    }
    return {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_index": cfg.image_token_id,
        "image_seq_length": cfg.num_image_tokens,
        "projector_hidden_act": cfg.projector_hidden_act,
        "multimodal_projector_bias": True,
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "tie_word_embeddings": t.tie_word_embeddings,
        "pad_token_id": t.pad_token_id,
        "ignore_index": -100,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
