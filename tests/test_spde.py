"""SPDE priors: the precision against the block formula of [BF24] and dense algebra,
samples against Q^-1, log-determinants, parameter gradients against finite
differences, the SPDE OI against the dense MAP, conditional ensembles against the
exact posterior, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import RESULTS, gaussian, spde
from jaxda.grid import Grid, weighted_laplacian
from jaxda.linalg import _band_kernels as K
from jaxda.spde._operator import (
    apply_stencil,
    operator_band,
    spatial_operator,
    stencil,
    step_operator,
)


DT = 0.5


def _fields(key, grid, n_times):
    k = jax.random.split(key, 4)
    shape = (n_times, *grid.shape)
    kappa = 0.5 + jax.random.uniform(k[0], shape, jnp.float64)
    advection = 0.6 * jax.random.normal(k[1], (n_times, 2, *grid.shape), jnp.float64)
    gamma = 0.3 + jax.random.uniform(k[2], shape, jnp.float64)
    v = 0.5 * jax.random.normal(k[3], (2, *shape), jnp.float64)
    diffusion = spde.diffusion_from_anisotropy(gamma, v).transpose(1, 0, 2, 3)
    return kappa, advection, diffusion


def _prior(boundary="closed", n_times=3, shape=(4, 5), mean=0.0, alpha=2, **kw):
    grid = Grid(*shape, 1.0, 1.3, boundary)
    kappa, advection, diffusion = _fields(jax.random.key(0), grid, n_times)
    params = spde.SPDEParameters(
        grid,
        n_times,
        kappa=kappa,
        tau=0.8,
        advection=advection,
        diffusion=diffusion,
        dt=DT,
        alpha=alpha,
        dtype=jnp.float64,
    )
    return spde.SPDEPrior(params, grid, DT, mean=mean, **kw)


def _dense(apply, grid):
    n = grid.size
    eye = jnp.eye(n, dtype=jnp.float64).reshape(n, *grid.shape)
    return np.asarray(jax.jit(jax.vmap(apply))(eye).reshape(n, n).T)


def _call(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` compiled as one program (eager calls dispatch op by
    op)."""
    return eqx.filter_jit(lambda *a: fn(*a, **kwargs))(*args)


def _block_precision(prior):
    """Q from [BF24]'s blocks, with dense M_k = B_k^-1 and S_k = T_k T_k^T
    (B_k = I + dt A_k^(alpha/2), P_0^-1 = K_0^(alpha/2)T K_0^(alpha/2) / tau_0^2)."""
    grid, p, t = prior.grid, prior.params, prior.n_times
    power = prior.alpha // 2
    kap, adv, dif, tau = p.stacked()
    n = grid.size
    k0 = _dense(
        lambda x: spatial_operator(
            x, grid, kap[0], adv[0], dif[0], include_advection=False
        ),
        grid,
    )
    k0 = np.linalg.matrix_power(k0, power)
    s0 = np.broadcast_to(np.asarray(p.initial_tau), grid.shape).reshape(-1)
    eye = np.eye(n)

    def b(k):  # I + dt A_k^(alpha/2)
        step = _dense(
            lambda x: step_operator(x, grid, DT, kap[k], adv[k], dif[k]), grid
        )
        return eye + DT * np.linalg.matrix_power((step - eye) / DT, power)

    m = [None] + [np.linalg.inv(b(k)) for k in range(1, t)]
    s_inv = [None]
    for k in range(1, t):
        sk = np.broadcast_to(np.asarray(tau[k]) * np.sqrt(DT), grid.shape).reshape(-1)
        tk = m[k] @ np.diag(sk)
        s_inv.append(np.linalg.inv(tk @ tk.T))
    q = np.zeros((t * n, t * n))
    q[:n, :n] = k0.T @ np.diag(1 / s0**2) @ k0
    for k in range(1, t):
        blk = slice(k * n, (k + 1) * n)
        prev = slice((k - 1) * n, k * n)
        q[prev, prev] += m[k].T @ s_inv[k] @ m[k]
        q[blk, blk] += s_inv[k]
        q[prev, blk] = -m[k].T @ s_inv[k]
        q[blk, prev] = -s_inv[k] @ m[k]
    return q


