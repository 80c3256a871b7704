"""Hugging Face llava-hf checkpoints (safetensors) ⇄ mmalign_jax parameter trees: the
LLaVA key table and config hooks (`MAPPING`); the machinery is `models/hf_io.py`.

    cfg, params = load_hf_llava("/ckpt/llava-1.5-7b-hf", dtype="bfloat16")
    save_hf_llava(cfg, params, "/out/llava-dpo", lora=lora_params, tokenizer_dir="/ckpt/...")

Key layouts read (auto-detected, per key):
  hub (llava-hf)      vision_tower.vision_model.*  multi_modal_projector.*
                      language_model.model.*       language_model.lm_head.weight
  transformers >= 5   model.vision_tower.vision_model.*  model.multi_modal_projector.*
  (and >= 4.52 in     model.language_model.*             lm_head.weight
  memory)
  transformers 5.2x   vision_tower.* / model.vision_tower.* (CLIP without `vision_model.`)
  save_pretrained
Written: 'transformers5' (default) or 'hub'; both load with `from_pretrained`. Canonical
keys (`Entry.hf_key`) are the hub layout's.

Only the language model's decoder layers are stacked (nn.scan); the CLIP tower keeps one
subtree per layer. `multimodal_projector_bias: false` checkpoints load with zero biases.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from mmalign_jax.models import hf_io
from mmalign_jax.models.config import LlavaConfig
from mmalign_jax.models.family import CheckpointError  # noqa: F401
from mmalign_jax.models.hf_io import (  # noqa: F401  (re-exported: the public names of old)
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TOKENIZER_FILES,
    Entry,
    ShardingLike,
    _flatten,
    _write_json,
    copy_tokenizer_files,
    read_safetensors_header,
)
from mmalign_jax.models.llava.presets import from_hf_config, to_hf_config

Path = Tuple[str, ...]

KEY_LAYOUTS = ("transformers5", "hub")


# --------------------------------------------------------------------------------------
# The mapping table
# --------------------------------------------------------------------------------------

_VISION = "vision_tower.vision_model."
_PROJ = "multi_modal_projector."
_LM = "language_model.model."
_HEAD = "language_model.lm_head.weight"


def hf_entries(cfg: LlavaConfig) -> List[Entry]:
    """Every tensor of the HF checkpoint for `cfg`, in the order a HF save would list them
    (vision tower, projector, embeddings, decoder layer by layer, norm, lm_head)."""
    v, t = cfg.vision, cfg.text
    dv, p, c = v.hidden_size, v.patch_size, v.num_channels
    out: List[Entry] = []

    def add(key, path, shape, transform="id", layer=None):  # only the decoder is stacked
        out.append(Entry(key, tuple(path.split("/")), tuple(int(s) for s in shape), transform,
                         layer, 0 if layer is None else t.num_hidden_layers))

    vt = "vision_tower"
    add(_VISION + "embeddings.class_embedding", f"{vt}/embeddings/class_embedding", (dv,))
    add(_VISION + "embeddings.patch_embedding.weight", f"{vt}/embeddings/patch_embedding/kernel",
        (dv, c, p, p), "conv")
    add(_VISION + "embeddings.position_embedding.weight",
        f"{vt}/embeddings/position_embedding/embedding", (v.num_patches + 1, dv))
    for name in ("weight", "bias"):
        add(_VISION + f"pre_layrnorm.{name}", f"{vt}/pre_layrnorm/{_norm(name)}", (dv,))
    for i in range(v.num_hidden_layers):
        hk, hp = _VISION + f"encoder.layers.{i}.", f"{vt}/layers_{i}/"
        for ln in ("layer_norm1", "layer_norm2"):
            for name in ("weight", "bias"):
                add(hk + f"{ln}.{name}", hp + f"{ln}/{_norm(name)}", (dv,))
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            add(hk + f"self_attn.{proj}.weight", hp + f"self_attn/{proj}/kernel", (dv, dv), "T")
            add(hk + f"self_attn.{proj}.bias", hp + f"self_attn/{proj}/bias", (dv,))
        add(hk + "mlp.fc1.weight", hp + "mlp/fc1/kernel", (v.intermediate_size, dv), "T")
        add(hk + "mlp.fc1.bias", hp + "mlp/fc1/bias", (v.intermediate_size,))
        add(hk + "mlp.fc2.weight", hp + "mlp/fc2/kernel", (dv, v.intermediate_size), "T")
        add(hk + "mlp.fc2.bias", hp + "mlp/fc2/bias", (dv,))
    for name in ("weight", "bias"):
        add(_VISION + f"post_layernorm.{name}", f"{vt}/post_layernorm/{_norm(name)}", (dv,))

    d = t.hidden_size
    mp = "multi_modal_projector"
    add(_PROJ + "linear_1.weight", f"{mp}/linear_1/kernel", (d, dv), "T")
    add(_PROJ + "linear_1.bias", f"{mp}/linear_1/bias", (d,))
    if cfg.projector_type == "mlp2x_gelu":
        add(_PROJ + "linear_2.weight", f"{mp}/linear_2/kernel", (d, d), "T")
        add(_PROJ + "linear_2.bias", f"{mp}/linear_2/bias", (d,))

    lm = "language_model"
    q_out, kv_out = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    f = t.intermediate_size
    add(_LM + "embed_tokens.weight", f"{lm}/embed_tokens/embedding", (t.vocab_size, d))
    for i in range(t.num_hidden_layers):
        hk, hp = _LM + f"layers.{i}.", f"{lm}/layers/"
        add(hk + "input_layernorm.weight", hp + "input_layernorm/scale", (d,), layer=i)
        for proj, n_out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            add(hk + f"self_attn.{proj}.weight", hp + f"self_attn/{proj}/kernel", (n_out, d), "T", i)
            if t.attention_bias:
                add(hk + f"self_attn.{proj}.bias", hp + f"self_attn/{proj}/bias", (n_out,), layer=i)
        add(hk + "self_attn.o_proj.weight", hp + "self_attn/o_proj/kernel", (d, q_out), "T", i)
        if t.attention_bias:
            add(hk + "self_attn.o_proj.bias", hp + "self_attn/o_proj/bias", (d,), layer=i)
        add(hk + "post_attention_layernorm.weight", hp + "post_attention_layernorm/scale", (d,),
            layer=i)
        for proj, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            add(hk + f"mlp.{proj}.weight", hp + f"mlp/{proj}/kernel", shape, "T", i)
            if t.mlp_bias:
                add(hk + f"mlp.{proj}.bias", hp + f"mlp/{proj}/bias", (shape[0],), layer=i)
    add(_LM + "norm.weight", f"{lm}/norm/scale", (d,))
    if not t.tie_word_embeddings:
        add(_HEAD, f"{lm}/lm_head/kernel", (t.vocab_size, d), "T")
    return out


def _norm(name: str) -> str:
    return "scale" if name == "weight" else "bias"


# Key layouts ------------------------------------------------------------------------

_TO_CANONICAL = [
    (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?"), _VISION),
    (re.compile(r"^(?:model\.)?multi_modal_projector\."), _PROJ),
    (re.compile(r"^model\.language_model\."), _LM),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
]
_IGNORED = re.compile(
    r"(.*\.rotary_emb\.inv_freq|vision_tower\.vision_model\.embeddings\.position_ids)$")


def canonical_key(key: str) -> str:
    """The hub-layout name of a checkpoint key written in any supported layout."""
    return hf_io.rename_first(key, _TO_CANONICAL)


def layout_key(canonical: str, layout: str) -> str:
    """A hub-layout key written in `layout` ('transformers5' or 'hub')."""
    if layout == "hub":
        return canonical
    if layout != "transformers5":
        raise ValueError(f"unknown key layout {layout!r}; choose one of {KEY_LAYOUTS}")
    for src, dst in ((_VISION, "model." + _VISION), (_PROJ, "model." + _PROJ),
                     (_LM, "model.language_model."), ("language_model.lm_head.", "lm_head.")):
        if canonical.startswith(src):
            return dst + canonical[len(src):]
    return canonical


def _detect_layout(key: str) -> Optional[str]:
    return "transformers5" if key.startswith("model.") else None


def _zero_fill(raw_config: dict, e: Entry) -> bool:
    # transformers builds the projector without biases when this is false; ours has them.
    return (not bool(raw_config.get("multimodal_projector_bias", True))
            and e.hf_key.startswith(_PROJ) and e.hf_key.endswith(".bias"))


MAPPING = hf_io.HFMapping(
    name="llava-hf",
    hf_class="LlavaForConditionalGeneration",
    entries=hf_entries,
    canonical_key=canonical_key,
    layout_key=layout_key,
    layouts=KEY_LAYOUTS,
    detect_layout=_detect_layout,
    ignored=_IGNORED,
    tied_head_key=_HEAD,
    config_from_hf=from_hf_config,
    config_to_hf=to_hf_config,
    zero_fill=_zero_fill,
)


# --------------------------------------------------------------------------------------
# The public functions of old, over `hf_io`
# --------------------------------------------------------------------------------------


def param_shapes(cfg: LlavaConfig) -> Dict[Path, Tuple[int, ...]]:
    """Shapes of the full parameter tree for `cfg` (stacked decoder params lead with L)."""
    return hf_io.param_shapes(MAPPING, cfg)


def load_hf_llava(path: Union[str, os.PathLike], dtype: str = "float32",
                  sharding: ShardingLike = None) -> Tuple[LlavaConfig, dict]:
    """Read a llava-hf checkpoint folder into `(cfg, params)` (see `hf_io.load`)."""
    return hf_io.load(MAPPING, path, dtype=dtype, sharding=sharding)


def hf_state_dict_to_params(cfg: LlavaConfig, state_dict: Mapping[str, Any],
                            dtype: str = "float32") -> dict:
    """In-memory conversion of a HF state dict (numpy / torch tensors; any supported key
    layout) to our params tree; same validation as `load_hf_llava`."""
    return hf_io.state_dict_to_params(MAPPING, cfg, state_dict, dtype=dtype)


def check_params(cfg: LlavaConfig, params) -> Dict[Path, Any]:
    """Flattened `params` after checking every path and shape against `cfg`."""
    return hf_io.check_params(MAPPING, cfg, params)


def params_to_hf_tensors(cfg: LlavaConfig, params, dtype: Optional[str] = None,
                         key_layout: str = "transformers5") -> Iterable[Tuple[str, np.ndarray]]:
    """Yield `(hf_key, numpy tensor)` one at a time (HF orientation, `dtype` or the
    param's own dtype)."""
    return hf_io.params_to_hf_tensors(MAPPING, cfg, params, dtype=dtype, key_layout=key_layout)


def params_to_hf_state_dict(cfg: LlavaConfig, params, dtype: Optional[str] = None,
                            key_layout: str = "transformers5") -> Dict[str, np.ndarray]:
    """The whole HF state dict as numpy arrays (a full copy: for small models and tests)."""
    return hf_io.params_to_hf_state_dict(MAPPING, cfg, params, dtype=dtype,
                                         key_layout=key_layout)


def save_hf_llava(cfg: LlavaConfig, params, out_dir: Union[str, os.PathLike], lora=None,
                  tokenizer_dir: Optional[Union[str, os.PathLike]] = None,
                  dtype: Optional[str] = None, max_shard_size: Union[int, str] = "5GB",
                  key_layout: str = "transformers5") -> List[str]:
    """Write a transformers-loadable llava checkpoint folder; returns the written files
    (see `hf_io.save`)."""
    return hf_io.save(MAPPING, cfg, params, out_dir, lora=lora, tokenizer_dir=tokenizer_dir,
                      dtype=dtype, max_shard_size=max_shard_size, key_layout=key_layout)
