"""Train state: trainable and frozen variables as separate pytrees, per-group optimizers.

Variables are `{'params': ..., 'lora': ...}`. A leaf is trainable when its '/'-joined path
(collection first, e.g. 'params/multi_modal_projector/linear_1/kernel') matches one of the
optimizer groups; everything else is frozen: no gradient, no optimizer state, and it is not
written to our checkpoints (it comes back from the base checkpoint it was loaded from).
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util


class Group(NamedTuple):
    name: str
    regex: str
    lr: float


def param_groups(c) -> list[Group]:
    """Optimizer groups from the config: LM (LoRA or full), projector, vision (rarely)."""
    groups = []
    if c.optim.train_projector:
        groups.append(Group("projector", r"params/multi_modal_projector/.*", c.optim.projector_lr))
    if c.lora.enabled:
        groups.append(Group("lm", r"lora/.*", c.optim.lr))
    else:
        groups.append(Group("lm", r"params/language_model/.*", c.optim.lr))
    if c.optim.train_vision:
        groups.append(Group("vision", r"params/vision_tower/.*", c.optim.projector_lr))
    return groups


def _path(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def group_of(path: str, groups: Sequence[Group]) -> str | None:
    for g in groups:
        if re.fullmatch(g.regex, path):
            return g.name
    return None


def split(variables: dict, groups: Sequence[Group]) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts; together they hold every leaf exactly once."""
    flat = traverse_util.flatten_dict(variables)
    trainable = {k: v for k, v in flat.items() if group_of(_path(k), groups)}
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(*trees: dict) -> dict:
    flat = {}
    for t in trees:
        flat.update(traverse_util.flatten_dict(t))
    return traverse_util.unflatten_dict(flat)


def labels(trainable: dict, groups: Sequence[Group]) -> dict:
    flat = traverse_util.flatten_dict(trainable)
    return traverse_util.unflatten_dict({k: group_of(_path(k), groups) for k in flat})


def schedule(c, peak_lr: float, total_steps: int) -> optax.Schedule:
    warmup = int(round(c.optim.warmup_ratio * total_steps))
    if c.optim.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, max(warmup, 1)),
                                     optax.constant_schedule(peak_lr)], [warmup])
    if c.optim.schedule == "linear":
        return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, max(warmup, 1)),
                                     optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup, 1))],
                                    [warmup])
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup, max(total_steps, warmup + 1), 0.0)


def make_optimizer(c, groups: Sequence[Group], trainable: dict, total_steps: int):
    """Global-norm clipping, then AdamW per group with its own learning-rate schedule."""
    transforms = {
        g.name: optax.adamw(schedule(c, g.lr, total_steps), b1=c.optim.b1, b2=c.optim.b2,
                            eps=c.optim.eps, weight_decay=c.optim.weight_decay)
        for g in groups}
    chain = []
    if c.optim.clip_norm and c.optim.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(c.optim.clip_norm))
    chain.append(optax.multi_transform(transforms, labels(trainable, groups)))
    return optax.chain(*chain)


class TrainState(struct.PyTreeNode):
    step: jax.Array
    trainable: Any
    opt_state: Any
    rng: jax.Array  # base key: step k uses fold_in(rng, k), so resume replays the same noise
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def apply_gradients(self, grads):
        updates, opt_state = self.tx.update(grads, self.opt_state, self.trainable)
        return self.replace(step=self.step + 1, trainable=optax.apply_updates(self.trainable, updates),
                            opt_state=opt_state)


def cast_tree(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
