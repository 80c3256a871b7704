"""DPO (Rafailov et al. 2023) on preference pairs, as in PAPER.md.

  python -m mmalign_jax.train --config configs/dpo.py                 # offline demo
  python -m mmalign_jax.train --config configs/dpo.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition: `mmalign_jax/configs/dpo.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.dpo import get_config  # noqa: F401
