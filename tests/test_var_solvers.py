"""4DVar solvers: exact Kalman-smoother solution on a linear-Gaussian model, agreement
between solvers on Lorenz-63, vmap, float32, divergence, implicit gradients."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import LinearDynamics, kalman_smoother

from jaxda.models import Lorenz63, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import (
    RESULTS,
    Background,
    DenseGaussNewton,
    DenseLevenbergMarquardt,
    DiffraxTrajectory,
    GaussNewton,
    GradientDescent,
    Incremental4DVar,
    JaxoptGaussNewton,
    JaxoptLevenbergMarquardt,
    JointStateParameter,
    LevenbergMarquardt,
    ModelErrorContinuation,
    OptaxSolver,
    QuasiStatic,
    StrongConstraint4DVar,
    WeakConstraint4DVar,
    cycle,
    solve,
)


@pytest.fixture(scope="module")
def linear_problem():
    key = jax.random.key(1)
    T, n, dt = 12, 3, 0.1
    F = jnp.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.5], [0.0, -0.5, -0.2]])
    flow = flow_map(LinearDynamics(F), dt, "euler")
    M = np.eye(n) + dt * np.asarray(F)
    mask = np.zeros((T, n), bool)
    mask[::3, 0] = True
    mask[5, :] = True
    y = np.asarray(jax.random.normal(key, (T, n))) * mask
    R = np.array([0.5, 1.0, 2.0])
    q = np.array([0.05, 0.1, 0.02])
    xb, B = np.array([1.0, 0.0, -1.0]), np.array([2.0, 1.0, 0.5])
    prob = WeakConstraint4DVar(
        flow,
        Observations(jnp.asarray(y), jnp.asarray(mask)),
        jnp.asarray(R),
        jnp.asarray(q),
        Background(jnp.asarray(xb), jnp.asarray(B)),
    )
    ref = kalman_smoother(M, np.diag(q), xb, np.diag(B), y, mask, R)
    return prob, ref


def linear_problem_numpy(prob):
    """`(M, q, xb, B, y, mask, R)` of the `linear_problem` fixture as numpy arrays."""
    M = np.eye(3) + prob.flow.dt * np.asarray(prob.flow.model.F)
    return (
        M,
        np.asarray(prob.model_var),
        np.asarray(prob.background.mean),
        np.asarray(prob.background.var),
        np.asarray(prob.obs.values),
        np.asarray(prob.obs.mask),
        np.asarray(prob.obs_var),
    )


@pytest.mark.parametrize(
    "solver", [GaussNewton(), Incremental4DVar(), JaxoptGaussNewton()], ids=type
)
def test_one_gauss_newton_step_is_the_kalman_smoother(linear_problem, solver):
    prob, ref = linear_problem
    x0 = jnp.zeros(prob.shape)
    # Under an outer jit: the jaxopt wrappers' own code would otherwise run eagerly.
    sol = eqx.filter_jit(solve)(prob, solver, x0, max_steps=1, throw=False)
    assert int(sol.n_steps) == 1
    np.testing.assert_allclose(sol.x, ref, rtol=1e-8, atol=1e-8)


def test_quasi_static_stages_are_kalman_smoothers_of_growing_windows(linear_problem):
    """On a linear-Gaussian problem one GN step solves each stage exactly, so after the
    intermediate stages the estimate is the smoother of the observations before the
    last intermediate stage's end (the final stage is capped at 0 steps here)."""
    prob, _ = linear_problem
    M, q, xb, B, y, mask, R = linear_problem_numpy(prob)
    qs = QuasiStatic(GaussNewton(), n_stages=3, steps_per_stage=1)
    sol = solve(prob, qs, jnp.zeros(prob.shape), max_steps=0, throw=False)
    # Stages use the observations at t < ceil(12/3) = 4, then t < 8.
    early = mask & (np.arange(12)[:, None] < 8)
    ref8 = kalman_smoother(M, np.diag(q), xb, np.diag(B), y * early, early, R)
    np.testing.assert_allclose(sol.x, ref8, rtol=1e-8, atol=1e-8)
    assert int(sol.n_steps) == 2
    # The reported cost is the full problem's.
    np.testing.assert_allclose(sol.cost, prob.cost(jnp.asarray(ref8)), rtol=1e-8)
    assert sol.result == RESULTS.max_steps_reached


