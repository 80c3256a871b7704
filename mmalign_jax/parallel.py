"""Device mesh, logical-axis rules and multi-host set-up.

Model code names only logical axes (INTERNALS.md): parameters one vocabulary ('embed',
'heads', …), activations their own ('activation_batch', 'activation_embed', …). One ordered
rules table maps both to the mesh axes ('data', 'fsdp', 'tensor'). A logical name with no rule
is an error, never a silent replication (for activations: `models.layers.constrain`), and a
dimension the mesh cannot divide is reported with the parameter's path.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Ordered (logical name, mesh axes) pairs. Parameters and activations have their own
# names (as MaxText's `logical_axis_rules`), so the two can be sharded apart.
#
# Parameters: FSDP shards weights along 'embed'; tensor parallelism splits heads / MLP /
# vocab; the frozen vision tower stays replicated.
PARAM_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
    ("embed_vision", None),
    ("mlp_vision", None),
    ("heads_vision", None),
)

# Activations (`layers.constrain` in the model, the input batch in `batch_sharding`): the
# batch over 'data' × 'fsdp', heads / MLP / vocab over 'tensor'. Each name maps where the
# parameter word it replaced used to map. The order matters within one array: Flax's
# `with_logical_constraint` assigns mesh axes rule by rule and skips a rule whose mesh axes
# an earlier rule took, so `activation_embed` -> 'fsdp' leaves the hidden dimension of a
# `[batch, length, embed]` activation unsharded (the batch holds 'fsdp'), as before.
ACTIVATION_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", "fsdp"),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_head_dim", None),
    ("activation_embed_vision", None),
)

DEFAULT_RULES: tuple[tuple[str, Any], ...] = PARAM_RULES + ACTIVATION_RULES

# The logical name of the leading (batch) axis of every input batch.
BATCH_AXIS = "activation_batch"


def mesh_shape(shape: Mapping[str, int], n_devices: int | None = None) -> tuple[int, ...]:
    """Resolve a {'data': -1, 'fsdp': 2, 'tensor': 1} spec (one -1 fills) to a tuple."""
    n = jax.device_count() if n_devices is None else n_devices
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are unknown; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError("at most one mesh axis may be -1 (fill the rest)")
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if fills:
        if n % fixed:
            raise ValueError(f"{n} devices cannot be split into mesh {dict(zip(MESH_AXES, sizes))}: "
                             f"{n} is not divisible by {fixed}")
        sizes[fills[0]] = n // fixed
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} has {int(np.prod(sizes))} devices but "
                         f"{n} are available; set one axis to -1 or change the sizes")
    return tuple(sizes)


def mesh_devices(num_devices: int = 0) -> list:
    """Every device (0), or the first `num_devices` of this single process (tests, benchmarks)."""
    devices = jax.devices()
    if not num_devices or num_devices == len(devices):
        return devices
    if not 0 < num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices}: {len(devices)} devices are available")
    if jax.process_count() > 1:
        raise ValueError(f"num_devices={num_devices} < {len(devices)} needs a single process; "
                         "use every device (0) with several processes")
    return devices[:num_devices]


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    sizes = mesh_shape(shape, len(devices))
    # Auto axes: shardings are constraints XLA propagates (GSPMD), not part of the types.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices == jax.devices():
        return jax.make_mesh(sizes, MESH_AXES, axis_types=auto)
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def _mesh_axes_for(name: str | None, rules: Sequence[tuple[str, Any]], where: str):
    if name is None:
        return None
    for logical, axes in rules:
        if logical == name:
            return axes
    raise ValueError(f"{where}: logical axis {name!r} has no rule in the config's "
                     f"sharding rules; add ('{name}', <mesh axes or None>) to mesh.rules")


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(logical: Sequence[str | None], rules, mesh: Mesh, shape=None, where="") -> P:
    """One logical spec → PartitionSpec; a dimension the mesh axes cannot divide is an error
    naming `where` (the parameter path) rather than a silent replication."""
    out, used = [], set()
    for dim, name in enumerate(logical):
        axes = _mesh_axes_for(name, rules, where)
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        flat = tuple(a for a in flat if a not in used)  # a mesh axis shards one dim at most
        size = _axis_size(mesh, flat or None)
        if shape is not None and size > 1 and shape[dim] % size:
            raise ValueError(f"{where}: dimension {dim} ({name}) of shape {tuple(shape)} is not "
                             f"divisible by mesh axes {flat} (size {size}); change mesh.shape "
                             f"or the rule for {name!r}")
        used.update(flat)
        out.append(None if not flat else (flat[0] if len(flat) == 1 else flat))
    return P(*out)


def tree_shardings(logical_tree, rules, mesh: Mesh, shapes_tree=None):
    """Map a pytree of logical PartitionSpecs (leaves: tuples/P of names) to NamedShardings."""
    paths_and_specs = jax.tree_util.tree_flatten_with_path(
        logical_tree, is_leaf=lambda x: isinstance(x, (P, tuple)) or x is None)[0]
    treedef = jax.tree_util.tree_structure(
        logical_tree, is_leaf=lambda x: isinstance(x, (P, tuple)) or x is None)
    shapes = None
    if shapes_tree is not None:
        shapes = [getattr(x, "shape", None) for x in jax.tree_util.tree_leaves(shapes_tree)]
    out = []
    for i, (path, spec) in enumerate(paths_and_specs):
        where = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        spec = tuple(spec) if spec is not None else ()
        pspec = logical_to_spec(spec, rules, mesh, None if shapes is None else shapes[i], where)
        out.append(NamedSharding(mesh, pspec))
    return jax.tree_util.tree_unflatten(treedef, out)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Leading axis by the rule for `activation_batch` (default: the data-parallel mesh axes),
    the rest replicated."""
    return NamedSharding(mesh, logical_to_spec((BATCH_AXIS,) + (None,) * (ndim - 1), rules, mesh,
                                               where="input batch"))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules) -> dict:
    """Assemble each host's slice of the batch into global arrays sharded by `batch_sharding`."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
            for k, v in local.items()}


_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                    "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(cpu_collectives: str | None = None) -> bool:
    """Call jax.distributed.initialize when the environment describes several processes.

    Cloud TPU pods, SLURM and an explicit JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES,
    JAX_PROCESS_ID) are auto-detected by JAX itself; on CPU, collectives need gloo.
    """
    if not any(os.environ.get(k) for k in _DISTRIBUTED_ENV):
        return False
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) <= 1 \
            and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return False  # a single SLURM task is a plain single-process run
    if cpu_collectives or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives or "gloo")
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def _use_mesh(mesh: Mesh):
    """`mesh` as the current mesh, the one Flax's `with_logical_constraint` reads
    (`jax.sharding.get_abstract_mesh()`). `jax.set_mesh` (`jax.sharding.use_mesh` before it)
    sets it; a plain `with mesh:` does not, and under it every activation constraint would
    silently be a no-op (as it was with jax 0.10, which has no `jax.sharding.use_mesh`)."""
    for setter in (getattr(jax, "set_mesh", None), getattr(jax.sharding, "use_mesh", None)):
        if setter is not None:
            return setter(mesh)
    return mesh


def mesh_context(mesh: Mesh, rules):
    """The mesh and the logical-axis rules under which the model is traced, initialised and
    compiled: parameters are placed by `tree_shardings`, activations constrained by
    `models.layers.constrain`."""
    import contextlib

    from flax import linen as nn
    stack = contextlib.ExitStack()
    stack.enter_context(_use_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    return stack
