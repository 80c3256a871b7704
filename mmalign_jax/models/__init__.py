"""The LLaVA model family in Flax Linen.

config (dataclasses) · layers (LoRA-aware Dense, RMSNorm) · vision (CLIP ViT) · projector ·
llama (decoder, RoPE, KV cache) · llava (the model, init, logical specs, cache) · lora.
Import the submodule you need: `from mmalign_jax.models import llava`.
"""
