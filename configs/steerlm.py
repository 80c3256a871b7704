"""SteerLM (PAPER.md): SFT on every candidate, conditioned on its own five scores.

  python -m mmalign_jax.train --config configs/steerlm.py                       # offline demo
  python -m mmalign_jax.train --config configs/steerlm.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition: `mmalign_jax/configs/steerlm.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.steerlm import get_config  # noqa: F401