@pytest.fixture(scope="module", params=[("closed", 2), ("periodic", 2), ("closed", 4)])
def prior(request):
    boundary, alpha = request.param
    return _prior(boundary, alpha=alpha)


@pytest.mark.slow  # the block-formula test checks the stencils against the operator
def test_stencil_is_the_operator_and_the_diffusion_is_flux_form():
    for boundary in ("closed", "periodic"):
        grid = Grid(5, 6, 1.1, 0.9, boundary)
        kappa, advection, diffusion = _fields(jax.random.key(3), grid, 1)
        x = jax.random.normal(jax.random.key(4), (2, *grid.shape), jnp.float64)
        args = (kappa[0], advection[0], diffusion[0])
        np.testing.assert_allclose(
            _call(lambda x: apply_stencil(stencil(grid, *args), x, grid), x),
            _call(lambda x: spatial_operator(x, grid, *args), x),
            atol=1e-12,
        )
        # with a diagonal tensor and no advection, -div(H grad) is the library's
        # flux-form operator with H averaged to the faces, plus kappa^2
        diag = jnp.stack([diffusion[0, 0], 0 * diffusion[0, 1], diffusion[0, 2]])
        faces = jnp.stack(
            [
                (diag[0] + jnp.roll(diag[0], -1, -1)) / 2,
                (diag[2] + jnp.roll(diag[2], -1, -2)) / 2,
            ]
        )
        if boundary == "closed":
            faces = faces.at[0, :, -1].set(0).at[1, -1, :].set(0)
        np.testing.assert_allclose(
            _call(
                lambda x: spatial_operator(x, grid, kappa[0], 0 * advection[0], diag), x
            ),
            _call(lambda x: kappa[0] ** 2 * x - weighted_laplacian(x, grid, faces), x),
            atol=1e-12,
        )


def test_constant_fields_on_a_periodic_grid_have_the_analytic_symbol():
    grid = Grid(8, 6, 1.0, 0.7, "periodic")
    kappa, (mx, my), (hxx, hxy, hyy) = 0.7, (0.4, -0.3), (1.2, 0.35, 0.8)
    apply = jax.jit(
        lambda x: spatial_operator(
            x, grid, jnp.array(kappa), jnp.array([mx, my]), jnp.array([hxx, hxy, hyy])
        )
    )
    j, i = 2, 1
    ky, kx = 2 * np.pi * j / grid.ny, 2 * np.pi * i / grid.nx
    yy, xx = np.meshgrid(np.arange(grid.ny), np.arange(grid.nx), indexing="ij")
    mode = np.exp(1j * (ky * yy + kx * xx))
    sx, sy = np.sin(kx) / grid.dx, np.sin(ky) / grid.dy
    lam = (
        kappa**2
        + hxx * (2 - 2 * np.cos(kx)) / grid.dx**2
        + hyy * (2 - 2 * np.cos(ky)) / grid.dy**2
        + 2 * hxy * sx * sy
        + 1j * (mx * sx + my * sy)
    )
    out = apply(jnp.asarray(mode.real)) + 1j * apply(jnp.asarray(mode.imag))
    np.testing.assert_allclose(out, lam * mode, atol=1e-12)


def test_precision_is_the_block_formula_and_matvec_and_diagonal_agree(prior):
    q = np.asarray(_call(prior.to_dense_precision))
    np.testing.assert_allclose(q, _block_precision(prior), rtol=1e-10, atol=1e-10)
    v = jax.random.normal(jax.random.key(5), prior.shape, jnp.float64)
    np.testing.assert_allclose(
        _call(prior.precision_matvec, v).reshape(-1),
        q @ np.asarray(v).reshape(-1),
        atol=1e-10,
    )
    np.testing.assert_allclose(
        _call(prior.precision_diagonal).reshape(-1), np.diag(q), rtol=1e-12
    )
    assert np.linalg.eigvalsh(q).min() > 0


