"""Parameters and activations have separate logical axis names (`parallel.PARAM_RULES`,
`parallel.ACTIVATION_RULES`), so their shardings can be tuned apart; the default table shards
both exactly as the shared names did.

(a) Every name an activation constraint uses (recorded while tracing the model's forwards)
    is an `activation_*` name no parameter uses, and the default table names each of them.
(b) On the simulated 8-device CPU mesh (conftest), a different rule for `activation_embed`
    changes the residual stream's sharding constraints in the lowered program, leaves the
    parameters' shardings alone and gives the same logits.
"""
import functools
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmalign_jax import parallel
from mmalign_jax.models import llava, lora, presets
from mmalign_jax.models.config import LoraConfig
from mmalign_jax.train import loop

CFG = presets.get_preset("tiny")
B, T = 4, 16
N_IMG = (CFG.vision.image_size // CFG.vision.patch_size) ** 2
ACTIVATION_NAMES = {"activation_batch", "activation_length", "activation_embed",
                    "activation_heads", "activation_kv_heads", "activation_mlp",
                    "activation_vocab", "activation_head_dim", "activation_embed_vision"}


def _inputs():
    ids = (np.arange(B * T, dtype=np.int32).reshape(B, T) % 50 + 10).astype(np.int32)
    ids[:, 2:2 + N_IMG] = CFG.image_token_id
    pixels = np.random.default_rng(0).normal(
        size=(B, 1, CFG.vision.image_size, CFG.vision.image_size, 3)).astype(np.float32)
    return ids, pixels, np.ones((B, T), np.int32)


def _names(specs) -> set:
    out = set()
    for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)):
        for entry in spec:
            out.update(entry if isinstance(entry, tuple) else (entry,))
    return out - {None}


def _param_names() -> set:
    with_lora = CFG.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    return _names(llava.param_logical_specs(CFG)) | _names(lora.lora_logical_specs(with_lora))


def _rule_names(rules) -> list:
    return [name for name, _ in rules]


def _trace_forwards(rules):
    """Trace (shapes only) every way the model is run: the full forward with images, KV-cache
    prefill and one decoding step, and the training-only shared-prefix layout."""
    model, M = llava.Llava(CFG), llava.Llava
    ids, pixels, mask = _inputs()

    def run(p):
        v = {"params": p}
        logits = model.apply(v, ids, pixels, mask)
        embeds = model.apply(v, ids, method=M.embed)
        cache = llava.init_cache(CFG, B, T + 1)
        slots = jnp.concatenate([mask, jnp.ones((B, 1), jnp.int32)], axis=1)
        hidden, cache = model.apply(v, embeds, slots.at[:, -1].set(0), None, cache,
                                    method=M.decode)
        step, _ = model.apply(v, embeds[:, -1:], slots, None, cache, method=M.decode)
        last, resp = model.apply(v, embeds, mask, embeds.reshape(B, 1, T, -1),
                                 mask.reshape(B, 1, T), method=M.decode_shared_prefix)
        return (logits, model.apply(v, hidden, method=M.lm_logits),
                model.apply(v, step, method=M.lm_logits), last, resp)

    with nn.logical_axis_rules(rules):
        return jax.eval_shape(run, llava.abstract_params(CFG))


# ----------------------------------------------------------------- (a) the two vocabularies


def test_activation_names_are_their_own(monkeypatch):
    seen = []
    real = nn.with_logical_constraint

    def record(x, names, *args, **kwargs):
        seen.append(tuple(names))
        return real(x, names, *args, **kwargs)

    monkeypatch.setattr(nn, "with_logical_constraint", record)
    _trace_forwards(parallel.DEFAULT_RULES)

    activation = {n for names in seen for n in names if n is not None} | {parallel.BATCH_AXIS}
    params = _param_names()
    assert seen and all(n.startswith("activation_") for n in activation), sorted(activation)
    assert not activation & params, sorted(activation & params)
    assert not any(n.startswith("activation_") for n in params), sorted(params)
    # Every name is constrained somewhere (the KV cache itself has no constraint: it takes
    # the layout of the k/v written into it, `activation_kv_heads`).
    assert activation == ACTIVATION_NAMES, sorted(activation ^ ACTIVATION_NAMES)
    # The table names each exactly once, in two blocks, and nothing else.
    assert set(_rule_names(parallel.PARAM_RULES)) == params
    assert set(_rule_names(parallel.ACTIVATION_RULES)) == ACTIVATION_NAMES
    names = _rule_names(parallel.DEFAULT_RULES)
    assert len(names) == len(set(names)) and set(names) == params | ACTIVATION_NAMES


def test_no_constraint_bypasses_layers_constrain():
    """Model code constrains activations only through `layers.constrain`, so the recording
    above sees them all."""
    models = os.path.join(os.path.dirname(llava.__file__))
    for name in sorted(os.listdir(models)):
        if name.endswith(".py") and name != "layers.py":
            with open(os.path.join(models, name)) as f:
                src = f.read()
            assert not re.search(r"with_(logical|sharding)_constraint", src), name


