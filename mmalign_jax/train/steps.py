"""Pure step functions: methods differ only in the forward/loss; the step is shared.

A loss function maps (variables, micro-batch, rng) to a weighted *sum* and sums of metrics;
`make_train_step` accumulates them over micro-batches and divides by the global denominator
(tokens for SFT, pairs for the preference losses), so accumulation equals one big batch
exactly. Which loss a run uses is the method's choice (`train/methods.py`). The model is
driven through the family's method names (`method="embed"`, ...: docs/INTERNALS.md,
"Model API"), so nothing here depends on a model family.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmalign_jax import objectives
from mmalign_jax.models import registry
from mmalign_jax.train import state as state_lib


# ---------------------------------------------------------------------------------- forwards

def sft_token_logps(model, variables, batch, rng=None, deterministic=True):
    """log p of every target token: logits[t] predicts input_ids[t + 1]."""
    rngs = {} if rng is None else {"dropout": rng}
    logits = model.apply(variables, batch["input_ids"], _images(model, batch),
                         batch["attention_mask"], image_mask=batch.get("image_mask"),
                         deterministic=deterministic, rngs=rngs)
    labels = batch["input_ids"][:, 1:]
    mask = batch["target_mask"][:, 1:] & (batch["attention_mask"][:, 1:] > 0)
    return objectives.token_logps(logits[:, :-1], labels), mask


def _images(model, batch):
    """The model's image input from the batch's image keys (None without images)."""
    return registry.for_config(model.cfg).model_images(batch)


def _prompt_embeds(model, variables, batch, vision_features, kw):
    """Prompt embeddings with the images' projected features in the `<image>` slots."""
    feats = None
    images = _images(model, batch)
    if vision_features is not None:
        feats = model.apply(variables, vision_features, method="project_images", **kw)
    elif images is not None:
        feats = model.apply(variables, images, method="encode_images", **kw)
    return model.apply(variables, batch["prompt_ids"], feats, batch.get("image_mask"),
                       method="embed", **kw)


def _prompt_positions(model, variables, batch):
    """The family's prompt positions (M-RoPE: over the images' grids) and where responses
    continue."""
    return model.apply(variables, batch["prompt_ids"], batch["prompt_mask"],
                       _images(model, batch), batch.get("image_mask"), method="positions")


def dpo_response_logps(model, variables, batch, rng=None, deterministic=True,
                       vision_features=None):
    """(chosen, rejected) summed log-probs and token counts, sharing the prompt.

    The image is encoded once per pair; one pass over the layers computes the prompt rows
    and both responses together (`decode_shared_prefix`: each response attends to
    this layer's prompt K/V and to itself, no KV cache); the LM head and log-softmax run
    only at response positions. `vision_features` (`vision_features` of the batch's
    images, computed with these variables' vision tower) skips running the tower again.
    """
    kw = dict(rngs={} if rng is None else {"dropout": rng})
    prompt_mask = batch["prompt_mask"]
    b, r = batch["chosen_ids"].shape
    embeds = _prompt_embeds(model, variables, batch, vision_features, kw)
    resp_ids = jnp.stack([batch["chosen_ids"], batch["rejected_ids"]], axis=1)     # [B, 2, R]
    resp_mask = jnp.stack([batch["chosen_mask"], batch["rejected_mask"]], axis=1)
    resp_embeds = model.apply(variables, resp_ids.reshape(b, 2 * r), None, None,
                              method="embed", **kw)
    positions, response_start = _prompt_positions(model, variables, batch)
    hidden_last, hidden_r = model.apply(
        variables, embeds, prompt_mask, resp_embeds.reshape(b, 2, r, -1), resp_mask,
        deterministic=deterministic, prompt_positions=positions, response_start=response_start,
        method="decode_shared_prefix", **kw)
    # Response token j is predicted by the hidden state one slot earlier: the last prompt
    # slot for j = 0 (prompts are left padded, so it is always slot p - 1).
    d = hidden_last.shape[-1]
    last = jnp.broadcast_to(hidden_last[:, None, None], (b, 2, 1, d))
    h = jnp.concatenate([last, hidden_r[:, :, :-1]], axis=2).reshape(b, 2 * r, d)
    logits = model.apply(variables, h, method="lm_logits", **kw)            # [B, 2R, V]
    logps, n = objectives.sequence_logps(logits.reshape(b * 2, r, -1),
                                         resp_ids.reshape(b * 2, r), resp_mask.reshape(b * 2, r))
    logps, n = logps.reshape(b, 2), n.reshape(b, 2)
    return logps[:, 0], logps[:, 1], n[:, 0], n[:, 1]


