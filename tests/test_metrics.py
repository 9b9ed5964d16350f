"""Metrics against numpy references; vmap, jit, units, float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import metrics as M
from jaxda.data import Normalisation
from jaxda.models import Lorenz63, flow_map, rollout
from jaxda.obs import Observations


@pytest.fixture
def window():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(5, 20, 3)) * np.array([1.0, 5.0, 10.0]) + 3.0
    est = truth + rng.normal(size=truth.shape) * np.array([0.5, 1.0, 2.0])
    mask = rng.random(truth.shape) < 0.3
    return est, truth, mask


def test_mse_rmse_against_numpy(window):
    est, truth, mask = window
    np.testing.assert_allclose(M.mse(est, truth), np.mean((est - truth) ** 2))
    np.testing.assert_allclose(M.rmse(est, truth), np.sqrt(np.mean((est - truth) ** 2)))
    np.testing.assert_allclose(
        M.mse(est, truth, mask), np.mean((est - truth)[mask] ** 2), rtol=1e-12
    )


def test_split_against_numpy(window):
    est, truth, mask = window
    s = M.mse_split(est, truth, mask)
    err2 = (est - truth) ** 2
    np.testing.assert_allclose(s.all, err2.mean(), rtol=1e-12)
    np.testing.assert_allclose(s.observed, err2[mask].mean(), rtol=1e-12)
    np.testing.assert_allclose(s.unobserved, err2[~mask].mean(), rtol=1e-12)
    r = M.rmse_split(est, truth, mask)
    np.testing.assert_allclose(r.unobserved, np.sqrt(err2[~mask].mean()), rtol=1e-12)


def test_vmap_and_jit_give_per_window_scores(window):
    est, truth, mask = window
    per = jax.jit(jax.vmap(M.mse_split))(est, truth, mask)
    for i in range(est.shape[0]):
        e2 = (est[i] - truth[i]) ** 2
        np.testing.assert_allclose(per.observed[i], e2[mask[i]].mean(), rtol=1e-12)
        np.testing.assert_allclose(per.all[i], e2.mean(), rtol=1e-12)
    # Unmasked: mean of per-window MSEs equals the pooled MSE for equal-size windows.
    np.testing.assert_allclose(per.all.mean(), M.mse(est, truth), rtol=1e-12)


def test_units_through_normalisation(window):
    est, truth, _ = window
    stats = Normalisation.fit(truth.reshape(-1, 3))
    std = np.asarray(stats.std)
    # Normalised units: errors divided by each component's std.
    want = np.mean(((est - truth) / std) ** 2)
    got = M.mse(est, truth, transform=stats.apply)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # And back: scoring normalised data in original units recovers the original MSE.
    z_est, z_truth = stats.apply(est), stats.apply(truth)
    np.testing.assert_allclose(
        M.mse(z_est, z_truth, transform=stats.invert), M.mse(est, truth), rtol=1e-10
    )


def test_float32_and_empty_mask():
    a = jnp.ones((4, 2), jnp.float32)
    b = jnp.zeros((4, 2), jnp.float32)
    assert M.mse(a, b).dtype == jnp.float32
    assert float(M.rmse(a, b)) == 1.0
    s = M.mse_split(a, b, jnp.zeros((4, 2), bool))
    assert np.isnan(s.observed) and float(s.unobserved) == 1.0


def test_one_step_score_is_zero_on_the_flow_and_positive_off_it():
    flow = flow_map(Lorenz63(), 0.01)
    x = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 50)
    assert float(M.one_step_score(flow, x)) < 1e-20
    coarse = flow_map(Lorenz63(), 0.01, "euler")
    assert float(M.one_step_score(coarse, x)) > 1e-6


def test_bad_metric_input(window):
    est, truth, mask = window
    with pytest.raises(ValueError, match="`estimate` and `truth` must have the same"):
        M.mse(est[:2], truth)
    with pytest.raises(ValueError, match="`mask` and `truth` must have the same"):
        M.mse(est, truth, mask[:2])
    with pytest.raises(TypeError, match="`mask` must be a boolean"):
        M.mse(est, truth, mask.astype(float))
    with pytest.raises(ValueError, match="`x` must have shape"):
        M.one_step_score(lambda x: x, jnp.zeros(3))


def test_fourdvar_score_against_a_loop():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3))
    y = rng.normal(size=(6, 3))
    mask = rng.uniform(size=(6, 3)) < 0.4
    flow = flow_map(Lorenz63(), 0.01, "rk4")

    def prior(w):  # Phi(x)_0 = x_0, Phi(x)_t = flow(x_{t-1})
        return jnp.concatenate([w[:1], jax.vmap(flow)(w[:-1])])

    obs_term = sum((x[t, i] - y[t, i]) ** 2 for t, i in zip(*np.nonzero(mask)))
    model_term = sum(
        np.sum((x[t] - np.asarray(flow(jnp.asarray(x[t - 1])))) ** 2)
        for t in range(1, 6)
    )
    expected = (0.3 * obs_term + model_term) / x.size
    got = M.fourdvar_score(prior, x, Observations(y, mask), obs_weight=0.3)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # on a model trajectory observed without noise the score is zero
    traj = rollout(flow, jnp.asarray([1.0, 2.0, 20.0]), 5)
    assert float(M.fourdvar_score(prior, traj, Observations(traj, mask))) < 1e-20
    with pytest.raises(ValueError, match="`obs` must have 6 time steps"):
        M.fourdvar_score(prior, x, Observations(y[:5], mask[:5]))
    with pytest.raises(ValueError, match=r"`obs` must have shape \(T, 3\)"):
        M.fourdvar_score(prior, x, Observations(y[:, :2], mask[:, :2]))
    with pytest.raises(TypeError, match="`obs` must be jaxda.obs.Observations"):
        M.fourdvar_score(prior, x, (y, mask))
