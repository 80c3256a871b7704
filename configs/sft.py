"""Supervised fine-tuning (standard SFT, PAPER.md: LoRA lr 4e-4, 3 epochs, batch 128).

  python -m mmalign_jax.train --config configs/sft.py                 # offline demo
  python -m mmalign_jax.train --config configs/sft.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/sft

The definition: `mmalign_jax/configs/sft.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.sft import get_config  # noqa: F401
