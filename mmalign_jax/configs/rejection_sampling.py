"""Rejection sampling (PAPER.md): SFT on the single best candidate per prompt.

Best = the top score of the pair rule (helpfulness + correctness + coherence; the first
candidate in order on ties) — `data.sft_mode='best'` (`pairs.best_responses`); the same SFT
trainer as configs/sft.py (`method='sft'`). Recipe: LoRA lr 4e-4, 3 epochs, global batch 128,
max length 2048.

  python -m mmalign_jax.train --config configs/rejection_sampling.py            # offline demo
  python -m mmalign_jax.train --config configs/rejection_sampling.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition the pipeline loads (`pipeline.recipe.load_config`); the repository's
`configs/rejection_sampling.py` re-exports `get_config` for the `--config` flag.
"""
from mmalign_jax.configs import paper
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import defaults


def get_config(preset: str = "demo"):
    c = defaults.base_config("sft")
    c.data.sft_mode = "best"
    if preset == "demo":
        # Start from the demo SFT model (trained first in <workdir>/sft), as the paper starts
        # from LLaVA-1.5; LoRA + projector on the best of the demo's 5 scored candidates.
        c.workdir = "workdir/rejection_sampling-demo"
        demo_recipe.use_sft(c)   # --config.demo_sft.* changes that SFT run
        c.lora.rank, c.lora.alpha, c.lora.dropout = 16, 32.0, 0.0
        c.optim.lr = 1e-3
        c.optim.projector_lr = 1e-3
        c.optim.warmup_ratio = 0.05
        c.data.seq_len = 128           # image tokens + question + the best answer
        c.train.global_batch_size = 16
        c.train.num_epochs = 0
        c.train.max_steps = 150
        c.train.log_every = 10
        c.train.eval_every = 50
        c.train.checkpoint_every = 50
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.workdir = f"workdir/rejection_sampling-{preset}"
        c.optim.lr = 4e-4
        c.data.seq_len = 2048
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b or llava-1.5-13b")
    return c
