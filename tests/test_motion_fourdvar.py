"""Motion 4DVar: data sets, penalties against [FBC23]'s formula, gradients, the cost
scaling, a problem with a known optimum, and bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import RESULTS, motion, var
from jaxda.grid import Grid
from jaxda.models import SSPRK3, Advection2D, basin_grid, rollout
from jaxda.obs import Observations


N_GRID = 16


@pytest.fixture(scope="module")
def basin():
    """Three 16 x 16 basin windows (7 states, height observed at 0, 3, 6), float64."""
    return motion.basin_motion_samples(
        jax.random.key(3), 3, n=N_GRID, n_times=7, every=3, spinup_steps=30
    )


# --- [FBC23]'s penalty, transcribed from their code (their first array axis is x)


def _grad_mat(M, dx, dy):
    M_ij = M[1:-1, 1:-1]
    return (M[2:, 1:-1] - M_ij) / dx, (M[1:-1, 2:] - M_ij) / dy


def _div_mat(U, V, dx, dy):
    return (U[2:, 1:-1] - U[1:-1, 1:-1]) / dx + (V[1:-1, 2:] - V[1:-1, 1:-1]) / dy


def _their_penalty(x0, alpha, beta, dx, dy):
    """`J_reg(X0, alpha, beta, dx, dy)` of their `_4DVar/regularization.py` on our
    state `x0` (their `X0[c][i, j]` is our `x0[c, j, i]`)."""
    X0 = np.transpose(np.asarray(x0), (0, 2, 1))
    U_0 = np.zeros((X0.shape[1] + 2, X0.shape[2] + 2))
    V_0 = np.zeros_like(U_0)
    U_0[1:-1, 1:-1] = X0[1]
    V_0[1:-1, 1:-1] = X0[2]
    gux, guy = _grad_mat(U_0, dx, dy)
    gvx, gvy = _grad_mat(V_0, dx, dy)
    j_grad = 0.5 * alpha * sum(np.sum(g**2) for g in (gux, guy, gvx, gvy))
    div = _div_mat(V_0, U_0, dy, dx)
    return j_grad + 0.5 * beta * np.sum(div**2), (gux, guy, gvx, gvy), div


def test_authors_penalty_matches_their_formula(getkey):
    grid = basin_grid(N_GRID)
    x0 = jax.random.normal(getkey(), (3, N_GRID, N_GRID))
    alpha, beta = 0.7, 0.3
    theirs, grads, div = _their_penalty(x0, alpha, beta, grid.dx, grid.dy)
    pen = motion.MotionPenalty(
        grid, smoothness=alpha, divergence=beta, convention="authors"
    )
    np.testing.assert_allclose(float(eqx.filter_jit(pen.cost)(x0)), theirs, rtol=1e-12)
    ours = pen.smoothness_term(pen.velocity(x0))  # [component, direction]
    for (c, d), g in zip([(0, 0), (0, 1), (1, 0), (1, 1)], grads):
        np.testing.assert_allclose(np.asarray(ours[c, d]).T, g, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        np.asarray(pen.divergence_term(pen.velocity(x0))).T, div, rtol=1e-12
    )


def test_grid_penalty_is_the_c_grid_divergence_and_gradient(getkey):
    grid = basin_grid(N_GRID)
    x0 = np.asarray(jax.random.normal(getkey(), (3, N_GRID, N_GRID)))
    pen = motion.MotionPenalty(grid, smoothness=1.0, divergence=1.0)
    u, v = x0[1].copy(), x0[2].copy()
    u[:, -1], v[-1, :] = 0.0, 0.0  # the closed walls
    du = np.diff(np.concatenate([np.zeros((N_GRID, 1)), u], axis=1), axis=1)
    dv = np.diff(np.concatenate([np.zeros((1, N_GRID)), v], axis=0), axis=0)
    div = du / grid.dx + dv / grid.dy
    np.testing.assert_allclose(
        np.asarray(pen.divergence_term(pen.velocity(x0))), div, rtol=1e-12
    )
    # the smoothness stencil is the authors' away from the east / north edges
    _, grads, _ = _their_penalty(x0, 1.0, 1.0, grid.dx, grid.dy)
    ours = np.asarray(pen.smoothness_term(pen.velocity(x0)))
    np.testing.assert_allclose(ours[0, 0].T[:-1], grads[0][:-1], rtol=1e-12)
    np.testing.assert_allclose(ours[1, 1].T[:, :-1], grads[3][:, :-1], rtol=1e-12)
    assert np.all(ours[0, 0][:, -1] == 0) and np.all(ours[1, 1][-1] == 0)


def test_cost_is_the_authors_cost_scaled(basin):
    x0, obs = basin.sample(1)
    state = x0 + 0.01 * jax.random.normal(jax.random.key(9), x0.shape)
    alpha, beta = 5e3, 5e2
    n_entries = int(np.prod(obs.values.shape))
    smooth, div = motion.fbc23_weights(
        alpha, beta, n_entries=n_entries, noise_std=basin.noise_std
    )
    pen = motion.MotionPenalty(
        basin.grid, smoothness=smooth, divergence=div, convention="authors"
    )
    problem = motion.motion_4dvar(basin.flow, obs, basin.noise_std, penalty=pen)
    ours = float(eqx.filter_jit(problem.cost)(state))
    X = np.asarray(rollout(basin.flow, state, obs.values.shape[0] - 1))
    Obs = np.asarray(obs.values)
    Rm1 = np.asarray(obs.mask, float)
    theirs = np.mean((Obs - X) * Rm1 * (Obs - X))
    theirs += _their_penalty(state, alpha, beta, basin.grid.dx, basin.grid.dy)[0]
    scale = n_entries / (2 * basin.noise_std**2)
    np.testing.assert_allclose(ours, scale * theirs, rtol=1e-10)
    assert smooth == pytest.approx(alpha * 7 * 3 * 256 / (2 * 0.05**2))


# --- data sets


def test_basin_samples_are_truth_plus_noise_on_the_height(basin):
    assert len(basin) == 3
    assert basin.initial.shape == (3, 3, N_GRID, N_GRID)
    assert basin.obs.values.shape == (3, 7, 3, N_GRID, N_GRID)
    np.testing.assert_array_equal(basin.velocity, basin.initial[:, 1:3])
    mask = np.asarray(basin.obs.mask)
    assert not mask[:, :, 1:].any()  # the velocity is never observed
    assert mask[:, [0, 3, 6], 0].all() and not mask[:, [1, 2, 4, 5]].any()
    truth = jax.vmap(lambda x: rollout(basin.flow, x, 6))(basin.initial)
    noise = np.asarray(basin.obs.values - truth)[mask]
    assert abs(noise.mean()) < 4 * 0.05 / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(0.05, rel=0.1)
    assert np.all(np.asarray(basin.obs.values)[~mask] == 0)
    assert float(jnp.max(jnp.abs(basin.velocity))) > 1e-3  # spun up: it moves
    x0, obs = basin.sample(2)
    np.testing.assert_array_equal(x0, basin.initial[2])
    np.testing.assert_array_equal(obs.values, basin.obs.values[2])


def test_advection_samples_divergence_free_gappy_tracer():
    grid = Grid(N_GRID, N_GRID)
    s = motion.advection_motion_samples(
        jax.random.key(1), 2, grid, n_times=4, every=2, gap_fraction=0.5, max_speed=0.8
    )
    assert s.initial.shape == (2, 3, N_GRID, N_GRID)
    mask = np.asarray(s.obs.mask)
    assert not mask[:, :, 1:].any() and not mask[:, [1, 3]].any()
    assert 0.4 < mask[:, [0, 2], 0].mean() < 0.6
    np.testing.assert_allclose(np.abs(np.asarray(s.velocity)).max(axis=(1, 2, 3)), 0.8)
    from jaxda.grid import divergence

    assert float(jnp.max(jnp.abs(divergence(s.velocity, grid)))) < 1e-12


def test_first_guess_takes_each_channels_first_observed_frame():
    values = jnp.arange(4 * 3 * 2 * 2, dtype=float).reshape(4, 3, 2, 2) + 1.0
    mask = jnp.zeros(values.shape, bool).at[1:, 0].set(True)
    g = motion.first_guess(Observations(values, mask))
    np.testing.assert_array_equal(g[0], values[1, 0])
    np.testing.assert_array_equal(g[1:], 0.0)


# --- gradients and a known optimum


def test_motion_cost_gradients_match_finite_differences(basin):
    x0, obs = basin.sample(0)
    pen = motion.MotionPenalty(basin.grid, smoothness=1e8, divergence=1e9)
    key = jax.random.key(4)
    for weak in (False, True):
        problem = motion.motion_4dvar(
            basin.flow,
            obs,
            basin.noise_std,
            penalty=pen,
            weak=weak,
            model_var=1e-3 if weak else None,
        )
        u = x0 if not weak else rollout(basin.flow, x0, obs.values.shape[0] - 1)
        k1, k2, key = jax.random.split(key, 3)
        u = u + 0.02 * jax.random.normal(k1, u.shape)
        v = jax.random.normal(k2, u.shape)
        # one compiled program for the gradient and the float64 central difference
        value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(problem.cost))
        grad = value_and_grad(u)[1]
        eps = 1e-6
        fd = (value_and_grad(u + eps * v)[0] - value_and_grad(u - eps * v)[0]) / (
            2 * eps
        )
        np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=1e-6)


def test_uniform_translation_is_a_zero_cost_stationary_point():
    """J(truth) = 0 and grad J(truth) = 0 for noise-free images of a uniform
    translation; a perturbed state costs more (the default-suite part of the
    known-optimum test below)."""
    flow, truth0, obs, pen = _uniform_translation()
    problem = motion.motion_4dvar(flow, obs, 0.1, penalty=pen)
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(problem.cost))
    cost, grad = value_and_grad(truth0)
    assert float(cost) < 1e-25 and float(jnp.max(jnp.abs(grad))) < 1e-10
    shifted = truth0.at[1].add(0.01)  # a slightly faster uniform motion
    assert float(value_and_grad(shifted)[0]) > 1e-3


def _uniform_translation(n=8):
    grid = Grid(n, n)
    flow = SSPRK3(Advection2D(grid), 0.25)
    Y, X = grid.meshgrid()
    q = jnp.exp(-((X - 3.0) ** 2 + (Y - 4.0) ** 2) / 4.0) + 0.5 * jnp.exp(
        -((X - 6.0) ** 2 + (Y - 2.5) ** 2) / 2.0
    )
    w = jnp.stack([jnp.full(grid.shape, 0.8), jnp.full(grid.shape, -0.5)])
    truth0 = jnp.concatenate([q[None], w])
    truth = rollout(flow, truth0, 4)
    obs = Observations(truth, jnp.zeros(truth.shape, bool).at[:, 0].set(True))
    return flow, truth0, obs, motion.MotionPenalty(grid, smoothness=10.0)


@pytest.mark.slow  # Gauss-Newton-CG's compilation: about a minute on 2 busy cores
def test_uniform_translation_is_recovered_exactly():
    """Noise-free images of a tracer translated by a uniform velocity: the truth has
    J = 0 and zero smoothness penalty, and is the only such state; Gauss-Newton
    reaches it."""
    flow, truth0, obs, pen = _uniform_translation()
    q, w = truth0[0], truth0[1:]
    problem = motion.motion_4dvar(flow, obs, 0.1, penalty=pen)
    x_b = motion.first_guess(obs)
    solver = var.GaussNewtonCG(cg_max_steps=100, cg_rtol=1e-10, rtol=1e-14)
    sol = var.solve(problem, solver, x_b, max_steps=30)
    assert float(problem.cost(x_b)) > 1.0
    assert float(sol.cost) < 1e-20
    np.testing.assert_allclose(sol.x[1:], w, atol=1e-9)
    np.testing.assert_allclose(sol.x[0], q, atol=1e-9)


# --- bad inputs


def test_bad_inputs_raise_at_the_boundary(basin):
    x0, obs = basin.sample(0)
    flow, sigma = basin.flow, basin.noise_std
    small = Observations(obs.values[:, :, :8, :8], obs.mask[:, :, :8, :8])
    with pytest.raises(ValueError, match="obs.values"):
        motion.motion_4dvar(flow, small, sigma)
    other = motion.MotionPenalty(basin_grid(8), smoothness=1.0)
    with pytest.raises(ValueError, match="penalty"):
        motion.motion_4dvar(flow, obs, sigma, penalty=other)
    with pytest.raises(ValueError, match="smoothness"):
        motion.MotionPenalty(basin.grid, smoothness=-1.0)
    with pytest.raises(ValueError, match="divergence"):
        motion.MotionPenalty(basin.grid, divergence=-0.5)
    with pytest.raises(ValueError, match="channels"):
        motion.MotionPenalty(basin.grid, channels=(1, 3)).check_state("x", x0)
    with pytest.raises(ValueError, match="initial"):
        motion.MotionSamples(
            basin.initial[:, :, :8], basin.obs, flow, basin.grid, sigma
        )
    bad = eqx.tree_at(lambda o: o.values, obs, obs.values.at[0, 0, 2, 2].set(jnp.nan))
    with pytest.raises(ValueError, match="non-finite"):
        motion.motion_4dvar(flow, bad, sigma)
    with pytest.raises(ValueError, match="noise_std"):
        motion.motion_4dvar(flow, obs, 0.0)
    with pytest.raises(ValueError, match="model_var"):
        motion.motion_4dvar(flow, obs, sigma, weak=True)
    with pytest.raises(ValueError, match="model_var"):
        motion.motion_4dvar(flow, obs, sigma, model_var=1.0)
    empty = Observations(obs.values, jnp.zeros_like(obs.mask))
    with pytest.raises(ValueError, match="no observed entry"):
        motion.motion_4dvar(flow, empty, sigma)

    @eqx.filter_jit
    def traced(o):  # the same check under jit: reported in the result
        problem = motion.motion_4dvar(flow, o, sigma)
        solver = var.GradientDescent(1e-9)
        x_b = motion.first_guess(o)
        return var.solve(problem, solver, x_b, max_steps=1, throw=False).result

    assert traced(empty) == RESULTS.invalid_input
    assert traced(obs) != RESULTS.invalid_input
