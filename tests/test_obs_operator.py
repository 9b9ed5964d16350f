"""Observation operators: adjoint tests, the identity operator is the mask bit for bit,
non-diagonal H (block averaging, blurs) against dense float64 references in every
solver and Gaussian MAP that takes one, a nonlinear h in Gauss-Newton against a
reference minimiser, and derivatives with respect to H's parameters."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.optimize
from helpers import LinearDynamics, finite_difference_grad

from jaxda import gaussian, var
from jaxda.linalg import BlockTridiagonal, SymmetricBandMatrix
from jaxda.models import Lorenz96, flow_map, rollout
from jaxda.obs import (
    AbstractSelectionOperator,
    IdentityOperator,
    LinearFunctionOperator,
    MatrixOperator,
    NonlinearOperator,
    Observations,
    SelectionOperator,
    misfit,
)


# ------------------------------------------------------------------------------
# Operators of seed-004-style downscaling and deconvolution
# ------------------------------------------------------------------------------


def blur_matrix(n, width):
    """Periodic Gaussian blur on n sites, rows summing to one (differentiable)."""
    i = jnp.arange(n)
    d = (i[:, None] - i[None, :] + n // 2) % n - n // 2
    k = jnp.exp(-0.5 * (d / width) ** 2)
    return k / jnp.sum(k, axis=1, keepdims=True)


def block_average_matrix(n, k):
    """Averages of k consecutive sites: the (n / k, n) downscaling operator."""
    return np.kron(np.eye(n // k), np.full((1, k), 1.0 / k))


class BlurSubsample(eqx.Module):
    """Matrix-free: a 5-point periodic Gaussian blur of `width`, every 2nd site."""

    width: jax.Array

    def __call__(self, x):
        shifts = np.arange(-2, 3)
        w = jnp.exp(-0.5 * (jnp.asarray(shifts, x.dtype) / self.width) ** 2)
        w = w / jnp.sum(w)
        blurred = sum(w[i] * jnp.roll(x, int(s)) for i, s in enumerate(shifts))
        return blurred[::2]


def _linear_operators(rng):
    """`(id, operator, T)` for every kind of linear operator."""
    T, n = 3, 6
    h = rng.normal(size=(4, n))
    hs = rng.normal(size=(T, 4, n))
    return [
        ("identity", IdentityOperator((2, 3)), T),
        ("selection", SelectionOperator(np.array([0, 5, 5, 2]), (2, 3)), T),
        ("selection-per-time", SelectionOperator(rng.integers(0, n, (T, 3)), n), T),
        ("matrix", MatrixOperator(h, (2, 3)), T),
        ("matrix-per-time", MatrixOperator(hs), T),
        ("function", LinearFunctionOperator(BlurSubsample(jnp.array(1.3)), (n,)), T),
        (
            "function-transpose",
            LinearFunctionOperator(lambda x: h @ x, (n,), lambda y: h.T @ y),
            T,
        ),
        (
            "function-per-time",
            LinearFunctionOperator(lambda x, t: jnp.asarray(hs)[t] @ x, n, n_times=T),
            T,
        ),
        ("lineax", LinearFunctionOperator(lx.MatrixLinearOperator(jnp.asarray(h))), T),
    ]


CASES = [
    "identity",
    "selection",
    "selection-per-time",
    "matrix",
    "matrix-per-time",
    "function",
    "function-transpose",
    "function-per-time",
    "lineax",
]


@eqx.filter_jit
def _apply_all(op, x, y, w, xs, t):
    """Everything the adjoint test compares, for time `t`, in one compiled call."""
    out = (op(x, t), op.transpose(y, t), op.matrix(t, jnp.float64), op.gram(w, t))
    diag = op.diagonal_gram(w, t) if isinstance(op, AbstractSelectionOperator) else None
    return out, diag, op.trajectory(xs)


@pytest.mark.parametrize("name", CASES)
def test_adjoint_matrix_and_gram_of_every_linear_operator(name):
    rng = np.random.default_rng(CASES.index(name))
    ops = {case: (op, T) for case, op, T in _linear_operators(rng)}
    assert list(ops) == CASES
    op, T = ops[name]
    xs = jnp.asarray(rng.normal(size=(T, *op.state_shape)))
    for t in range(T):
        x = jnp.asarray(rng.normal(size=op.state_shape))
        y = jnp.asarray(rng.normal(size=op.obs_shape))
        w = jnp.asarray(rng.uniform(0.5, 2.0, size=op.obs_shape))
        (hx, hty, mat, gram_op), diag, traj = _apply_all(op, x, y, w, xs, t)
        assert hx.shape == op.obs_shape and hty.shape == op.state_shape
        # <H x, y> = <x, H^T y>
        np.testing.assert_allclose(
            jnp.vdot(hx, y), jnp.vdot(x, hty), rtol=1e-12, atol=1e-12
        )
        mat = np.asarray(mat)
        assert mat.shape == (op.obs_size, op.state_size)
        np.testing.assert_allclose(mat @ np.ravel(x), np.ravel(hx), rtol=1e-12)
        np.testing.assert_allclose(mat.T @ np.ravel(y), np.ravel(hty), rtol=1e-12)
        gram = mat.T @ (np.ravel(w)[:, None] * mat)
        np.testing.assert_allclose(gram_op, gram, rtol=1e-12, atol=1e-14)
        if diag is not None:
            np.testing.assert_array_equal(gram, np.diag(np.diag(gram)))
            np.testing.assert_allclose(diag, np.diag(gram))
        np.testing.assert_allclose(traj[t], op(xs[t], t), rtol=1e-14)


# ------------------------------------------------------------------------------
# The identity operator is the mask of the state, bit for bit
# ------------------------------------------------------------------------------


def test_identity_operator_is_the_mask_bit_for_bit(getkey):
    T, n = 4, 5
    flow = flow_map(Lorenz96(n=n), 0.01, "euler")
    truth = rollout(flow, 8.0 + jnp.arange(n) / 3.0, 30)[-T:]
    mask = jax.random.bernoulli(getkey(), 0.5, (T, n))
    obs = Observations(truth + 0.3 * jax.random.normal(getkey(), truth.shape), mask)
    bg = var.Background(truth[0] + 0.1, 2.0)
    ident = IdentityOperator((n,))
    x = truth + 0.2 * jax.random.normal(getkey(), truth.shape)

    @eqx.filter_jit
    def everything(op):
        weak = var.WeakConstraint4DVar(flow, obs, 0.5, 0.1, bg, operator=op)
        strong = var.StrongConstraint4DVar(flow, obs, 0.5, bg, operator=op)
        return (
            weak.residuals(x),
            var.linearise(weak, x),
            var.BlockTridiagonalNormal().direction(weak, x, 0.5),
            var.IncrementalMAP().direction(weak, x, 0.5),
            strong.residuals(x[0]),
            misfit(x, obs, op),
        )

    reference = everything(None)
    assert bool(eqx.tree_equal(reference, everything(ident)))

    # The Gaussian MAPs: a block-tridiagonal precision and a band covariance.
    ne = reference[1]
    Q = BlockTridiagonal(ne.diagonal, ne.lower)
    mu, y = truth, obs.values
    band = SymmetricBandMatrix(jnp.array([[2.0] * (T * n), [0.4] * (T * n)]))
    for fn, prior, kw in (
        (gaussian.map_precision, Q, {}),
        (gaussian.map_covariance, band, {}),
    ):
        a = fn(mu, prior, y, mask, 0.5, **kw).mean
        b = fn(mu, prior, y, mask, 0.5, operator=ident, **kw).mean
        assert np.array_equal(a, b)


# ------------------------------------------------------------------------------
# A linear-Gaussian window with a non-diagonal, time-varying H
# ------------------------------------------------------------------------------


def _linear_window(seed, T=5, n=6):
    """Linear dynamics, block averaging at even times and a blur every other site at
    odd times (3 observations per time, some missing), and the dense float64
    posterior: the precision A, the information vector b, the minimiser A^-1 b, the
    prior precision blocks and the prior mean."""
    rng = np.random.default_rng(seed)
    dt, q, bvar = 0.1, 0.2, 1.5
    F = 0.5 * rng.normal(size=(n, n))
    Mx = np.eye(n) + dt * F
    flow = flow_map(LinearDynamics(jnp.asarray(F)), dt, "euler")
    blur = np.asarray(blur_matrix(n, 1.2))[::2]
    hs = np.stack(
        [block_average_matrix(n, 2) if t % 2 == 0 else blur for t in range(T)]
    )
    xb = rng.normal(size=n)
    y = rng.normal(size=(T, 3))
    mask = rng.uniform(size=(T, 3)) < 0.75
    r = rng.uniform(0.2, 0.6, size=(T, 3))
    w = np.where(mask, 1.0 / r, 0.0)
    # Prior (dynamics + background) precision, block-tridiagonal.
    qd = np.zeros((T, n, n))
    ql = np.zeros((T - 1, n, n))
    for t in range(T - 1):
        qd[t] += Mx.T @ Mx / q
        qd[t + 1] += np.eye(n) / q
        ql[t] = -Mx / q
    qd[0] += np.eye(n) / bvar
    Qdense = np.asarray(BlockTridiagonal(qd, ql).to_dense())
    mu = np.stack([np.linalg.matrix_power(Mx, t) @ xb for t in range(T)])
    A = Qdense.copy()
    b = Qdense @ mu.reshape(-1)
    for t in range(T):
        s = slice(t * n, (t + 1) * n)
        A[s, s] += hs[t].T @ (w[t][:, None] * hs[t])
        b[s] += hs[t].T @ (w[t] * y[t])
    x_star = np.linalg.solve(A, b).reshape(T, n)
    problem = var.WeakConstraint4DVar(
        flow,
        Observations(jnp.asarray(y), jnp.asarray(mask)),
        jnp.asarray(r),
        q,
        var.Background(jnp.asarray(xb), bvar),
        operator=MatrixOperator(hs),
    )
    return problem, x_star, A, (qd, ql), mu, (y, mask, r)


def test_linear_window_every_normal_solve_gives_the_dense_posterior_mean():
    """On a linear-Gaussian window one Gauss-Newton step from anywhere lands on the
    dense posterior mean A^-1 b: the block-tridiagonal, dense and incremental-MAP
    solves, and the block-tridiagonal normal matrix is the dense A."""
    problem, x_star, A, _, mu, _ = _linear_window(0)
    x0 = jnp.asarray(mu)

    @eqx.filter_jit
    def steps(problem, x0):
        solves = (var.BlockTridiagonalNormal(), var.DenseNormal(), var.IncrementalMAP())
        ne = var.linearise(problem, x0)
        return [s.direction(problem, x0, None) for s in solves], ne

    directions, ne = steps(problem, x0)
    for delta, _, ok in directions:
        assert bool(ok)
        np.testing.assert_allclose(x0 + delta, x_star, rtol=1e-9, atol=1e-9)
    dense = BlockTridiagonal(ne.diagonal, ne.lower).to_dense()
    np.testing.assert_allclose(dense, A, rtol=1e-12, atol=1e-12)


def test_linear_window_gaussian_maps_give_the_dense_posterior():
    problem, x_star, A, (qd, ql), mu, (y, mask, r) = _linear_window(1)
    op = problem.operator
    Q = BlockTridiagonal(qd, ql)
    P = np.linalg.inv(np.asarray(Q.to_dense()))
    outs = [
        gaussian.map_precision(mu, Q, y, mask, r, operator=op),
        gaussian.map_covariance(mu, P, y, mask, r, operator=op),
        jax.jit(
            lambda: gaussian.map_dense(
                mu, y, r, mask=mask, operator=op, precision=Q.to_dense()
            )
        )(),
    ]
    for out in outs:
        np.testing.assert_allclose(out.mean, x_star, rtol=1e-9, atol=1e-9)
    variance = gaussian.posterior_variance(Q, mask, r, operator=op).variance
    np.testing.assert_allclose(
        variance, np.diag(np.linalg.inv(A)).reshape(mu.shape), rtol=1e-9
    )


@pytest.mark.parametrize(
    "max_obs", [None, pytest.param(12, marks=pytest.mark.slow)], ids=["blocks", "obs"]
)
def test_block_tridiagonal_covariance_with_per_time_operator(max_obs):
    """$S = H P H^\\top + R$ block-tridiagonal (blocks of size m), or in observation
    space (`max_obs`), against the dense gain $K = P H^\\top (H P H^\\top + R)^{-1}$."""
    problem, _, _, _, mu, (y, mask, r) = _linear_window(6, T=4)
    T, n = mu.shape
    rng = np.random.default_rng(7)
    a = rng.normal(size=(T, n, n))
    diag = 3.0 * np.eye(n) + 0.2 * (a + np.swapaxes(a, 1, 2))
    lower = 0.3 * rng.normal(size=(T - 1, n, n)) / np.sqrt(n)
    P = BlockTridiagonal(diag, lower)
    Pd = np.asarray(P.to_dense())
    assert np.linalg.eigvalsh(Pd).min() > 0.5
    hs = np.asarray(problem.operator.H)
    H = np.zeros((T * 3, T * n))
    for t in range(T):
        H[3 * t : 3 * t + 3, n * t : n * t + n] = hs[t]
    o = mask.reshape(-1)
    H = H[o]
    S = H @ Pd @ H.T + np.diag(r.reshape(-1)[o])
    innov = y.reshape(-1)[o] - H @ mu.ravel()
    ref = mu.reshape(-1) + Pd @ H.T @ np.linalg.solve(S, innov)
    op = problem.operator
    out = gaussian.map_covariance(mu, P, y, mask, r, operator=op, max_obs=max_obs)
    np.testing.assert_allclose(out.mean, ref.reshape(T, n), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kind", ["selection", "average", pytest.param("blur", marks=pytest.mark.slow)]
)
def test_single_state_band_prior_with_selection_and_blur_operators(kind):
    """One field of d = 12 sites, a band prior, observed through a selection (any
    form), a dense block average or a matrix-free blur (covariance form)."""
    rng = np.random.default_rng(2)
    d = 12
    band = np.array([[3.0] * d, [0.8] * d, [0.3] * d])
    P = SymmetricBandMatrix(band)
    Pd = np.asarray(P.to_dense())
    mu = rng.normal(size=d)
    ops = {
        "selection": SelectionOperator(np.array([1, 4, 4, 9]), d),
        "average": MatrixOperator(block_average_matrix(d, 3)),
        "blur": LinearFunctionOperator(BlurSubsample(jnp.array(1.1)), d),
    }
    for op in [ops[kind]]:
        m = op.obs_size
        y = rng.normal(size=m)
        mask = np.arange(m) != 1
        r = rng.uniform(0.2, 0.5, size=m)
        H = np.asarray(op.matrix(None, jnp.float64))[mask]
        S = H @ Pd @ H.T + np.diag(r[mask])
        ref = mu + Pd @ H.T @ np.linalg.solve(S, y[mask] - H @ mu)
        out = gaussian.map_covariance(mu, P, y, mask, r, operator=op)
        np.testing.assert_allclose(out.mean, ref, rtol=1e-10, atol=1e-12)
        if isinstance(op, SelectionOperator):
            Q = SymmetricBandMatrix.from_dense(np.linalg.inv(Pd), d - 1)
            out = gaussian.map_precision(mu, Q, y, mask, r, operator=op)
            np.testing.assert_allclose(out.mean, ref, rtol=1e-9, atol=1e-10)
            post = np.linalg.inv(np.linalg.inv(Pd) + H.T @ np.diag(1 / r[mask]) @ H)
            v = gaussian.posterior_variance(Q, mask, r, operator=op).variance
            np.testing.assert_allclose(v, np.diag(post), rtol=1e-9)


# ------------------------------------------------------------------------------
# A nonlinear h
# ------------------------------------------------------------------------------


def _products(x):
    return x[:3] * x[3:] / 4.0


def test_nonlinear_h_gauss_newton_against_a_reference_minimiser(getkey):
    T, n = 4, 6
    flow = flow_map(Lorenz96(n=n), 0.01, "euler")
    truth = rollout(flow, 8.0 + jnp.sin(jnp.arange(n)), 40)[-T:]
    h = NonlinearOperator(_products, (n,))
    hx = jax.jit(jax.vmap(_products))(truth)
    mask = np.ones((T, 3), bool)
    mask[1, 0] = mask[2, 2] = False
    y = np.asarray(hx + 0.1 * jax.random.normal(getkey(), hx.shape))
    r, q, bvar = 0.01, 0.05, 0.5
    xb = np.asarray(truth[0]) + 0.2
    obs = Observations(jnp.asarray(y), jnp.asarray(mask))
    bg = var.Background(jnp.asarray(xb), bvar)
    weak = var.WeakConstraint4DVar(flow, obs, r, q, bg, operator=h)
    strong = var.StrongConstraint4DVar(flow, obs, r, bg, operator=h)
    step = jax.jit(jax.vmap(flow))
    roll = jax.jit(lambda x0: rollout(flow, x0, T - 1))

    def h_np(x):  # the residuals written in NumPy
        return x[..., :3] * x[..., 3:] / 4.0

    def res_weak(z):
        x = z.reshape(T, n)
        ro = np.where(mask, (h_np(x) - y) / np.sqrt(r), 0.0)
        rd = (x[1:] - np.asarray(step(jnp.asarray(x[:-1])))) / np.sqrt(q)
        return np.concatenate([ro.ravel(), rd.ravel(), (x[0] - xb) / np.sqrt(bvar)])

    def res_strong(x0):
        x = np.asarray(roll(jnp.asarray(x0)))
        ro = np.where(mask, (h_np(x) - y) / np.sqrt(r), 0.0)
        return np.concatenate([ro.ravel(), (x0 - xb) / np.sqrt(bvar)])

    x_init = np.asarray(truth + 0.3 * jax.random.normal(getkey(), truth.shape))
    tight = {"method": "lm", "xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15}
    ref = scipy.optimize.least_squares(res_weak, x_init.ravel(), **tight).x
    sol = var.solve(
        weak, var.GaussNewton(rtol=1e-12), jnp.asarray(x_init), max_steps=30
    )
    np.testing.assert_allclose(sol.x.ravel(), ref, rtol=1e-6, atol=1e-6)
    ref0 = scipy.optimize.least_squares(res_strong, x_init[0], **tight).x
    sol = var.solve(strong, var.DenseGaussNewton(rtol=1e-12), jnp.asarray(x_init[0]))
    np.testing.assert_allclose(sol.x, ref0, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------
# Derivatives with respect to the operator's parameters
# ------------------------------------------------------------------------------


def _blur_width_losses():
    """Two losses of the blur width: through the block precision MAP (a dense blur
    per time) and through the band covariance MAP (a matrix-free blur)."""
    _, _, _, (qd, ql), mu, (y, mask, r) = _linear_window(3, T=3)
    T, n = mu.shape
    Q = BlockTridiagonal(qd, ql)
    target = np.random.default_rng(4).normal(size=mu.shape)
    d = 12
    P = SymmetricBandMatrix(np.array([[3.0] * d, [0.8] * d, [0.3] * d]))
    mu1 = np.linspace(-1.0, 1.0, d)
    y1 = np.array([0.3, -0.2, 0.5, 0.1, -0.4, 0.2])

    def loss_precision(width):  # implicit derivatives through the block solve
        hs = jnp.stack([blur_matrix(n, width + 0.3 * t)[::2] for t in range(T)])
        out = gaussian.map_precision(mu, Q, y, mask, r, operator=MatrixOperator(hs))
        return jnp.sum((out.mean - target) ** 2)

    def loss_covariance(width):  # through a matrix-free blur and its transpose
        op = LinearFunctionOperator(BlurSubsample(width), d)
        out = gaussian.map_covariance(mu1, P, y1, None, 0.1, operator=op)
        return jnp.sum(out.mean**2 * jnp.arange(d))

    return {"precision": loss_precision, "covariance": loss_covariance}


@pytest.mark.parametrize(
    "form", ["precision", pytest.param("covariance", marks=pytest.mark.slow)]
)
def test_gradient_with_respect_to_the_blur_width_against_finite_differences(form):
    loss = _blur_width_losses()[form]
    width = jnp.array(1.4)
    g = jax.jit(jax.grad(loss))(width)
    fd = finite_difference_grad(jax.jit(loss), width)
    assert abs(float(fd)) > 1e-4  # the loss does depend on the width
    np.testing.assert_allclose(g, fd, rtol=1e-6)


# ------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------


def test_bad_operators_and_observations():
    problem, _, _, (qd, ql), mu, (y, mask, r) = _linear_window(5, T=3)
    flow, obs = problem.flow, problem.obs
    n = 6
    with pytest.raises(ValueError, match=r"acts on states of shape \(5,\)"):
        var.WeakConstraint4DVar(
            flow, obs, 1.0, 1.0, operator=MatrixOperator(np.ones((3, 5)))
        )
    with pytest.raises(ValueError, match=r"`obs` must have shape \(T, 4\)"):
        var.WeakConstraint4DVar(
            flow, obs, 1.0, 1.0, operator=MatrixOperator(np.ones((4, n)))
        )
    with pytest.raises(ValueError, match="defined for T = 2"):
        var.StrongConstraint4DVar(
            flow, obs, 1.0, operator=MatrixOperator(np.ones((2, 3, n)))
        )
    with pytest.raises(TypeError, match="`operator` must be"):
        var.WeakConstraint4DVar(flow, obs, 1.0, 1.0, operator=np.ones((3, n)))
    with pytest.raises(ValueError, match="`obs_var` must be a scalar or broadcastable"):
        var.WeakConstraint4DVar(
            flow, obs, np.ones((3, n)), 1.0, operator=problem.operator
        )
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 6\)"):
        SelectionOperator(np.array([0, 6]), n)
    with pytest.raises(ValueError, match="`H` must have shape"):
        MatrixOperator(np.ones(n))
    with pytest.raises(ValueError, match="has 6 entries but `H` has 5 columns"):
        MatrixOperator(np.ones((2, 5)), (2, 3))
    with pytest.raises(ValueError, match="`fn` could not be applied"):
        LinearFunctionOperator(lambda x: np.ones((2, 5)) @ x, n)
    with pytest.raises(ValueError, match="call it with the time index"):
        MatrixOperator(np.ones((2, 3, n)))(jnp.ones(n))

    Q = BlockTridiagonal(qd, ql)
    op = problem.operator
    with pytest.raises(TypeError, match="must be a linear observation operator"):
        gaussian.map_precision(
            mu, Q, y, mask, r, operator=NonlinearOperator(_products, n)
        )
    band = SymmetricBandMatrix(np.array([[2.0] * mu.size, [0.3] * mu.size]))
    with pytest.raises(ValueError, match="`Q` is a SymmetricBandMatrix.*`operator`"):
        gaussian.map_precision(mu, band, y, mask, r, operator=op)
    with pytest.raises(ValueError, match="`Q` is a SymmetricBandMatrix"):
        gaussian.posterior_variance(band, mask, r, operator=op)
    with pytest.raises(ValueError, match=r"`y` must have shape \(3, 3\)"):
        gaussian.map_covariance(mu, band, y[:, :2], None, 1.0, operator=op)
    with pytest.raises(ValueError, match=r"`mask` must have shape \(3, 3\)"):
        gaussian.map_covariance(mu, band, y, mask[:2], 1.0, operator=op)
    with pytest.raises(ValueError, match="`mu` must have shape \\(3, 6\\)"):
        gaussian.map_covariance(mu[:2], band, y, mask, 1.0, operator=op)
    with pytest.raises(ValueError, match="obs_var \\(where mask is True\\)"):
        gaussian.map_dense(mu, y, -r, mask=mask, operator=op, cov=np.eye(mu.size))
