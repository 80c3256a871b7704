"""Train state and per-group optimizers over the trainable variables.

The split into trainable and frozen pytrees (`Group`, `param_groups`, `split`, `merge`,
`labels`) lives in `mmalign_jax/variables.py`, shared with loading for inference.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mmalign_jax.variables import Group, labels, merge, param_groups, split  # noqa: F401


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
