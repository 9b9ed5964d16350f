"""Posterior ensembles of 4DVar: randomised maximum likelihood and Laplace samples on
linear-Gaussian windows, where both sample the dense posterior N(u*, (A^T A)^{-1})
exactly (A the Jacobian of the whitened residuals); perturbing the residuals is
perturbing the observations; CG caps reported; the rank-deficient case gives the
minimum-norm samples."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics

from jaxda.models import flow_map
from jaxda.obs import Observations
from jaxda.var import (
    RESULTS,
    Background,
    DenseGaussNewton,
    PerturbedProblem,
    StrongConstraint4DVar,
    WeakConstraint4DVar,
    laplace_ensemble,
    residual_noise,
    rml_ensemble,
)


T = 5
N_SAMPLES = 2000  # one size for every ensemble of the default tests: one compilation
noise = eqx.filter_jit(residual_noise)
F = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])


def _window(weak: bool, background: bool = True, mask=None):
    """A linear window: 3 components, T = 5 states, partial observations."""
    rng = np.random.default_rng(0)
    flow = flow_map(LinearDynamics(jnp.asarray(F)), 0.1, "euler")
    if mask is None:
        mask = np.zeros((T, 3), bool)
        mask[::2, 0] = True
        mask[3, :] = True
    obs = Observations(jnp.asarray(rng.normal(size=(T, 3)) * mask), jnp.asarray(mask))
    obs_var = jnp.asarray(np.linspace(0.3, 0.6, T)[:, None] * np.ones(3))
    bg = (
        Background(jnp.array([1.0, -0.5, 0.2]), jnp.array([1.0, 2.0, 0.5]))
        if background
        else None
    )
    if weak:
        return WeakConstraint4DVar(flow, obs, obs_var, 0.1, bg)
    return StrongConstraint4DVar(flow, obs, obs_var, bg)


@eqx.filter_jit
def _jacobian(problem, u):
    """The Jacobian of the whitened residuals at `u` (flattened) and r(u)."""
    flat = jnp.reshape(u, (-1,))
    r = lambda f: problem.residuals(jnp.reshape(f, jnp.shape(u)))  # noqa: E731
    return jax.jacfwd(r)(flat), r(flat)


def _dense(problem, u0):
    """The dense whitened Jacobian A, the posterior mean u* and covariance (A^T A)^-1
    of a linear problem (r(u) = A u + c)."""
    A, r0 = (np.asarray(a) for a in _jacobian(problem, u0))
    c = r0 - A @ np.ravel(u0)
    P = np.linalg.inv(A.T @ A)
    return A, -P @ A.T @ c, P


def _stats_close(members, mean, cov):
    """Sampling tolerances (5 standard deviations): the mean's sqrt(P_ii / N), the
    covariance's sqrt((P_ii P_jj + P_ij^2) / N)."""
    n = members.shape[0]
    d = np.diag(cov)
    np.testing.assert_array_less(np.abs(members.mean(0) - mean), 5 * np.sqrt(d / n))
    emp = np.cov(members, rowvar=False)
    tol = 5 * np.sqrt((np.outer(d, d) + cov**2) / n)
    np.testing.assert_array_less(np.abs(emp - cov), tol)


@pytest.mark.parametrize(
    "weak", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["strong", "weak"]
)
def test_rml_and_laplace_sample_the_linear_gaussian_posterior(weak):
    problem = _window(weak)
    u0 = jnp.zeros((T, 3) if weak else (3,))
    A, u_star, P = _dense(problem, u0)
    key, n = jax.random.key(1), N_SAMPLES
    rml = rml_ensemble(problem, DenseGaussNewton(), u0, key, n, max_steps=5)
    members = np.asarray(rml.members).reshape(n, -1)
    # Each member is the dense minimiser of its own perturbed cost:
    # u_i = u* + P A^T e_i (e_i drawn from the member's key).
    keys = jax.random.split(key, n)
    for i in (0, 1, n - 1):
        e = np.concatenate([np.ravel(x) for x in noise(problem, keys[i], u0)])
        np.testing.assert_allclose(members[i], u_star + P @ A.T @ e, atol=1e-9)
    _stats_close(members, u_star, P)
    costs = eqx.filter_jit(lambda m: jax.vmap(problem.cost)(m))(rml.members)
    np.testing.assert_allclose(rml.cost, costs, rtol=1e-12)
    # Laplace samples at u* with the same keys: the same draws, the same samples.
    lap = laplace_ensemble(
        problem, jnp.asarray(u_star).reshape(u0.shape), key, n, rtol=1e-14
    )
    assert bool(jnp.all(lap.converged))
    np.testing.assert_allclose(
        np.asarray(lap.members).reshape(n, -1), members, atol=1e-8
    )
    np.testing.assert_allclose(
        np.asarray(lap.std()).reshape(-1), members.std(0, ddof=1)
    )


