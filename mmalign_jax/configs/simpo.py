"""SimPO (Meng et al. 2024) on preference pairs: reference-free, length-normalised rewards.

  python -m mmalign_jax.train --config configs/simpo.py                 # offline demo
  python -m mmalign_jax.train --config configs/simpo.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs
"""
from mmalign_jax.configs import paper
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import defaults


def get_config(preset: str = "demo"):
    c = defaults.base_config("simpo")
    if preset == "demo":
        demo_recipe.apply_pairs(c)   # from the demo SFT model; --config.demo_sft.* changes it
        c.simpo.beta, c.simpo.gamma = 2.0, 1.0
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.optim.lr = 5e-5            # DPO's recipe; SimPO's paper tunes 3e-7..1e-6 for full FT
        c.data.prompt_len = 1024
        c.data.response_len = 1024
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b or llava-1.5-13b")
    return c