def test_default_activation_rules_map_where_the_old_words_did():
    """Each activation name maps where the shared word it replaced mapped (the old table
    had 'batch', 'length' and 'head_dim' rules, and the parameter words for the rest)."""
    old = {"batch": ("data", "fsdp"), "length": None, "head_dim": None,
           **dict(parallel.PARAM_RULES)}
    for name, axes in parallel.ACTIVATION_RULES:
        assert axes == old[name.removeprefix("activation_")], name
    # Same relative order as the old words (Flax assigns mesh axes rule by rule).
    order = ["batch", "length", "embed", "heads", "kv_heads", "mlp", "vocab", "head_dim",
             "embed_vision"]
    assert _rule_names(parallel.ACTIVATION_RULES) == [f"activation_{n}" for n in order]


def test_unknown_activation_name_is_an_error():
    rules = tuple(r for r in parallel.DEFAULT_RULES if r[0] != "activation_mlp")
    with pytest.raises(ValueError, match="activation_mlp.*no rule.*mesh.rules"):
        _trace_forwards(rules)
    rules = tuple(r for r in parallel.DEFAULT_RULES if r[0] != parallel.BATCH_AXIS)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    with pytest.raises(ValueError, match="input batch.*activation_batch"):
        parallel.batch_sharding(mesh, rules, 2)


def test_input_batch_follows_activation_batch():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    assert parallel.batch_sharding(mesh, parallel.DEFAULT_RULES, 3).spec == \
        P(("data", "fsdp"), None, None)
    rules = tuple((n, "tensor" if n == "activation_batch" else a)
                  for n, a in parallel.DEFAULT_RULES)
    assert parallel.batch_sharding(mesh, rules, 2).spec == P("tensor", None)


# ------------------------------------------------------- (b) tuned apart on an 8-device mesh


_CONSTRAINT = re.compile(r"sdy\.sharding_constraint \S+ <@mesh, \[(.*?)\]> : tensor<([^>]*)>")


def _forward_on_mesh(rules, mesh):
    """(param shardings, lowered StableHLO, logits) of the full forward under `rules`."""
    model = llava.Llava(CFG)
    with loop.mesh_context(mesh, rules):
        shardings = parallel.tree_shardings(llava.param_logical_specs(CFG), rules, mesh,
                                            llava.abstract_params(CFG))
        params = jax.jit(functools.partial(llava.init_params, CFG),
                         out_shardings=shardings)(jax.random.key(0))
        batch = parallel.global_batch(dict(zip("ipm", _inputs())), mesh, rules)
        fwd = jax.jit(lambda p, b: model.apply({"params": p}, b["i"], b["p"], b["m"]))
        lowered = fwd.lower(params, batch)
        logits = lowered.compile()(params, batch)
    assert jax.tree.map(lambda x: x.sharding, params) == shardings
    return shardings, lowered.as_text(), np.asarray(logits)


def test_activation_rule_tunes_activations_not_parameters():
    # data=1 × fsdp=4 × tensor=2. (Not data=2 × fsdp=2: there XLA:CPU (jaxlib 0.10.2)
    # miscompiles a dot whose operand and result are split [('data', 'fsdp'), .., 'tensor']
    # and whose kernel is split ('tensor', 'fsdp') — batch rows 1 and 2 come out wrong —
    # which is what `activation_embed` -> 'tensor' asks of o_proj/down_proj; INTERNALS.md.)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
    tuned = tuple((n, "tensor" if n == "activation_embed" else a)
                  for n, a in parallel.DEFAULT_RULES)
    sh0, hlo0, logits0 = _forward_on_mesh(parallel.DEFAULT_RULES, mesh)
    sh1, hlo1, logits1 = _forward_on_mesh(tuned, mesh)

    # Parameters: the same shardings (activation_embed is no parameter's name), over both
    # 'fsdp' and 'tensor'.
    assert sh1 == sh0
    specs = {str(s.spec) for s in jax.tree.leaves(sh0)}
    assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs)

    # Each constraint as (mesh axes per dimension, its tensor type).
    c0, c1 = ([(tuple(re.findall(r"\{([^}]*)\}", dims)), ty) for dims, ty in _CONSTRAINT.findall(h)]
              for h in (hlo0, hlo1))
    assert c0 and len(c1) == len(c0), (len(c0), len(c1))

    def embed(c):   # [.., D]: the residual stream and the projected image features
        return c[1].endswith(f"x{CFG.text.hidden_size}xf32")

    # Default: [B, T, D] activations are split over the batch only ...
    assert sum(map(embed, c0)) >= 2
    assert all("fsdp" in c[0][0] and c[0][1:] == ("", "") for c in c0 if embed(c)), c0
    # ... tuned: their hidden dimension over 'tensor' as well.
    assert all("fsdp" in c[0][0] and c[0][1:] == ("", '"tensor"') for c in c1 if embed(c)), c1
    # Nothing else changed: heads, MLP, vocab and the vision tower keep their constraints.
    assert [c for c in c1 if not embed(c)] == [c for c in c0 if not embed(c)]
    assert any('"tensor"' in c[0] for c in c0 if not embed(c))

    np.testing.assert_allclose(logits1, logits0, rtol=1e-5, atol=1e-5)
