"""Loss formulas checked against numbers computed by hand from the published definitions."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from mmalign_jax import objectives


def _logsig(x):
    return -math.log1p(math.exp(-x))


# policy chosen/rejected, reference chosen/rejected: h = (-10 - -12) - (-14 - -13) = 3
PC, PR, RC, RR = -10.0, -14.0, -12.0, -13.0
H = 3.0


def _call(loss_type, beta, eps=0.0):
    losses, cr, rr = objectives.dpo_loss(
        jnp.array([PC]), jnp.array([PR]), jnp.array([RC]), jnp.array([RR]),
        beta=beta, loss_type=loss_type, label_smoothing=eps)
    return float(losses[0]), float(cr[0]), float(rr[0])


def test_sigmoid_matches_formula():
    loss, cr, rr = _call("sigmoid", 0.1)
    # -log sigmoid(0.3) = log(1 + e^-0.3)
    assert loss == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-6)
    assert loss == pytest.approx(0.5543552, rel=1e-6)
    assert cr == pytest.approx(0.1 * 2.0, rel=1e-6)
    assert rr == pytest.approx(0.1 * -1.0, rel=1e-6)


def test_conservative_sigmoid_label_smoothing():
    loss, _, _ = _call("sigmoid", 0.5, eps=0.2)
    expected = -0.8 * _logsig(1.5) - 0.2 * _logsig(-1.5)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert loss == pytest.approx(0.8 * 0.2014133 + 0.2 * 1.7014133, rel=1e-6)


def test_robust():
    loss, _, _ = _call("robust", 0.5, eps=0.2)
    expected = (-0.8 * _logsig(1.5) + 0.2 * _logsig(-1.5)) / 0.6
    assert loss == pytest.approx(expected, rel=1e-6)
    # with eps=0 robust equals plain sigmoid
    assert _call("robust", 0.1)[0] == pytest.approx(_call("sigmoid", 0.1)[0], rel=1e-6)


def test_hinge():
    assert _call("hinge", 0.1)[0] == pytest.approx(0.7, rel=1e-6)   # 1 - 0.3
    assert _call("hinge", 1.0)[0] == 0.0                              # 1 - 3 < 0


def test_ipo():
    # (h - 1/(2 beta))^2 = (3 - 5)^2 = 4
    assert _call("ipo", 0.1)[0] == pytest.approx(4.0, rel=1e-6)


def test_rewards_are_beta_times_logratio_not_beta_squared():
    _, cr, rr = _call("sigmoid", 0.5)
    assert cr == pytest.approx(1.0) and rr == pytest.approx(-0.5)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="not one of"):
        _call("kto", 0.1)


def test_token_and_sequence_logps():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    labels = jnp.array([[0, 2]])
    np.testing.assert_allclose(objectives.token_logps(logits, labels),
                               [[math.log(0.5), math.log(0.8)]], rtol=1e-6)
    s, n = objectives.sequence_logps(logits, labels, jnp.array([[0, 1]]))
    np.testing.assert_allclose(s, [math.log(0.8)], rtol=1e-6)
    np.testing.assert_allclose(n, [1.0])
    # unnormalised logits are normalised
    s2, _ = objectives.sequence_logps(logits + 7.0, labels, jnp.array([[1, 1]]))
    np.testing.assert_allclose(s2, [math.log(0.4)], rtol=1e-5)


def test_sft_loss_is_sum_and_count():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]], [[0.9, 0.1], [0.2, 0.8]]]))
    labels = jnp.array([[0, 1], [0, 1]])
    mask = jnp.array([[1, 1], [0, 1]])
    total, count = objectives.sft_loss(logits, labels, mask)
    assert float(count) == 3
    assert float(total) == pytest.approx(-(math.log(0.5) + math.log(0.75) + math.log(0.8)), rel=1e-6)


def test_simpo_matches_formula():
    """SimPO (Meng et al. 2024, eq. 6): −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ),
    on the policy's summed log-probs divided by the response lengths — no reference."""
    sum_c, len_c, sum_r, len_r = -12.0, 4.0, -30.0, 6.0    # means -3.0 and -5.0
    beta, gamma = 2.0, 1.5
    losses, cr, rr = objectives.simpo_loss(jnp.array([sum_c / len_c]), jnp.array([sum_r / len_r]),
                                           beta=beta, gamma=gamma)
    h = beta * (-3.0) - beta * (-5.0) - gamma                  # 2.5
    assert float(losses[0]) == pytest.approx(-_logsig(h), rel=1e-6)
    assert float(losses[0]) == pytest.approx(math.log1p(math.exp(-2.5)), rel=1e-6)
    assert float(cr[0]) == pytest.approx(-6.0) and float(rr[0]) == pytest.approx(-10.0)
    smoothed, _, _ = objectives.simpo_loss(jnp.array([-3.0]), jnp.array([-5.0]), beta=beta,
                                           gamma=gamma, label_smoothing=0.1)
    assert float(smoothed[0]) == pytest.approx(-0.9 * _logsig(h) - 0.1 * _logsig(-h), rel=1e-6)
    # the margin γ is what the rewards must clear: at a reward gap of exactly γ the loss is log 2
    at_margin, _, _ = objectives.simpo_loss(jnp.array([-3.0]), jnp.array([-3.0 - gamma / beta]),
                                            beta=beta, gamma=gamma)
    assert float(at_margin[0]) == pytest.approx(math.log(2.0), rel=1e-6)
