"""Hugging Face Qwen2.5-VL checkpoints (safetensors) ⇄ mmalign_jax parameter trees.

Key layouts read (auto-detected per key; the generic machinery is `models/hf_io.py`):
  hub (Qwen/Qwen2.5-VL-*)   visual.*          model.* (the LM)             lm_head.weight
  transformers >= 5         model.visual.*    model.language_model.*       lm_head.weight
Written: 'transformers5' (default) or 'hub'; both load with `from_pretrained`.

Ours: `visual` (patch embedding as a Dense over the flattened 2×14×14×3 patch, blocks
stacked for `nn.scan`), `merger` (HF `visual.merger`: our projector role), and
`language_model` (the shared LLaMA-family decoder, layers stacked).
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Union

from mmalign_jax.models import hf_io
from mmalign_jax.models.family import CheckpointError
from mmalign_jax.models.hf_io import Entry, HFMapping
from mmalign_jax.models.qwen2_5_vl import presets
from mmalign_jax.models.qwen2_5_vl.config import Qwen25VLConfig

KEY_LAYOUTS = ("transformers5", "hub")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
_HEAD = "lm_head.weight"


def hf_entries(cfg: Qwen25VLConfig) -> List[Entry]:
    """Every tensor of the checkpoint for `cfg`, canonical (hub) keys, in HF's order."""
    v, t = cfg.vision, cfg.text
    dv, f_v = v.hidden_size, v.intermediate_size
    out: List[Entry] = []

    def add(key, path, shape, transform="id", layer=None, stack=0):
        out.append(Entry(key, tuple(path.split("/")), tuple(int(s) for s in shape), transform,
                         layer, stack))

    add("visual.patch_embed.proj.weight", "visual/patch_embed/kernel",
        (dv, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size), "flatT")
    for i in range(v.depth):
        hk, hp = f"visual.blocks.{i}.", "visual/blocks/"
        for n in ("norm1", "norm2"):
            add(hk + f"{n}.weight", hp + f"{n}/scale", (dv,), layer=i, stack=v.depth)
        for theirs, ours, shape in (("attn.qkv", "qkv", (3 * dv, dv)), ("attn.proj", "proj", (dv, dv)),
                                    ("mlp.gate_proj", "gate_proj", (f_v, dv)),
                                    ("mlp.up_proj", "up_proj", (f_v, dv)),
                                    ("mlp.down_proj", "down_proj", (dv, f_v))):
            add(hk + f"{theirs}.weight", hp + f"{ours}/kernel", shape, "T", i, v.depth)
            add(hk + f"{theirs}.bias", hp + f"{ours}/bias", shape[:1], layer=i, stack=v.depth)
    dm = dv * v.merge_unit
    add("visual.merger.ln_q.weight", "merger/ln_q/scale", (dv,))
    add("visual.merger.mlp.0.weight", "merger/mlp_0/kernel", (dm, dm), "T")
    add("visual.merger.mlp.0.bias", "merger/mlp_0/bias", (dm,))
    add("visual.merger.mlp.2.weight", "merger/mlp_2/kernel", (v.out_hidden_size, dm), "T")
    add("visual.merger.mlp.2.bias", "merger/mlp_2/bias", (v.out_hidden_size,))

    d, f, n_l = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    q_out, kv_out = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    lm = "language_model"
    add("model.embed_tokens.weight", f"{lm}/embed_tokens/embedding", (t.vocab_size, d))
    for i in range(n_l):
        hk, hp = f"model.layers.{i}.", f"{lm}/layers/"
        add(hk + "input_layernorm.weight", hp + "input_layernorm/scale", (d,), layer=i, stack=n_l)
        for proj, n_out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            add(hk + f"self_attn.{proj}.weight", hp + f"self_attn/{proj}/kernel", (n_out, d), "T",
                i, n_l)
            add(hk + f"self_attn.{proj}.bias", hp + f"self_attn/{proj}/bias", (n_out,), layer=i,
                stack=n_l)
        add(hk + "self_attn.o_proj.weight", hp + "self_attn/o_proj/kernel", (d, q_out), "T", i, n_l)
        add(hk + "post_attention_layernorm.weight", hp + "post_attention_layernorm/scale", (d,),
            layer=i, stack=n_l)
        for proj, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            add(hk + f"mlp.{proj}.weight", hp + f"mlp/{proj}/kernel", shape, "T", i, n_l)
    add("model.norm.weight", f"{lm}/norm/scale", (d,))
    if not t.tie_word_embeddings:
        add(_HEAD, f"{lm}/lm_head/kernel", (t.vocab_size, d), "T")
    return out


_TO_CANONICAL = [(re.compile(r"^model\.visual\."), "visual."),
                 (re.compile(r"^model\.language_model\."), "model.")]


def canonical_key(key: str) -> str:
    """The hub-layout name of a checkpoint key written in any supported layout."""
    return hf_io.rename_first(key, _TO_CANONICAL)


def layout_key(canonical: str, layout: str) -> str:
    if layout == "hub":
        return canonical
    if layout != "transformers5":
        raise ValueError(f"unknown key layout {layout!r}; choose one of {KEY_LAYOUTS}")
    if canonical.startswith("visual."):
        return "model." + canonical
    if canonical.startswith("model."):
        return "model.language_model." + canonical[len("model."):]
    return canonical


def detect_layout(key: str) -> Optional[str]:
    if key.startswith(("model.visual.", "model.language_model.")):
        return "transformers5"
    if key.startswith("visual."):
        return "hub"
    return None


MAPPING = HFMapping(
    name="qwen2_5_vl",
    hf_class="Qwen2_5_VLForConditionalGeneration",
    entries=hf_entries,
    canonical_key=canonical_key,
    layout_key=layout_key,
    layouts=KEY_LAYOUTS,
    detect_layout=detect_layout,
    ignored=re.compile(r".*\.rotary_emb\.inv_freq$"),
    tied_head_key=_HEAD,
    config_from_hf=presets.from_hf_config,
    config_to_hf=presets.to_hf_config,
    extra_files=lambda cfg: {PREPROCESSOR_CONFIG: presets.preprocessor_config(cfg)},
)


def load_hf(path: Union[str, os.PathLike], dtype: str = "float32", sharding=None):
    """`(cfg, params)` from a Qwen2.5-VL checkpoint folder; the image settings come from its
    `preprocessor_config.json` when there is one (else Qwen2.5-VL's defaults)."""
    cfg, params = hf_io.load(MAPPING, path, dtype, sharding)
    try:
        image = presets.from_hf_config(os.fspath(path)).image
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return cfg.replace(image=image), params


def save_hf(cfg: Qwen25VLConfig, params, out_dir, lora=None, tokenizer_dir=None, **kw) -> List[str]:
    """Write a folder `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads (with a
    `preprocessor_config.json` of `cfg.image` unless the tokenizer folder brings one)."""
    return hf_io.save(MAPPING, cfg, params, out_dir, lora=lora, tokenizer_dir=tokenizer_dir, **kw)


def state_dict_to_params(cfg: Qwen25VLConfig, state_dict, dtype: str = "float32") -> dict:
    return hf_io.state_dict_to_params(MAPPING, cfg, state_dict, dtype)


def params_to_hf_state_dict(cfg: Qwen25VLConfig, params, dtype=None, key_layout=None) -> dict:
    return hf_io.params_to_hf_state_dict(MAPPING, cfg, params, dtype, key_layout)
