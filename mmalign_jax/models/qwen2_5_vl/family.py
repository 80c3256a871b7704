"""Qwen2.5-VL as a `ModelFamily`: dynamic-resolution images in patch-budget slots."""
from __future__ import annotations

import numpy as np

from mmalign_jax.models.config import LM_LORA_TARGETS
from mmalign_jax.models.family import ModelFamily
from mmalign_jax.models.qwen2_5_vl import hf, model, presets
from mmalign_jax.models.qwen2_5_vl.config import Qwen25VLConfig


def _processor_config(cfg: Qwen25VLConfig):
    from mmalign_jax.models.qwen2_5_vl import processor
    im, v = cfg.image, cfg.vision
    return processor.ProcessorConfig(
        patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size, min_pixels=im.min_pixels, max_pixels=im.max_pixels,
        image_mean=tuple(im.image_mean), image_std=tuple(im.image_std))


def preprocess_image(cfg: Qwen25VLConfig, image, mode: str = "native") -> dict:
    """Qwen2VLImageProcessor: resized to multiples of 28 within [min_pixels, max_pixels],
    `{"pixel_values": float32[patches, 1176], "image_grid_thw": int32[3]}`."""
    if mode not in ("native", ""):
        raise ValueError(f"Qwen2.5-VL keeps each image's own aspect ratio: image mode must be "
                         f"'native', got {mode!r}")
    from mmalign_jax.models.qwen2_5_vl import processor
    patches, grid = processor.preprocess(image, _processor_config(cfg))
    return {"pixel_values": patches, "image_grid_thw": np.asarray(grid, np.int32)}


def image_tokens(cfg: Qwen25VLConfig, size) -> int:
    """`<|image_pad|>` tokens of an image of `size = (width, height)`: its resized patch
    grid / 4."""
    from mmalign_jax.models.qwen2_5_vl import processor
    return processor.num_image_tokens(size[0], size[1], _processor_config(cfg))


def image_budget_for_size(cfg: Qwen25VLConfig, size) -> int:
    """Patches of an image of `size = (width, height)` after `smart_resize` (`t*h*w` of
    its grid): `image_budget` of its arrays, known from the header alone."""
    from mmalign_jax.models.qwen2_5_vl import processor
    t, h, w = processor.grid_for_size(size[0], size[1], _processor_config(cfg))
    return t * h * w


def image_budgets(cfg: Qwen25VLConfig) -> tuple:
    """Patch budgets a loader pads a batch's slots to: `processor.default_buckets` up to
    `cfg.max_patches` (64, 128, 256, ..., max_patches)."""
    from mmalign_jax.models.qwen2_5_vl import processor
    return tuple(processor.default_buckets(_processor_config(cfg), cfg.max_patches))


def empty_images(cfg: Qwen25VLConfig, batch: int, slots: int, budget: int = 0) -> dict:
    """Slots of `budget` patches (default: what `max_pixels` allows)."""
    p = int(budget) or cfg.max_patches
    p += -p % cfg.vision.merge_unit
    return {"pixel_values": np.zeros((batch, slots, p, cfg.vision.patch_dim), np.float32),
            "image_grid_thw": np.zeros((batch, slots, 3), np.int32)}


FAMILY = ModelFamily(
    name="qwen2_5_vl",
    config_type=Qwen25VLConfig,
    hf_model_types=(presets.MODEL_TYPE,),
    hf_architectures=presets.ARCHITECTURES,
    presets=presets.PRESET_BUILDERS,
    module=model.Qwen25VL,
    init_params=model.init_params,
    abstract_params=model.abstract_params,
    param_logical_specs=model.param_logical_specs,
    init_cache=model.init_cache,
    config_from_hf=presets.from_hf_config,
    config_to_hf=presets.to_hf_config,
    load_hf=hf.load_hf,
    save_hf=hf.save_hf,
    preprocess_image=preprocess_image,
    image_tokens=image_tokens,
    empty_images=empty_images,
    image_keys=("pixel_values", "image_grid_thw"),
    native_resolution=True,
    image_budget=lambda arrays: int(arrays["pixel_values"].shape[0]),
    image_budget_for_size=image_budget_for_size,
    image_budgets=image_budgets,
    default_template="qwen2_vl",
    default_image_mode="native",
    lora_target_regex=LM_LORA_TARGETS,
    param_groups={"vision": r"params/visual/.*",
                  "projector": r"params/merger/.*",
                  "lm": r"params/language_model/.*"},
    vision_key="visual",
    description="Qwen2.5-VL: windowed ViT with 2-D RoPE at native resolution → 2×2 patch "
                "merger → Qwen2 with multimodal RoPE",
    checkpoints=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    pretrained_presets=presets.PRETRAINED,
)
