"""The method configs: one module per command (`get_config(preset)` → ConfigDict).

    sft · dpo · simpo · steerlm · rejection_sampling   python -m mmalign_jax.train --config …
    generate                                   python -m mmalign_jax.generate --config …
    pipeline                                   python -m mmalign_jax.pipeline --config …

They live in the package so that an installed copy has them: the pipeline loads its stages'
configs from here (`pipeline.recipe.load_config`). The repository's `configs/<name>.py` are
the files the command lines take (`--config configs/dpo.py:llava-1.5-13b`); each re-exports
the `get_config` defined here.
"""

import importlib

NAMES = ("sft", "dpo", "simpo", "steerlm", "rejection_sampling", "generate", "pipeline")


def load(name: str, preset: str = "demo"):
    """`mmalign_jax.configs.<name>.get_config(preset)`; ValueError for an unknown name."""
    if name not in NAMES:
        raise ValueError(f"no config {name!r}: use one of {', '.join(NAMES)} (mmalign_jax/configs/)")
    return importlib.import_module(f"{__name__}.{name}").get_config(preset)
