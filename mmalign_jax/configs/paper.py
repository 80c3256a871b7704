"""The study's models and training recipe (PAPER.md), shared by the method configs.

`PRESETS` are the model presets of the study's checkpoints (LLaVA-1.5 7B / 13B, loaded from
their Hugging Face folders); `apply(c, preset)` sets what every method of the study shares.
"""
from __future__ import annotations

import ml_collections as mlc

PRESETS = ("llava-1.5-7b", "llava-1.5-13b")
QWEN_PRESETS = ("qwen2.5-vl-3b", "qwen2.5-vl-7b")


def apply(c: mlc.ConfigDict, preset: str) -> mlc.ConfigDict:
    """The published recipe (PAPER.md): LoRA r128/α256, projector 2e-5, frozen CLIP, bf16."""
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.workdir = f"workdir/{c.method}-{preset}"
    c.data.source = "tfds"
    c.data.image_mode = "pad"
    c.data.template = "vicuna_v1"
    c.data.worker_count = 8
    c.train.global_batch_size = 128
    c.train.micro_batch_size = 8
    c.train.num_epochs = 3
    c.train.log_every = 1
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.mesh.shape = mlc.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    return c


def apply_qwen(c: mlc.ConfigDict, preset: str) -> mlc.ConfigDict:
    """The same recipe for Qwen2.5-VL (3B / 7B, loaded from `model.hf_checkpoint`): the
    family's template (`qwen2_vl`) and native-resolution images; the patch merger is the
    projector, the ViT stays frozen. Images of mixed sizes: the family's patch buckets,
    batches grouped by size (docs/PERFORMANCE.md, "Qwen2.5-VL: dynamic resolution")."""
    apply(c, preset)
    c.data.image_mode = ""
    c.data.template = ""
    c.data.group_by_size = 16
    # ≤ 1280 image tokens (Qwen's suggested bound; the hub's preprocessor allows 16384)
    c.model.image_max_pixels = 28 * 28 * 1280
    return c