def test_log_determinant_against_dense(prior):
    _, want = np.linalg.slogdet(np.asarray(_call(prior.to_dense_precision)))
    methods = ["dense"] + (["banded"] if not prior.grid.periodic else [])
    for method in methods:
        got = _call(prior.logdet_precision, method=method)
        np.testing.assert_allclose(got, want, rtol=1e-11)


def test_fft_log_determinant_and_solves_for_constant_fields():
    grid = Grid(6, 8, 1.0, 1.0, "periodic")
    params = spde.SPDEParameters(
        grid,
        3,
        kappa=0.6,
        tau=1.2,
        advection=jnp.array([0.3, -0.2]),
        diffusion=jnp.array([1.0, 0.3, 0.7]),
        dt=1.0,
        dtype=jnp.float64,
    )
    prior = spde.SPDEPrior(params, grid, 1.0)
    _, want = np.linalg.slogdet(np.asarray(_call(prior.to_dense_precision)))
    np.testing.assert_allclose(_call(prior.logdet_precision), want, rtol=1e-12)
    z = jax.random.normal(jax.random.key(6), prior.shape, jnp.float64)
    got = _call(lambda z: prior.innovations(prior.color(z)), z)
    np.testing.assert_allclose(got, z, atol=1e-12)


def test_samples_whiten_exactly_and_their_covariance_is_the_inverse_precision():
    prior = _prior("closed", n_times=2, shape=(3, 4), mean=0.4, solver="banded")
    z = jax.random.normal(jax.random.key(7), prior.shape, jnp.float64)
    got = _call(lambda z: prior.whiten(prior.color(z) + 0.4), z)
    np.testing.assert_allclose(got, z, atol=1e-12)
    n = 8000
    x = np.asarray(prior.sample(jax.random.key(8), n)).reshape(n, -1)
    cov = np.linalg.inv(np.asarray(_call(prior.to_dense_precision)))
    # standard errors of the sample mean and covariance entries (Gaussian)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - 0.4) < 5 * se_mean)
    var = np.diag(cov)
    se_cov = np.sqrt((np.outer(var, var) + cov**2) / n)
    assert np.all(np.abs(np.cov(x.T) - cov) < 5 * se_cov)


def test_band_lu_solves_general_band_matrices_and_reports_a_zero_pivot(problem):
    rng = np.random.default_rng(0)
    d, b = 40, 6
    offsets = np.subtract.outer(np.arange(d), np.arange(d))
    a = np.where(np.abs(offsets) <= b, rng.normal(size=(d, d)), 0.0)
    a += np.diag(np.abs(a).sum(1))  # diagonally dominant, not symmetric
    band = K.dense_to_general_band(jnp.asarray(a), b)
    np.testing.assert_array_equal(K.general_band_to_dense(band), a)
    factor, pivots = K.band_lu(band)
    r = rng.normal(size=(d, 3))
    np.testing.assert_allclose(K.lu_solve(factor, r), np.linalg.solve(a, r), atol=1e-13)
    # the probed band of an SPDE step block (not symmetric) is the block itself
    prior = problem[0]
    g = prior.whitening()
    step = g.step_block(g.steps[0])
    probed = _call(lambda: operator_band(step, prior.grid, jnp.float64, g.radius))
    np.testing.assert_allclose(
        K.general_band_to_dense(probed), _dense(step, prior.grid), atol=1e-13
    )
    # no row exchanges: a zero leading entry (of an invertible matrix) is a zero
    # pivot, which the prior's banded solve reports
    zero_lead = a.copy()
    zero_lead[0, 0] = 0.0
    assert np.linalg.matrix_rank(zero_lead) == d
    factor, pivots = K.band_lu(K.dense_to_general_band(jnp.asarray(zero_lead), b))
    assert pivots[0] == 0 and not np.all(np.isfinite(factor))
    _, result = prior._solve("banded", factor, None, jnp.asarray(r.T))
    assert result == RESULTS.singular


