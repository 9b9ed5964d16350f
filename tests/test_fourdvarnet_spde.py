"""The generative 4DVarNet with an SPDE prior ([BF24]): the field map against the
SPDE parameters, the cost's gradient against the dense precision, a converged
solver against the SPDE OI, the conditional ensemble through it against the exact
posterior, the truth's negative log-likelihood against dense algebra, loss gradients
against finite differences, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_jvp

from jaxda import RESULTS, fourdvarnet as fdn, spde
from jaxda.grid import Grid
from jaxda.obs import Observations


DT, SIG2 = 0.5, 0.1


def _field_map(**kw):
    return fdn.SPDEFieldMap(Grid(4, 5, 1.0, 1.3, "closed"), 3, DT, **kw)


@pytest.fixture(scope="module")
def problem():
    fm = _field_map(alpha=2, mean=0.2)
    theta = fm.fields(
        kappa=1.0, tau=1.0, diffusion=0.5, advection=(0.3, -0.2),
        anisotropy=(0.2, 0.1), dtype=jnp.float64,
    )  # fmt: skip
    prior = fm.prior(theta, solver="banded")
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    truth = prior.sample(k1)
    mask = jax.random.uniform(k2, prior.shape) < 0.35
    noise = np.sqrt(SIG2) * jax.random.normal(k3, prior.shape, jnp.float64)
    obs = Observations(jnp.where(mask, truth + noise, 0.0), mask)
    q = np.asarray(eqx.filter_jit(lambda p: p.to_dense_precision())(prior))
    w = np.diag(np.asarray(mask, float).reshape(-1) / SIG2)
    a = q + w
    x_map = np.linalg.solve(
        a, q @ np.full(a.shape[0], 0.2) + w @ obs.values.reshape(-1)
    )
    return fm, theta, prior, truth, obs, q, a, x_map


def _gd_model(fm, theta, a, n_iter=None):
    """Gradient descent with the optimal fixed step on J (Hessian `a`), enough
    iterations for 1e-12 relative accuracy."""
    ev = np.linalg.eigvalsh(a)
    rate = (ev[-1] - ev[0]) / (ev[-1] + ev[0])
    n_iter = n_iter or int(np.ceil(np.log(1e-12) / np.log(rate)))
    cost = fdn.SPDECost(fm, 1 / (2 * SIG2), 1.0, dtype=jnp.float64)
    solver = fdn.AugmentedGradientDescent(2 / (ev[-1] + ev[0]))
    return fdn.SPDEFourDVarNet(cost, solver, theta, n_iter=n_iter)


def test_field_map_gives_the_spde_parameters():
    fm = _field_map(alpha=4)
    grid = fm.grid
    kappa = 0.5 + jnp.arange(grid.size, dtype=jnp.float64).reshape(grid.shape) / 20
    theta = fm.fields(
        kappa=kappa, tau=2.0, diffusion=0.7, advection=(0.4, -0.1),
        anisotropy=(0.3, 0.2), dtype=jnp.float64,
    )  # fmt: skip
    assert theta.shape == fm.shape == (7, 4, 5)
    p = fm.parameters(theta)
    np.testing.assert_allclose(p.kappa[0], kappa, rtol=1e-14)
    np.testing.assert_allclose(p.tau, 2.0, rtol=1e-14)
    np.testing.assert_allclose(p.advection[0, :, 0, 0], [0.4, -0.1], rtol=1e-13)
    h = np.asarray(p.diffusion[0, :, 0, 0])  # gamma I + v v^T
    np.testing.assert_allclose(h, [0.7 + 0.09, 0.06, 0.7 + 0.04], rtol=1e-13)
    assert p.alpha == 4
    plain = _field_map(advection=False, anisotropy=False)
    assert plain.n_channels == 3
    p = plain.parameters(plain.fields(kappa=1.0, tau=1.0, diffusion=0.7))
    np.testing.assert_allclose(p.diffusion[0, :, 0, 0], [0.7, 0.0, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(p.advection, 0.0)


def test_cost_gradient_is_the_dense_posterior_gradient(problem):
    fm, theta, prior, truth, obs, q, a, _ = problem
    cost = fdn.SPDECost(fm, 1 / (2 * SIG2), 1.0, dtype=jnp.float64)
    x = truth + 0.3
    g = eqx.filter_jit(jax.grad(lambda x, c: c(x, theta, obs)))(x, cost)
    mask = np.asarray(obs.mask).reshape(-1)
    want = q @ (np.asarray(x).reshape(-1) - 0.2) + mask * (
        np.asarray(x - obs.values).reshape(-1) / SIG2
    )
    np.testing.assert_allclose(np.asarray(g).reshape(-1), want, rtol=1e-11, atol=1e-11)


def test_converged_solver_is_the_spde_oi(problem):
    fm, theta, prior, truth, obs, q, a, x_map = problem
    model = _gd_model(fm, theta, a)
    rec = fdn.spde_reconstruct(model, obs)
    assert rec.result == RESULTS.successful
    np.testing.assert_allclose(rec.x.reshape(-1), x_map, atol=1e-9)
    np.testing.assert_array_equal(rec.theta, theta)  # step_theta = 0
    oi = spde.spde_map(prior, obs.values, obs.mask, SIG2)
    np.testing.assert_allclose(rec.x, oi.mean, atol=1e-8)


def test_conditional_ensemble_through_an_exact_solver_is_the_posterior(problem):
    fm, theta, prior, truth, obs, q, a, x_map = problem
    model = _gd_model(fm, theta, a)
    n = 600
    ens = fdn.spde_conditional_ensemble(
        jax.random.key(5), model, obs, SIG2, n, chunk_size=n
    )
    assert ens.result == RESULTS.successful
    m = np.asarray(ens.members).reshape(n, -1)
    cov = np.linalg.inv(a)
    var = np.diag(cov)
    assert np.all(np.abs(m.mean(0) - x_map) < 5 * np.sqrt(var / n))
    se_cov = np.sqrt((np.outer(var, var) + cov**2) / n)
    assert np.all(np.abs(np.cov(m.T) - cov) < 5 * se_cov)
    np.testing.assert_allclose(ens.std**2, np.var(m, 0, ddof=1).reshape(ens.std.shape))


def test_truth_nll_is_the_dense_gaussian_negative_log_density(problem):
    fm, theta, prior, truth, obs, q, a, _ = problem
    model = _gd_model(fm, theta, a, n_iter=2)
    # train_theta_init=False stops the loss's gradient to theta_init
    for train, nonzero in ((True, True), (False, False)):
        m = fdn.SPDEFourDVarNet(
            model.cost, model.solver, theta, n_iter=2, train_theta_init=train
        )

        def loss(th, m=m):
            m = eqx.tree_at(lambda m: m.theta_init, m, th)
            return fdn.generative_loss(m, obs, truth, nll_weight=0.0)

        g = eqx.filter_jit(jax.grad(loss))(theta)
        assert bool(jnp.any(g != 0)) == nonzero
    e = np.asarray(truth).reshape(-1) - 0.2
    want = (0.5 * e @ q @ e - 0.5 * np.linalg.slogdet(q)[1]) / e.size
    got = eqx.filter_jit(fdn.truth_nll)(model, theta, truth)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.slow  # second-order autodiff through the unroll compiles for ~15 s
def test_generative_loss_gradient_against_finite_differences(problem):
    fm, theta, prior, truth, obs, q, a, _ = problem
    cost = fdn.SPDECost(fm, 1 / (2 * SIG2), 1.0, dtype=jnp.float64)
    solver = fdn.AugmentedConvLSTMSolver(
        3, fm.n_channels, key=jax.random.key(0), hidden=2, dtype=jnp.float64
    )
    model = fdn.SPDEFourDVarNet(cost, solver, theta, n_iter=2)

    def loss(th):
        m = eqx.tree_at(lambda m: m.theta_init, model, th)
        return fdn.generative_loss(
            m, obs, truth, steps=1, nll_weight=0.5, logdet="dense"
        )

    grad = eqx.filter_jit(jax.grad(loss))(theta)
    jit_loss = eqx.filter_jit(loss)
    for i in range(2):  # directional derivatives along random directions
        v = jax.random.normal(jax.random.key(20 + i), theta.shape, theta.dtype)
        fd = finite_difference_jvp(jit_loss, theta, v)
        np.testing.assert_allclose(jnp.vdot(grad, v), fd, rtol=1e-6)
    # the NLL term trains the parameter fields: its gradient is not zero
    assert float(jnp.max(jnp.abs(grad))) > 1e-3
    # with update_theta=False the fields stay theta_init and x moves
    fixed = eqx.tree_at(lambda m: m.theta_init, model, theta + 0.1)
    fixed = fdn.SPDEFourDVarNet(
        fixed.cost, fixed.solver, fixed.theta_init, n_iter=2, update_theta=False
    )
    rec = fdn.spde_reconstruct(fixed, obs)
    np.testing.assert_array_equal(rec.theta, theta + 0.1)
    assert not np.allclose(rec.x, fixed.first_guess(obs))


def test_bad_input_is_refused_and_failures_are_reported(problem):
    fm, theta, prior, truth, obs, q, a, _ = problem
    model = _gd_model(fm, theta, a, n_iter=2)
    cost = model.cost
    with pytest.raises(ValueError, match="theta_init"):
        fdn.SPDEFourDVarNet(cost, model.solver, theta[:3])
    lstm = fdn.AugmentedConvLSTMSolver(4, 7, key=jax.random.key(0), hidden=2)
    with pytest.raises(ValueError, match="solver"):
        fdn.SPDEFourDVarNet(cost, lstm, theta)
    with pytest.raises(TypeError, match="field_map"):
        fdn.SPDECost(None)
    with pytest.raises(ValueError, match="step_x"):
        fdn.AugmentedGradientDescent(-1.0)
    with pytest.raises(ValueError, match="theta"):
        fm.parameters(theta[:, :2])
    bad = Observations(obs.values[:, :3], obs.mask[:, :3])
    with pytest.raises(ValueError, match="obs"):
        fdn.spde_reconstruct(model, bad)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="n_members"):
        fdn.spde_conditional_ensemble(key, model, obs, SIG2, 1)
    with pytest.raises(ValueError, match="obs_var"):
        fdn.spde_conditional_ensemble(key, model, obs, 0.0, 4)
    with pytest.raises(TypeError, match="model"):
        fdn.spde_conditional_ensemble(key, prior, obs, SIG2, 4)
    with pytest.raises(ValueError, match="logdet"):
        fdn.make_generative_loss(logdet="lu")
    # a non-finite observed value is reported under jit, raised with throw
    values = obs.values.at[obs.mask].set(jnp.nan)

    @eqx.filter_jit
    def result(values, throw):
        o = Observations(values, obs.mask)
        return fdn.spde_reconstruct(model, o, throw=throw).result

    assert result(values, False) == RESULTS.invalid_input
    assert result(obs.values, False) == RESULTS.successful
    with pytest.raises(eqx.EquinoxRuntimeError):
        result(values, True)
