"""`python -m mmalign_jax.generate --config configs/generate.py[:preset] [--config.a.b=v ...]
[--attributes helpfulness=4,...,verbosity=1]` — see `candidates.py`."""
from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/generate.py[:preset]; override fields with --config.x.y=v",
    lock_config=True)
_ATTRIBUTES = flags.DEFINE_string(
    "attributes", None, "SteerLM target attributes, e.g. helpfulness=4,correctness=4,"
    "verbosity=1 (values 0-4; unnamed ones are 4); same as --config.attributes")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mmalign_jax.generate import candidates
    from mmalign_jax.convert import CheckpointError
    from mmalign_jax.data.records import RecordError
    from mmalign_jax.store import StoreError
    c = _CONFIG.value
    if _ATTRIBUTES.value is not None:
        c.attributes = _ATTRIBUTES.value
    try:
        candidates.run(c)
    except (candidates.GenerateError, RecordError, CheckpointError, StoreError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    from mmalign_jax.runtime import run_config_cli
    run_config_cli(main)   # --config required; an unknown field is one sentence (runtime.py)
