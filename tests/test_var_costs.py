"""4DVar costs: finite-difference gradients, residual/cost agreement, normal equations,
and argument checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_grad

from jaxda.linalg import SymmetricBandMatrix
from jaxda.models import Lorenz63, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import (
    Background,
    BlockTridiagonalNormal,
    DenseNormal,
    IncrementalMAP,
    JointStateParameter,
    StrongConstraint4DVar,
    WeakConstraint4DVar,
    linearise,
)


T = 7


def _setup(getkey, n_obs_every=2):
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 100)[-T:]
    mask = jnp.zeros((T, 3), bool).at[::n_obs_every, 0].set(True).at[3, 2].set(True)
    y = truth + jax.random.normal(getkey(), truth.shape)
    return flow, truth, Observations(y, mask)


def _numpy_weak_cost(x, y, mask, obs_var, model_var, flow, xb, bprec):
    x = np.asarray(x)
    flow = jax.jit(flow)  # one compilation instead of op-by-op dispatch per step
    r = np.where(mask, x - y, 0.0)
    cost = 0.5 * np.sum(r**2 / obs_var)
    for t in range(x.shape[0] - 1):
        d = x[t + 1] - np.asarray(flow(jnp.asarray(x[t]), 0.01 * t))
        cost += 0.5 * np.sum(d**2 / model_var)
    db = x[0] - xb
    return cost + 0.5 * db @ bprec @ db


def test_weak_cost_matches_numpy_and_residuals(getkey):
    flow, truth, obs = _setup(getkey)
    obs_var = jnp.array([2.0, 1.0, 0.5])
    model_var = jnp.array([0.1, 0.2, 0.3])
    band = jnp.array([[2.0, 3.0, 4.0], [0.5, -0.3, 0.0]])  # SPD tridiagonal precision
    bg = Background(truth[0] + 1.0, precision=SymmetricBandMatrix(band))
    prob = WeakConstraint4DVar(flow, obs, obs_var, model_var, bg)
    x = truth + 0.1 * jax.random.normal(getkey(), truth.shape)
    bprec = np.asarray(SymmetricBandMatrix(band).to_dense())
    ref = _numpy_weak_cost(
        x, obs.values, obs.mask, obs_var, model_var, flow, truth[0] + 1.0, bprec
    )
    cost, res = eqx.filter_jit(lambda p, z: (p.cost(z), p.residuals(z)))(prob, x)
    np.testing.assert_allclose(cost, ref, rtol=1e-12)
    np.testing.assert_allclose(0.5 * jnp.sum(res**2), ref, rtol=1e-12)


@pytest.mark.parametrize("kind", ["weak", "strong", "joint"])
def test_cost_gradient_matches_finite_differences(getkey, kind):
    flow, truth, obs = _setup(getkey)
    bg = Background(truth[0] + 0.5, jnp.array([1.0, 2.0, 3.0]))
    if kind == "weak":
        prob = WeakConstraint4DVar(flow, obs, 2.0, 0.05, bg)
        x = truth + 0.2
        f = prob.cost
    elif kind == "strong":
        prob = StrongConstraint4DVar(flow, obs, 2.0, bg)
        x = truth[0] + 0.2
        f = prob.cost
    else:
        pflow = flow_map(Lorenz63(sigma=jnp.array(10.0), rho=jnp.array(28.0)), 0.01)
        prob = JointStateParameter(StrongConstraint4DVar(pflow, obs, 2.0, bg), 4.0)
        x0, params = prob.initial_control(truth[0] + 0.2)
        params = jax.tree_util.tree_map(lambda p: p + 0.3, params)
        f = eqx.filter_jit(prob.cost)
        g = eqx.filter_jit(jax.grad(prob.cost))((x0, params))
        fd_x = finite_difference_grad(lambda z: f((z, params)), x0)
        np.testing.assert_allclose(g[0], fd_x, rtol=1e-6, atol=1e-6)
        fd_s = finite_difference_grad(
            lambda s: f((x0, eqx.tree_at(lambda p: p.model.sigma, params, s))),
            params.model.sigma,
        )
        np.testing.assert_allclose(g[1].model.sigma, fd_s, rtol=1e-6)
        return
    np.testing.assert_allclose(
        eqx.filter_jit(jax.grad(f))(x),
        finite_difference_grad(eqx.filter_jit(f), x),
        rtol=1e-6,
        atol=1e-6,
    )


def test_linearise_matches_dense_jacobian(getkey):
    flow, truth, obs = _setup(getkey)
    bg = Background(truth[0] - 0.3, 0.7)
    prob = WeakConstraint4DVar(flow, obs, 2.0, jnp.array([0.1, 0.2, 0.3]), bg)
    x = truth + 0.4
    ne = eqx.filter_jit(linearise)(prob, x)
    jr = jax.jit(jax.jacfwd(lambda z: prob.residuals(z)))(x).reshape(-1, T * 3)
    dense = np.zeros((T * 3, T * 3))
    for t in range(T):
        dense[3 * t : 3 * t + 3, 3 * t : 3 * t + 3] = ne.diagonal[t]
    for t in range(T - 1):
        dense[3 * t + 3 : 3 * t + 6, 3 * t : 3 * t + 3] = ne.lower[t]
        dense[3 * t : 3 * t + 3, 3 * t + 3 : 3 * t + 6] = ne.lower[t].T
    np.testing.assert_allclose(dense, jr.T @ jr, rtol=1e-10, atol=1e-10)
    grad = jax.jit(jax.grad(lambda z: prob.cost(z)))(x)
    np.testing.assert_allclose(ne.grad.reshape(-1), grad.reshape(-1))
    np.testing.assert_allclose(ne.cost, prob.cost(x), rtol=1e-12)


def test_window_without_observations_is_allowed(getkey):
    flow, truth, obs = _setup(getkey)
    empty = Observations(jnp.zeros_like(truth), jnp.zeros(truth.shape, bool))
    prob = WeakConstraint4DVar(flow, empty, 1.0, 0.1, Background(truth[0], 1.0))
    # Only the prior: the free trajectory from the background has zero cost.
    free = eqx.filter_jit(lambda p, x0: p.cost(rollout(flow, x0, T - 1)))
    np.testing.assert_allclose(free(prob, truth[0]), 0.0, atol=1e-20)


def test_masked_nonfinite_values_are_ignored(getkey):
    flow, truth, obs = _setup(getkey)
    values = jnp.where(obs.mask, obs.values, jnp.nan)
    # Past the constructor's zero-filling: NaN where nothing is observed.
    raw = eqx.tree_at(lambda o: o.values, obs, values)
    prob = WeakConstraint4DVar(flow, raw, 2.0, 0.1)
    ref = WeakConstraint4DVar(flow, obs, 2.0, 0.1)
    assert np.isfinite(prob.cost(truth))
    np.testing.assert_allclose(prob.cost(truth), ref.cost(truth))
    assert np.all(np.isfinite(eqx.filter_jit(jax.grad(prob.cost))(truth)))


def test_bad_input(getkey):
    flow, truth, obs = _setup(getkey)

    class RawObs(eqx.Module):
        values: jax.Array
        mask: jax.Array

    with pytest.raises(TypeError, match="`obs` must be jaxda.obs.Observations"):
        WeakConstraint4DVar(flow, RawObs(obs.values, obs.mask), 1.0, 1.0)
    with pytest.raises(ValueError, match="must have shape \\(T, 3\\)"):
        WeakConstraint4DVar(flow, Observations(truth[:, :2], obs.mask[:, :2]), 1.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        bad = eqx.tree_at(lambda o: o.values, obs, obs.values.at[0, 0].set(jnp.inf))
        WeakConstraint4DVar(flow, bad, 1.0, 1.0)
    with pytest.raises(ValueError, match="`obs_var` must be finite and > 0"):
        WeakConstraint4DVar(flow, obs, 0.0, 1.0)
    with pytest.raises(ValueError, match="`model_var` must be finite and > 0"):
        WeakConstraint4DVar(flow, obs, 1.0, jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="`obs_var` must be a scalar or broadcastable"):
        WeakConstraint4DVar(flow, obs, jnp.ones(5), 1.0)
    with pytest.raises(ValueError, match="`var` must be finite and > 0"):
        Background(truth[0], -1.0)
    with pytest.raises(ValueError, match="`background.mean` must have the state shape"):
        WeakConstraint4DVar(flow, obs, 1.0, 1.0, Background(jnp.zeros(2), 1.0))
    with pytest.raises(ValueError, match="exactly one of"):
        Background(truth[0])
    with pytest.raises(TypeError, match="`flow` must be"):
        WeakConstraint4DVar(lambda x: x, obs, 1.0, 1.0)
    with pytest.raises(ValueError, match="has no parameter"):
        JointStateParameter(StrongConstraint4DVar(flow, obs, 1.0))


@pytest.mark.parametrize("damping", [None, 0.5])
def test_the_three_normal_solves_give_the_same_step(getkey, damping):
    r"""Block-tridiagonal, dense and incremental-MAP linear solves all solve
    $(A + \lambda\,\mathrm{diag}(A))\,\delta = -\nabla J$ at a nonlinear point (the
    MAP form with the damping moved to both sides, see `_incremental.py`); checked
    against a dense float64 solve of the residual Jacobian's normal equations."""
    flow, truth, obs = _setup(getkey)
    prob = WeakConstraint4DVar(flow, obs, 0.5, 0.1, Background(truth[0] + 0.2, 2.0))
    x = truth + 0.3 * jax.random.normal(getkey(), truth.shape)
    jr = jax.jit(jax.jacfwd(lambda z: prob.residuals(z.reshape(x.shape))))(
        x.reshape(-1)
    )
    A = jr.T @ jr
    if damping is not None:
        A = A + damping * np.diag(np.diag(A))
    grad = eqx.filter_jit(jax.grad(prob.cost))(x)
    ref = np.linalg.solve(A, -np.asarray(grad).reshape(-1)).reshape(x.shape)
    for solve_ in (BlockTridiagonalNormal(), DenseNormal(), IncrementalMAP()):
        delta, g, ok = eqx.filter_jit(solve_.direction)(prob, x, damping)
        assert bool(ok)
        np.testing.assert_allclose(g, grad, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(delta, ref, rtol=1e-7, atol=1e-9)


def test_strong_constraint_checkpointed_gradient_equals_plain():
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 9)
    obs = Observations(truth + 0.3, jnp.ones(truth.shape, bool))
    plain = StrongConstraint4DVar(flow, obs, 0.5)
    ckpt = StrongConstraint4DVar(flow, obs, 0.5, checkpoint=True)
    x0 = truth[0] - 0.2
    grad = eqx.filter_jit(lambda p, x: jax.grad(p.cost)(x))
    np.testing.assert_allclose(grad(ckpt, x0), grad(plain, x0), rtol=1e-12, atol=1e-12)
    jaxpr = str(jax.make_jaxpr(jax.grad(ckpt.cost))(x0))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    with pytest.raises(TypeError, match="`checkpoint` must be a bool"):
        StrongConstraint4DVar(flow, obs, 0.5, checkpoint="yes")
