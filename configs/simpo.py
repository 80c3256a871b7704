"""SimPO (Meng et al. 2024) on preference pairs: reference-free, length-normalised rewards.

  python -m mmalign_jax.train --config configs/simpo.py                 # offline demo
  python -m mmalign_jax.train --config configs/simpo.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition: `mmalign_jax/configs/simpo.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.simpo import get_config  # noqa: F401
