"""`python -m mmalign_jax.pipeline --config configs/pipeline.py[:preset] [--config.x.y=v]`"""
import logging
import sys

from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/pipeline.py[:preset]; override fields with --config.x.y=v",
    lock_config=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mmalign_jax.runtime import brief_library_errors
    brief_library_errors()   # orbax's threads: their message, not 50 tracebacks
    from mmalign_jax.pipeline import recipe
    from mmalign_jax.store import JobLocked
    from mmalign_jax.train import defaults, loop
    try:
        recipe.run(_CONFIG.value)
    except (recipe.PipelineError, defaults.ConfigError, loop.TrainingDiverged,
            loop.WorkdirError, JobLocked, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    from mmalign_jax.runtime import run_config_cli
    run_config_cli(main)   # --config required; an unknown field is one sentence (runtime.py)