def dpo_response_logps_cached(model, variables, batch, rng=None, deterministic=True,
                              vision_features=None):
    """The previous layout of `dpo_response_logps`, kept as a reference for tests and
    benchmarks: the prompt is prefilled into a KV cache of P + R slots (`decode`), the
    cache is duplicated for chosen and rejected, and both responses decode against it."""
    kw = dict(rngs={} if rng is None else {"dropout": rng})
    cfg = model.cfg
    prompt_mask = batch["prompt_mask"]
    b, p = prompt_mask.shape
    r = batch["chosen_ids"].shape[1]
    embeds = _prompt_embeds(model, variables, batch, vision_features, kw)
    cache = registry.for_config(cfg).init_cache(cfg, b, p + r, embeds.dtype)
    slot_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, r), prompt_mask.dtype)], axis=1)
    positions, response_start = _prompt_positions(model, variables, batch)
    hidden_p, cache = model.apply(variables, embeds, slot_mask, positions, cache,
                                  deterministic=deterministic, method="decode", **kw)

    def twice(x):
        return jnp.concatenate([x, x], axis=0)

    resp_ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    resp_mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    cache = {**cache, "k": jnp.concatenate([cache["k"]] * 2, axis=1),  # [L, 2B, S, K, Dh]
             "v": jnp.concatenate([cache["v"]] * 2, axis=1)}
    resp_embeds = model.apply(variables, resp_ids, None, None, method="embed", **kw)
    resp_positions = twice(response_start[:, None]) + jnp.arange(r)[None, :]
    hidden_r, _ = model.apply(variables, resp_embeds,
                              jnp.concatenate([twice(prompt_mask), resp_mask], axis=1),
                              resp_positions, cache, deterministic=deterministic,
                              method="decode", **kw)
    # Response token j is predicted by the hidden state one slot earlier: the last prompt
    # slot for j = 0 (prompts are left padded, so it is always slot p - 1).
    h = jnp.concatenate([twice(hidden_p[:, -1:]), hidden_r[:, :-1]], axis=1)
    logits = model.apply(variables, h, method="lm_logits", **kw)
    logps, n = objectives.sequence_logps(logits, resp_ids, resp_mask)
    return logps[:b], logps[b:], n[:b], n[b:]


# ------------------------------------------------------------------------------------ losses
# loss(variables, ref_variables, batch, rng, deterministic) -> (weighted sum, denominator,
# metric sums). `ref_variables` are the frozen weights with the *initial* values of what is
# trained and no LoRA: the reference policy without a second copy of the frozen weights.

def sft_loss_fn(model, c):
    del c

    def loss(variables, ref_variables, batch, rng, deterministic=False):
        del ref_variables
        logps, mask = sft_token_logps(model, variables, batch, rng, deterministic)
        w = batch["weight"][:, None] * mask
        total = -(logps * w).sum()
        n_targets = w.sum()
        seen = (batch["attention_mask"].sum(1) * batch["weight"]).sum()
        return total, n_targets, {"loss": total, "tokens": seen}
    return loss


def reduce_logps(c, logps, n):
    return logps / jnp.maximum(n, 1.0) if c.dpo.logp_reduction == "mean" else logps


def _same_vision_tower(variables, ref_variables, key: str) -> bool:
    """True when policy and reference hold the very same vision-tower arrays (`params[key]`;
    the tower is frozen: both are merged from the same frozen tree), so its output can be
    shared."""
    try:
        a = variables["params"][key]
        b = ref_variables["params"][key]
    except (KeyError, TypeError):
        return False
    if key in variables.get("lora", {}) or key in ref_variables.get("lora", {}):
        return False
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return bool(la) and len(la) == len(lb) and all(x is y for x, y in zip(la, lb))


def _pair_sums(batch, losses, chosen_rewards, rejected_rewards, pc, pr, nc, nr) -> tuple:
    """(weighted loss sum, pairs, metric sums) of a preference loss: what every method of
    the DPO family reports."""
    w = batch["weight"]
    total = (losses * w).sum()
    sums = {
        "loss": total,
        "rewards/chosen": (chosen_rewards * w).sum(),
        "rewards/rejected": (rejected_rewards * w).sum(),
        "rewards/accuracy": ((chosen_rewards > rejected_rewards) * w).sum(),
        "rewards/margin": ((chosen_rewards - rejected_rewards) * w).sum(),
        "logps/chosen": (pc * w).sum(),
        "logps/rejected": (pr * w).sum(),
        "tokens": ((nc + nr) * w).sum() + (batch["prompt_mask"].sum(1) * w).sum(),
    }
    return total, w.sum(), sums


def dpo_loss_fn(model, c):
    """Online reference when `ref_variables` is given, else `ref_*_logps` from the batch.

    With an online reference and a frozen vision tower (the same arrays on both sides), the
    tower runs once per batch and both sides project its output with their own projector.
    """
    vision_key = registry.for_config(model.cfg).vision_key

    def loss(variables, ref_variables, batch, rng, deterministic=False):
        vision = None
        images = _images(model, batch)
        if (ref_variables is not None and images is not None
                and _same_vision_tower(variables, ref_variables, vision_key)):
            vision = jax.lax.stop_gradient(model.apply(
                variables, images, method="vision_features"))
        pc, pr, nc, nr = dpo_response_logps(model, variables, batch, rng, deterministic,
                                            vision_features=vision)
        if ref_variables is None:
            rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            rc, rr, _, _ = dpo_response_logps(model, ref_variables, batch, None, True,
                                              vision_features=vision)
        rc, rr = jax.lax.stop_gradient(rc), jax.lax.stop_gradient(rr)
        losses, cr, rj = objectives.dpo_loss(
            reduce_logps(c, pc, nc), reduce_logps(c, pr, nr), reduce_logps(c, rc, nc),
            reduce_logps(c, rr, nr), beta=c.dpo.beta, loss_type=c.dpo.loss_type,
            label_smoothing=c.dpo.label_smoothing)
        if c.dpo.sft_weight:
            losses = losses + c.dpo.sft_weight * (-pc / jnp.maximum(nc, 1.0))
        return _pair_sums(batch, losses, cr, rj, pc, pr, nc, nr)
    return loss


