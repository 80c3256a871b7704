"""Named model shapes and Hugging Face `config.json` conversion for every registered family.

    cfg = get_preset("llava-1.5-7b")                 # any family's preset, by name
    cfg = from_hf_config("/ckpt/llava-1.5-7b-hf")    # family from model_type / architectures
    d   = to_hf_config(cfg)                          # the family's own config.json dict

Thin: each call asks `registry` for the family and hands over to it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from mmalign_jax.models import registry


def get_preset(name: str):
    return registry.get_preset(name)


def from_hf_config(config):
    """Config from a checkpoint folder, its config.json or the parsed dict (any family)."""
    return registry.from_hf_config(config)


def to_hf_config(cfg, dtype: Optional[str] = None) -> Dict[str, Any]:
    return registry.for_config(cfg).config_to_hf(cfg, dtype)


def __getattr__(name):
    if name == "PRESETS":   # every family's preset names (resolved on use: families load lazily)
        return tuple(registry.preset_names())
    raise AttributeError(name)