def test_model_error_continuation_stages_solve_the_inflated_problems(linear_problem):
    """Each stage is the smoother with Q scaled by its factor (one exact GN step on a
    linear problem); with the last stage capped at 0 steps the estimate is the last
    inflated stage's smoother, and its reported cost is the problem's own."""
    prob, _ = linear_problem
    M, q, xb, B, y, mask, R = linear_problem_numpy(prob)
    cont = ModelErrorContinuation(GaussNewton(), (100.0, 3.0), steps_per_stage=1)
    sol = solve(prob, cont, jnp.zeros(prob.shape), max_steps=0, throw=False)
    ref = kalman_smoother(M, np.diag(3.0 * q), xb, np.diag(B), y, mask, R)
    np.testing.assert_allclose(sol.x, ref, rtol=1e-8, atol=1e-8)
    assert int(sol.n_steps) == 2
    np.testing.assert_allclose(sol.cost, prob.cost(jnp.asarray(ref)), rtol=1e-8)
    with pytest.raises(TypeError, match="needs a WeakConstraint4DVar"):
        solve(StrongConstraint4DVar(prob.flow, prob.obs, 1.0), cont, jnp.zeros(3))
    with pytest.raises(ValueError, match="`inflation` must be finite and > 0"):
        ModelErrorContinuation(GaussNewton(), (10.0, -1.0))


def test_cycle_matches_a_numpy_loop_of_linear_strong_constraint_windows():
    """Cycled strong-constraint 4DVar on a linear model: each window's analysis is the
    exact least-squares x0, the next background is its forecast."""
    n, dt, N, L, S, bvar, r = 3, 0.1, 10, 4, 2, 0.5, 0.3
    F = jnp.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.5], [0.0, -0.5, -0.2]])
    flow = flow_map(LinearDynamics(F), dt, "euler")
    M = np.eye(n) + dt * np.asarray(F)
    rng = np.random.default_rng(0)
    mask = rng.random((N, n)) < 0.5
    y = rng.normal(size=(N, n)) * mask
    xb = np.array([1.0, -1.0, 0.5])
    res = cycle(
        flow,
        Observations(jnp.asarray(y), jnp.asarray(mask)),
        obs_var=r,
        window=L,
        shift=S,
        x_b=jnp.asarray(xb),
        background_var=bvar,
        solver=DenseGaussNewton(),
        max_steps=3,
    )
    powers = [np.linalg.matrix_power(M, t) for t in range(L)]
    analysis = []
    for k in range((N - L) // S + 1):
        A, b = np.eye(n) / bvar, xb / bvar
        for t in range(L):
            w = mask[k * S + t] / r
            A = A + powers[t].T @ (w[:, None] * powers[t])
            b = b + powers[t].T @ (w * y[k * S + t])
        traj = np.stack([P @ np.linalg.solve(A, b) for P in powers])
        analysis.append(traj[: L - S] if k == 0 else traj[L - S :])
        if k == 0:
            analysis.append(traj[L - S :])
        xb = M @ traj[S - 1]
    np.testing.assert_allclose(res.analysis, np.concatenate(analysis), rtol=1e-9)
    assert bool(jnp.all(res.converged))


@pytest.mark.parametrize(
    "solver", [LevenbergMarquardt(), JaxoptLevenbergMarquardt()], ids=type
)
def test_levenberg_marquardt_reaches_the_kalman_smoother(linear_problem, solver):
    prob, ref = linear_problem
    sol = eqx.filter_jit(solve)(prob, solver, jnp.zeros(prob.shape), max_steps=40)
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.x, ref, rtol=1e-7, atol=1e-7)


@pytest.fixture(scope="module")
def l63_problem():
    key = jax.random.key(2)
    T = 25
    # Euler steps: the same nonlinear problem class, half the compile time of RK4.
    flow = flow_map(Lorenz63(), 0.01, "euler")
    truth = rollout(flow, jnp.array([1.0, 2.0, 20.0]), 300)[-T:]
    mask = jnp.zeros((T, 3), bool).at[::4, 0].set(True).at[::6, 2].set(True)
    y = truth + jnp.sqrt(2.0) * jax.random.normal(key, truth.shape)
    obs = Observations(y, mask)
    prob = WeakConstraint4DVar(flow, obs, 2.0, 0.01, Background(truth[0] + 0.5, 4.0))
    return prob, truth


