"""Orbax checkpoints of what is trained (+ optimizer, step, RNG) and the data iterator.

Frozen base weights are not copied: they come back from `model.hf_checkpoint` / the preset
seed / `model.init_from`. Orbax writes each step to a temporary folder and renames it when
complete, so a process killed mid-save leaves the previous checkpoints intact.
"""
from __future__ import annotations

import os

import orbax.checkpoint as ocp

from mmalign_jax.data import loader as loader_lib
from mmalign_jax.loading import restore_trainable  # noqa: F401  (another run's trained variables)


def complete_steps(workdir: str) -> list[int]:
    """The steps of the finished checkpoints in `<workdir>/checkpoints`, read from the disk:
    orbax renames a step's folder from `N.orbax-checkpoint-tmp-*` to `N` only once it is
    complete, so this is what a rerun resumes from, whatever a failed save left behind."""
    directory = os.path.join(workdir, "checkpoints")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


class Checkpointer:
    def __init__(self, workdir: str, keep: int, every: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        # Every `every` steps (and on preemption); not orbax's default extra save of the
        # first step. The last step is saved with force=True.
        policy = ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(max(every, 1)),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_decision_policy=policy, create=True,
            enable_async_checkpointing=async_save)
        loader_lib.checkpoint_args  # the data item's args/handler are registered on first use
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args["data"] = loader_lib.checkpoint_args(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        step = self.manager.latest_step() if step is None else step
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args["data"] = loader_lib.restore_args(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        return out["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
