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

The entry points that take an ml_collections `--config` (train, generate, pipeline) start
their `main` through `run_config_cli`: an override of a field that does not exist
(`--config.dpo.betta=0.1`) is then one sentence naming it and the nearest valid names,
exit status 2, instead of the flag parser's traceback.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from typing import Callable, Dict, List, MutableMapping, Optional, Sequence

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


def run_config_cli(main: Callable, flag: str = "config") -> None:
    """`absl.app.run(main)` with `--<flag>` required, and an override naming a field the
    config lacks reported as one sentence (`config_override_error`) on stderr, exit 2. Other
    flag errors keep absl's handling (a usage line, exit 1)."""
    from absl import app, flags
    flags.mark_flag_as_required(flag)

    def parse(argv):
        try:
            return app.parse_flags_with_usage(argv)
        except (AttributeError, KeyError) as e:   # ml_collections, on an unknown field
            msg = config_override_error(flags.FLAGS[flag], argv, flag)
            if msg is None:
                raise
            print(f"error: {msg}", file=sys.stderr)
            raise SystemExit(2) from e

    app.run(main, flags_parser=parse)


def config_override_error(config_flag, argv: Sequence[str], flag: str = "config") -> Optional[str]:
    """The sentence for the first `--<flag>.a.b=v` of `argv` whose path is not in the config
    (loaded again from the `--<flag>` file by the flag's own parser), or None when every
    override names a field."""
    spec = None
    for i, arg in enumerate(argv):
        m = re.match(rf"^--?{flag}(?:=(.*))?$", arg)
        if m:
            spec = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else None)
    if spec is None:
        return None
    try:
        config = config_flag.parser.parse(spec)
    except Exception:   # the file itself is the problem: the parser's own error says so
        return None
    for arg in argv:
        m = re.match(rf"^--?{flag}\.([^=]+)", arg)
        if m:
            msg = _missing_field(config, m.group(1), flag)
            if msg:
                return f"--{flag}.{m.group(1)}: {msg}"
    return None


def _missing_field(config, path: str, flag: str) -> Optional[str]:
    node, where = config, flag
    for key in path.split("."):
        if not hasattr(node, "keys"):
            return f"{where} is a {type(node).__name__}, not a section with fields"
        if key not in node:
            fields = list(node.keys())
            near = difflib.get_close_matches(key, fields, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            return (f"there is no field {key!r} in {where}{hint} "
                    f"({where} has: {', '.join(fields)})")
        node, where = node[key], f"{where}.{key}"
    return None


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class _NotRetrieved(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


def _quiet_closed_loop(previous):
    def hook(unraisable):
        if (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"):
            return
        previous(unraisable)
    hook.mmalign_jax = True
    return hook


def brief_library_errors() -> None:
    """For entry points whose failures are named in a sentence: what the checkpoint library
    prints about one failure, trimmed to its one-line messages. Orbax's writer threads log it
    with its traceback once per thread, asyncio once per abandoned future ("exception was
    never retrieved"), and tensorstore's callbacks, finding orbax's event loop closed, once
    per pending write ("Event loop is closed", through `sys.unraisablehook`): a full disk
    was 53 tracebacks. The failure itself still reaches the main thread, where the entry
    point names it — or, when it is not one it knows, prints its traceback once."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _NoTraceback) for f in absl_logger.filters):
        absl_logger.addFilter(_NoTraceback())
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _NotRetrieved) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_NotRetrieved())
    if not getattr(sys.unraisablehook, "mmalign_jax", False):
        sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
