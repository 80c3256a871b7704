"""Candidate sampling (PAPER.md: the SFT model samples 4 answers per prompt at temperature 0.7).

  python -m mmalign_jax.generate --config configs/generate.py            # demo (below)
  python -m mmalign_jax.generate --config configs/generate.py:llava-1.5-13b \
      --config.checkpoint=/ckpt/llava-1.5-13b-hf --config.records=prompts.jsonl \
      --config.image_root=/data/images --config.out=/data/candidates.jsonl
  # SteerLM inference: target attributes appended to the user turn as in training
  python -m mmalign_jax.generate --config configs/generate.py \
      --config.checkpoint=workdir/steerlm-demo --attributes verbosity=0,correctness=4

Every field: `mmalign_jax/generate/candidates.py` (`default_config`).

The definition the pipeline loads (`pipeline.recipe.load_config`); the repository's
`configs/generate.py` re-exports `get_config` for the `--config` flag.
"""
from mmalign_jax.configs.paper import PRESETS as PAPER_PRESETS
from mmalign_jax.generate import candidates


def get_config(preset: str = "demo"):
    c = candidates.default_config()
    if preset == "demo":
        # The demo SFT model (`python -m mmalign_jax.train --config configs/sft.py`) answers
        # the demo task's training prompts (written by that run under its workdir).
        c.checkpoint = "workdir/sft-demo"
        c.records = "workdir/sft-demo/data/train.jsonl"
        c.image_root = "workdir/sft-demo/data/images"
        c.out = "workdir/generate-demo/candidates.jsonl"
        c.sampling.max_new_tokens = 48
        c.batch_size = 32
    elif preset in PAPER_PRESETS:
        # A llava-hf folder (or a workdir of ours) given with --config.checkpoint.
        c.model_name = preset
        c.dtype = "bfloat16"
        c.template = "vicuna_v1"
        c.image_mode = "pad"
        c.sampling.max_new_tokens = 1024
        c.batch_size = 32
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b or llava-1.5-13b")
    return c