def test_float32_banded_samples_whiten_back_to_their_innovations():
    # a long-range alpha = 4 prior on a closed 16 x 16 km grid (the non-stationary
    # truth of bench_ssh_spde): cond(K_0) = 177, cond(X_0 = K_0^2) = 3e4, which the
    # normal equations squared to 1e9 (relative sample error 0.99 in float32)
    n, t = 16, 3
    grid = Grid(n, n, 62.5, 62.5, "closed")
    yy, xx = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    u = -25 * np.sin(np.pi * yy / n) * np.cos(np.pi * xx / n)
    v = 25 * np.cos(np.pi * yy / n) * np.sin(np.pi * xx / n)
    params = spde.SPDEParameters(
        grid,
        t,
        kappa=0.1 + 0.3 * (1 + np.tanh((xx - n / 2) / (n / 10))) / 2,
        tau=1.0 + 0.5 * np.cos(2 * np.pi * yy / n),
        advection=np.stack([u, v]),
        diffusion=2000.0,
        dt=1.0,
        alpha=4,
        dtype=jnp.float32,
    )
    prior = spde.SPDEPrior(params, grid, 1.0, solver="banded")
    z = jax.random.normal(jax.random.key(14), prior.shape, jnp.float32)
    x = _call(prior.color, z)
    assert x.dtype == jnp.float32
    # float64 references from the same (float32) coefficients, dense
    g = jax.tree.map(lambda a: a.astype(jnp.float64), prior.whitening())
    k0 = _dense(lambda p: apply_stencil(g.initial, p, grid), grid)
    blocks = [k0 @ k0] + [_dense(g.step_block(g.steps[0]), grid)] * (t - 1)
    s = np.asarray(g.scales).reshape(t, -1)
    zv, xv = np.asarray(z, np.float64).reshape(t, -1), np.asarray(x, np.float64)
    xv = xv.reshape(t, -1)
    want = [np.linalg.solve(blocks[0], s[0] * zv[0])]
    for k in range(1, t):
        want.append(np.linalg.solve(blocks[k], want[-1] + s[k] * zv[k]))
    want = np.stack(want)
    eps = np.finfo(np.float32).eps
    # forward error: two solves with K_0, then well-conditioned steps (cond(B) = 19)
    error = np.abs(xv - want).max() / np.abs(want).max()
    assert error < 4 * eps * np.linalg.cond(k0)
    # the exact residual G x - z of the float32 sample is at float32's rounding of
    # the solution, eps |G| |x| (backward stability; the normal equations: 0.7)
    prev = np.vstack([np.zeros_like(xv[:1]), xv[:-1]])
    residual = (np.einsum("kij,kj->ki", np.stack(blocks), xv) - prev) / s - zv
    scale = np.einsum("kij,kj->ki", np.abs(np.stack(blocks)), np.abs(xv)) + np.abs(prev)
    for k in range(t):
        assert np.abs(residual[k]).max() < 4 * eps * (scale[k] / s[k]).max()
    got = _call(prior.whiten, x)
    np.testing.assert_allclose(got, z, atol=8 * eps * (scale / s).max())
    # log|Q| in float32 from the Gram of K_0 (cond 3e4), not of K_0^2 (cond 1e9,
    # which put it 2.3 off): within 1e-5 of the dense float64 value
    logdet = 2 * np.linalg.slogdet(k0 @ k0)[1] + 2 * sum(
        np.linalg.slogdet(b)[1] for b in blocks[1:]
    )
    logdet -= 2 * np.log(s).sum()
    got = _call(lambda p: p.logdet_precision("banded"), prior)
    np.testing.assert_allclose(got, logdet, rtol=1e-5)


