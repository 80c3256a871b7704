"""LoRA adapters as their own pytree: the `lora` collection of docs/INTERNALS.md.

For every Dense module whose '/'-joined path fully matches `cfg.lora.target_regex` the
collection holds `{'a': [.., in, r], 'b': [.., r, out]}` (leading `L` for the scanned
decoder layers). `layers.Dense` adds `scale * dropout(x) @ a @ b` when the collection is
passed to `apply`; `merge` folds the adapters into the kernels for export.

Everything here reads only shapes from `params`, so `abstract_params` works wherever
concrete params do (e.g. `jax.jit(partial(init_lora, cfg, llava.abstract_params(cfg)),
out_shardings=...)`).
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import PartitionSpec

from mmalign_jax.models.config import LlavaConfig, LoraConfig


def _lora_config(cfg: LlavaConfig) -> LoraConfig:
    if cfg.lora is None:
        raise ValueError("cfg.lora is None: set LlavaConfig.lora to a LoraConfig to use adapters")
    return cfg.lora


def _dense_kernels(params) -> dict[tuple[str, ...], object]:
    """Module path → kernel for every Dense: a `kernel` of rank 2, or 3 under a scanned
    stack ('layers', Qwen's vision 'blocks'; this excludes CLIP's 4-D patch conv)."""
    kernels = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        scanned = "layers" in path[:-1] or "blocks" in path[:-1]
        if path[-1] == "kernel" and len(leaf.shape) == 2 + scanned:
            kernels[path[:-1]] = leaf
    return kernels


def lora_paths(cfg: LlavaConfig, params) -> list[str]:
    """Sorted '/'-joined module paths of the Dense layers that get adapters."""
    regex = _lora_config(cfg).target_regex
    pattern = re.compile(regex)
    dense = ["/".join(path) for path in _dense_kernels(params)]
    paths = sorted(p for p in dense if pattern.fullmatch(p))
    if not paths:
        raise ValueError(
            f"LoraConfig.target_regex {regex!r} matches no Dense layer; Dense paths look like "
            f"{sorted(dense)[:4]}"
        )
    return paths


def init_lora(cfg: LlavaConfig, params, rng: jax.Array, dtype=jnp.float32):
    """Fresh adapters as PEFT makes them: `a ~ U(±1/sqrt(in))` (kaiming-uniform, a=sqrt(5)),
    `b = 0`, so the adapted model starts equal to the base model."""
    rank = _lora_config(cfg).rank
    kernels = _dense_kernels(params)
    paths = lora_paths(cfg, params)
    flat = {}
    for key, path in zip(jax.random.split(rng, len(paths)), paths):
        module = tuple(path.split("/"))
        *lead, d_in, d_out = kernels[module].shape
        bound = 1.0 / math.sqrt(d_in)
        flat[(*module, "a")] = jax.random.uniform(key, (*lead, d_in, rank), dtype, -bound, bound)
        flat[(*module, "b")] = jnp.zeros((*lead, rank, d_out), dtype)
    return traverse_util.unflatten_dict(flat)


def merge(cfg: LlavaConfig, params, lora):
    """Plain params with `kernel += scale * a @ b` (batched over a leading 'layers' axis),
    summed in float32 and stored back in each kernel's dtype."""
    scale = _lora_config(cfg).scale
    flat = dict(traverse_util.flatten_dict(params))
    adapters = traverse_util.flatten_dict(lora)
    for path in (p[:-1] for p in adapters if p[-1] == "a"):
        kernel_path = (*path, "kernel")
        if kernel_path not in flat:
            raise ValueError(
                f"lora holds an adapter for {'/'.join(path)} but params has no kernel there"
            )
        kernel = flat[kernel_path]
        delta = jnp.matmul(
            adapters[(*path, "a")].astype(jnp.float32), adapters[(*path, "b")].astype(jnp.float32)
        )
        flat[kernel_path] = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)


def lora_logical_specs(cfg: LlavaConfig):
    """Logical `PartitionSpec` tree of `init_lora`'s output: each adapter inherits its
    kernel's names, `a: (.., in, 'lora_rank')`, `b: (.., 'lora_rank', out)`."""
    from mmalign_jax.models import registry
    family = registry.for_config(cfg)
    kernel_specs = traverse_util.flatten_dict(family.param_logical_specs(cfg))
    flat = {}
    for path in lora_paths(cfg, family.abstract_params(cfg)):
        module = tuple(path.split("/"))
        *lead, d_in, d_out = tuple(kernel_specs[(*module, "kernel")])
        flat[(*module, "a")] = PartitionSpec(*lead, d_in, "lora_rank")
        flat[(*module, "b")] = PartitionSpec(*lead, "lora_rank", d_out)
    return traverse_util.unflatten_dict(flat)
