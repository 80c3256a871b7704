"""LLaVA-1.5 (CLIP ViT → MLP projector → LLaMA), the first model family.

`model.py` the Flax module and its parameter helpers · `presets.py` named shapes and the
llava-hf `config.json` both ways · `hf.py` llava-hf safetensors weights both ways ·
`family.py` the `ModelFamily` entry the registry hands out. The model API stays importable
from here: `from mmalign_jax.models import llava; llava.Llava(cfg)`.
"""
from mmalign_jax.models.llava.model import (  # noqa: F401
    Llava,
    abstract_params,
    init_cache,
    init_params,
    param_logical_specs,
    place_image_features,
)

__all__ = ["Llava", "abstract_params", "init_cache", "init_params", "param_logical_specs",
           "place_image_features"]
