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
        # As the DPO demo: from the demo SFT model, LoRA + projector on the scored candidates.
        demo_recipe.use_sft(c)   # --config.demo_sft.* changes that SFT run
        c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
        c.optim.lr = 2e-3
        c.optim.projector_lr = 2e-3
        c.optim.warmup_ratio = 0.05
        c.simpo.beta, c.simpo.gamma = 2.0, 1.0
        c.data.prompt_len = 64
        c.data.response_len = 64
        c.train.global_batch_size = 16
        c.train.num_epochs = 0
        c.train.max_steps = 300
        c.train.log_every = 10
        c.train.eval_every = 50
        c.train.checkpoint_every = 100
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.optim.lr = 5e-5            # DPO's recipe; SimPO's paper tunes 3e-7..1e-6 for full FT
        c.data.prompt_len = 1024
        c.data.response_len = 1024
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b or llava-1.5-13b")
    return c
