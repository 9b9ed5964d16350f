"""Matrix-free variational DA: checkpointed rollouts, L-BFGS, Gauss-Newton with CG
normal equations, the control-variable transform and the forcing formulation.

References: dense Gauss-Newton (`DenseGaussNewton` in the B^-1 form), dense normal
equations from the residual Jacobian, and on a linear-Gaussian model the NumPy
Kalman/RTS smoother (`tests.helpers.kalman_smoother`): the exact posterior mean.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics, kalman_smoother

from jaxda.grid import AbstractCovariance
from jaxda.linalg import SymmetricBandMatrix
from jaxda.models import Lorenz96, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import (
    LBFGS,
    RESULTS,
    Background,
    ConjugateGradientNormal,
    ControlTransform,
    DenseGaussNewton,
    GaussNewton,
    GaussNewtonCG,
    StrongConstraint4DVar,
    WeakConstraint4DVar,
    WeakConstraintForcing,
    solve,
)


class DenseCovariance(AbstractCovariance):
    """B = L L^T with a dense lower factor L (test-only; no grid structure)."""

    field_shape: tuple[int, ...] = eqx.field(static=True)
    chol: jax.Array

    def sqrt(self, w):
        return jnp.reshape(self.chol @ jnp.reshape(w, (-1,)), self.field_shape)

    def sqrt_transpose(self, v):
        return jnp.reshape(self.chol.T @ jnp.reshape(v, (-1,)), self.field_shape)

    @property
    def variance(self):
        return jnp.reshape(jnp.sum(self.chol**2, axis=1), self.field_shape)


def gaussian_covariance(n, sd, length, nugget=1e-2):
    """A Gaussian correlation between `n` points on a line, plus a nugget."""
    i = np.arange(n)
    d = i[:, None] - i[None, :]
    return sd**2 * (np.exp(-0.5 * (d / length) ** 2) + nugget * np.eye(n))


def dense_cov(matrix):
    return DenseCovariance((matrix.shape[0],), jnp.linalg.cholesky(jnp.asarray(matrix)))


def band_precision(matrix):
    """B^-1 as a (full-bandwidth) SymmetricBandMatrix, for `Background`."""
    n = matrix.shape[0]
    return SymmetricBandMatrix.from_dense(np.linalg.inv(matrix), n - 1)


N, T = 8, 6
# One configuration everywhere, so that solves of the same problem type share a
# compilation.
GN_CG = GaussNewtonCG(rtol=1e-12, cg_rtol=1e-14)


@pytest.fixture(scope="module")
def linear():
    """x_{t+1} = (I + dt F) x_t on a ring (advection-diffusion), half the entries
    observed at random, non-diagonal B and Q."""
    rng = np.random.default_rng(0)
    eye = np.eye(N)
    shift = np.roll(eye, 1, axis=1)
    F = -0.8 * (shift - shift.T) / 2 + 0.3 * (shift + shift.T - 2 * eye)
    flow = flow_map(LinearDynamics(jnp.asarray(F)), 0.1, "euler")
    M = eye + 0.1 * F
    B = gaussian_covariance(N, 1.0, 1.5)
    Q = gaussian_covariance(N, 0.3, 1.0)
    R = np.full(N, 0.2)
    xb = rng.normal(size=N)
    truth = [xb + np.linalg.cholesky(B) @ rng.normal(size=N)]
    for _ in range(T - 1):
        truth.append(M @ truth[-1])
    mask = rng.random((T, N)) < 0.5
    y = np.where(mask, np.stack(truth) + np.sqrt(R) * rng.normal(size=(T, N)), 0.0)
    obs = Observations(jnp.asarray(y), jnp.asarray(mask))
    strong = StrongConstraint4DVar(flow, obs, jnp.asarray(R))
    return dict(M=M, B=B, Q=Q, R=R, xb=xb, y=y, mask=mask, strong=strong)


@pytest.fixture(scope="module")
def l96():
    """Lorenz-96 (n = 8), RK4, every other component observed: nonlinear."""
    rng = np.random.default_rng(1)
    flow = flow_map(Lorenz96(N), 0.05, "rk4")
    x0 = 8.0 + rng.normal(size=N)
    truth = np.asarray(rollout(flow, jnp.asarray(x0), T - 1))
    mask = np.zeros((T, N), bool)
    mask[:, ::2] = True
    y = np.where(mask, truth + np.sqrt(0.5) * rng.normal(size=(T, N)), 0.0)
    B = gaussian_covariance(N, 1.0, 1.5)
    xb = x0 + np.linalg.cholesky(B) @ rng.normal(size=N)
    obs = Observations(jnp.asarray(y), jnp.asarray(mask))
    strong = StrongConstraint4DVar(flow, obs, 0.5)
    with_b = StrongConstraint4DVar(
        flow, obs, 0.5, Background(jnp.asarray(xb), precision=band_precision(B))
    )
    return dict(B=B, xb=jnp.asarray(xb), strong=strong, with_b=with_b)


def test_checkpointed_rollout_gradient_equals_plain():
    flow = flow_map(Lorenz96(N), 0.05, "rk4")
    x0 = 8.0 + jnp.sin(jnp.arange(N, dtype=jnp.float64))

    def loss(x, checkpoint):
        return jnp.sum(jnp.cos(rollout(flow, x, 5, checkpoint=checkpoint)))

    g_plain = jax.grad(loss)(x0, False)
    g_ckpt = jax.grad(loss)(x0, True)
    np.testing.assert_allclose(g_ckpt, g_plain, rtol=1e-12, atol=1e-12)
    assert not np.allclose(g_plain, 0.0)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: loss(x, True)))(x0))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    with pytest.raises(TypeError, match="`checkpoint` must be a bool"):
        rollout(flow, x0, 3, checkpoint="yes")


@pytest.mark.parametrize(
    "form, linearisation", [("cvt", "fwd"), ("cvt", "rev"), ("b-inverse", "fwd")]
)
def test_cg_normal_solve_equals_dense_normal_equations(l96, form, linearisation):
    """The damped normal equations (J^T J + 0.5 I) d = -J^T r by CG equal the dense
    solve from the residual Jacobian: in the control-variable transform, with forward
    and reverse linearisation, and in the B^-1 form preconditioned by B."""
    if form == "cvt":
        prob = ControlTransform(l96["strong"], l96["xb"], dense_cov(l96["B"]))
        u, preconditioner = 0.3 * jnp.cos(jnp.arange(N, dtype=jnp.float64)), None
    else:
        prob, u = l96["with_b"], l96["xb"]
        preconditioner = dense_cov(l96["B"]).apply
    cg = ConjugateGradientNormal(
        rtol=1e-14,
        max_steps=50,
        preconditioner=preconditioner,
        linearisation=linearisation,
    )
    sol = eqx.filter_jit(cg.solve_normal)(prob, u, 0.5)
    jac, r = eqx.filter_jit(lambda p, u: (jax.jacfwd(p.residuals)(u), p.residuals(u)))(
        prob, u
    )
    jac, r = np.asarray(jac), np.asarray(r)
    grad = jac.T @ r
    delta = np.linalg.solve(jac.T @ jac + 0.5 * np.eye(N), -grad)
    assert sol.result == RESULTS.successful
    assert 1 <= int(sol.num_steps) < cg.max_steps  # converged, not capped
    np.testing.assert_allclose(sol.grad, grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sol.delta, delta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sol.cost, 0.5 * r @ r, rtol=1e-13)


def test_gauss_newton_cg_equals_dense_gauss_newton(l96):
    """B^-1 form: the GN-CG minimiser is the dense GN one, and so is the control-
    variable transform's x_b + U w* (one GN-CG step is the dense step: the CG solve
    equals the dense normal equations, test above)."""
    prob, xb = l96["with_b"], l96["xb"]
    ref = solve(prob, DenseGaussNewton(rtol=1e-12), xb, max_steps=30)
    sol = solve(prob, GN_CG, xb, max_steps=30)
    np.testing.assert_allclose(sol.x, ref.x, rtol=1e-8, atol=1e-8)
    assert not np.allclose(ref.x, xb, atol=1e-2)

    cvt = ControlTransform(l96["strong"], xb, dense_cov(l96["B"]))
    sol_w = cvt.map_solution(solve(cvt, GN_CG, cvt.initial_control(), max_steps=30))
    np.testing.assert_allclose(sol_w.x, ref.x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sol_w.cost, ref.cost, rtol=1e-10)


def test_linear_gaussian_4dvar_is_the_exact_posterior(linear):
    """Linear model, Gaussian B and R: the CVT 4DVar minimiser (GN-CG and L-BFGS)
    equals the smoother mean with Q = 0 (the posterior mean of x_0)."""
    d = linear
    ref = kalman_smoother(
        d["M"], 0 * d["Q"], d["xb"], d["B"], d["y"], d["mask"], d["R"]
    )
    cvt = ControlTransform(d["strong"], jnp.asarray(d["xb"]), dense_cov(d["B"]))
    w0 = cvt.initial_control()
    gn = cvt.map_solution(solve(cvt, GN_CG, w0, max_steps=30))
    np.testing.assert_allclose(gn.x, ref[0], rtol=1e-9, atol=1e-9)
    assert int(gn.n_steps) <= 2  # a quadratic: one step, one to confirm
    lbfgs = solve(cvt, LBFGS(rtol=1e-10), w0, max_steps=200)
    np.testing.assert_allclose(cvt.state(lbfgs.x), ref[0], rtol=1e-7, atol=1e-7)
    assert int(lbfgs.stats["evaluations"]) >= int(lbfgs.n_steps) + 1


def test_forcing_formulation_is_the_smoother_and_tends_to_strong(linear):
    """Forcing formulation with CVT on B and Q: the minimising trajectory is the
    Kalman/RTS smoother mean with that Q (and a non-diagonal B); as Q -> 0 it is the
    strong-constraint posterior."""
    d = linear
    xb = jnp.asarray(d["xb"])

    def forcing_solution(Q):
        prob = WeakConstraintForcing(d["strong"], xb, dense_cov(d["B"]), dense_cov(Q))
        sol = solve(prob, GN_CG, prob.initial_control(), max_steps=30)
        return prob.map_solution(sol).x

    ref = kalman_smoother(d["M"], d["Q"], d["xb"], d["B"], d["y"], d["mask"], d["R"])
    np.testing.assert_allclose(forcing_solution(d["Q"]), ref, rtol=1e-9, atol=1e-9)
    strong = kalman_smoother(
        d["M"], 0 * d["Q"], d["xb"], d["B"], d["y"], d["mask"], d["R"]
    )
    assert np.max(np.abs(ref - strong)) > 1e-2  # Q matters at this size
    tiny = forcing_solution(1e-12 * d["Q"] + 1e-14 * np.eye(N))
    np.testing.assert_allclose(tiny, strong, rtol=1e-8, atol=1e-8)


@pytest.mark.slow
def test_forcing_equals_state_formulation_on_nonlinear_model(l96):
    """(x_0, eta) -> x is a bijection: the forcing and the state formulation (solved by
    the block-tridiagonal GaussNewton) have the same minimiser, here with diagonal Q."""
    q = 0.05
    strong, xb = l96["strong"], l96["xb"]
    weak = WeakConstraint4DVar(
        strong.flow,
        strong.obs,
        strong.obs_var,
        q,
        Background(xb, precision=band_precision(l96["B"])),
    )
    ref = solve(
        weak, GaussNewton(rtol=1e-12), rollout(strong.flow, xb, T - 1), max_steps=30
    )
    diag_q = DenseCovariance((N,), jnp.sqrt(q) * jnp.eye(N))
    prob = WeakConstraintForcing(strong, xb, dense_cov(l96["B"]), diag_q)
    sol = solve(prob, GN_CG, prob.initial_control(), max_steps=30)
    np.testing.assert_allclose(prob.map_solution(sol).x, ref.x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sol.cost, ref.cost, rtol=1e-10)


def test_gradients_match_finite_differences(l96):
    """Directional derivatives of the CVT and (checkpointed) forcing costs."""
    cov = dense_cov(l96["B"])
    cvt = ControlTransform(l96["strong"], l96["xb"], cov)
    prob = WeakConstraintForcing(l96["strong"], l96["xb"], cov, cov, checkpoint=True)
    rng = np.random.default_rng(2)
    eps = 1e-6

    @eqx.filter_jit
    def fd_and_ad(problem, u, v):
        def along(s):
            return problem.cost(jax.tree_util.tree_map(lambda a, b: a + s * b, u, v))

        fd = (along(eps) - along(-eps)) / (2 * eps)
        grad = jax.grad(problem.cost)(u)
        leaves = zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(v))
        return fd, sum(jnp.vdot(g, b) for g, b in leaves)

    for problem in (cvt, prob):
        u, v = (
            jax.tree_util.tree_map(
                lambda a: jnp.asarray(scale * rng.normal(size=a.shape)),
                problem.initial_control(),
            )
            for scale in (0.2, 1.0)
        )
        fd, ad = fd_and_ad(problem, u, v)
        assert abs(ad) > 1e-2
        np.testing.assert_allclose(ad, fd, rtol=1e-7)


def test_cg_failure_is_reported(l96):
    prob, xb = l96["with_b"], l96["xb"]
    strict = GaussNewtonCG(cg_rtol=1e-14, cg_max_steps=1, require_convergence=True)
    sol = solve(prob, strict, xb, max_steps=5, throw=False)
    assert sol.result == RESULTS.no_decrease
    np.testing.assert_array_equal(sol.x, xb)  # no step taken
    with pytest.raises(eqx.EquinoxRuntimeError, match="could not decrease"):
        solve(prob, strict, xb, max_steps=5)


def test_bad_input_names_the_argument(l96):
    strong, xb, cov = l96["strong"], l96["xb"], dense_cov(l96["B"])
    with pytest.raises(ValueError, match="background"):
        ControlTransform(l96["with_b"], xb, cov)
    with pytest.raises(TypeError, match="`covariance`"):
        ControlTransform(strong, xb, l96["B"])
    with pytest.raises(ValueError, match="covariance.field_shape"):
        ControlTransform(strong, xb, DenseCovariance((2, 4), cov.chol))
    with pytest.raises(ValueError, match="`mean`"):
        ControlTransform(strong, xb[:4], cov)
    with pytest.raises(TypeError, match="`problem`"):
        WeakConstraintForcing(
            WeakConstraint4DVar(strong.flow, strong.obs, 0.5, 0.1), xb, cov, cov
        )
    with pytest.raises(ValueError, match="model_error_covariance.field_shape"):
        WeakConstraintForcing(strong, xb, cov, DenseCovariance((2, 4), cov.chol))
    with pytest.raises(ValueError, match="`rtol`"):
        ConjugateGradientNormal(rtol=-1.0)
    with pytest.raises(ValueError, match="not both be 0"):
        ConjugateGradientNormal(rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="`max_steps`"):
        GaussNewtonCG(cg_max_steps=0)
    with pytest.raises(ValueError, match="`linearisation`"):
        ConjugateGradientNormal(linearisation="central")
    with pytest.raises(ValueError, match="`memory_size`"):
        LBFGS(memory_size=0)
    cvt = ControlTransform(strong, xb, cov)
    with pytest.raises(ValueError, match="`x_init`"):
        solve(cvt, LBFGS(), jnp.zeros(N + 1))
    with pytest.raises(TypeError, match="WeakConstraint4DVar"):
        solve(cvt, GaussNewton(), cvt.initial_control())


# 26 s on 2 cores (compiling the dense Jacobian and the CG linearisation through the
# limited SSPRK3 step): the same property runs by default on the Lorenz-96 ring above.
@pytest.mark.slow
def test_gauss_newton_cg_equals_dense_gauss_newton_on_a_2d_grid():
    """A nonlinear 2-D field: limited advection on a 6 x 6 periodic grid, the initial
    tracer as control through a spectral (FFT) background covariance. GN-CG in the
    control-variable transform reaches the dense Gauss-Newton minimiser."""
    from jaxda.grid import Grid, SpectralCovariance
    from jaxda.models import SSPRK3, Advection2D

    grid = Grid(6, 6)
    Y, X = grid.meshgrid()
    velocity = jnp.stack([0.3 + 0.1 * jnp.sin(X), 0.2 * jnp.cos(Y)])
    flow = SSPRK3(Advection2D(grid, velocity), 0.5)
    cov = SpectralCovariance(grid, 1.5, 0.25, n_channels=1)
    rng = np.random.default_rng(5)
    truth0 = 1.0 + 0.5 * jnp.exp(-((X - 3.0) ** 2 + (Y - 2.5) ** 2) / 2.0)[None]
    truth = rollout(flow, truth0, 5)
    mask = jnp.asarray(rng.uniform(size=truth.shape) < 0.4)
    obs = Observations(
        jnp.where(mask, truth + 0.02 * rng.normal(size=truth.shape), 0.0), mask
    )
    xb = truth0 + cov.sqrt(jnp.asarray(rng.normal(size=truth0.shape)))
    cvt = ControlTransform(StrongConstraint4DVar(flow, obs, 0.02**2), xb, cov)
    w0 = cvt.initial_control()
    ref = solve(cvt, DenseGaussNewton(rtol=1e-12), w0, max_steps=30)
    sol = solve(cvt, GN_CG, w0, max_steps=30)
    np.testing.assert_allclose(cvt.state(sol.x), cvt.state(ref.x), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sol.cost, ref.cost, rtol=1e-10)
    # the analysis is closer to the truth than the background
    err = lambda x: float(jnp.sqrt(jnp.mean((x - truth0) ** 2)))  # noqa: E731
    assert err(cvt.state(sol.x)) < 0.5 * err(xb)
