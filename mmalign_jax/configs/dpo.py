"""DPO (Rafailov et al. 2023) on preference pairs, as in PAPER.md.

  python -m mmalign_jax.train --config configs/dpo.py                 # offline demo
  python -m mmalign_jax.train --config configs/dpo.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition the pipeline loads (`pipeline.recipe.load_config`); the repository's
`configs/dpo.py` re-exports `get_config` for the `--config` flag.
"""
from mmalign_jax.configs import paper
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import defaults


def get_config(preset: str = "demo"):
    c = defaults.base_config("dpo")
    if preset == "demo":
        demo_recipe.apply_pairs(c)   # from the demo SFT model; --config.demo_sft.* changes it
        c.dpo.beta = 0.1
    elif preset == demo_recipe.QWEN_PRESET:
        demo_recipe.apply_qwen_pairs(c)   # from the demo Qwen2.5-VL SFT model
        c.dpo.beta = 0.1
    elif preset in paper.QWEN_PRESETS:
        paper.apply_qwen(c, preset)
        c.optim.lr = 5e-5
        c.dpo.beta = 0.1
        c.dpo.reference = "precomputed"
        c.data.prompt_len = 1536     # up to 1280 image tokens (max_pixels) + the question
        c.data.prompt_buckets = (256, 512, 1024, 1536)
        c.data.response_len = 1024
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.optim.lr = 5e-5
        c.dpo.beta = 0.1
        c.dpo.reference = "precomputed"
        c.data.prompt_len = 1024     # 576 image tokens + the question
        c.data.response_len = 1024   # max length 3000 in the paper; 1024 new tokens sampled
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b, llava-1.5-13b, "
                         f"{demo_recipe.QWEN_PRESET}, {', '.join(paper.QWEN_PRESETS)}")
    return c
