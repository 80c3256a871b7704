"""Token log-probabilities, the SFT loss and the DPO family.

Losses here are per-example; the trainer sums them with explicit weights and divides by a
global denominator, so gradient accumulation yields the true global mean (not a mean of
micro-batch means).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def token_logps(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log p(labels[b, t] | logits[b, t]) in float32; labels are aligned with logits."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - lse


def sequence_logps(logits: jax.Array, labels: jax.Array, loss_mask: jax.Array):
    """Summed log-probs of the masked tokens per row, and how many tokens were summed."""
    mask = loss_mask.astype(jnp.float32)
    return (token_logps(logits, labels) * mask).sum(-1), mask.sum(-1)


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    reference_chosen_logps: jax.Array,
    reference_rejected_logps: jax.Array,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
):
    """Per-pair DPO-family losses and the implicit rewards β·(policy − reference).

    With h = (π_c − ref_c) − (π_r − ref_r):
      sigmoid: −(1−ε)·logσ(βh) − ε·logσ(−βh)    (ε > 0: conservative DPO)
      robust:  (−(1−ε)·logσ(βh) + ε·logσ(−βh)) / (1 − 2ε)   (Chowdhury et al. 2024)
      hinge:   max(0, 1 − βh)                    (SLiC)
      ipo:     (h − 1/(2β))²                      (Azar et al. 2023; pair with mean log-probs)
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo loss_type {loss_type!r} is not one of {LOSS_TYPES}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
    chosen_logratio = policy_chosen_logps - reference_chosen_logps
    rejected_logratio = policy_rejected_logps - reference_rejected_logps
    h = chosen_logratio - rejected_logratio
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * jax.nn.log_sigmoid(beta * h)
                  + eps * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1 - beta * h)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratio, beta * rejected_logratio


def sft_loss(logits: jax.Array, labels: jax.Array, loss_mask: jax.Array):
    """Summed token NLL and the token count: the trainer divides by the global count."""
    logps, n = sequence_logps(logits, labels, loss_mask)
    return -logps.sum(), n.sum()


def simpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
):
    """Per-pair SimPO losses (Meng et al. 2024) and its rewards β·(mean log-prob).

    Reference-free: the inputs are the policy's *length-normalised* (mean per token)
    response log-probs. With h = β·(π̄_c − π̄_r) − γ (γ the target reward margin):
      −(1−ε)·logσ(h) − ε·logσ(−h)
    """
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    h = chosen_rewards - rejected_rewards - gamma
    eps = label_smoothing
    losses = -(1 - eps) * jax.nn.log_sigmoid(h) - eps * jax.nn.log_sigmoid(-h)
    return losses, chosen_rewards, rejected_rewards
