"""The whole recipe (SFT → sample 4 → annotate → pairs → DPO / rejection sampling / SteerLM →
evaluate) as one command; see `mmalign_jax/pipeline/recipe.py`.

  python -m mmalign_jax.pipeline --config configs/pipeline.py                  # offline demo
  python -m mmalign_jax.pipeline --config configs/pipeline.py:llava-1.5-13b \
      --config.checkpoint=/ckpt/llava-1.5-13b-hf --config.prompts=/data/prompts.jsonl \
      --config.eval_prompts=/data/heldout_prompts.jsonl --config.image_root=/data/images
      # GEMINI_API_KEY in the environment; annotator gemini is the default of this preset

The definition: `mmalign_jax/configs/pipeline.py` (the pipeline loads it from the package);
this file re-exports its `get_config` for `--config`.
"""
from mmalign_jax.configs.pipeline import get_config  # noqa: F401