@pytest.mark.slow  # GMRES compiles slowly; the direct recursions are tested above
def test_iterative_sampling_solves_the_recursion():
    prior = _prior("periodic", n_times=3, solver="iterative")
    z = jax.random.normal(jax.random.key(9), prior.shape, jnp.float64)
    got = _call(lambda z: prior.innovations(prior.color(z)), z)
    np.testing.assert_allclose(got, z, atol=1e-8)


def test_log_probability_and_parameter_gradients_against_finite_differences():
    grid = Grid(4, 5, 1.0, 1.0, "closed")
    x = jax.random.normal(jax.random.key(10), (3, *grid.shape), jnp.float64)
    kappa0, advection, diffusion = _fields(jax.random.key(11), grid, 3)

    def log_prob(theta):
        kappa_scale, tau, m_scale, h_scale = theta
        params = spde.SPDEParameters(
            grid,
            3,
            kappa=kappa_scale * kappa0,
            tau=tau,
            advection=m_scale * advection,
            diffusion=h_scale * diffusion,
            initial_tau=0.9,
            dtype=jnp.float64,
        )
        return spde.SPDEPrior(params, grid, DT).log_prob(x, logdet="banded")

    theta = jnp.array([1.1, 0.8, 0.7, 1.3])
    grad = eqx.filter_jit(jax.grad(log_prob))(theta)
    f = jax.jit(log_prob)
    for i in range(4):
        e = jnp.zeros(4).at[i].set(1e-6)
        fd = (f(theta + e) - f(theta - e)) / 2e-6
        np.testing.assert_allclose(grad[i], fd, rtol=1e-6)
    # and the density is the dense Gaussian's
    params = spde.SPDEParameters(
        grid,
        3,
        kappa=kappa0,
        tau=0.8,
        advection=advection,
        diffusion=diffusion,
        initial_tau=0.9,
        dtype=jnp.float64,
    )
    prior = spde.SPDEPrior(params, grid, DT)
    q = np.asarray(_call(prior.to_dense_precision))
    xv = np.asarray(x).reshape(-1)
    want = (
        -0.5 * xv @ q @ xv
        + 0.5 * np.linalg.slogdet(q)[1]
        - 0.5 * xv.size * np.log(2 * np.pi)
    )
    np.testing.assert_allclose(_call(prior.log_prob, x), want, rtol=1e-12)


@pytest.fixture(scope="module")
def problem():
    prior = _prior("closed", n_times=3, mean=0.3, solver="banded")
    k1, k2, k3 = jax.random.split(jax.random.key(12), 3)
    truth = prior.sample(k1)
    mask = jax.random.uniform(k2, prior.shape) < 0.35
    y = jnp.where(mask, truth + 0.1 * jax.random.normal(k3, prior.shape), 0.0)
    q = np.asarray(_call(prior.to_dense_precision))
    w = np.diag(np.asarray(mask, float).reshape(-1) / 0.01)
    a = q + w
    xd = np.linalg.solve(
        a, q @ np.full(a.shape[0], 0.3) + w @ np.asarray(y).reshape(-1)
    )
    return prior, y, mask, a, xd


@pytest.mark.parametrize(
    "form", ["control", pytest.param("precision", marks=pytest.mark.slow)]
)
def test_spde_map_is_the_dense_map(problem, form):
    prior, y, mask, a, xd = problem
    sol = spde.spde_map(prior, y, mask, 0.01, form=form)
    assert sol.result == RESULTS.successful
    np.testing.assert_allclose(sol.mean.reshape(-1), xd, atol=1e-8)
    dense = gaussian.map_dense(
        jnp.full(a.shape[0], 0.3),
        y.reshape(-1),
        0.01,
        mask=mask.reshape(-1),
        precision=a - np.diag(np.asarray(mask, float).reshape(-1) / 0.01),
    )
    np.testing.assert_allclose(dense.mean, xd, atol=1e-10)


