"""Training methods behind one interface (`train/methods.py`): each method's loss through the
shared-prefix pass equals its formula on independently computed log-probs, and the trainer
takes a method from the registry, not from a branch on its name."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from mmalign_jax.models import llava
from mmalign_jax.train import defaults, methods, steps
from test_dpo_fast_path import CFG, batch, naive_logps, variables  # noqa: F401 (fixtures)


def _config(method: str, **over) -> mlc.ConfigDict:
    c = defaults.base_config(method)
    for key, value in over.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    return c


def _logsig(x):
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("beta,gamma,eps", [(2.0, 1.0, 0.0), (2.5, 0.3, 0.1)])
def test_simpo_loss_through_the_trainer_equals_the_formula(variables, batch, beta, gamma, eps):  # noqa: F811
    """Reference-free, on each response's mean token log-prob: the trainer's weighted sum,
    denominator and reward metrics from the naive full forward of every sequence."""
    c = _config("simpo", **{"simpo.beta": beta, "simpo.gamma": gamma,
                            "simpo.label_smoothing": eps})
    model = llava.Llava(CFG)
    w = np.array([1.0, 0.0, 1.0], np.float32)          # a padding row counts for nothing
    b = {**batch, "weight": w}
    loss = methods.get("simpo").loss_fn(model, c)
    total, denom, sums = jax.jit(lambda v: loss(v, None, b, None, True))(variables)
    pc, pr = (np.asarray(x, np.float64) for x in naive_logps(model, variables, batch))
    nc, nr = batch["chosen_mask"].sum(1), batch["rejected_mask"].sum(1)
    want, acc = 0.0, 0.0
    for i in range(len(w)):
        h = beta * (pc[i] / nc[i]) - beta * (pr[i] / nr[i]) - gamma
        want += w[i] * (-(1 - eps) * _logsig(h) - eps * _logsig(-h))
        acc += w[i] * (pc[i] / nc[i] > pr[i] / nr[i])
    assert float(denom) == 2.0
    assert float(total) == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert float(sums["rewards/accuracy"]) == acc
    assert float(sums["rewards/chosen"]) == pytest.approx(
        float((w * beta * pc / nc).sum()), rel=1e-4, abs=1e-5)
    assert set(methods.get("simpo").metrics) <= set(sums)


def test_simpo_needs_no_reference_and_dpo_does():
    assert methods.get("simpo").reference(_config("simpo")) is None
    assert methods.get("dpo").reference(_config("dpo")) == "online"
    assert methods.get("dpo").reference(_config("dpo", **{"dpo.reference": "precomputed"})) \
        == "precomputed"
    assert methods.get("simpo").batch == methods.get("dpo").batch == "dpo"
    assert methods.get("sft").batch == "sft"


def test_every_method_has_its_config_section_and_checks():
    c = defaults.base_config("simpo")
    assert {"dpo", "simpo"} <= set(c)                  # every method's section exists
    c.simpo.beta = 0.0
    with pytest.raises(defaults.ConfigError, match="simpo.beta"):
        defaults.validate(_with_data(c), jax.device_count())
    with pytest.raises(defaults.ConfigError, match="method 'kto' is not one of"):
        defaults.validate(_with_data(defaults.base_config("kto")), jax.device_count())


def _with_data(c):
    c.data.data_dir = "/somewhere"
    return c


def test_a_registered_method_is_trained_without_touching_the_loop(variables, batch):  # noqa: F811
    """A new method is one `register` call: the loop finds its loss and batch kind."""
    from mmalign_jax.train import loop

    def halved_dpo(model, c):
        base = steps.dpo_loss_fn(model, c)

        def loss(v, ref_v, b, rng, deterministic=False):
            total, denom, sums = base(v, ref_v, b, rng, deterministic)
            return 0.5 * total, denom, {**sums, "loss": 0.5 * sums["loss"]}
        return loss

    m = methods.register(methods.Method(
        name="halved_dpo", batch="dpo", loss_fn=halved_dpo, add_defaults=lambda c: None,
        reference=lambda c: c.dpo.reference, metrics=methods.PAIR_METRICS))
    try:
        c = defaults.base_config("halved_dpo")
        run = loop.Run(c=c, cfg=CFG, mesh=None, model=llava.Llava(CFG), state=None, frozen={},
                       ref=None, shardings={}, total_steps=1, method=m)
        b = {**batch, "weight": np.ones(3, np.float32),
             "ref_chosen_logps": np.zeros(3, np.float32),
             "ref_rejected_logps": np.zeros(3, np.float32)}
        got = loop.loss_fn_for(run)(variables, None, b, None, True)[0]
        full = steps.dpo_loss_fn(llava.Llava(CFG), c)(variables, None, b, None, True)[0]
        assert float(got) == pytest.approx(0.5 * float(full), rel=1e-6)
    finally:
        methods._METHODS.pop("halved_dpo")
