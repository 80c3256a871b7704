"""Hugging Face interop: checkpoint folders ⇄ mmalign_jax params, for every model family.

    cfg, params = convert.load_hf(path, dtype="bfloat16")   # family from config.json
    convert.save_hf(cfg, params, out_dir, lora=..., tokenizer_dir=...)

Each family's own converter lives beside its model (`models/<family>/hf.py`); the LLaVA names
(`load_hf_llava`, `save_hf_llava`, the key tables) stay importable from here.
`python -m mmalign_jax.convert --help` for the command line.
"""
from mmalign_jax.models import registry
from mmalign_jax.models.family import CheckpointError  # noqa: F401
from mmalign_jax.models.llava.hf import (  # noqa: F401
    KEY_LAYOUTS,
    canonical_key,
    copy_tokenizer_files,
    hf_entries,
    hf_state_dict_to_params,
    load_hf_llava,
    param_shapes,
    params_to_hf_state_dict,
    params_to_hf_tensors,
    save_hf_llava,
)


def load_hf(path, dtype: str = "float32", sharding=None):
    """`(cfg, params)` of a Hugging Face checkpoint folder of any registered family."""
    import os
    if not os.path.isdir(os.fspath(path)):
        raise CheckpointError(f"{path}: not a folder; pass a Hugging Face checkpoint folder")
    try:
        family = registry.for_hf_config(path)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    return family.load_hf(path, dtype=dtype, sharding=sharding)


def save_hf(cfg, params, out_dir, **kw):
    """Write a transformers-loadable folder for `cfg`'s family (kwargs: its `save_hf`'s)."""
    return registry.for_config(cfg).save_hf(cfg, params, out_dir, **kw)


__all__ = [
    "CheckpointError", "KEY_LAYOUTS", "canonical_key", "copy_tokenizer_files", "hf_entries",
    "hf_state_dict_to_params", "load_hf", "load_hf_llava", "param_shapes",
    "params_to_hf_state_dict", "params_to_hf_tensors", "save_hf", "save_hf_llava",
]
