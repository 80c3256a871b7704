"""The published recipe as one command (`python -m mmalign_jax.pipeline`); see recipe.py."""
from .recipe import (METHODS, PipelineError, Stages, evaluate_demo, load_config, results_table,
                     run)

__all__ = ["METHODS", "PipelineError", "Stages", "evaluate_demo", "load_config",
           "results_table", "run"]
