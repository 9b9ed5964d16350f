"""Maximum-likelihood fitting of SPDE priors (`jaxda.spde.fit_maximum_likelihood`):
the objective against a dense Gaussian, the MLE property and parameter recovery on
samples of a known prior, the best-finite bookkeeping, failures and bad arguments."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxda import RESULTS, spde
from jaxda.grid import Grid


GRID = Grid(8, 8, 1.0, 1.0, "periodic")
N_TIMES = 4
TRUE = jnp.log(jnp.array([0.5, 0.8, 1.5]))  # log kappa, log tau, log h
# L-BFGS converges to a gradient of 1e-8 in about 15 iterations here; Adam (the
# default, exercised below) is far slower on this ill-conditioned objective
LBFGS = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(20))


def build(theta):
    kappa, tau, h = jnp.exp(theta[0]), jnp.exp(theta[1]), jnp.exp(theta[2])
    params = spde.SPDEParameters(
        GRID, N_TIMES, kappa=kappa, tau=tau, diffusion=h, dt=1.0, alpha=2,
        dtype=theta.dtype,
    )  # fmt: skip
    return spde.SPDEPrior(params, GRID, 1.0)


@pytest.fixture(scope="module")
def samples():
    return build(TRUE).sample(jax.random.key(0), 200)  # (200, 4, 8, 8), float64


def test_objective_is_the_dense_gaussian_nll():
    grid = Grid(3, 4, 1.0, 1.0, "closed")
    params = spde.SPDEParameters(
        grid, 3, kappa=0.7, tau=1.2, advection=jnp.array([0.3, -0.2]),
        diffusion=0.9, dt=0.5,
    )  # fmt: skip
    prior = spde.SPDEPrior(params, grid, 0.5, mean=0.1)
    x = jax.random.normal(jax.random.key(1), (5, 3, 3, 4), jnp.float64)
    q = np.asarray(eqx.filter_jit(spde.SPDEPrior.to_dense_precision)(prior))
    r = np.asarray(x - 0.1).reshape(5, -1)
    energy = 0.5 * np.mean(np.einsum("ni,ij,nj->n", r, q, r))
    want = (energy - 0.5 * np.linalg.slogdet(q)[1]) / r.shape[1]
    got = spde.negative_log_likelihood(prior, x, logdet="dense")
    assert np.isclose(float(got), want, rtol=1e-10, atol=1e-12)


def test_fit_is_the_maximum_likelihood_and_recovers_the_parameters(samples):
    start = TRUE + jnp.array([0.6, -0.5, 0.7])
    fit = spde.fit_maximum_likelihood(
        build, start, samples, steps=100, optimizer=LBFGS, gtol=1e-8, progress=False
    )
    assert fit.result == RESULTS.successful and float(fit.gradient_norm) <= 1e-8
    # the MLE property: no higher than the truth on the samples it was fitted to
    nll_true = spde.negative_log_likelihood(build(TRUE), samples)
    assert float(fit.nll) <= float(nll_true)
    assert np.isclose(
        float(fit.nll), float(spde.negative_log_likelihood(build(fit.theta), samples))
    )
    # recovery within 4 asymptotic standard errors: the inverse Hessian of the
    # total negative log-likelihood N d l(theta) at the MLE (the observed Fisher
    # information), by central differences of its gradient
    n_values = samples.shape[0] * np.prod(samples.shape[1:])
    grad = eqx.filter_jit(
        jax.grad(lambda t: n_values * spde.negative_log_likelihood(build(t), samples))
    )
    eps = 1e-4
    hessian = np.stack(
        [(grad(fit.theta + eps * e) - grad(fit.theta - eps * e)) / (2 * eps)
         for e in jnp.eye(3)]
    )  # fmt: skip
    se = np.sqrt(np.diag(np.linalg.inv(0.5 * (hessian + hessian.T))))
    assert np.all(se < 0.05)  # enough data for the test to be sharp
    assert np.all(np.abs(np.asarray(fit.theta - TRUE)) < 4 * se)


def test_two_starts_keep_the_better(samples):
    near, far = TRUE + 0.1, TRUE + jnp.array([2.0, -2.0, 2.0])
    fit = spde.fit_maximum_likelihood(
        build, far, samples, steps=5, optimizer=LBFGS, starts=[near], progress=False
    )  # 5 steps: the far start is still far
    assert fit.start_nll.shape == (2,) and fit.result == RESULTS.successful
    assert float(fit.start_nll[1]) < float(fit.start_nll[0])
    assert float(fit.nll) == float(fit.start_nll[1])
    history = np.asarray(fit.nll_history)
    assert history.shape == (6,) and int(fit.num_steps) == 5
    assert float(fit.nll) == history.min() and history[-1] < history[0]
    # a gradient tolerance not met in the steps allowed is reported
    capped = spde.fit_maximum_likelihood(
        build, far, samples, steps=5, optimizer=LBFGS, gtol=1e-8, progress=False,
        throw=False,
    )  # fmt: skip
    assert capped.result == RESULTS.max_steps_reached


def test_nonfinite_values_are_reported_and_the_best_finite_kept(samples):
    wall = float(TRUE[0]) - 0.4

    def fragile(theta):  # NaN beyond log kappa = wall, between the start and truth
        prior = build(theta)
        kappa = jnp.where(theta[0] < wall, prior.params.kappa, jnp.nan)
        return eqx.tree_at(lambda p: p.params.kappa, prior, kappa)

    start = TRUE - jnp.array([0.8, 0.0, 0.0])
    fit = spde.fit_maximum_likelihood(
        fragile, start, samples[:20], steps=50, learning_rate=0.05, progress=False,
        throw=False,
    )  # fmt: skip
    assert fit.result == RESULTS.nonfinite_loss
    assert float(fit.theta[0]) < wall and np.all(np.isfinite(fit.theta))
    assert float(fit.nll) == np.min(np.asarray(fit.nll_history))
    assert int(fit.num_steps) < 50
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        spde.fit_maximum_likelihood(
            fragile, jnp.array([jnp.nan, 0.0, 0.0]), samples[:20], steps=3,
            progress=False,
        )  # fmt: skip
    bad = spde.fit_maximum_likelihood(
        fragile, jnp.array([jnp.nan, 0.0, 0.0]), samples[:20], steps=3, progress=False,
        throw=False,
    )  # fmt: skip
    assert bad.result == RESULTS.nonfinite_loss and np.isnan(float(bad.nll))


def test_bad_arguments(samples):
    def call(**kw):
        args = dict(build=build, theta0=TRUE, windows=samples[:2], steps=2)
        args.update(kw)
        return spde.fit_maximum_likelihood(progress=False, **args)

    with pytest.raises(TypeError, match="`build` must be callable"):
        call(build="prior")
    with pytest.raises(TypeError, match="`theta0` must be a pytree of floating"):
        call(theta0=[1, 2, 3])
    with pytest.raises(ValueError, match=r"`windows` must have shape \(N, 4, 8, 8\)"):
        call(windows=samples[0])
    with pytest.raises(TypeError, match="`windows` must be an array"):
        call(windows=[1.0])
    with pytest.raises(ValueError, match="`steps` must be >= 1"):
        call(steps=0)
    with pytest.raises(ValueError, match="`learning_rate` must be finite and > 0"):
        call(learning_rate=-0.1)
    with pytest.raises(ValueError, match="`logdet` must be one of"):
        call(logdet="cholesky")
    with pytest.raises(ValueError, match=r"`starts\[0\]` must have the pytree"):
        call(starts=[(TRUE, TRUE)])
    with pytest.raises(TypeError, match="must return a jaxda.spde.SPDEPrior"):
        call(build=lambda theta: theta)
    with pytest.raises(TypeError, match="`prior` must be a jaxda.spde.SPDEPrior"):
        spde.negative_log_likelihood("prior", samples)
