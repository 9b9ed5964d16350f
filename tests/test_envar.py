"""Hybrid EnVar: the (localised, hybrid) ensemble covariance as a square-root operator
equals its dense definition, and hybrid 4DVar through the control-variable transform
gives the exact Gaussian posterior mean with the hybrid B on a linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics

from jaxda import ensemble as ens, var
from jaxda.grid import Grid, SpectralCovariance
from jaxda.models import flow_map, rollout
from jaxda.obs import Observations


N_STATE, N_MEMBERS, T = 10, 5, 6


def _parts(seed=0):
    rng = np.random.default_rng(seed)
    members = rng.standard_normal((N_MEMBERS, N_STATE)).cumsum(1) * 0.3
    taper = ens.gaspari_cohn_matrix(ens.LocalisationGrid(N_STATE), 2.0)
    i = np.arange(N_STATE)
    dist = np.minimum(abs(i[:, None] - i), N_STATE - abs(i[:, None] - i))
    static = 0.5 * np.exp(-0.5 * (dist / 1.5) ** 2) + 1e-3 * np.eye(N_STATE)
    return members, np.asarray(taper), static


def _adjoint_gap(cov, key):
    kw, kv = jax.random.split(key)
    w = jax.random.normal(kw, cov.control_shape)
    v = jax.random.normal(kv, cov.field_shape)
    return jnp.vdot(cov.sqrt(w), v) - jnp.vdot(w, cov.sqrt_transpose(v))


def test_covariances_equal_their_dense_definitions(getkey):
    members, taper, static = _parts()
    p_ens = np.cov(members, rowvar=False)
    loc = ens.TaperCovariance(taper)
    np.testing.assert_allclose(loc.matrix(), taper, atol=1e-12)
    np.testing.assert_allclose(loc.variance, np.diag(taper), atol=1e-12)
    plain = ens.EnsembleCovariance(members)
    assert plain.control_shape == (N_MEMBERS,)
    np.testing.assert_allclose(plain.matrix(), p_ens, atol=1e-12)
    localised = ens.EnsembleCovariance(members, loc)
    assert localised.control_shape == (N_MEMBERS, N_STATE)
    np.testing.assert_allclose(localised.matrix(), taper * p_ens, atol=1e-12)
    np.testing.assert_allclose(localised.variance, np.diag(p_ens), atol=1e-12)
    hybrid = ens.HybridCovariance(ens.TaperCovariance(static), localised, 0.3)
    expected = 0.3 * static + 0.7 * taper * p_ens
    np.testing.assert_allclose(hybrid.matrix(), expected, atol=1e-12)
    np.testing.assert_allclose(hybrid.variance, np.diag(expected), atol=1e-12)
    for cov in (loc, plain, localised, hybrid):
        assert abs(float(_adjoint_gap(cov, getkey()))) < 1e-12
    # on a 2-D grid, a spectral (FFT) correlation localises without a dense matrix
    grid = Grid(6, 8)
    field_members = jax.random.normal(getkey(), (4, 6, 8))
    spectral = SpectralCovariance(grid, 1.5, 1.0)
    on_grid = ens.EnsembleCovariance(field_members, spectral)
    flat = np.asarray(field_members).reshape(4, -1)
    expected = np.asarray(spectral.matrix()) * np.cov(flat, rowvar=False)
    np.testing.assert_allclose(on_grid.matrix(), expected, atol=1e-10)
    assert abs(float(_adjoint_gap(on_grid, getkey()))) < 1e-10


def test_hybrid_4dvar_is_the_gaussian_posterior_with_the_hybrid_b():
    members, taper, static = _parts(1)
    rng = np.random.default_rng(2)
    F = 0.3 * (np.roll(np.eye(N_STATE), 1, 1) - np.roll(np.eye(N_STATE), -1, 1))
    flow = flow_map(LinearDynamics(jnp.asarray(F)), 0.1, "euler")
    mask = rng.uniform(size=(T, N_STATE)) < 0.4
    x_b = jnp.asarray(rng.standard_normal(N_STATE))
    truth = rollout(flow, x_b + 0.5, T - 1)
    values = jnp.where(mask, truth + 0.2 * rng.standard_normal(truth.shape), 0.0)
    obs = Observations(values, jnp.asarray(mask))
    cov = ens.HybridCovariance(
        ens.TaperCovariance(static),
        ens.EnsembleCovariance(members, ens.TaperCovariance(taper)),
        0.4,
    )
    problem = var.ControlTransform(
        var.StrongConstraint4DVar(flow, obs, obs_var=0.04), x_b, cov
    )
    sol = var.solve(
        problem, var.DenseGaussNewton(), problem.initial_control(), max_steps=5
    )
    x0 = problem.map_solution(sol).x
    # the exact posterior of x0: G stacks the observed rows of M^t
    M = np.eye(N_STATE) + 0.1 * F
    G = np.concatenate(
        [np.linalg.matrix_power(M, t)[mask[t]] for t in range(T)], axis=0
    )
    y = np.concatenate([np.asarray(values)[t][mask[t]] for t in range(T)])
    B = 0.4 * static + 0.6 * taper * np.cov(members, rowvar=False)
    gain = B @ G.T @ np.linalg.inv(G @ B @ G.T + 0.04 * np.eye(len(y)))
    expected = np.asarray(x_b) + gain @ (y - G @ np.asarray(x_b))
    np.testing.assert_allclose(x0, expected, rtol=1e-8, atol=1e-8)


def test_bad_input():
    members, taper, static = _parts()
    with pytest.raises(ValueError, match="N >= 2"):
        ens.EnsembleCovariance(members[:1])
    with pytest.raises(ValueError, match="`localisation.field_shape`"):
        ens.EnsembleCovariance(members, ens.TaperCovariance(np.eye(3)))
    with pytest.raises(TypeError, match="`localisation` must be"):
        ens.EnsembleCovariance(members, taper)
    with pytest.raises(ValueError, match="`weight` must be in"):
        ens.HybridCovariance(
            ens.TaperCovariance(static), ens.EnsembleCovariance(members), 1.5
        )
    with pytest.raises(ValueError, match="symmetric"):
        ens.TaperCovariance(np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="must be finite"):
        ens.EnsembleCovariance(np.where(np.arange(N_STATE) == 0, np.nan, members))