def simpo_loss_fn(model, c):
    """SimPO: reference-free, on mean (per-token) response log-probs, target margin γ."""
    def loss(variables, ref_variables, batch, rng, deterministic=False):
        del ref_variables
        pc, pr, nc, nr = dpo_response_logps(model, variables, batch, rng, deterministic)
        losses, cr, rj = objectives.simpo_loss(
            pc / jnp.maximum(nc, 1.0), pr / jnp.maximum(nr, 1.0), beta=c.simpo.beta,
            gamma=c.simpo.gamma, label_smoothing=c.simpo.label_smoothing)
        if c.simpo.sft_weight:
            losses = losses + c.simpo.sft_weight * (-pc / jnp.maximum(nc, 1.0))
        return _pair_sums(batch, losses, cr, rj, pc, pr, nc, nr)
    return loss


def make_reference_step(model):
    """(batch, frozen, ref) → reference (chosen, rejected) summed log-probs, for precomputing."""
    def step(batch, frozen, ref):
        pc, pr, _, _ = dpo_response_logps(model, state_lib.merge(frozen, ref), batch, None, True)
        return pc, pr
    return step


# ------------------------------------------------------------------------------------- steps

def _split_micro(batch, n_micro: int):
    """[G, ...] → [n_micro, G / n_micro, ...] taking every n_micro-th row, so each device
    keeps its own rows (no cross-device shuffle for the reshape)."""
    def f(x):
        x = x.reshape((x.shape[0] // n_micro, n_micro) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(f, batch)


def accumulate(loss_fn, frozen, ref, trainable, batch, rng, n_micro: int, with_grad: bool):
    """Sum losses, denominators, metric sums (and grads) over micro-batches."""
    ref_variables = None if ref is None else state_lib.merge(frozen, ref)

    def one(tr, mb, key):
        total, denom, sums = loss_fn(state_lib.merge(frozen, tr), ref_variables, mb, key,
                                     not with_grad)
        return total, (denom, sums)

    micro = _split_micro(batch, n_micro)
    keys = jax.random.split(rng, n_micro)

    def body(carry, inp):
        mb, key = inp
        if with_grad:
            (_, (denom, sums)), grads = jax.value_and_grad(one, has_aux=True)(trainable, mb, key)
            acc_grads, acc_denom, acc_sums = carry
            return (jax.tree.map(jnp.add, acc_grads, grads), acc_denom + denom,
                    jax.tree.map(jnp.add, acc_sums, sums)), None
        _, (denom, sums) = one(trainable, mb, key)
        acc_denom, acc_sums = carry
        return (acc_denom + denom, jax.tree.map(jnp.add, acc_sums, sums)), None

    sums0 = jax.eval_shape(lambda: one(trainable, jax.tree.map(lambda x: x[0], micro), keys[0])[1][1])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums0)
    if with_grad:
        init = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32), zeros)
    else:
        init = (jnp.zeros((), jnp.float32), zeros)
    carry, _ = jax.lax.scan(body, init, (micro, keys))
    return carry


def make_train_step(loss_fn, n_micro: int, lr_fn: Callable):
    """step(state, batch, frozen, ref) → (state, metrics). `ref` is None for precomputed
    reference log-probs. The update is skipped (state kept) when the loss or the gradient
    norm is not finite; `finite` in the metrics reports it, `params_changed` whether any
    trained value moved."""
    def step(state: state_lib.TrainState, batch, frozen, ref):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, denom, sums = accumulate(loss_fn, frozen, ref, state.trainable, batch, rng,
                                        n_micro, True)
        denom = jnp.maximum(denom, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = _global_norm(grads)
        metrics = {k: v / denom for k, v in sums.items() if k != "tokens"}
        metrics["tokens"] = sums["tokens"]
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        new = state.apply_gradients(grads)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        # Whether the update moved anything: a run whose updates vanish is called out.
        changed = jnp.any(jnp.stack([jnp.any(a != b) for a, b in zip(
            jax.tree.leaves(new.trainable), jax.tree.leaves(state.trainable))]))
        metrics.update(grad_norm=grad_norm, lr=lr_fn(state.step), finite=finite,
                       params_changed=changed)
        return new, metrics
    return step


def make_eval_step(loss_fn, n_micro: int):
    """(trainable, batch, frozen, ref) → (denominator, metric sums); the host divides after
    summing over the whole eval split."""
    def step(trainable, batch, frozen, ref):
        return accumulate(loss_fn, frozen, ref, trainable, batch, jax.random.key(0), n_micro, False)
    return step


def _global_norm(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
