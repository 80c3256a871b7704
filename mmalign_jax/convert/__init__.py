"""Hugging Face interop: llava-hf safetensors checkpoints ⇄ mmalign_jax params.

`python -m mmalign_jax.convert --help` for the command line.
"""
from mmalign_jax.convert.hf import (  # noqa: F401
    CheckpointError,
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

__all__ = [
    "CheckpointError", "KEY_LAYOUTS", "canonical_key", "copy_tokenizer_files", "hf_entries",
    "hf_state_dict_to_params", "load_hf_llava", "param_shapes", "params_to_hf_state_dict",
    "params_to_hf_tensors", "save_hf_llava",
]
