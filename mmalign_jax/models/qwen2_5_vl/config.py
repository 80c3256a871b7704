"""Qwen2.5-VL configuration: frozen, hashable dataclasses (static jit arguments).

Field names follow Hugging Face's `Qwen2_5_VLConfig` (`vision_config`, `text_config`) so a
reader maps them one to one. The language model is the library's LLaMA-family decoder
(`TextConfig`) with Qwen2's q/k/v biases and multimodal RoPE (`mrope_section`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from mmalign_jax.models.config import LoraConfig, TextConfig


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
    """The Qwen2.5-VL ViT: 14-px patches over 2 frames, RMSNorm, SwiGLU, 2-D RoPE, window
    attention except in `fullatt_block_indexes`, and a 2×2 patch merger to the LM width."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112             # pixels; windows are window_size/patch/merge units a side
    out_hidden_size: int = 3584
    fullatt_block_indexes: Tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2         # videos only (kept for config.json round trips)
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: channels × frames × patch × patch (1176)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @property
    def window_units(self) -> int:
        """Side of an attention window in merged units (112 / 14 / 2 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class QwenImageConfig:
    """What the image processor makes (HF `preprocessor_config.json`) and the static patch
    budget a batch slot holds: images are resized to between `min_pixels` and `max_pixels`
    (sides multiples of 28), so each yields its own number of patches; `max_patches`
    (default: what `max_pixels` allows) sizes the largest slot."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def max_patches(self, vision: QwenVisionConfig) -> int:
        return self.max_pixels // (vision.patch_size ** 2)


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    vision: QwenVisionConfig = dataclasses.field(default_factory=QwenVisionConfig)
    text: TextConfig = dataclasses.field(default_factory=lambda: TextConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=128000, qkv_bias=True, mrope_section=(16, 24, 24),
        bos_token_id=151643, eos_token_id=151645, pad_token_id=None))
    image: QwenImageConfig = dataclasses.field(default_factory=QwenImageConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: str = "auto"
    lora: Optional[LoraConfig] = None

    @property
    def num_image_tokens(self) -> int:
        """The most tokens one image can occupy (`max_pixels`' patches / 4): images take
        their own count (`processor.num_image_tokens`), at most this."""
        return self.image.max_patches(self.vision) // self.vision.merge_unit

    @property
    def max_patches(self) -> int:
        return self.image.max_patches(self.vision)

    def replace(self, **kw) -> "Qwen25VLConfig":
        return dataclasses.replace(self, **kw)