@pytest.fixture(scope="module")
def jaxopt_loss(l63_problem):
    """One compiled function serves three tests: `s -> ((loss, solution), dloss/ds)`
    with the observations perturbed by `s * direction` and jaxopt's Gauss-Newton
    solution differentiated implicitly (jaxopt runs outside an inner jit: jit the
    outer function)."""
    prob, truth = l63_problem
    solver = JaxoptGaussNewton(tol=1e-11)
    direction = jax.random.normal(jax.random.key(3), prob.obs.values.shape)

    def loss(s):
        y = prob.obs.values + s * direction * prob.obs.mask
        p = eqx.tree_at(lambda p: p.obs.values, prob, y)
        sol = solve(p, solver, truth + 0.5, max_steps=40)
        return jnp.sum(sol.x[-1] ** 2), sol

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def test_structured_and_jaxopt_gauss_newton_agree_on_lorenz63(l63_problem, jaxopt_loss):
    prob, truth = l63_problem
    x0 = truth + 0.5
    ours = solve(prob, GaussNewton(), x0, max_steps=40)
    (_, theirs), _ = jaxopt_loss(0.0)
    for sol in (ours, theirs):
        assert bool(sol.converged), sol.result
    np.testing.assert_allclose(theirs.cost, ours.cost, rtol=1e-10)
    np.testing.assert_allclose(theirs.x, ours.x, rtol=1e-6, atol=1e-6)
    # The minimum is a stationary point.
    g = eqx.filter_jit(jax.grad(prob.cost))(ours.x)
    assert float(jnp.max(jnp.abs(g))) < 1e-6


def test_vmap_over_windows_matches_single_solves(l63_problem):
    prob, truth = l63_problem
    shifts = jnp.array([0.0, 0.3, -0.4])
    ys = prob.obs.values[None] + shifts[:, None, None] * prob.obs.mask

    def one(y):
        p = eqx.tree_at(lambda p: p.obs.values, prob, y)
        return solve(p, GaussNewton(), truth + 0.5, max_steps=40)

    batched = jax.vmap(one)(ys)
    for i in range(3):
        single = one(ys[i])
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-9, atol=1e-9)
        assert int(batched.n_steps[i]) == int(single.n_steps)
        assert bool(batched.converged[i])


def test_float32_solve(l63_problem):
    prob, truth = l63_problem
    prob32 = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, prob
    )
    sol32 = solve(
        prob32, GaussNewton(), (truth + 0.5).astype(jnp.float32), max_steps=40
    )
    sol64 = solve(prob, GaussNewton(), truth + 0.5, max_steps=40)
    assert sol32.x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(sol32.x)))
    np.testing.assert_allclose(sol32.cost, sol64.cost, rtol=1e-3)
    np.testing.assert_allclose(sol32.x, sol64.x, atol=2e-2)


def test_gradient_and_optax_solvers_decrease_the_cost(l63_problem):
    prob, truth = l63_problem
    x0 = truth + 0.5
    c0 = prob.cost(x0)
    gn = solve(prob, GaussNewton(), x0, max_steps=40)
    for solver in (GradientDescent(jnp.asarray(1e-3)), OptaxSolver(optax.adam(1e-2))):
        sol = solve(prob, solver, x0, max_steps=300, throw=False)
        assert bool(jnp.isfinite(sol.cost))
        assert float(gn.cost) <= float(sol.cost) < float(c0)
        np.testing.assert_allclose(sol.cost, prob.cost(sol.x), rtol=1e-12)
        # 300 steps are not enough for first-order methods here: reported as such.
        assert sol.result == RESULTS.max_steps_reached and not bool(sol.converged)


def test_divergence_is_reported_with_finite_output(l63_problem):
    prob, truth = l63_problem
    x0 = truth + 0.5
    solver = GradientDescent(jnp.asarray(50.0))
    sol = solve(prob, solver, x0, max_steps=300, throw=False)
    assert not bool(sol.converged)
    assert sol.result == RESULTS.nonfinite
    assert bool(jnp.all(jnp.isfinite(sol.x)))
    np.testing.assert_allclose(sol.cost, prob.cost(x0))  # the best iterate: the start


def test_jaxopt_implicit_gradient_matches_finite_differences(jaxopt_loss):
    (_, sol), grad = jaxopt_loss(0.0)
    eps = 1e-5
    (lp, _), _ = jaxopt_loss(eps)
    (lm, _), _ = jaxopt_loss(-eps)
    assert bool(sol.converged)
    np.testing.assert_allclose(grad, (lp - lm) / (2 * eps), rtol=1e-5)


