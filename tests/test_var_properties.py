"""Properties every 4DVar solver must have, parametrised over one list of solvers
(`helpers.var_solvers`): the exact minimiser is a successful start, vmap equals single
solves, float32 agrees with float64, the iteration cap and non-finite starts give
their result codes, and saved iterates are the solver's path; `throw` raises the
result (solver-independent: tested once).

One tiny linear-Gaussian weak-constraint window (T = 6, n = 2): its cost is quadratic,
so the minimiser is one dense float64 Newton step, $x^* = -H^{-1}\\nabla J(0)$."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics, var_solvers

from jaxda.models import flow_map
from jaxda.obs import Observations
from jaxda.var import (
    RESULTS,
    AbstractIterativeSolver,
    AbstractSolver,
    Background,
    JaxoptGaussNewton,
    JaxoptLevenbergMarquardt,
    SaveIterates,
    WeakConstraint4DVar,
    solve,
)


SOLVERS = var_solvers()
# One compilation per configuration, the jaxopt wrappers included (`solve` itself
# does not jit them).
jsolve = eqx.filter_jit(solve)
IDS = [name for name, _ in SOLVERS]
# Every property runs over every solver with `-m slow`. The default run (10 minutes
# on 2 CPU cores, compile time counted) keeps the result-code properties (start at
# the minimiser, iteration cap, non-finite start) for every solver the library
# implements itself, and the vmap / float32 / saved-iterates properties for one
# solver of each family (block-tridiagonal GN, incremental, dense GN, matrix-free GN,
# first order).
# The jaxopt wrappers and the staged solvers, which compile slowly and wrap solvers
# tested here, run with the slow tests (defect regressions for them stay in
# test_var_regressions.py).
HEAVY = ("Jaxopt", "QuasiStatic", "ModelErrorContinuation")
FAMILIES = (
    "GaussNewton",
    "Incremental4DVar",
    "DenseGaussNewton",
    "GaussNewtonCG",
    "GradientDescent",
)


def _params(default):
    return [
        pytest.param(s, marks=[] if default(name) else [pytest.mark.slow])
        for name, s in SOLVERS
    ]


SOLVERS_OWN = _params(lambda name: not name.startswith(HEAVY))
SOLVERS_FAMILIES = _params(lambda name: name in FAMILIES)
JAXOPT = (JaxoptGaussNewton, JaxoptLevenbergMarquardt)
T, N = 6, 2


def _problem(values, dtype=jnp.float64):
    F = jnp.array([[-0.1, 1.0], [-1.0, -0.1]], dtype)
    mask = jnp.zeros((T, N), bool).at[::2, 0].set(True).at[3, :].set(True)
    obs = Observations(jnp.asarray(values, dtype), mask)
    bg = Background(jnp.array([1.0, -0.5], dtype), jnp.asarray(1.0, dtype))
    q = jnp.asarray(0.1, dtype)
    return WeakConstraint4DVar(
        flow_map(LinearDynamics(F), 0.1, "euler"), obs, 0.5, q, bg
    )


@pytest.fixture(scope="module")
def window():
    values = jax.random.normal(jax.random.key(4), (T, N))
    prob = _problem(values)
    zero = jnp.zeros((T, N))
    H = eqx.filter_jit(jax.hessian(prob.cost))(zero).reshape(T * N, T * N)
    g = eqx.filter_jit(jax.grad(prob.cost))(zero).reshape(-1)
    x_star = -jnp.linalg.solve(H, g).reshape(T, N)
    assert float(jnp.max(jnp.abs(eqx.filter_jit(jax.grad(prob.cost))(x_star)))) < 1e-12
    return values, prob, x_star


@pytest.mark.parametrize("solver", SOLVERS_OWN, ids=IDS)
def test_start_at_the_minimiser_is_success(window, solver):
    _, prob, x_star = window
    sol = jsolve(prob, solver, x_star, max_steps=20, throw=False)
    assert sol.result == RESULTS.successful and bool(sol.converged)
    np.testing.assert_allclose(sol.x, x_star, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(sol.cost, prob.cost(x_star), rtol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS_FAMILIES, ids=IDS)
def test_vmap_matches_single_solves(window, solver):
    values, _, _ = window
    batch = jnp.stack([values, values + 0.3])

    def one(v):
        return solve(_problem(v), solver, jnp.zeros((T, N)), max_steps=20, throw=False)

    batched = jax.jit(jax.vmap(one))(batch)
    for i in range(2):
        x0 = jnp.zeros((T, N))
        single = jsolve(_problem(batch[i]), solver, x0, max_steps=20, throw=False)
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-8, atol=1e-10)
        assert int(batched.n_steps[i]) == int(single.n_steps)
        assert bool((batched.result == single.result)[i])


@pytest.mark.parametrize("solver", SOLVERS_FAMILIES, ids=IDS)
def test_float32_agrees_with_float64(window, solver):
    values, prob, x_star = window
    prob32 = _problem(values, jnp.float32)
    x0 = jnp.zeros((T, N), jnp.float32)
    sol32 = jsolve(prob32, solver, x0, max_steps=20, throw=False)
    sol64 = jsolve(prob, solver, x0.astype(jnp.float64), max_steps=20, throw=False)
    assert sol32.x.dtype == jnp.float32 and sol32.cost.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(sol32.x)))
    if isinstance(solver, JAXOPT):
        # jaxopt's `tol` is an absolute bound on |grad J|, unreachable in float32:
        # it runs to the cap, and says so.
        assert sol32.result in (RESULTS.successful, RESULTS.max_steps_reached)
        np.testing.assert_allclose(sol32.x, x_star, atol=1e-3)
        return
    # Same verdict in both precisions (no false no_decrease from rounding).
    assert bool(sol32.result == sol64.result), (sol32.result, sol64.result)
    if sol64.result == RESULTS.successful:
        # float32 stops at a relative step of 100 eps ~ 1e-5; LM's linear final
        # convergence leaves errors up to ~ 2e-4 here.
        np.testing.assert_allclose(sol32.x, x_star, atol=1e-3)
        np.testing.assert_allclose(sol32.cost, prob.cost(x_star), rtol=1e-5)
    else:  # the first-order solvers, capped: float32 follows the float64 path
        np.testing.assert_allclose(sol32.x, sol64.x, atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS_OWN, ids=IDS)
def test_iteration_cap_and_nonfinite_start(window, solver):
    _, prob, x_star = window
    x0 = jnp.zeros((T, N))
    # One step cannot meet the tolerances from a far guess (it would need a second
    # step to see the change vanish); a GN step solves this quadratic exactly.
    sol = jsolve(prob, solver, x0, max_steps=1, throw=False)
    assert sol.result == RESULTS.max_steps_reached
    assert float(sol.cost) < float(prob.cost(x0))
    # A first guess whose cost overflows: nonfinite, and the (finite) guess returned.
    huge = jnp.full((T, N), 1e200)
    sol = jsolve(prob, solver, huge, max_steps=1, throw=False)
    assert sol.result == RESULTS.nonfinite
    np.testing.assert_array_equal(sol.x, huge)


@pytest.mark.parametrize("solver", SOLVERS_FAMILIES, ids=IDS)
def test_saved_iterates_are_the_solver_path(window, solver):
    _, prob, x_star = window
    x0 = jnp.zeros((T, N))
    if isinstance(solver, JAXOPT):
        with pytest.raises(TypeError, match="cannot save iterates"):
            jsolve(prob, solver, x0, max_steps=5, save=SaveIterates())
        return
    sol = jsolve(prob, solver, x0, max_steps=5, save=SaveIterates(), throw=False)
    it = sol.iterates
    assert it.x.shape == (6, T, N) and it.cost.shape == (6,)
    n = int(it.n_saved)
    assert 2 <= n <= 6
    costs = eqx.filter_jit(jax.vmap(prob.cost))(it.x)
    np.testing.assert_allclose(it.cost, costs, rtol=1e-12)
    # Padding repeats the last real iterate.
    np.testing.assert_array_equal(
        it.x[n:], jnp.broadcast_to(it.x[n - 1], it.x[n:].shape)
    )
    if isinstance(solver, AbstractIterativeSolver):
        assert n == int(sol.n_steps) + 1
        np.testing.assert_array_equal(it.x[0], x0)
        assert float(jnp.min(it.cost[:n])) == float(sol.cost)  # x is the best iterate
    if type(solver).__name__ == "GaussNewton":
        # One Gauss-Newton step solves a linear-Gaussian problem exactly.
        np.testing.assert_allclose(it.x[1], x_star, rtol=1e-9, atol=1e-9)


def test_throw_raises_the_result_eagerly_and_under_jit(window):
    _, prob, _ = window
    x0 = jnp.zeros((T, N))
    for run in (solve, jsolve):
        with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver"):
            run(prob, SOLVERS[0][1], x0, max_steps=1)
    with pytest.raises(TypeError, match="`throw` must be a bool"):
        solve(prob, SOLVERS[0][1], x0, throw=None)


def test_save_only_the_costs(window):
    _, prob, _ = window
    save = SaveIterates(x=False)
    sol = jsolve(prob, SOLVERS[0][1], jnp.zeros((T, N)), max_steps=3, save=save)
    assert sol.iterates.x is None and sol.iterates.cost.shape == (4,)
    np.testing.assert_allclose(sol.iterates.cost[int(sol.n_steps)], sol.cost)
    with pytest.raises(TypeError, match="`save` must be None or a"):
        solve(prob, SOLVERS[0][1], jnp.zeros((T, N)), save=True)


def test_every_solver_is_in_the_list():
    import jaxda.var as var

    listed = {type(s) for _, s in SOLVERS}
    public = {
        obj
        for obj in vars(var).values()
        if isinstance(obj, type)
        and issubclass(obj, AbstractSolver)
        and not obj.__name__.startswith("Abstract")
    }
    assert public == listed
