"""Rejection sampling (PAPER.md): SFT on the single best candidate per prompt.

  python -m mmalign_jax.train --config configs/rejection_sampling.py            # offline demo
  python -m mmalign_jax.train --config configs/rejection_sampling.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition: `mmalign_jax/configs/rejection_sampling.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.rejection_sampling import get_config  # noqa: F401