def test_perturbing_the_observation_term_is_perturbing_the_observations():
    """terms=(0,): the perturbed cost differs from the cost of the problem with
    observations y + sqrt(R) e on the observed entries by a constant (the e of the
    unobserved entries): the same gradient everywhere, the same minimiser."""
    problem = _window(False)
    u0 = jnp.zeros(3)
    e = noise(problem, jax.random.key(2), u0, terms=(0,))
    assert not np.any(np.asarray(e[1]))  # the background term is not perturbed
    values = problem.obs.values + jnp.sqrt(problem.obs_var) * e[0]
    values = jnp.where(problem.obs.mask, values, 0.0)
    perturbed_obs = eqx.tree_at(lambda p: p.obs.values, problem, values)
    perturbed = PerturbedProblem(problem, e)

    @eqx.filter_jit
    def costs_and_grads(u):
        return jax.value_and_grad(perturbed.cost)(u), jax.value_and_grad(
            perturbed_obs.cost
        )(u)

    us = np.random.default_rng(6).normal(size=(3, 3))
    out = [costs_and_grads(jnp.asarray(u)) for u in us]
    offsets = [float(a[0] - b[0]) for a, b in out]
    np.testing.assert_allclose(offsets, offsets[0], rtol=1e-12)
    for (_, grad_a), (_, grad_b) in out:
        np.testing.assert_allclose(grad_a, grad_b, rtol=1e-12)


def test_laplace_sample_equals_the_dense_solve_and_cg_caps_are_reported():
    problem = _window(False)
    u0 = jnp.zeros(3)
    A, u_star, _ = _dense(problem, u0)
    x_star = jnp.asarray(u_star)
    key = jax.random.key(3)
    lap = laplace_ensemble(problem, x_star, key, N_SAMPLES, rtol=1e-14)
    first = jax.random.split(key, N_SAMPLES)[0]
    e = np.concatenate([np.ravel(x) for x in noise(problem, first, u0)])
    delta = np.linalg.solve(A.T @ A, A.T @ e)
    np.testing.assert_allclose(lap.members[0], u_star + delta, rtol=0, atol=1e-8)
    # One CG iteration cannot solve a 3 x 3 system: reported, and raised.
    capped = laplace_ensemble(problem, x_star, key, 2, max_steps=1, throw=False)
    assert bool(jnp.all(capped.result == RESULTS.max_steps_reached))
    assert np.all(np.asarray(capped.n_steps) == 1)
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver"):
        laplace_ensemble(problem, x_star, key, 2, max_steps=1)
    jitted = eqx.filter_jit(lambda x: laplace_ensemble(problem, x, key, 2, max_steps=1))
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver"):
        jitted(x_star)


def test_rank_deficient_problem_gives_minimum_norm_samples():
    """One state (T = 1), no background, its third component not observed: A^T A is
    singular (rank 2), and CG from 0 returns the minimum-norm solution A^+ e,
    orthogonal to the null space (zero spread along it)."""
    mask = np.zeros((1, 3), bool)
    mask[0, :2] = True
    rng = np.random.default_rng(4)
    flow = flow_map(LinearDynamics(jnp.asarray(F)), 0.1, "euler")
    obs = Observations(jnp.asarray(rng.normal(size=(1, 3)) * mask), jnp.asarray(mask))
    problem = StrongConstraint4DVar(flow, obs, 0.5)
    u0 = jnp.zeros(3)
    A = np.asarray(jax.jacfwd(problem.residuals)(u0))
    assert np.linalg.matrix_rank(A.T @ A) == 2
    key = jax.random.key(5)
    lap = laplace_ensemble(problem, u0, key, 8, rtol=1e-14, max_steps=20)
    for i, k in enumerate(jax.random.split(key, 8)):
        e = np.concatenate([np.ravel(x) for x in noise(problem, k, u0)])
        np.testing.assert_allclose(
            lap.members[i], np.linalg.pinv(A) @ e, rtol=0, atol=1e-8
        )
    np.testing.assert_allclose(lap.std()[2], 0.0, atol=1e-12)


def test_bad_input():
    problem = _window(False)
    u0 = jnp.zeros(3)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="`n_members` must be >= 2"):
        rml_ensemble(problem, DenseGaussNewton(), u0, key, 1)
    with pytest.raises(ValueError, match="`x_init` must have shape"):
        rml_ensemble(problem, DenseGaussNewton(), jnp.zeros(4), key, 2)
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        rml_ensemble(problem, DenseGaussNewton(), u0, 0, 2)
    with pytest.raises(TypeError, match="`solver` must be a jaxda.var solver"):
        rml_ensemble(problem, "lbfgs", u0, key, 2)
    with pytest.raises(ValueError, match="`terms` must be distinct indices"):
        laplace_ensemble(problem, u0, key, 2, terms=(0, 2))
    with pytest.raises(ValueError, match="`n_samples` must be >= 2"):
        laplace_ensemble(problem, u0, key, 0)
    with pytest.raises(TypeError, match="`problem` must be a jaxda.var problem"):
        laplace_ensemble(None, u0, key, 2)
    with pytest.raises(ValueError, match="`perturbation` must have the shapes"):
        PerturbedProblem(problem, (jnp.zeros(3),)).check_control("u", u0)
