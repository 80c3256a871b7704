"""Supervised fine-tuning (standard SFT, PAPER.md: LoRA lr 4e-4, 3 epochs, batch 128).

  python -m mmalign_jax.train --config configs/sft.py                 # offline demo
  python -m mmalign_jax.train --config configs/sft.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/sft

The definition the pipeline loads (`pipeline.recipe.load_config`); the repository's
`configs/sft.py` re-exports `get_config` for the `--config` flag.
"""
from mmalign_jax.configs import paper
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import defaults


def get_config(preset: str = "demo"):
    c = defaults.base_config("sft")
    if preset == "demo":
        demo_recipe.apply_sft(c)   # the tiny model from random weights: train it all
    elif preset == demo_recipe.QWEN_PRESET:
        demo_recipe.apply_qwen_sft(c)   # the tiny Qwen2.5-VL, mixed image sizes
    elif preset in paper.QWEN_PRESETS:
        paper.apply_qwen(c, preset)
        c.optim.lr = 4e-4
        c.data.seq_len = 2048
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.optim.lr = 4e-4
        c.data.seq_len = 2048
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b, llava-1.5-13b, "
                         f"{demo_recipe.QWEN_PRESET}, {', '.join(paper.QWEN_PRESETS)}")
    return c
