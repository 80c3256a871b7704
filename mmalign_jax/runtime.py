"""Process settings the library recommends, applied only when a program asks for them.

Importing `mmalign_jax`, or any module of it, changes nothing in the process: no environment
variable, no malloc setting. A program that runs JAX work with the library calls
`configure_process()` once, first thing, before JAX starts its backends (its first
computation, `jax.devices()`, …); the package's command-line entry points
(`python -m mmalign_jax.train`, `.generate`, `.pipeline`, `.bench`, …) do so in their
`__main__`:

    import mmalign_jax
    mmalign_jax.configure_process()    # before the first JAX computation
    import jax
    ...

It applies, in this order:

* `xla_flags.apply_defaults()`: where JAX can reach an NVIDIA GPU (a CUDA PJRT plugin is
  installed and `JAX_PLATFORMS`, if set, allows it), `--xla_gpu_enable_triton_gemm=false
  --xla_gpu_autotune_level=0` are appended to `XLA_FLAGS` (GEMMs through cuBLAS; see
  xla_flags.py for the figures). A flag already in `XLA_FLAGS` is never overridden;
  `MMALIGN_JAX_XLA_DEFAULTS=0` turns them off. Child processes started afterwards inherit
  them through the environment.
* `host_malloc.apply_if_requested()`: with `MMALIGN_JAX_KEEP_STEP_MEMORY=1`, glibc's malloc
  set to keep each CPU train step's memory in the process (`mallopt`; host_malloc.py). This
  one must come before JAX starts its CPU client: after `import jax` is fine, after the
  first computation it does nothing.

Called after JAX has started its backends the XLA flags come too late (a `RuntimeWarning`
says so) and the malloc settings are skipped.
"""
from __future__ import annotations

import os
from typing import Dict, List, MutableMapping

from mmalign_jax import host_malloc, xla_flags


def configure_process(environ: MutableMapping[str, str] = os.environ) -> Dict[str, List[str]]:
    """Apply the library's process settings (module doc): the GPU XLA flags to
    `environ['XLA_FLAGS']` where a GPU is possible, then the glibc malloc settings when
    `MMALIGN_JAX_KEEP_STEP_MEMORY` asks for them.

    Returns what this call changed: `{"xla_flags": [flags added to XLA_FLAGS],
    "malloc": [mallopt settings newly applied]}` — both empty when there was nothing to do.
    Idempotent: a second call adds no flag and reports no setting again."""
    added = xla_flags.apply_defaults(environ)
    before = list(host_malloc.applied)
    malloc = [name for name in host_malloc.apply_if_requested(environ) if name not in before]
    return {"xla_flags": added, "malloc": malloc}
