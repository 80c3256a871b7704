"""LLaVA-1.5 as a `ModelFamily`: what the registry hands the rest of the library."""
from __future__ import annotations

import numpy as np

from mmalign_jax.models.config import LM_LORA_TARGETS, LlavaConfig
from mmalign_jax.models.family import ModelFamily
from mmalign_jax.models.llava import hf, model, presets


def preprocess_image(cfg: LlavaConfig, image, mode: str = "pad") -> dict:
    """CLIPImageProcessor's pipeline (LLaVA's 'pad' to square, 'crop' or 'resize'):
    `{"pixel_values": float32[image_size, image_size, 3]}`."""
    from mmalign_jax.data.images import preprocess
    return {"pixel_values": preprocess(image, cfg.image_size, mode)}


def image_tokens(cfg: LlavaConfig, size=None) -> int:
    """Every image takes `cfg.num_image_tokens` (576 at 336 px), whatever its size."""
    return cfg.num_image_tokens


def empty_images(cfg: LlavaConfig, batch: int, slots: int, budget: int = 0) -> dict:
    return {"pixel_values": np.zeros((batch, slots, cfg.image_size, cfg.image_size, 3),
                                     np.float32)}


FAMILY = ModelFamily(
    name="llava",
    config_type=LlavaConfig,
    hf_model_types=("llava",),
    hf_architectures=presets.ARCHITECTURES,
    presets=presets.PRESET_BUILDERS,
    module=model.Llava,
    init_params=model.init_params,
    abstract_params=model.abstract_params,
    param_logical_specs=model.param_logical_specs,
    init_cache=model.init_cache,
    config_from_hf=presets.from_hf_config,
    config_to_hf=presets.to_hf_config,
    load_hf=hf.load_hf_llava,
    save_hf=hf.save_hf_llava,
    preprocess_image=preprocess_image,
    image_tokens=image_tokens,
    empty_images=empty_images,
    default_template="vicuna_v1",
    default_image_mode="pad",
    lora_target_regex=LM_LORA_TARGETS,
    param_groups={"vision": r"params/vision_tower/.*",
                  "projector": r"params/multi_modal_projector/.*",
                  "lm": r"params/language_model/.*"},
    vision_key="vision_tower",
    description="LLaVA-1.5: CLIP ViT (frozen) → 2-layer GELU MLP projector → LLaMA/Vicuna",
    checkpoints=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"),
    pretrained_presets=("llava-1.5-7b", "llava-1.5-13b"),
)
