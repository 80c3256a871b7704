"""Model configuration: plain frozen dataclasses, hashable so they can be static jit arguments.

The field names follow Hugging Face's `LlavaConfig` / `CLIPVisionConfig` / `LlamaConfig` so a
reader can map them one to one; `presets.from_hf_config` builds them from a `config.json`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT (pre-layer-norm, quick-GELU, class token, learned position embeddings)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """LLaMA-family decoder (RMSNorm, RoPE, GQA, SwiGLU)."""

    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim_override: Optional[int] = None  # HF `head_dim` when it is not hidden/heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Hashable form of HF `rope_scaling`: tuple of (key, value) pairs, e.g.
    # (("rope_type", "llama3"), ("factor", 8.0), ("low_freq_factor", 1.0),
    #  ("high_freq_factor", 4.0), ("original_max_position_embeddings", 8192)).
    rope_scaling: Optional[Tuple[Tuple[str, Any], ...]] = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False   # q/k/v/o biases (LLaMA's `attention_bias`)
    qkv_bias: bool = False         # q/k/v biases only, o_proj without (Qwen2)
    mlp_bias: bool = False
    # Multimodal RoPE (Qwen2-VL): rotary frequencies split into (temporal, height, width)
    # sections, each rotated by its own stream of a `[3, B, T]` position array.
    mrope_section: Optional[Tuple[int, ...]] = None
    hidden_act: str = "silu"
    pad_token_id: Optional[int] = None
    bos_token_id: int = 1
    eos_token_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads

    def rope_scaling_dict(self) -> Optional[dict]:
        return dict(self.rope_scaling) if self.rope_scaling else None


# Every linear of the LLaMA-family decoder but lm_head (PAPER.md), as '/'-joined paths.
LM_LORA_TARGETS = r"language_model/layers/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (PAPER.md: r=128, alpha=256, dropout 0.05 on every LM linear but lm_head).

    `target_regex` is matched (re.fullmatch) against '/'-joined parameter paths of Dense
    modules, e.g. 'language_model/layers/self_attn/q_proj'.
    """

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    target_regex: str = LM_LORA_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    projector_type: str = "mlp2x_gelu"  # or "linear"
    projector_hidden_act: str = "gelu"  # exact (erf) GELU, as torch nn.GELU()
    vision_feature_layer: int = -2  # index into CLIP hidden_states (embeddings + one per layer)
    vision_feature_select_strategy: str = "default"  # "default" drops CLS, "full" keeps it
    image_token_id: int = 32000
    # Numerics: parameters are stored in `param_dtype`; matmuls run in `dtype`.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Decoder layers always run under nn.scan (stacked parameters, leading 'layers' axis).
    # Remat policy: "none" | "full" (save nothing) | "dots" (save matmul outputs) |
    # "dots_no_batch".
    remat_policy: str = "none"
    # Attention kernel of the full forward and the DPO training path (models/attention.py):
    # "auto" (jax.nn.dot_product_attention on GPU for bf16/fp16 — XLA's unfused path, not
    # cuDNN —, else "chunked") | "dot_product" | "chunked" (query tiles, recomputed in the
    # backward). Cached decoding always uses jax.nn.dot_product_attention.
    attention_impl: str = "auto"
    lora: Optional[LoraConfig] = None  # None = the 'lora' collection is never read

    @property
    def num_image_tokens(self) -> int:
        """Tokens each image occupies in `input_ids` (CLS dropped under 'default')."""
        n = self.vision.num_patches
        return n + 1 if self.vision_feature_select_strategy == "full" else n

    @property
    def image_size(self) -> int:
        """Side of the square images the vision tower takes (the image processor's output)."""
        return self.vision.image_size

    def replace(self, **kw) -> "LlavaConfig":
        return dataclasses.replace(self, **kw)
