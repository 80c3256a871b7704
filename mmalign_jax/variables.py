"""Trainable and frozen variables as separate pytrees, chosen by optimizer groups.

Variables are `{'params': ..., 'lora': ...}`. A leaf is trainable when its '/'-joined path
(collection first, e.g. 'params/multi_modal_projector/linear_1/kernel') matches one of the
groups; everything else is frozen: no gradient, no optimizer state, and it is not written to
our checkpoints (it comes back from the base checkpoint it was loaded from). The regexes of
the roles (`vision`, `projector`, `lm`) come from the model family; training and loading a
finished run for inference both split the same way.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from flax import traverse_util


class Group(NamedTuple):
    name: str
    regex: str
    lr: float


def param_groups(c, family) -> list[Group]:
    """Optimizer groups of training config `c`: the LM (LoRA adapters or the whole LM), the
    projector, and (rarely) the vision tower, each with its learning rate."""
    roles = family.param_groups
    groups = []
    if c.optim.train_projector:
        groups.append(Group("projector", roles["projector"], c.optim.projector_lr))
    if c.lora.enabled:
        groups.append(Group("lm", r"lora/.*", c.optim.lr))
    else:
        groups.append(Group("lm", roles["lm"], c.optim.lr))
    if c.optim.train_vision:
        groups.append(Group("vision", roles["vision"], c.optim.projector_lr))
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
