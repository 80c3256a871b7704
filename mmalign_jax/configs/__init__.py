"""The method configs: one module per command (`get_config(preset)` → ConfigDict).

    sft · dpo · simpo · steerlm · rejection_sampling   python -m mmalign_jax.train --config …
    generate                                   python -m mmalign_jax.generate --config …
    pipeline                                   python -m mmalign_jax.pipeline --config …

They live in the package so that an installed copy has them: the pipeline loads its stages'
configs from here (`pipeline.recipe.load_config`). The repository's `configs/<name>.py` are
the files the command lines take (`--config configs/dpo.py:llava-1.5-13b`); each re-exports
the `get_config` defined here.
"""

NAMES = ("sft", "dpo", "simpo", "steerlm", "rejection_sampling", "generate", "pipeline")
