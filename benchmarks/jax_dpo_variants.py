"""A/B variants of the JAX DPO step, steps interleaved in one process so load drift cancels.

    python benchmarks/jax_dpo_variants.py --variants ours,cached,remat_dots --rounds 4

Each variant is the real trainer step (`mmalign_jax.bench.TrainBench`: `loop.build` +
`loop.jit_steps`) with one thing changed, compiled once; then the variants take turns, one
step each per round (the order rotating from round to round), and the medians are compared
with the first variant. Use as many rounds as variants (or a multiple) so each variant takes
each position equally often.

  ours        the trainer as it is: `steps.dpo_response_logps` (shared-prefix pass: prompt and
              both responses in one scan over the layers, no KV cache), attention_impl 'auto'
              ('chunked' on CPU), remat none
  plain_grad  ours with the Dense layers' plain `jnp.dot` (autodiff's backward, which XLA:CPU
              fuses into slow transposing copies) instead of `layers.matmul_materialized_grad`
  no_trim     ours with the last decoder layer computed for every prompt row too (ours computes
              its queries, MLP and outputs only for the last prompt row and the responses)
  autodiff_norm_mlp   ours with RMSNorm and silu(gate)*up differentiated by autodiff instead of
              `layers.rms_norm` / `layers.swiglu` (custom VJPs that keep fewer activations)
  shared_dot  ours with attention_impl='dot_product' (jax.nn.dot_product_attention)
  chunk64 / chunk128 / chunk512   ours with attention.QUERY_CHUNK changed (default 256)
  unroll2 / unroll8    ours with llama.SCAN_UNROLL (decoder layers per loop iteration) 2 / 8
  cached      the previous layout: `steps.dpo_response_logps_cached` (prompt prefilled into
              a KV cache of P+R slots, duplicated for chosen/rejected, responses decoded
              against it; jax.nn.dot_product_attention)
  concat      the baselines' layout in JAX: chosen and rejected concatenated into one
              [2B, P+R] batch, image encoded for both halves, full forward, LM head at the
              response positions (what mmalign_jax/bench_baselines/torch_dpo_step.py does)
  prefill_P   like cached, but the prompt is prefilled into a P-slot cache that is then padded
              to P+R for the responses (prompt queries attend to P, not P+R, slots)
  remat_dots / remat_dots_no_batch / remat_full   ours with model.remat_policy changed
  chunk128_remat_full   QUERY_CHUNK 128 and remat full together
  cached_plain / cached_plain_remat_dots   the previous trainer exactly (cached layout, plain
              matmul gradients, vision tower run for policy and reference), remat none /
              dots (its best configuration)
  plain_grad_remat_dots   plain_grad with remat dots

Only this process is patched (`steps.dpo_response_logps`, `loop.model_config` and the
module attributes a variant names are swapped while it compiles); nothing in the library
changes. Prints one line per variant and a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp

from mmalign_jax import bench, objectives
from mmalign_jax.models import attention, layers, llama
from mmalign_jax.models import llava as llava_lib
from mmalign_jax.train import loop
from mmalign_jax.train import steps as steps_lib

Llava = llava_lib.Llava
ORIGINAL = steps_lib.dpo_response_logps
CACHED = steps_lib.dpo_response_logps_cached
MODEL_CONFIG = loop.model_config


def _plain_matmul(x, w):
    return jnp.dot(x, w)


_LAYERS = llama.LlamaModel._shared_prefix_layers


def _untrimmed_layers(self, h, masks, cos, sin, last_query_start, deterministic):
    """The last layer computed for every row (as the other layers), then sliced."""
    return _LAYERS(self, h, masks, cos, sin, 0, deterministic)[:, last_query_start:]


def _plain_rms_norm(x, scale, eps):
    x32 = x.astype(jnp.float32)
    n = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return scale * n.astype(scale.dtype)


def _plain_swiglu(gate, up):
    return jax.nn.silu(gate) * up


def _twice(x, axis=0):
    return jnp.concatenate([x, x], axis=axis)


def _previous_trainer(model, variables, batch, rng=None, deterministic=True,
                      vision_features=None):
    """The KV-cache layout with the vision tower run on each side (as before)."""
    del vision_features
    return CACHED(model, variables, batch, rng, deterministic)


def prefill_p_slots(model, variables, batch, rng=None, deterministic=True,
                    vision_features=None):
    kw = dict(rngs={} if rng is None else {"dropout": rng})
    cfg = model.cfg
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    b, p = prompt_ids.shape
    r = batch["chosen_ids"].shape[1]
    feats = model.apply(variables, batch["pixel_values"], method=Llava.encode_images, **kw)
    embeds = model.apply(variables, prompt_ids, feats, batch.get("image_mask"), method=Llava.embed, **kw)
    cache = llava_lib.init_cache(cfg, b, p, embeds.dtype)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    hidden_p, cache = model.apply(variables, embeds, prompt_mask, positions, cache,
                                  deterministic=deterministic, method=Llava.decode, **kw)
    pad = ((0, 0), (0, 0), (0, r), (0, 0), (0, 0))
    cache = {"k": jnp.pad(_twice(cache["k"], 1), pad), "v": jnp.pad(_twice(cache["v"], 1), pad),
             "index": cache["index"]}
    resp_ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    resp_mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    resp_embeds = model.apply(variables, resp_ids, None, None, method=Llava.embed, **kw)
    resp_positions = _twice(prompt_mask.sum(axis=1, keepdims=True)) + jnp.arange(r)[None, :]
    hidden_r, _ = model.apply(variables, resp_embeds,
                              jnp.concatenate([_twice(prompt_mask), resp_mask], axis=1),
                              resp_positions, cache, deterministic=deterministic,
                              method=Llava.decode, **kw)
    h = jnp.concatenate([_twice(hidden_p[:, -1:]), hidden_r[:, :-1]], axis=1)
    logits = model.apply(variables, h, method=Llava.lm_logits, **kw)
    logps, n = objectives.sequence_logps(logits, resp_ids, resp_mask)
    return logps[:b], logps[b:], n[:b], n[b:]


def concat_layout(model, variables, batch, rng=None, deterministic=True,
                  vision_features=None):
    kw = dict(rngs={} if rng is None else {"dropout": rng})
    b, p = batch["prompt_ids"].shape
    r = batch["chosen_ids"].shape[1]
    resp = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], 0)
    resp_mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], 0)
    ids = jnp.concatenate([_twice(batch["prompt_ids"]), resp], 1)
    mask = jnp.concatenate([_twice(batch["prompt_mask"]), resp_mask], 1)
    feats = model.apply(variables, _twice(batch["pixel_values"]), method=Llava.encode_images, **kw)
    embeds = model.apply(variables, ids, feats, _twice(batch["image_mask"]), method=Llava.embed, **kw)
    hidden, _ = model.apply(variables, embeds, mask, None, None, deterministic=deterministic,
                            method=Llava.decode, **kw)
    logits = model.apply(variables, hidden[:, p - 1:p + r - 1], method=Llava.lm_logits, **kw)
    logps, n = objectives.sequence_logps(logits, resp, resp_mask)
    return logps[:b], logps[b:], n[:b], n[b:]


# name: (forward function, remat policy, attention_impl, {(module, attribute): value} patches)
_PLAIN = {(layers, "_matmul"): _plain_matmul}
VARIANTS = {
    "ours": (ORIGINAL, "none", "auto", {}),
    "plain_grad": (ORIGINAL, "none", "auto", _PLAIN),
    "no_trim": (ORIGINAL, "none", "auto", {(llama.LlamaModel, "_shared_prefix_layers"):
                                           _untrimmed_layers}),
    "autodiff_norm_mlp": (ORIGINAL, "none", "auto", {(layers, "rms_norm"): _plain_rms_norm,
                                                     (llama, "swiglu"): _plain_swiglu}),
    "shared_dot": (ORIGINAL, "none", "dot_product", {}),
    "chunk64": (ORIGINAL, "none", "auto", {(attention, "QUERY_CHUNK"): 64}),
    "chunk128": (ORIGINAL, "none", "auto", {(attention, "QUERY_CHUNK"): 128}),
    "chunk512": (ORIGINAL, "none", "auto", {(attention, "QUERY_CHUNK"): 512}),
    "unroll2": (ORIGINAL, "none", "auto", {(llama, "SCAN_UNROLL"): 2}),
    "unroll8": (ORIGINAL, "none", "auto", {(llama, "SCAN_UNROLL"): 8}),
    "cached": (CACHED, "none", "auto", {}),
    "cached_plain": (_previous_trainer, "none", "auto", _PLAIN),
    "cached_plain_remat_dots": (_previous_trainer, "dots", "auto", _PLAIN),
    "concat": (concat_layout, "none", "auto", {}),
    "prefill_P": (prefill_p_slots, "none", "auto", {}),
    "remat_dots": (ORIGINAL, "dots", "auto", {}),
    "remat_dots_no_batch": (ORIGINAL, "dots_no_batch", "auto", {}),
    "remat_full": (ORIGINAL, "full", "auto", {}),
    "chunk128_remat_full": (ORIGINAL, "full", "auto", {(attention, "QUERY_CHUNK"): 128}),
    "plain_grad_remat_dots": (ORIGINAL, "dots", "auto", _PLAIN),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="ours,concat,remat_dots")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--preset", default="bench-small")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt-text", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=64)
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    w = bench.Workload(args.preset, args.pairs, args.prompt_text, args.response_len)
    tbs = {}
    for n in names:
        fn, remat, impl, patches = VARIANTS[n]
        saved = {key: getattr(*key) for key in patches}
        steps_lib.dpo_response_logps = fn
        loop.model_config = lambda c, impl=impl: MODEL_CONFIG(c).replace(attention_impl=impl)
        for (mod, attr), value in patches.items():
            setattr(mod, attr, value)
        try:
            tb = bench.TrainBench("dpo", w, remat)
            tb.step()   # compiles (compile time is not counted in the step time)
            tb.step()   # warm-up
        finally:
            steps_lib.dpo_response_logps = ORIGINAL
            loop.model_config = MODEL_CONFIG
            for (mod, attr), value in saved.items():
                setattr(mod, attr, value)
        tbs[n] = tb
    times = {n: [] for n in names}
    for i in range(args.rounds):
        # Rotate the order: a fixed order measured the first variant of each round up to
        # ~7 % slow (it runs right after the previous round's last one).
        for n in names[i % len(names):] + names[:i % len(names)]:
            times[n].append(tbs[n].step())
    base = statistics.median(times[names[0]])
    out = {}
    for n in names:
        med = statistics.median(times[n])
        mem = tbs[n].train_step.memory
        out[n] = {"s_per_step_median": med, "speedup_vs_first": base / med, "step_seconds": times[n],
                  "counted_gflop": (tbs[n].jaxpr_flops or 0) / 1e9,
                  "compile_s": tbs[n].train_step.compile_seconds,
                  "temp_gib": (getattr(mem, "temp_size_in_bytes", 0) or 0) / 2**30 if mem else None}
        print(f"{n:22s} {med:8.3f} s/step  {base / med:5.2f}x vs {names[0]}  "
              f"{out[n]['counted_gflop']:.0f} GFLOP  temp {out[n]['temp_gib'] or 0:.2f} GiB  "
              f"steps {', '.join(f'{t:.2f}' for t in times[n])}", flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # the library's XLA flags / malloc settings, as its CLIs do
    main()
