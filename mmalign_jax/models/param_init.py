"""Parameters without running the model: what every family's module-level helpers are.

`ParamInit(module, init_inputs)` gives `init_params(cfg, rng)` (jit-able with
`out_shardings`), `abstract_params(cfg)` (shapes only) and `param_logical_specs(cfg)` (the
logical `PartitionSpec` tree) for a Flax module class and the smallest inputs that reach
every parameter.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax


def unbox(boxed):
    """The boxes' values as they are. (`nn.unbox` would also constrain each to its logical
    sharding whenever a mesh is set: wrong for shapes, and for arrays it is `out_shardings`'
    job, by `parallel.tree_shardings`' rules.)"""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False), boxed,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))


class ParamInit:
    def __init__(self, module: Callable[[Any], nn.Module], init_inputs: Callable[[Any], tuple]):
        self.module, self.init_inputs = module, init_inputs
        # Shapes and logical names, traced once per config: a trace of Flax's init runs the
        # model's forward (seconds at 7B widths on CPU), and building a run asks for it
        # several times (shapes, specs, LoRA's shapes and specs).
        self._abstract_boxed = functools.lru_cache(maxsize=16)(self._abstract)

    def boxed(self, cfg, rng):
        """`params` with `nn.Partitioned` boxes that carry the logical axis names."""
        return self.module(cfg).init({"params": rng}, *self.init_inputs(cfg))["params"]

    def _abstract(self, cfg):
        return jax.eval_shape(functools.partial(self.boxed, cfg), jax.random.key(0))

    def init_params(self, cfg, rng):
        """Randomly initialised params (plain arrays). Jit it with `out_shardings` derived
        from `param_logical_specs(cfg)` to create them already sharded."""
        return unbox(self.boxed(cfg, rng))

    def abstract_params(self, cfg):
        """`jax.ShapeDtypeStruct` tree of the params: no memory, no compute."""
        return unbox(self._abstract_boxed(cfg))   # new containers: the cache's tree stays

    def param_logical_specs(self, cfg):
        """Tree (same structure as params) of `PartitionSpec`s over logical axis names;
        shardings from it with `nn.logical_to_mesh_sharding(specs, mesh, rules)`."""
        return nn.get_partition_spec(self._abstract_boxed(cfg))