def test_strong_constraint_jacobians_through_diffrax_forward_and_reverse(l63_problem):
    prob, truth = l63_problem
    # A shorter window and explicit Euler keep diffrax's compilation time small.
    obs = Observations(prob.obs.values[:13], prob.obs.mask[:13])
    bg, x0 = prob.background, truth[0] + 0.5

    def problem(adjoint):
        traj = DiffraxTrajectory(Lorenz63(), 0.01, diffrax.Euler(), adjoint=adjoint)
        return StrongConstraint4DVar(traj, obs, 2.0, bg)

    # Reverse mode through the default adjoint, forward mode through ForwardMode.
    rev = problem(diffrax.RecursiveCheckpointAdjoint())
    fwd = problem(diffrax.ForwardMode())
    jac_rev = jax.jit(jax.jacrev(rev.residuals))(x0)
    # One compilation: the forward Jacobian and (aux) diffrax's trajectory.
    jac_fwd, traj = jax.jit(
        jax.jacfwd(lambda x: (fwd.residuals(x), fwd.trajectory(x)), has_aux=True)
    )(x0)
    np.testing.assert_allclose(jac_rev, jac_fwd, rtol=1e-10, atol=1e-12)
    # The Euler flow map of jaxda.models gives the same trajectory.
    euler = StrongConstraint4DVar(flow_map(Lorenz63(), 0.01, "euler"), obs, 2.0, bg)
    np.testing.assert_allclose(traj, eqx.filter_jit(euler.trajectory)(x0), rtol=1e-10)


@pytest.mark.slow
def test_strong_gauss_newton_through_diffrax_forward_mode(l63_problem):
    prob, truth = l63_problem
    obs = Observations(prob.obs.values[:13], prob.obs.mask[:13])
    bg, x0 = prob.background, truth[0] + 0.5
    traj = DiffraxTrajectory(
        Lorenz63(), 0.01, diffrax.Euler(), adjoint=diffrax.ForwardMode()
    )
    fwd = StrongConstraint4DVar(traj, obs, 2.0, bg)
    euler = StrongConstraint4DVar(flow_map(Lorenz63(), 0.01, "euler"), obs, 2.0, bg)
    sol = solve(fwd, DenseGaussNewton(jacobian="fwd"), x0, max_steps=40)
    ref = solve(euler, DenseGaussNewton(jacobian="rev"), x0, max_steps=40)
    assert bool(sol.converged) and bool(ref.converged)
    # Equal to the stopping tolerance (a step below rtol = 1e-8 of |x| ~ 23): the two
    # Jacobian modes round differently.
    np.testing.assert_allclose(sol.x, ref.x, rtol=0, atol=3e-7)


def test_joint_state_parameter_estimation_recovers_sigma():
    true_flow = flow_map(Lorenz63(), 0.01)
    truth = rollout(true_flow, jnp.array([1.0, 2.0, 20.0]), 240)[-40:]
    mask = jnp.ones(truth.shape, bool)
    obs = Observations(truth, mask)
    flow = flow_map(Lorenz63(sigma=jnp.array(9.0)), 0.01)
    prob = JointStateParameter(StrongConstraint4DVar(flow, obs, 0.1))
    x_init = prob.initial_control(truth[0])
    sol = solve(prob, DenseLevenbergMarquardt(), x_init, max_steps=40)
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.x[1].model.sigma, 10.0, rtol=1e-6)
    np.testing.assert_allclose(sol.x[0], truth[0], atol=1e-6)


def test_solver_argument_errors(l63_problem):
    prob, truth = l63_problem
    with pytest.raises(ValueError, match="`x_init` must have shape"):
        solve(prob, GaussNewton(), truth[:-1])
    with pytest.raises(ValueError, match="`x_init` must be finite"):
        solve(prob, GaussNewton(), truth.at[0, 0].set(jnp.nan))
    with pytest.raises(TypeError, match="solves a WeakConstraint4DVar"):
        strong = StrongConstraint4DVar(prob.flow, prob.obs, 1.0)
        solve(strong, GaussNewton(), truth[0])
    with pytest.raises(ValueError, match="`learning_rate` must be finite and > 0"):
        GradientDescent(-1.0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        GaussNewton(method="dense")
    with pytest.raises(ValueError, match="`max_steps` must be >= 0"):
        solve(prob, GaussNewton(), truth, max_steps=-1)
