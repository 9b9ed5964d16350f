"""The Gauss-Markov trajectory prior: precision, covariance, MAP against dense
float64 references and a NumPy Kalman / RTS smoother."""

import numpy as np
import pytest
import scipy.linalg
from helpers import kalman_smoother

import jaxda.data as jd
from jaxda.models import Lorenz63, Pendulum
from jaxda.obs import Observations


def _prior(rng, n=2):
    m = np.eye(n) + 0.1 * rng.normal(size=(n, n))
    a, b = rng.normal(size=(2, n, n))
    return jd.GaussMarkovPrior(
        m, rng.normal(size=n), a @ a.T + np.eye(n), 0.1 * (b @ b.T) + 0.05 * np.eye(n)
    )


def _rts(prior, y, mask, r):
    """NumPy Kalman filter + RTS smoother of the same model (mean only)."""
    M, Q = np.asarray(prior.transition), np.asarray(prior.process_cov)
    m0, P0 = np.asarray(prior.initial_mean), np.asarray(prior.initial_cov)
    return kalman_smoother(M, Q, m0, P0, y, mask, np.full(y.shape[1], r))


@pytest.mark.parametrize("n_times", [1, 6])
def test_precision_is_the_inverse_of_the_covariance(n_times):
    prior = _prior(np.random.default_rng(0))
    cov = np.asarray(prior.covariance(n_times))
    prec = np.asarray(prior.precision(n_times).to_dense())
    np.testing.assert_allclose(prec @ cov, np.eye(cov.shape[0]), atol=1e-9)
    mean = np.asarray(prior.mean(n_times))
    M, x = np.asarray(prior.transition), np.asarray(prior.initial_mean)
    for t in range(n_times):
        np.testing.assert_allclose(mean[t], x, rtol=1e-12)
        x = M @ x


def test_map_is_the_kalman_smoother():
    rng = np.random.default_rng(1)
    prior = _prior(rng)
    T, r = 9, 0.3
    mask = rng.uniform(size=(T, 2)) < 0.4
    y = np.where(mask, rng.normal(size=(T, 2)), 0.0)
    est = prior.map(Observations(y, mask), r)
    np.testing.assert_allclose(est.mean, _rts(prior, y, mask, r), atol=1e-9)
    # and the dense covariance form
    mu, P = np.asarray(prior.mean(T)).ravel(), np.asarray(prior.covariance(T))
    H = np.eye(2 * T)[mask.ravel()]
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + r * np.eye(H.shape[0]))
    dense = mu + K @ (y.ravel()[mask.ravel()] - H @ mu)
    np.testing.assert_allclose(est.mean.ravel(), dense, atol=1e-9)


def test_linearised_pendulum_is_the_damped_oscillator():
    model, dt = Pendulum(omega0_sq=2.0, damping=0.1), 0.1
    cov = np.diag([1.0, 0.5])
    prior = jd.GaussMarkovPrior.linearised(model, dt, np.zeros(2), cov, 1e-6 * cov)
    jac = np.array([[0.0, 1.0], [-2.0, -0.1]])
    np.testing.assert_allclose(prior.transition, scipy.linalg.expm(dt * jac), 1e-12)


def test_bad_input():
    eye = np.eye(2)
    with pytest.raises(ValueError, match="initial_cov"):
        jd.GaussMarkovPrior(eye, np.zeros(2), -eye, eye)
    with pytest.raises(ValueError, match="process_cov"):
        jd.GaussMarkovPrior(eye, np.zeros(2), eye, np.ones((3, 3)))
    with pytest.raises(ValueError, match="rest_state"):
        jd.GaussMarkovPrior.linearised(Lorenz63(), 0.01, np.zeros(2), eye, eye)
    with pytest.raises(TypeError, match="model"):
        jd.GaussMarkovPrior.linearised("pendulum", 0.01, np.zeros(2), eye, eye)
    prior = jd.GaussMarkovPrior(eye, np.zeros(2), eye, eye)
    with pytest.raises(ValueError, match="obs"):
        prior.map(Observations(np.zeros((4, 3)), np.ones((4, 3), bool)), 0.1)
