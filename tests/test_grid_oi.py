"""Optimal interpolation on grids (`jaxda.gaussian.map_kernel`,
`jaxda.gaussian.map_covariance_cg`) against dense MAPs in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxda
from jaxda import gaussian
from jaxda.grid import (
    DiffusionCovariance,
    Grid,
    SpaceTimeCovariance,
    SpaceTimeKernel,
    SpectralCovariance,
)
from jaxda.obs import (
    BilinearInterpolation,
    GridPoints,
    MatrixOperator,
    SelectionOperator,
)


GRID = Grid(6, 5, dy=1.0, dx=1.2, boundary="closed")
TIMES = jnp.array([0.0, 1.0, 2.0])


@eqx.filter_jit
def _dense(mu, y, obs_var, **kwargs):
    """`map_dense` compiled in one piece (the reference)."""
    return gaussian.map_dense(mu, y, obs_var, **kwargs)


def _kernel_numpy(a, b, var, ly, lx, tau):
    d = a[:, None, :] - b[None, :, :]
    q = (d[..., 0] / tau) ** 2 + (d[..., 1] / ly) ** 2 + (d[..., 2] / lx) ** 2
    return var * np.exp(-0.5 * q)


def _grid_points():
    t, y, x = np.meshgrid(TIMES, GRID.y, GRID.x, indexing="ij")
    return np.stack([t.ravel(), y.ravel(), x.ravel()], -1)


def _track_problem(seed=0, m=14):
    rng = np.random.default_rng(seed)
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([2.0, 6.0, 6.0])
    points = lo + (hi - lo) * rng.uniform(size=(m, 3))
    y = rng.normal(size=m)
    obs_var = rng.uniform(0.05, 0.2, m)
    mask = rng.uniform(size=m) > 0.25
    return points, y, obs_var, mask


def test_map_kernel_equals_the_dense_formula():
    points, y, obs_var, mask = _track_problem()
    kernel = SpaceTimeKernel(1.7, (1.5, 2.0), 1.2)
    mu = 0.3
    out = gaussian.map_kernel(kernel, GRID, TIMES, points, y, obs_var, mask=mask, mu=mu)
    p, o = _grid_points(), points[mask]
    K = _kernel_numpy(o, o, 1.7, 1.5, 2.0, 1.2) + np.diag(obs_var[mask])
    k_go = _kernel_numpy(p, o, 1.7, 1.5, 2.0, 1.2)
    want = mu + k_go @ np.linalg.solve(K, y[mask] - mu)
    np.testing.assert_allclose(out.mean.ravel(), want, rtol=1e-10, atol=1e-12)
    assert out.mean.shape == (3, 6, 5)
    assert out.result == jaxda.RESULTS.successful


def test_map_kernel_at_grid_nodes_equals_map_dense():
    # observations on grid nodes: the dense MAP with P = k at the grid points
    rng = np.random.default_rng(3)
    idx = rng.choice(90, 11, replace=False)
    p = _grid_points()
    kernel = SpaceTimeKernel(0.8, 1.3, 0.9, time_kernel="exponential")
    P = np.asarray(kernel(jnp.asarray(p), jnp.asarray(p)))
    mu = rng.normal(size=(3, 6, 5))
    y = rng.normal(size=11)
    out = gaussian.map_kernel(
        kernel, GRID, TIMES, p[idx], y, 0.1, mu=mu, mu_obs=mu.ravel()[idx]
    )
    op = SelectionOperator(idx, (3, 6, 5))
    ref = _dense(mu, y, 0.1, operator=op, cov=P)
    np.testing.assert_allclose(out.mean, ref.mean, rtol=1e-10, atol=1e-12)


def test_map_kernel_gradients_by_finite_differences():
    points, y, obs_var, mask = _track_problem(seed=1, m=8)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(3, 6, 5)))

    def loss(y, ell):
        kernel = SpaceTimeKernel(1.0, ell, 1.0)
        out = gaussian.map_kernel(kernel, GRID, TIMES, points, y, obs_var, mask=mask)
        return jnp.sum(w * out.mean)

    gy, gl = jax.grad(loss, argnums=(0, 1))(jnp.asarray(y), 1.4)
    eps = 1e-6
    e = np.zeros_like(y)
    e[2] = eps
    fd_y = (loss(y + e, 1.4) - loss(y - e, 1.4)) / (2 * eps)
    fd_l = (loss(y, 1.4 + eps) - loss(y, 1.4 - eps)) / (2 * eps)
    assert float(gy[2]) == pytest.approx(float(fd_y), rel=1e-7)
    assert float(gl) == pytest.approx(float(fd_l), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(gy)[~mask], 0.0)  # unobserved slots


def _cg_cases():
    rng = np.random.default_rng(5)
    grid = Grid(6, 5)
    space = SpectralCovariance(grid, (1.3, 1.0), rng.uniform(0.5, 1.5, (6, 5)))
    st = SpaceTimeCovariance(space, TIMES, 1.5, time_kernel="exponential")
    idx = np.stack([rng.choice(30, 7, replace=False) for _ in range(3)])
    per_time = SelectionOperator(idx, (6, 5))
    mask_t = rng.uniform(size=(3, 7)) > 0.2
    diff = DiffusionCovariance(GRID, (1.0, 1.5), 0.7)
    H = rng.normal(size=(9, 30)) / 3
    # points between the nodes, 4 slots per time of which some are padding
    points = GridPoints(
        rng.uniform(0.5, 5.5, (3, 4)),
        rng.uniform(0.6, 5.4, (3, 4)),
        valid=np.array([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 0]], bool),
    )
    bilinear = BilinearInterpolation(GRID, points)
    diff_st = SpaceTimeCovariance(diff, TIMES, 1.0)
    return {
        # bilinear interpolation at track points, per time, padded slots masked
        "space-time-bilinear": (
            diff_st,
            bilinear,
            rng.normal(size=(3, 4)),
            points.valid,
        ),
        # P of (T, ny, nx), an operator on each time, some entries masked out
        "space-time-selection": (st, per_time, rng.normal(size=(3, 7)), mask_t),
        # an operator on the whole field (a dense linear H, not a selection)
        "diffusion-matrix": (diff, MatrixOperator(H, (6, 5)), rng.normal(size=9), None),
        # no operator: the mask of the field (gappy gridded observations)
        "diffusion-mask": (
            diff,
            None,
            rng.normal(size=(6, 5)),
            rng.uniform(size=(6, 5)) > 0.6,
        ),
    }


CG_CASES = _cg_cases()


@pytest.mark.parametrize("name", list(CG_CASES))
def test_map_covariance_cg_equals_map_dense(name):
    P, operator, y, mask = CG_CASES[name]
    mu = jnp.asarray(np.random.default_rng(6).normal(size=P.field_shape))
    out = gaussian.map_covariance_cg(
        mu, P, y, mask, 0.05, operator=operator, rtol=1e-13, max_steps=500
    )
    cov = eqx.filter_jit(lambda P: P.matrix())(P)
    if operator is None:
        ref = _dense(mu, y, 0.05, mask=mask, cov=cov)
    else:
        ref = _dense(mu, y, 0.05, mask=mask, operator=operator, cov=cov)
    np.testing.assert_allclose(out.mean, ref.mean, rtol=1e-10, atol=1e-10)
    assert out.result == jaxda.RESULTS.successful
    assert 0 < int(out.num_steps) < 500


def test_map_covariance_cg_gradient_by_finite_differences():
    P, operator, y, mask = CG_CASES["space-time-selection"]
    mu = jnp.zeros(P.field_shape)
    w = jnp.asarray(np.random.default_rng(7).normal(size=P.field_shape))

    def loss(y, ell):
        space = SpectralCovariance(Grid(6, 5), ell)
        Pl = SpaceTimeCovariance(space, TIMES, 1.5, time_kernel="exponential")
        out = gaussian.map_covariance_cg(
            mu, Pl, y, mask, 0.05, operator=operator, rtol=1e-13, max_steps=500
        )
        return jnp.sum(w * out.mean)

    y = jnp.asarray(y)
    gy, gl = jax.grad(loss, argnums=(0, 1))(y, 1.2)
    eps = 1e-5  # CG stops at rtol 1e-13: rounding of the loss ~ 1e-13 / eps
    fd_y = (loss(y.at[1, 3].add(eps), 1.2) - loss(y.at[1, 3].add(-eps), 1.2)) / (
        2 * eps
    )
    fd_l = (loss(y, 1.2 + eps) - loss(y, 1.2 - eps)) / (2 * eps)
    assert float(gy[1, 3]) == pytest.approx(float(fd_y), rel=1e-6)
    assert float(gl) == pytest.approx(float(fd_l), rel=1e-6)


def test_failures_are_reported():
    P, operator, y, mask = CG_CASES["space-time-selection"]
    mu = jnp.zeros(P.field_shape)
    out = gaussian.map_covariance_cg(
        mu, P, y, mask, 1e-4, operator=operator, max_steps=2, rtol=1e-12, throw=False
    )
    assert out.result == jaxda.RESULTS.max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of"):
        gaussian.map_covariance_cg(
            mu, P, y, mask, 1e-4, operator=operator, max_steps=2, rtol=1e-12
        )

    @jax.jit
    def cg_with(variance):
        Pv = SpectralCovariance(Grid(6, 5), 1.0, variance)
        return gaussian.map_covariance_cg(
            jnp.zeros((6, 5)), Pv, jnp.ones((6, 5)), None, 0.1, throw=False
        )

    assert cg_with(-1.0).result == jaxda.RESULTS.breakdown
    assert cg_with(1.0).result == jaxda.RESULTS.successful

    points, y, obs_var, mask = _track_problem()

    @jax.jit
    def kernel_with(variance):
        kernel = SpaceTimeKernel(variance, 1.0, 1.0)
        return gaussian.map_kernel(
            kernel, GRID, TIMES, points, y, 1e-3, mask=mask, throw=False
        )

    assert kernel_with(-1.0).result == jaxda.RESULTS.not_positive_definite
    assert kernel_with(1.0).result == jaxda.RESULTS.successful


def test_bad_input():
    points, y, obs_var, mask = _track_problem()
    kernel = SpaceTimeKernel(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="obs_var"):
        gaussian.map_kernel(kernel, GRID, TIMES, points, y, -obs_var)
    with pytest.raises(ValueError, match="points"):
        gaussian.map_kernel(kernel, GRID, TIMES, points[:, :2], y, 0.1)
    with pytest.raises(ValueError, match="mu_obs"):
        gaussian.map_kernel(kernel, GRID, TIMES, points, y, 0.1, mu=np.ones((3, 6, 5)))
    with pytest.raises(TypeError, match="kernel"):
        gaussian.map_kernel(None, GRID, TIMES, points, y, 0.1)
    P = SpectralCovariance(Grid(6, 5), 1.0)
    with pytest.raises(ValueError, match="mu"):
        gaussian.map_covariance_cg(jnp.zeros((5, 6)), P, jnp.zeros((6, 5)), None, 0.1)
    with pytest.raises(ValueError, match="obs_var"):
        gaussian.map_covariance_cg(jnp.zeros((6, 5)), P, jnp.zeros((6, 5)), None, 0.0)
    with pytest.raises(TypeError, match="`P`"):
        gaussian.map_covariance_cg(
            jnp.zeros((6, 5)), np.eye(30), jnp.zeros(30), None, 1
        )
