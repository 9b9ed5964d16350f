r"""Structure-exploiting Gauss-Newton and Levenberg-Marquardt for weak-constraint 4DVar.

Linearising the residuals of `WeakConstraint4DVar` around a trajectory $x$ (flattened
per time to `(T, n)`) with the model Jacobians $M_t = \partial\Phi/\partial x (x_t)$
gives a Gauss-Newton normal matrix $A = J_r^T J_r$ that is block-tridiagonal in time:

$$A_{tt} = W^o_t + W^d_{t-1} + M_t^T W^d_t M_t \;(+ B^{-1} \text{ at } t=0),\qquad
A_{t+1,t} = -W^d_t M_t,$$

with the diagonal weights $W^o_t = \mathrm{diag}(m_t / R_t)$, $W^d_t =
\mathrm{diag}(1/Q_t)$, and the gradient
$g_t = W^o_t (x_t - y_t) + W^d_{t-1} d_{t-1} - M_t^T W^d_t d_t\ (+ B^{-1}(x_0 - x_b))$,
$d_t = x_{t+1} - \Phi(x_t)$. One step solves $A\,\delta = -g$ with the O(T n^3)
block-tridiagonal Cholesky of `jaxda.linalg` (an iterated extended Kalman smoother),
never a dense `(Tn) x (Tn)` system.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Scalar
from .._validation import check_choice, check_positive
from ._costs import WeakConstraint4DVar
from ._solution import AbstractSolver, cauchy_converged


class NormalEquations(eqx.Module):
    """Gauss-Newton linearisation of a weak-constraint problem at `x`.

    `diagonal` `(T, n, n)`, `lower` `(T-1, n, n)` (`lower[t] = A[t+1, t]`) are the
    blocks of $J_r^T J_r$; `grad` `(T, n)` is $\\nabla J$; `cost` is $J(x)$.
    `obs_weight` `(T, n)` is the observation weight $m/R$.
    """

    diagonal: Float[Array, " T n n"]
    lower: Float[Array, " Tm1 n n"]
    grad: Float[Array, " T n"]
    cost: Scalar
    obs_weight: Float[Array, " T n"]


def _flat_phi(problem: WeakConstraint4DVar, shape):
    def phi(z, t):
        return jnp.reshape(problem.flow(jnp.reshape(z, shape), t), (-1,))

    return phi


def linearise(
    problem: WeakConstraint4DVar, x: Float[Array, " T *state"]
) -> NormalEquations:
    """The block-tridiagonal Gauss-Newton normal equations of `problem` at `x`."""
    T = x.shape[0]
    state_shape = x.shape[1:]
    xf = jnp.reshape(x, (T, -1))
    n = xf.shape[1]
    dtype = xf.dtype
    mask = problem.obs.mask
    wo = jnp.where(mask, 1.0 / jnp.broadcast_to(problem.obs_var, x.shape), 0.0)
    wo = jnp.reshape(wo, (T, n)).astype(dtype)
    o = jnp.reshape(jnp.where(mask, x - problem.obs.values, 0.0), (T, n))
    eye = jnp.eye(n, dtype=dtype)
    diagonal = wo[:, :, None] * eye
    grad = wo * o
    cost = 0.5 * jnp.sum(wo * o**2)
    lower = jnp.zeros((max(T - 1, 0), n, n), dtype)
    if T > 1:
        phi = _flat_phi(problem, state_shape)

        def pred_and_jac(z, t):
            return jax.jacfwd(lambda z: (phi(z, t), phi(z, t)), has_aux=True)(z)

        M, pred = jax.vmap(pred_and_jac)(xf[:-1], problem.times(T - 1))
        d = xf[1:] - pred
        wd = jnp.broadcast_to(1.0 / problem.model_var, (T - 1, *state_shape))
        wd = jnp.reshape(wd, (T - 1, n)).astype(dtype)
        diagonal = diagonal.at[1:].add(wd[:, :, None] * eye)
        diagonal = diagonal.at[:-1].add(jnp.einsum("tki,tk,tkj->tij", M, wd, M))
        lower = -wd[:, :, None] * M
        grad = grad.at[1:].add(wd * d)
        grad = grad.at[:-1].add(-jnp.einsum("tki,tk->ti", M, wd * d))
        cost = cost + 0.5 * jnp.sum(wd * d**2)
    if problem.background is not None:
        bi = problem.background.precision_dense().astype(dtype)
        db = xf[0] - jnp.reshape(problem.background.mean, (-1,))
        diagonal = diagonal.at[0].add(bi)
        grad = grad.at[0].add(bi @ db)
        cost = cost + 0.5 * db @ (bi @ db)
    return NormalEquations(diagonal, lower, grad, cost, wo)


def block_solve(diagonal, lower, rhs, method: str):
    """Solve the SPD block-tridiagonal system; returns `(solution, is_spd)`."""
    from ..linalg import BlockTridiagonal

    factor = BlockTridiagonal(diagonal, lower).cholesky(method=method)
    return factor.solve(rhs), factor.is_spd


class _GNState(eqx.Module):
    u: object
    cost: Scalar
    damping: Scalar


def _tree_dot(a, b):
    return sum(
        jnp.sum(x * y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _axpy(alpha, x, y):
    return jax.tree_util.tree_map(lambda a, b: alpha * a + b, x, y)


class _AbstractNewtonLike(AbstractSolver):
    rtol: float = 1e-8
    atol: float = 1e-12

    def __check_init__(self):
        check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)

    def _negligible(self, decrease, cost):
        eps = jnp.finfo(jnp.result_type(cost)).eps
        rtol = jnp.maximum(self.rtol, 100 * eps)
        return decrease <= self.atol + rtol * jnp.abs(cost)


class AbstractLineSearchGaussNewton(_AbstractNewtonLike):
    """Gauss-Newton with Armijo backtracking; subclasses give `direction`."""

    max_backtracks: eqx.AbstractVar[int]
    armijo: eqx.AbstractVar[float]

    @abc.abstractmethod
    def direction(self, problem, u):
        r"""`(delta, grad, ok)`: the Gauss-Newton step, $\nabla J(u)$, solve success."""

    def init(self, problem, u0):
        cost = problem.cost(u0)
        return _GNState(u0, cost, jnp.zeros((), jnp.result_type(cost)))

    def step(self, problem, state):
        u = state.u
        delta, grad, ok = self.direction(problem, u)
        slope = _tree_dot(grad, delta)
        finite = jnp.all(
            jnp.stack(
                [jnp.all(jnp.isfinite(d)) for d in jax.tree_util.tree_leaves(delta)]
            )
        )
        ok = ok & finite & (slope < 0)
        delta = jax.tree_util.tree_map(lambda d: jnp.where(ok, d, 0.0), delta)
        slope = jnp.where(ok, slope, 0.0)

        def trial(alpha):
            f = problem.cost(_axpy(alpha, delta, u))
            return jnp.where(jnp.isfinite(f), f, jnp.inf)

        def ls_cond(c):
            alpha, f_new, k = c
            armijo = f_new <= state.cost + self.armijo * alpha * slope
            return ~armijo & (k < self.max_backtracks)

        def ls_body(c):
            alpha, _, k = c
            return alpha / 2, trial(alpha / 2), k + 1

        one = jnp.ones((), jnp.result_type(state.cost))
        f1 = jnp.where(ok, trial(one), jnp.inf)
        alpha, f_new, _ = jax.lax.while_loop(ls_cond, ls_body, (one, f1, jnp.array(0)))
        accepted = ok & (f_new <= state.cost + self.armijo * alpha * slope)
        accepted = accepted & jnp.isfinite(f_new)
        u_new = jax.tree_util.tree_map(
            lambda a, d: jnp.where(accepted, a + alpha * d, a), u, delta
        )
        f_new = jnp.where(accepted, f_new, state.cost)
        small = self._negligible(-0.5 * slope, state.cost) & ok
        converged = jnp.where(
            accepted,
            cauchy_converged(state.cost, f_new, u, u_new, self.rtol, self.atol),
            small,
        )
        failed = ~accepted & ~converged
        return (
            _GNState(u_new, f_new, jnp.where(accepted, alpha, 0.0)),
            converged,
            failed,
        )

    def stats(self, state):
        return {"last_step_length": state.damping}


class AbstractAdaptiveLevenbergMarquardt(_AbstractNewtonLike):
    """Levenberg-Marquardt with adaptive damping; subclasses give `damped_direction`."""

    damping: eqx.AbstractVar[float]
    max_damping: eqx.AbstractVar[float]

    @abc.abstractmethod
    def damped_direction(self, problem, u, lam):
        r"""`(delta, grad, ok)` for $(A + \lambda\,\mathrm{diag}(A))\delta = -g$."""

    def init(self, problem, u0):
        cost = problem.cost(u0)
        return _GNState(u0, cost, jnp.asarray(self.damping, jnp.result_type(cost)))

    def step(self, problem, state):
        u, lam = state.u, state.damping
        delta, grad, ok = self.damped_direction(problem, u, lam)
        slope = _tree_dot(grad, delta)
        finite = jnp.all(
            jnp.stack(
                [jnp.all(jnp.isfinite(d)) for d in jax.tree_util.tree_leaves(delta)]
            )
        )
        ok = ok & finite
        delta = jax.tree_util.tree_map(lambda d: jnp.where(ok, d, 0.0), delta)
        f_new = problem.cost(_axpy(1.0, delta, u))
        accepted = ok & jnp.isfinite(f_new) & (f_new < state.cost)
        u_new = jax.tree_util.tree_map(
            lambda a, d: jnp.where(accepted, a + d, a), u, delta
        )
        f_new = jnp.where(accepted, f_new, state.cost)
        lam_new = jnp.where(accepted, lam / 3, lam * 4)
        small = self._negligible(-0.5 * slope, state.cost) & ok
        converged = jnp.where(
            accepted,
            cauchy_converged(state.cost, f_new, u, u_new, self.rtol, self.atol),
            small & (lam <= 1.0),
        )
        failed = ~converged & (lam_new > self.max_damping)
        return _GNState(u_new, f_new, lam_new), converged, failed

    def stats(self, state):
        return {"damping": state.damping}


def _check_weak(solver, problem):
    if not isinstance(problem, WeakConstraint4DVar):
        raise TypeError(
            f"{type(solver).__name__} solves a WeakConstraint4DVar; got "
            f"{type(problem).__name__} (use DenseGaussNewton or a gradient solver)."
        )


class AbstractStructuredGaussNewton(AbstractLineSearchGaussNewton):
    """Line-search Gauss-Newton on a weak-constraint problem whose steps solve
    block-tridiagonal systems: the fields and checks shared by `GaussNewton` and
    `Incremental4DVar`; subclasses give `direction`."""

    method: str = eqx.field(static=True, default="sequential")
    max_backtracks: int = eqx.field(static=True, default=20)
    armijo: float = 1e-4

    def __check_init__(self):
        check_choice("method", self.method, ("sequential", "parallel"))

    def check_problem(self, problem):
        _check_weak(self, problem)


class GaussNewton(AbstractStructuredGaussNewton):
    r"""Gauss-Newton with a backtracking (Armijo) line search, structured in time.

    Each step solves the block-tridiagonal normal equations $A\,\delta = -\nabla J$ (see
    the module docstring) with `jaxda.linalg.BlockTridiagonal` (`method="sequential"`
    on CPU, `"parallel"` for long windows on accelerators), then takes
    $x \leftarrow x + \alpha\delta$ with the largest $\alpha \in \{1, 1/2, \dots\}$
    satisfying $J(x + \alpha\delta) \le J(x) + c\,\alpha\,\nabla J^T\delta$.
    Stops when both the cost change and the step are below `atol + rtol * |.|`; when no
    step decreases the cost it stops as converged if the predicted decrease
    $-\nabla J^T\delta/2$ is below that tolerance and as `no_decrease` otherwise.

    **Arguments:** `rtol` (1e-8), `atol` (1e-12); `method`; `max_backtracks` (20);
    `armijo` $c$ (1e-4).
    """

    def direction(self, problem, u):
        ne = linearise(problem, u)
        delta, ok = block_solve(ne.diagonal, ne.lower, -ne.grad, self.method)
        return jnp.reshape(delta, u.shape), jnp.reshape(ne.grad, u.shape), ok


class LevenbergMarquardt(AbstractAdaptiveLevenbergMarquardt):
    r"""Levenberg-Marquardt with adaptive damping, structured in time.

    Each step solves $(A + \lambda\,\mathrm{diag}(A))\,\delta = -\nabla J$ (Marquardt's
    scaling) with the block-tridiagonal Cholesky; a step that lowers the cost is
    accepted and $\lambda \leftarrow \lambda/3$, otherwise $\lambda \leftarrow
    4\lambda$. Fails (`no_decrease`) once $\lambda$ exceeds `max_damping`.

    **Arguments:** `rtol`, `atol`; `method`; `damping` (initial $\lambda$, 1e-3);
    `max_damping` (1e10).
    """

    method: str = eqx.field(static=True, default="sequential")
    damping: float = 1e-3
    max_damping: float = 1e10

    def __check_init__(self):
        check_choice("method", self.method, ("sequential", "parallel"))
        check_positive("damping", self.damping)

    def check_problem(self, problem):
        _check_weak(self, problem)

    def damped_direction(self, problem, u, lam):
        ne = linearise(problem, u)
        d = jnp.diagonal(ne.diagonal, axis1=1, axis2=2)
        eye = jnp.eye(d.shape[1], dtype=d.dtype)
        diagonal = ne.diagonal + lam * d[:, :, None] * eye
        delta, ok = block_solve(diagonal, ne.lower, -ne.grad, self.method)
        return jnp.reshape(delta, u.shape), jnp.reshape(ne.grad, u.shape), ok
