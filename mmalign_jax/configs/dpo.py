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
        # Start from the demo SFT model (trained first in <workdir>/sft), as the paper starts
        # DPO from LLaVA-1.5; then LoRA + projector with DPO on the scored candidates.
        demo_recipe.use_sft(c)   # --config.demo_sft.* changes that SFT run
        c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
        c.optim.lr = 2e-3
        c.optim.projector_lr = 2e-3
        c.optim.warmup_ratio = 0.05
        c.dpo.beta = 0.1
        c.data.prompt_len = 64         # 9 image tokens + system prompt + question (≤ 56)
        c.data.response_len = 64
        c.train.global_batch_size = 16
        c.train.num_epochs = 0
        c.train.max_steps = 300
        c.train.log_every = 10
        c.train.eval_every = 50
        c.train.checkpoint_every = 100
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.optim.lr = 5e-5
        c.dpo.beta = 0.1
        c.dpo.reference = "precomputed"
        c.data.prompt_len = 1024     # 576 image tokens + the question
        c.data.response_len = 1024   # max length 3000 in the paper; 1024 new tokens sampled
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b or llava-1.5-13b")
    return c
