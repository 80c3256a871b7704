"""Training methods behind one interface: the loop asks the method, never its name.

A `Method` says which batch layout it trains on (`'sft'`: conversations with a target mask;
`'dpo'`: a prompt with chosen and rejected responses — `data/loader.py`), its loss (a
factory `loss_fn(model, c)` returning `loss(variables, ref_variables, batch, rng,
deterministic) -> (weighted sum, denominator, metric sums)`, `train/steps.py`), whether it
needs a reference policy and how (`None`, `'online'`, `'precomputed'`), the metrics it
reports, its config section with defaults, and the checks of that section.

Rejection sampling and SteerLM are SFT on other data (`data.sft_mode`); the DPO family's
variants (IPO, hinge, robust, conservative) are `dpo.loss_type`s. A new method is one
`register(Method(...))` call here (or in user code before `train()` runs) plus its loss.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional, Tuple

import ml_collections as mlc

from mmalign_jax import objectives
from mmalign_jax.train import steps

PAIR_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy",
                "rewards/margin", "logps/chosen", "logps/rejected")


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    batch: str                                        # 'sft' | 'dpo' (the loader's kind)
    loss_fn: Callable                                 # (model, c) -> loss
    add_defaults: Callable[[mlc.ConfigDict], None]    # adds the method's section to a config
    reference: Callable[[mlc.ConfigDict], Optional[str]] = lambda c: None
    validate: Callable[[mlc.ConfigDict, Callable], None] = lambda c, need: None
    metrics: Tuple[str, ...] = ("loss",)
    summary: Tuple[str, ...] = ("loss", "eval/loss")  # keys the end-of-run summary prints
    description: str = ""

    def reference_step(self, model):
        """(batch, frozen, ref) → reference (chosen, rejected) summed log-probs, for
        precomputing them (`reference='precomputed'`)."""
        return steps.make_reference_step(model)


_METHODS: Dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"a training method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"method {name!r} is not one of {names()}") from None


def names() -> Tuple[str, ...]:
    return tuple(_METHODS)


def add_all_defaults(c: mlc.ConfigDict) -> None:
    """Every method's config section (so `--config.<method>.*` exists whatever the method)."""
    for m in _METHODS.values():
        m.add_defaults(c)


# -------------------------------------------------------------------------------- SFT

def _no_section(c):
    del c


register(Method(
    name="sft", batch="sft", loss_fn=steps.sft_loss_fn, add_defaults=_no_section,
    description="token-mean NLL on assistant turns (standard SFT, rejection sampling and "
                "SteerLM through data.sft_mode)"))


# ------------------------------------------------------------------------- the DPO family

def _dpo_defaults(c):
    c.dpo = mlc.ConfigDict()
    c.dpo.beta = 0.1
    c.dpo.loss_type = "sigmoid"        # sigmoid | ipo | hinge | robust
    c.dpo.label_smoothing = 0.0
    c.dpo.sft_weight = 0.0             # + weight * NLL(chosen) per token (off in the paper)
    c.dpo.logp_reduction = "sum"       # sum (paper) | mean
    c.dpo.reference = "online"         # online | precomputed


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _dpo_validate(c, need):
    need(_finite(c.dpo.beta) and c.dpo.beta > 0, "dpo.beta must be > 0 (the paper uses 0.1)")
    need(_finite(c.dpo.label_smoothing) and 0 <= c.dpo.label_smoothing < 0.5,
         "dpo.label_smoothing must be in [0, 0.5)")
    need(_finite(c.dpo.sft_weight) and c.dpo.sft_weight >= 0, "dpo.sft_weight must be >= 0")
    need(c.dpo.loss_type in objectives.LOSS_TYPES,
         f"dpo.loss_type must be {'|'.join(objectives.LOSS_TYPES)}")
    need(c.dpo.reference in ("online", "precomputed"), "dpo.reference: online|precomputed")
    need(c.dpo.logp_reduction in ("sum", "mean"), "dpo.logp_reduction: sum|mean")
    _pairs_validate(c, need)


def _pairs_validate(c, need):
    need(c.data.prompt_len > 0 and c.data.response_len > 1,
         "data.prompt_len/response_len must be > 0")


register(Method(
    name="dpo", batch="dpo", loss_fn=steps.dpo_loss_fn, add_defaults=_dpo_defaults,
    reference=lambda c: c.dpo.reference, validate=_dpo_validate, metrics=PAIR_METRICS,
    summary=("loss", "rewards/accuracy", "rewards/margin", "eval/loss",
             "eval/rewards/accuracy", "eval/rewards/margin"),
    description="DPO (Rafailov et al. 2023) and its loss variants; rewards β·(π − ref)"))


def _simpo_defaults(c):
    c.simpo = mlc.ConfigDict()
    c.simpo.beta = 2.0                 # SimPO paper: 2.0-2.5
    c.simpo.gamma = 1.0                # target reward margin (γ/β 0.3-0.8 in the paper)
    c.simpo.label_smoothing = 0.0
    c.simpo.sft_weight = 0.0


def _simpo_validate(c, need):
    need(_finite(c.simpo.beta) and c.simpo.beta > 0,
         "simpo.beta must be > 0 (the SimPO paper uses 2.0-2.5)")
    need(_finite(c.simpo.gamma) and c.simpo.gamma >= 0,
         "simpo.gamma (the target margin) must be >= 0")
    need(_finite(c.simpo.label_smoothing) and 0 <= c.simpo.label_smoothing < 0.5,
         "simpo.label_smoothing must be in [0, 0.5)")
    need(_finite(c.simpo.sft_weight) and c.simpo.sft_weight >= 0, "simpo.sft_weight must be >= 0")
    _pairs_validate(c, need)


register(Method(
    name="simpo", batch="dpo", loss_fn=steps.simpo_loss_fn, add_defaults=_simpo_defaults,
    validate=_simpo_validate, metrics=PAIR_METRICS,
    summary=("loss", "rewards/accuracy", "rewards/margin", "eval/loss",
             "eval/rewards/accuracy", "eval/rewards/margin"),
    description="SimPO (Meng et al. 2024): reference-free, mean log-probs, margin γ; "
                "rewards β·mean log-prob"))
