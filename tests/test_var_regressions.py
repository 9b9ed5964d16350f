"""Regression tests of the 4DVar reliability probe's defects (one test each): wrong
result codes, NaN in cycled analyses, unclear dtype errors, checks skipped under jit.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics

from jaxda.data import interpolate_observations
from jaxda.models import Lorenz63, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import (
    RESULTS,
    Background,
    DenseGaussNewton,
    GaussNewton,
    GradientDescent,
    Incremental4DVar,
    JaxoptGaussNewton,
    SaveIterates,
    StrongConstraint4DVar,
    WeakConstraint4DVar,
    cycle,
    solve,
)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


def test_jaxopt_is_not_successful_at_an_untouched_first_guess():
    """Defect 2: jaxopt reported error 0 at 1000x the interpolation (float32)."""
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0], jnp.float32), 29)
    mask = jnp.zeros((30, 3), bool).at[::4, 0].set(True)
    noise = 0.5 * jax.random.normal(jax.random.key(0), truth.shape, jnp.float32)
    obs = Observations(truth + noise, mask)
    prob = WeakConstraint4DVar(flow, obs, obs_var=1.0, model_var=1e-2)
    x0 = 1000 * interpolate_observations(obs)
    sol = eqx.filter_jit(solve)(
        prob, JaxoptGaussNewton(), x0, max_steps=30, throw=False
    )
    grad = eqx.filter_jit(jax.grad(prob.cost))(sol.x)
    assert float(jnp.max(jnp.abs(grad))) > 1e10  # far from stationary ...
    assert sol.result != RESULTS.successful  # ... and not reported as converged
    assert not bool(sol.converged)
    np.testing.assert_allclose(sol.stats["grad_norm"], jnp.linalg.norm(grad), rtol=1e-3)


def test_gradient_descent_converged_implies_a_small_gradient():
    """Defect 8: with a tiny learning rate every step is below 100 eps of the state
    (float32), which used to pass the step test with |grad J| = 9."""
    F = jnp.array([[-0.1, 1.0], [-1.0, -0.1]], jnp.float32)
    flow = flow_map(LinearDynamics(F), 0.1, "euler")
    y = 10 * jax.random.normal(jax.random.key(0), (20, 2), jnp.float32)
    prob = StrongConstraint4DVar(flow, Observations(y, jnp.ones((20, 2), bool)), 1.0)
    zero = jnp.zeros(2, jnp.float32)
    x_star = jnp.linalg.solve(
        eqx.filter_jit(jax.hessian(prob.cost))(zero),
        -eqx.filter_jit(jax.grad(prob.cost))(zero),
    )
    x0 = x_star + 0.5
    g0 = float(jnp.max(jnp.abs(eqx.filter_jit(jax.grad(prob.cost))(x0))))
    assert g0 > 5
    solver = GradientDescent(1e-6, rtol=0.0, atol=0.0)
    sol = solve(prob, solver, x0, max_steps=20, throw=False)
    assert sol.result == RESULTS.max_steps_reached and int(sol.n_steps) == 20
    # A learning rate that does converge: then the gradient is small.
    sol = solve(prob, GradientDescent(0.02), x0, max_steps=2000)
    g = float(jnp.max(jnp.abs(eqx.filter_jit(jax.grad(prob.cost))(sol.x))))
    assert g <= 1e-10 + 100 * float(jnp.finfo(jnp.float32).eps) * g0


@pytest.mark.parametrize(
    "solver", [GaussNewton(), DenseGaussNewton(), Incremental4DVar()], ids=type
)
def test_gauss_newton_at_the_exact_minimiser_is_success(solver):
    """Defect 9: at a noise-free, fully observed trajectory (cost 0, slope 0) the
    line search cannot decrease the cost: that is a stationary point, not a failure."""
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 9)
    prob = WeakConstraint4DVar(flow, Observations(truth, jnp.ones((10, 3), bool)), 1, 1)
    sol = solve(prob, solver, truth)  # throw=True: would raise no_decrease
    assert sol.result == RESULTS.successful and int(sol.n_steps) == 1
    np.testing.assert_array_equal(sol.x, truth)
    assert float(sol.cost) == 0.0


def test_incremental_float32_is_not_a_false_no_decrease():
    """Defect 9: Incremental4DVar in float32 stopped with no_decrease while matching
    the converged float64 solution to 4e-4 (rounding made the slope >= 0)."""
    T = 25
    flow = flow_map(Lorenz63(), 0.01, "euler")
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 300)[-T:]
    mask = jnp.zeros((T, 3), bool).at[::4, 0].set(True).at[::6, 2].set(True)
    y = truth + jnp.sqrt(2.0) * jax.random.normal(jax.random.key(2), truth.shape)
    prob = WeakConstraint4DVar(
        flow, Observations(y, mask), 2.0, 0.01, Background(truth[0] + 0.5, 4.0)
    )
    sol64 = solve(prob, Incremental4DVar(), truth + 0.5, max_steps=60)
    sol32 = solve(
        _cast(prob, jnp.float32), Incremental4DVar(), truth + 0.5, max_steps=60
    )
    assert sol32.result == RESULTS.successful and sol32.x.dtype == jnp.float32
    np.testing.assert_allclose(sol32.x, sol64.x, atol=2e-3)
    np.testing.assert_allclose(sol32.cost, sol64.cost, rtol=1e-5)


@pytest.mark.parametrize("model_var", [None, 0.01], ids=["strong", "weak"])
def test_cycle_with_a_far_background_reports_failure_without_nan(model_var):
    """Defect 11: x_b = truth + 1000 gave NaN analysis rows flagged only by
    converged=False."""
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 39)
    mask = jnp.zeros((40, 3), bool).at[::2, 0].set(True)
    noise = 0.5 * jax.random.normal(jax.random.key(0), truth.shape)
    obs = Observations(truth + noise, mask)
    solver = DenseGaussNewton() if model_var is None else GaussNewton()
    kw = dict(obs_var=0.25, window=10, shift=5, background_var=1.0, solver=solver)
    kw.update(model_var=model_var, max_steps=5)
    res = cycle(flow, obs, x_b=truth[0] + 1000, throw=False, **kw)
    assert bool(jnp.all(jnp.isfinite(res.analysis)))
    assert res.window_result.__class__ is res.result.__class__
    assert res.result != RESULTS.successful
    assert not bool(jnp.any(res.converged))
    first = jax.tree_util.tree_map(lambda v: v[0], res.window_result)
    assert bool(res.result == first)  # the overall code is the first failure's
    with pytest.raises(eqx.EquinoxRuntimeError):
        cycle(flow, obs, x_b=truth[0] + 1000, **kw)
    # A good background: every window succeeds, and throw=True returns normally.
    good = cycle(flow, obs, x_b=truth[0], **kw | {"max_steps": 20})
    assert good.result == RESULTS.successful and bool(jnp.all(good.converged))


def test_x_init_dtype_is_cast_to_the_problem_or_named():
    """Defects 14 and 15: a float32 guess for a float64 problem crashed in the
    while_loop, a float64 guess silently promoted a float32 problem, and an int
    guess gave a jacfwd error."""
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 9)
    mask = jnp.ones((10, 3), bool)
    prob = WeakConstraint4DVar(flow, Observations(truth + 0.1, mask), 1.0, 1.0)
    ref = solve(prob, GaussNewton(), truth)
    sol = solve(prob, GaussNewton(), truth.astype(jnp.float32))
    assert sol.x.dtype == jnp.float64 and prob.dtype == jnp.float64
    np.testing.assert_allclose(sol.x, ref.x, atol=1e-6)
    prob32 = _cast(prob, jnp.float32)
    assert prob32.dtype == jnp.float32
    sol = solve(prob32, GaussNewton(), truth)
    assert sol.x.dtype == jnp.float32 and sol.cost.dtype == jnp.float32
    with pytest.raises(TypeError, match="`x_init` must be a floating-point array"):
        solve(prob, GaussNewton(), truth.astype(jnp.int32))


def test_value_checks_under_jit_are_invalid_input():
    """Under jit the constructor cannot see a negative variance: the result says so."""
    flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 9)
    obs = Observations(truth, jnp.ones((10, 3), bool))
    with pytest.raises(ValueError, match="`obs_var` must be finite and > 0"):
        WeakConstraint4DVar(flow, obs, -1.0, 1.0)

    @jax.jit
    def run(obs_var, model_var):
        prob = WeakConstraint4DVar(flow, obs, obs_var, model_var)
        return solve(prob, GaussNewton(), truth + 0.1, throw=False)

    assert run(1.0, 1.0).result == RESULTS.successful
    assert run(-1.0, 1.0).result == RESULTS.invalid_input
    assert run(1.0, jnp.nan).result == RESULTS.invalid_input
    with pytest.raises(eqx.EquinoxRuntimeError, match="value check"):
        eqx.filter_jit(
            lambda v: solve(
                WeakConstraint4DVar(flow, obs, v, 1.0), GaussNewton(), truth
            )
        )(jnp.asarray(-1.0))


def test_cost_target_stops_at_the_first_iterate_below_it():
    """[B24]'s "4DVar until the cost is below 0.05": a successful stop at the first
    iterate with J <= target, the first guess included."""
    F = jnp.array([[-0.1, 1.0], [-1.0, -0.1]])
    flow = flow_map(LinearDynamics(F), 0.1, "euler")
    y = jax.random.normal(jax.random.key(1), (10, 2))
    prob = StrongConstraint4DVar(flow, Observations(y, jnp.ones((10, 2), bool)), 1.0)
    x0 = jnp.array([3.0, -2.0])
    solver = GradientDescent(0.01, rtol=0.0, atol=0.0)
    full = solve(prob, solver, x0, max_steps=40, save=SaveIterates(), throw=False)
    costs = np.asarray(full.iterates.cost)
    target = 0.5 * (costs[5] + costs[6])  # reached at step 6 exactly
    sol = solve(prob, solver, x0, max_steps=40, cost_target=float(target))
    assert sol.result == RESULTS.successful and int(sol.n_steps) == 6
    assert float(sol.cost) <= target < costs[5]
    np.testing.assert_allclose(sol.x, full.iterates.x[6], rtol=1e-12)
    # already below the target at the first guess: no step
    sol = solve(prob, solver, x0, max_steps=40, cost_target=2.0 * float(costs[0]))
    assert sol.result == RESULTS.successful and int(sol.n_steps) == 0
    # with Gauss-Newton too, and bad targets / solvers are named
    gn = solve(prob, DenseGaussNewton(), x0, max_steps=40, cost_target=float(target))
    assert gn.result == RESULTS.successful and float(gn.cost) <= target
    with pytest.raises(ValueError, match="cost_target"):
        solve(prob, solver, x0, cost_target=-1.0)
    with pytest.raises(TypeError, match="cost_target"):
        solve(prob, JaxoptGaussNewton(), x0, cost_target=1.0)
