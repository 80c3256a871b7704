"""Candidate sampling (PAPER.md: the SFT model samples 4 answers per prompt at temperature 0.7).

  python -m mmalign_jax.generate --config configs/generate.py            # demo (below)
  python -m mmalign_jax.generate --config configs/generate.py:llava-1.5-13b \
      --config.checkpoint=/ckpt/llava-1.5-13b-hf --config.records=prompts.jsonl \
      --config.image_root=/data/images --config.out=/data/candidates.jsonl
  # SteerLM inference: target attributes appended to the user turn as in training
  python -m mmalign_jax.generate --config configs/generate.py \
      --config.checkpoint=workdir/steerlm-demo --attributes verbosity=0,correctness=4

Every field: `mmalign_jax/generate/candidates.py` (`default_config`).

The definition: `mmalign_jax/configs/generate.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.generate import get_config  # noqa: F401
