"""Background covariances on grids (`jaxda.grid`): dense references, analytic kernels,
adjoints, normalisation and input checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda.grid import (
    DiffusionCovariance,
    Grid,
    SpaceTimeCovariance,
    SpaceTimeKernel,
    SpectralCovariance,
)


def _periodic_gaussian(grid, ly, lx, images=2):
    """The Gaussian correlation from cell [0, 0], summed over periodic images."""
    ly_, lx_ = grid.extent
    dy = np.arange(grid.ny) * grid.dy
    dx = np.arange(grid.nx) * grid.dx
    cy = sum(np.exp(-0.5 * ((dy + n * ly_) / ly) ** 2) for n in range(-images, images))
    cx = sum(np.exp(-0.5 * ((dx + n * lx_) / lx) ** 2) for n in range(-images, images))
    return cy[:, None] * cx[None, :]


def _min_image(n, h):
    d = np.arange(n)
    return np.minimum(d, n - d) * h


def test_spectral_gaussian_matches_the_analytic_kernel():
    grid = Grid(64, 48, dy=1.0, dx=1.5, boundary="periodic")
    cov = SpectralCovariance(grid, (3.0, 4.5))
    c = np.asarray(eqx.filter_jit(lambda c: c.correlation())(cov))
    np.testing.assert_allclose(c, _periodic_gaussian(grid, 3.0, 4.5), atol=1e-12)
    assert c[0, 0] == pytest.approx(1.0, abs=1e-13)


def test_spectral_matern32_matches_the_analytic_kernel():
    grid = Grid.square(128, 128.0)
    ell = 6.0
    cov = SpectralCovariance(grid, ell, kernel="matern", nu=1.5)
    c = np.asarray(eqx.filter_jit(lambda c: c.correlation())(cov))
    r = np.hypot(
        *np.meshgrid(_min_image(128, 1.0), _min_image(128, 1.0), indexing="ij")
    )
    s = np.sqrt(3.0) * r / ell
    matern32 = (1 + s) * np.exp(-s)
    matern52 = (1 + np.sqrt(5 / 3) * s + 5 * s**2 / 9) * np.exp(-np.sqrt(5 / 3) * s)
    err = np.max(np.abs(c - matern32))
    # the spectrum beyond the Nyquist wavenumber (~ (dx / l)^3) is what is left out
    assert err < 5e-3
    assert np.max(np.abs(c - matern52)) > 10 * err


def _dense_diffusion(grid, ell_y, ell_x, n_steps):
    """E = I + D for the conservative 5-point diffusion, built entry by entry."""
    ny, nx = grid.shape
    ky = ell_y**2 / (2 * n_steps) * np.ones((ny, nx))
    kx = ell_x**2 / (2 * n_steps) * np.ones((ny, nx))
    d = ny * nx
    D = np.zeros((d, d))
    idx = np.arange(d).reshape(ny, nx)
    for j in range(ny):
        for i in range(nx):
            for dj, di, k, h in ((1, 0, ky, grid.dy), (0, 1, kx, grid.dx)):
                jj, ii = j + dj, i + di
                if grid.periodic:
                    jj, ii = jj % ny, ii % nx
                elif jj >= ny or ii >= nx:
                    continue
                w = 0.5 * (k[j, i] + k[jj, ii]) / h**2
                a, b = idx[j, i], idx[jj, ii]
                D[a, b] += w
                D[b, a] += w
                D[a, a] -= w
                D[b, b] -= w
    return np.eye(d) + D


def _reference(cov, ell=None):
    """An independent dense B for each covariance of `_cases` (`ell`: the diffusion's
    length scales)."""
    if isinstance(cov, SpaceTimeCovariance):
        t = np.asarray(cov.times)
        ct = np.exp(-0.5 * ((t[:, None] - t[None, :]) / float(cov.time_scale)) ** 2)
        return np.kron(ct, _reference(cov.space))
    std = np.broadcast_to(np.asarray(cov.std), cov.field_shape).reshape(-1)
    if isinstance(cov, SpectralCovariance):
        c = np.asarray(cov.correlation())
        ny, nx = cov.grid.shape
        j, i = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        j, i = j.ravel(), i.ravel()
        corr = c[(j[:, None] - j[None, :]) % ny, (i[:, None] - i[None, :]) % nx]
    else:
        E = _dense_diffusion(cov.grid, *ell, cov.n_steps)
        EM = np.linalg.matrix_power(E, cov.n_steps)
        g = 1 / np.sqrt(np.diag(EM))
        corr = g[:, None] * EM * g[None, :]
    n_channels = len(cov.field_shape) - 2
    if n_channels:
        corr = np.kron(np.eye(cov.field_shape[0]), corr)
    return std[:, None] * corr * std[None, :]


def _cases():
    rng = np.random.default_rng(0)
    g_per = Grid(6, 5, dy=1.0, dx=0.8)
    g_closed = Grid(5, 6, dy=0.7, dx=1.0, boundary="closed")
    var_field = rng.uniform(0.5, 2.0, (6, 5))
    spectral = SpectralCovariance(g_per, (1.3, 0.9), var_field)
    channels = SpectralCovariance(
        g_per, 1.1, rng.uniform(0.5, 2.0, (2, 6, 5)), kernel="matern", n_channels=2
    )
    diff_per = DiffusionCovariance(g_per, (1.2, 0.8), 2.0)
    diff_closed = DiffusionCovariance(g_closed, (0.9, 1.4), var_field.T, n_steps=12)
    space_time = SpaceTimeCovariance(
        SpectralCovariance(Grid(4, 5), 1.0, 0.5), jnp.array([0.0, 1.0, 2.5]), 1.5
    )
    return {
        "spectral": (spectral, None),
        "spectral-channels": (channels, None),
        "diffusion-periodic": (diff_per, (1.2, 0.8)),
        "diffusion-closed": (diff_closed, (0.9, 1.4)),
        "space-time": (space_time, None),
    }


CASES = _cases()


@eqx.filter_jit
def _products(cov, w, v):
    """Everything the reference test needs, in one compiled call."""
    return (
        cov.matrix(),
        jnp.vdot(cov.sqrt(w), v),
        jnp.vdot(w, cov.sqrt_transpose(v)),
        cov.apply(v),
        cov.sqrt(cov.sqrt_transpose(v)),
        cov.variance,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_covariance_equals_dense_reference(name):
    cov, ell = CASES[name]
    rng = np.random.default_rng(1)
    w, v = (jnp.asarray(rng.normal(size=cov.field_shape)) for _ in "wv")
    B, lhs, rhs, Bv, UUtv, variance = _products(cov, w, v)
    B = np.asarray(B)
    np.testing.assert_allclose(B, B.T, atol=1e-12)
    assert np.linalg.eigvalsh(B).min() > -1e-10 * np.abs(B).max()
    np.testing.assert_allclose(B, _reference(cov, ell), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.diag(B), np.ravel(variance), rtol=1e-10)
    # U^T is the adjoint of U: <U w, v> = <w, U^T v>
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))
    np.testing.assert_allclose(np.ravel(Bv), B @ np.ravel(v), atol=1e-12)
    np.testing.assert_allclose(np.ravel(UUtv), B @ np.ravel(v), atol=1e-12)


@pytest.mark.parametrize("name", ["spectral", "diffusion-closed", "space-time"])
def test_the_field_dtype_governs(name):
    # float64 parameters, a float32 field: float32 out, close to the float64 result
    cov, _ = CASES[name]
    v = np.random.default_rng(3).normal(size=cov.field_shape)

    @eqx.filter_jit
    def run(cov, v):
        return cov.apply(v), cov.sqrt(v), cov.sqrt_transpose(v)

    out32 = run(cov, jnp.asarray(v, jnp.float32))
    out64 = run(cov, jnp.asarray(v))
    for a, b in zip(out32, out64):
        assert a.dtype == jnp.float32 and b.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_diffusion_kernel_has_the_requested_length_scale():
    grid = Grid(64, 64, dy=1.0, dx=0.5)
    ell_y, ell_x = 3.0, 2.0
    cov = DiffusionCovariance(grid, (ell_y, ell_x), normalisation="analytic")
    e = jnp.zeros(grid.shape).at[32, 32].set(1.0)
    c = np.asarray(eqx.filter_jit(lambda cov, e: cov.apply(e))(cov, e))
    y, x = (np.asarray(a) - np.asarray(a)[32, 32] for a in grid.meshgrid())
    # each explicit step adds 2 kappa to the kernel's variance: exactly l^2 after M
    assert np.sum(y**2 * c) / np.sum(c) == pytest.approx(ell_y**2, rel=1e-10)
    assert np.sum(x**2 * c) / np.sum(c) == pytest.approx(ell_x**2, rel=1e-10)
    # close to the Gaussian e^{-r^2 / (2 l^2)}
    g = np.exp(-0.5 * (y / ell_y) ** 2 - 0.5 * (x / ell_x) ** 2)
    assert np.max(np.abs(c / c[32, 32] - g)) < 0.02


def test_diffusion_normalisations():
    grid = Grid(16, 16, boundary="closed")
    ell = 2.0
    exact = DiffusionCovariance(grid, ell)
    analytic = DiffusionCovariance(grid, ell, normalisation="analytic")
    rand = DiffusionCovariance(
        grid, ell, normalisation="randomised", key=jax.random.key(0), n_samples=256
    )
    ge, ga, gr = (np.asarray(c.gamma) for c in (exact, analytic, rand))
    # interior: the continuous-limit factor is close; next to a wall the kernel's
    # mirror image one cell away adds c(dx) = exp(-dx^2 / (2 l^2)) to diag(E^M)
    assert np.max(np.abs(ga[6:10, 6:10] / ge[6:10, 6:10] - 1)) < 0.02
    wall = (ge[8, 8] / ge[8, 0]) ** 2
    assert wall == pytest.approx(1 + np.exp(-1 / (2 * ell**2)), rel=0.02)
    # randomised: unbiased, relative error ~ sqrt(2 / K) ~ 0.09 on the variance
    rel = (ge / gr) ** 2 - 1
    assert np.median(np.abs(rel)) < 0.09
    assert abs(np.mean(rel)) < 0.02


def test_length_scale_field_and_gradient():
    grid = Grid(8, 8, boundary="closed")
    ell = jnp.linspace(1.0, 2.0, 8)[None, :] * jnp.ones((8, 1))
    cov = DiffusionCovariance(grid, ell)
    diag = eqx.filter_jit(lambda c: jnp.diag(c.matrix()))(cov)
    np.testing.assert_allclose(diag, 1.0, rtol=1e-12)
    # derivative with respect to the length scale, by central differences
    v = jnp.asarray(np.random.default_rng(2).normal(size=(16, 12)))

    @jax.jit
    def f(ell):
        return jnp.sum(SpectralCovariance(Grid(16, 12), ell).apply(v) * v)

    g = jax.jit(jax.grad(f))(2.0)
    eps = 1e-5
    fd = (f(2.0 + eps) - f(2.0 - eps)) / (2 * eps)
    assert float(g) == pytest.approx(float(fd), rel=1e-7)


def test_space_time_kernel():
    k = SpaceTimeKernel(2.0, (1.0, 3.0), 4.0, time_kernel="exponential")
    a = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0]])
    b = np.array([[2.0, 1.0, 1.0]])
    t, y, x = np.array([0.0, 1.5]), np.array([0.0, 1.0, 2.0]), np.array([-1.0, 4.0])
    pts = np.stack([g.ravel() for g in np.meshgrid(t, y, x, indexing="ij")], -1)

    @eqx.filter_jit
    def evaluate(k):
        return k(a, b), k.axis_factors(t, y, x, b), k(pts, b)

    kab, (ct, cy, cx), kpb = evaluate(k)
    want = 2.0 * np.exp(-np.abs(-1.0) / 4.0 - 0.5 * (1.0 / 1.0) ** 2 - 0.5 * 2.0**2 / 9)
    assert float(kab[1, 0]) == pytest.approx(want, rel=1e-13)
    # on a grid of coordinates the kernel is the product of its axis factors
    prod = 2.0 * ct[:, None, None, :] * cy[None, :, None, :] * cx[None, None, :, :]
    np.testing.assert_allclose(prod.reshape(-1, 1), kpb, rtol=1e-14)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SpectralCovariance(Grid(8, 8), -1.0), "length_scale"),
        (lambda: SpectralCovariance(Grid(8, 8), 1.0, 0.0), "variance"),
        (lambda: SpectralCovariance(Grid(8, 8), 1.0, np.ones((3, 8))), "variance"),
        (lambda: SpectralCovariance(Grid(8, 8, boundary="closed"), 1.0), "grid"),
        (lambda: SpectralCovariance(Grid(8, 8), 1.0, kernel="cauchy"), "kernel"),
        (lambda: DiffusionCovariance(Grid(8, 8), 2.0, n_steps=4), "n_steps"),
        (lambda: DiffusionCovariance(Grid(8, 8), 0.5, n_steps=3), "n_steps"),
        (lambda: DiffusionCovariance(Grid(8, 8), np.zeros((8, 8))), "length_scale"),
        (
            lambda: SpaceTimeCovariance(SpectralCovariance(Grid(4, 4), 1.0), [0, 1], 0),
            "time_scale",
        ),
        (lambda: SpaceTimeKernel(1.0, (1.0, -2.0), 1.0), "length_scale"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_input_types():
    with pytest.raises(TypeError, match="length_scale"):
        SpectralCovariance(Grid(8, 8), "long")
    with pytest.raises(TypeError, match="key"):
        DiffusionCovariance(Grid(8, 8), 1.0, normalisation="randomised")
