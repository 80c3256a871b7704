"""The one table of model families the rest of the library asks (MaxText's
`layers/decoders.py`, big_vision's `models.<name>`): by name, by preset, by a checkpoint's
`config.json` (`model_type`, `architectures`) or by a config object.

    fam = registry.for_hf_config("/ckpt/llava-1.5-7b-hf")   # folder, config.json or dict
    fam = registry.for_preset("tiny"); cfg = fam.preset("tiny")
    fam = registry.for_config(cfg)                          # by the config's type

Built-in families are modules listed in `BUILTIN` (each defines `FAMILY`), imported on first
use; a family defined elsewhere joins with `register(family)`.
"""
from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Dict, List, Mapping, Union

from mmalign_jax.models.family import ModelFamily, read_hf_config

BUILTIN = ("mmalign_jax.models.llava.family", "mmalign_jax.models.qwen2_5_vl.family")
_FAMILIES: Dict[str, ModelFamily] = {}
_loaded = False
_loading = False
_LOCK = threading.RLock()


def register(family: ModelFamily) -> ModelFamily:
    """Add a family; a second family under a taken name, preset or model_type is an error."""
    _load_builtin()
    _add(family)
    return family


def _add(family: ModelFamily) -> None:
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    for other in _FAMILIES.values():
        if other is family:
            continue
        clash = set(other.presets) & set(family.presets)
        if clash:
            raise ValueError(f"family {family.name!r}: presets {sorted(clash)} belong to "
                             f"{other.name!r}")
        clash = set(other.hf_model_types) & set(family.hf_model_types)
        if clash:
            raise ValueError(f"family {family.name!r}: model_type {sorted(clash)} belongs to "
                             f"{other.name!r}")
    _FAMILIES[family.name] = family


def _load_builtin() -> None:
    """Import the built-in families once. Thread-safe: a grain worker's read threads may
    ask for a family at the same time, and none may see a half-filled table (a call made
    by these imports themselves, in the loading thread, returns at once)."""
    global _loaded, _loading
    if _loaded:
        return
    with _LOCK:
        if _loaded or _loading:
            return
        _loading = True
        try:
            for module in BUILTIN:
                _add(importlib.import_module(module).FAMILY)
            _loaded = True
        finally:
            _loading = False


def families() -> List[ModelFamily]:
    _load_builtin()
    return list(_FAMILIES.values())


def get(name: str) -> ModelFamily:
    _load_builtin()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: "
                         f"{', '.join(_FAMILIES)}") from None


def preset_names() -> List[str]:
    return [p for f in families() for p in f.presets]


def for_preset(preset: str) -> ModelFamily:
    for f in families():
        if preset in f.presets:
            return f
    raise ValueError(f"unknown model preset {preset!r}; known presets: "
                     f"{', '.join(preset_names())}")


def get_preset(preset: str):
    """The config of a named preset of any family."""
    return for_preset(preset).preset(preset)


def for_hf_config(src: Union[str, os.PathLike, Mapping[str, Any]]) -> ModelFamily:
    """The family of a Hugging Face checkpoint, by `model_type`, else by `architectures`."""
    return _family_of(*read_hf_config(src))


def _family_of(d: dict, where: str) -> ModelFamily:
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    for f in families():
        if model_type in f.hf_model_types:
            return f
    for f in families():
        if any(a in f.hf_architectures for a in archs):
            return f
    known = ", ".join(f"{f.name} (model_type {'/'.join(f.hf_model_types)})" for f in families())
    raise ValueError(f"{where}: model_type={model_type!r}, architectures={archs} is not a "
                     f"model family mmalign_jax knows; known: {known}")


def from_hf_config(src: Union[str, os.PathLike, Mapping[str, Any]]):
    """The config of a Hugging Face checkpoint, whatever its family."""
    d, where = read_hf_config(src)
    return _family_of(d, where).config_from_hf(src if not isinstance(src, Mapping) else d)


def for_config(cfg) -> ModelFamily:
    for f in families():
        if isinstance(cfg, f.config_type):
            return f
    raise TypeError(f"{type(cfg).__name__} is not the config of a registered model family")