@pytest.mark.parametrize(
    "method", ["perturbation", pytest.param("kriging", marks=pytest.mark.slow)]
)
def test_conditional_ensemble_has_the_posterior_mean_and_covariance(problem, method):
    prior, y, mask, a, xd = problem
    n = 2000
    ens = spde.conditional_ensemble(
        jax.random.key(13), prior, y, mask, 0.01, n, method=method
    )
    assert ens.result == RESULTS.successful
    np.testing.assert_allclose(ens.mean.reshape(-1), xd, atol=1e-8)
    m = np.asarray(ens.members).reshape(n, -1)
    cov = np.linalg.inv(a)
    var = np.diag(cov)
    assert np.all(np.abs(m.mean(0) - xd) < 5 * np.sqrt(var / n))
    se_cov = np.sqrt((np.outer(var, var) + cov**2) / n)
    assert np.all(np.abs(np.cov(m.T) - cov) < 5 * se_cov)


def test_cg_that_does_not_converge_is_reported(problem):
    prior, y, mask, _, _ = problem
    kw = dict(max_steps=2, form="precision")  # Jacobi-preconditioned CG
    sol = spde.spde_map(prior, y, mask, 0.01, throw=False, **kw)
    assert sol.result == RESULTS.max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver"):
        spde.spde_map(prior, y, mask, 0.01, **kw)
    with pytest.raises(ValueError, match="form"):
        spde.spde_map(prior, y, mask, 0.01, form="dual")


def test_bad_input_is_refused_with_clear_errors():
    grid = Grid(4, 5, 1.0, 1.0, "closed")
    ok = dict(kappa=1.0, tau=1.0, dt=1.0)
    with pytest.raises(ValueError, match="kappa"):
        spde.SPDEParameters(grid, 2, kappa=0.0, tau=1.0, dt=1.0)
    with pytest.raises(ValueError, match="tau"):
        spde.SPDEParameters(grid, 2, kappa=1.0, tau=-1.0, dt=1.0)
    with pytest.raises(ValueError, match="positive definite"):
        spde.SPDEParameters(grid, 2, diffusion=jnp.array([1.0, 2.0, 1.0]), **ok)
    with pytest.raises(ValueError, match="kappa"):
        spde.SPDEParameters(grid, 2, kappa=jnp.ones((3, 3)), tau=1.0, dt=1.0)
    params = spde.SPDEParameters(grid, 2, **ok)
    with pytest.raises(ValueError, match="grid"):
        spde.SPDEPrior(params, Grid(5, 4, 1.0, 1.0, "closed"), 1.0)
    with pytest.raises(ValueError, match="fft"):
        spde.SPDEPrior(params, grid, 1.0, solver="fft")
    with pytest.raises(ValueError, match="alpha"):
        spde.SPDEParameters(grid, 2, alpha=3, **ok)
    prior = spde.SPDEPrior(params, grid, 1.0)
    y = jnp.zeros(prior.shape)
    with pytest.raises(ValueError, match="mask"):
        spde.spde_map(prior, y, jnp.ones((2, 5, 4), bool), 0.1)
    with pytest.raises(ValueError, match="obs_var"):
        spde.spde_map(prior, y, None, -0.1)
    with pytest.raises(ValueError, match="n_members"):
        spde.conditional_ensemble(jax.random.key(0), prior, y, None, 0.1, 1)
    with pytest.raises(TypeError, match="prior"):
        spde.spde_map(object(), y, None, 0.1)


def test_invalid_parameters_under_jit_are_reported_in_the_result():
    grid = Grid(4, 5, 1.0, 1.0, "closed")

    @jax.jit
    def logdet(kappa):
        params = spde.SPDEParameters(grid, 2, kappa=kappa, tau=1.0, initial_tau=1.0)
        return spde.SPDEPrior(params, grid, 1.0).logdet_precision(throw=False)

    assert np.isfinite(logdet(jnp.array(1.0)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="value check"):

        @eqx.filter_jit
        def checked(kappa):
            params = spde.SPDEParameters(grid, 2, kappa=kappa, tau=1.0, initial_tau=1.0)
            return spde.SPDEPrior(params, grid, 1.0).logdet_precision()

        checked(jnp.array(-1.0))
