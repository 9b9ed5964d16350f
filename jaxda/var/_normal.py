r"""The linear solves of the Gauss-Newton family: block-tridiagonal and dense.

Linearising the residuals of `WeakConstraint4DVar` around a trajectory $x$ (flattened
per time to `(T, n)`) with the model Jacobians $M_t = \partial\Phi/\partial x (x_t)$
gives a Gauss-Newton normal matrix $A = J_r^T J_r$ that is block-tridiagonal in time:

$$A_{tt} = W^o_t + W^d_{t-1} + M_t^T W^d_t M_t \;(+ B^{-1} \text{ at } t=0),\qquad
A_{t+1,t} = -W^d_t M_t,$$

with the diagonal weights $W^o_t = \mathrm{diag}(m_t / R_t)$, $W^d_t =
\mathrm{diag}(1/Q_t)$, and the gradient
$g_t = W^o_t (x_t - y_t) + W^d_{t-1} d_{t-1} - M_t^T W^d_t d_t\ (+ B^{-1}(x_0 - x_b))$,
$d_t = x_{t+1} - \Phi(x_t)$. With an observation operator $h_t$ (`operator=` of the
problem) the observation block is $H_t^\top W^o_t H_t$ instead, with the $m \times n$
Jacobian $H_t = \partial h_t / \partial x\,(x_t)$ ($H_t$ itself when $h_t$ is
linear), and the gradient term $H_t^\top W^o_t (h_t(x_t) - y_t)$: the normal matrix
stays block-tridiagonal, $O(T (m n^2 + n^3))$ per step. One step solves
$A\,\delta = -g$ with the O(T n^3) block-tridiagonal Cholesky of `jaxda.linalg` (an
iterated extended Kalman smoother), never a dense `(Tn) x (Tn)` system
(`BlockTridiagonalNormal`).

For small controls (a strong-constraint $x_0$, model parameters) `DenseNormal` forms
the residual Jacobian $J_r$ and solves the dense $J_r^T J_r\,\delta = -J_r^T r$ by
Cholesky. Each linear solve also takes a Levenberg-Marquardt damping $\lambda$:
$(A + \lambda\,\mathrm{diag}(A))\,\delta = -g$ (Marquardt's scaling).
"""

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._custom_types import Array, Float, Scalar
from .._results import RESULTS
from .._validation import check_choice
from ..obs import is_state_mask
from ._costs import WeakConstraint4DVar


class NormalEquations(eqx.Module):
    """Gauss-Newton linearisation of a weak-constraint problem at `x`.

    `diagonal` `(T, n, n)`, `lower` `(T-1, n, n)` (`lower[t] = A[t+1, t]`) are the
    blocks of $J_r^T J_r$; `grad` `(T, n)` is $\\nabla J$; `cost` is $J(x)$.
    `obs_weight` is the observation weight $m/R$: `(T, n)` over the state for the
    mask of the state, `(T, m)` over the observation vector with an operator.
    """

    diagonal: Float[Array, " T n n"]
    lower: Float[Array, " Tm1 n n"]
    grad: Float[Array, " T n"]
    cost: Scalar
    obs_weight: Float[Array, " T k"]


def _flat_phi(problem: WeakConstraint4DVar, shape):
    def phi(z, t):
        return jnp.reshape(problem.flow(jnp.reshape(z, shape), t), (-1,))

    return phi


def _state_mask_terms(problem: WeakConstraint4DVar, x, T, n, dtype):
    """Observation blocks, gradient, cost and weight of the mask of the state."""
    mask = problem.obs.mask
    wo = jnp.where(mask, 1.0 / jnp.broadcast_to(problem.obs_var, x.shape), 0.0)
    wo = jnp.reshape(wo, (T, n)).astype(dtype)
    o = jnp.reshape(jnp.where(mask, x - problem.obs.values, 0.0), (T, n))
    eye = jnp.eye(n, dtype=dtype)
    diagonal = wo[:, :, None] * eye
    grad = wo * o
    cost = 0.5 * jnp.sum(wo * o**2)
    return diagonal, grad, cost, wo


def _operator_terms(problem: WeakConstraint4DVar, x, T, dtype):
    r"""$H_t^\top W_t H_t$, $H_t^\top W_t (h_t(x_t) - y_t)$, the cost and $W_t$ for an
    observation operator, $H_t = \partial h_t / \partial x\,(x_t)$."""
    mask, operator = problem.obs.mask, problem.operator
    hx, jac = jax.vmap(operator.value_and_jacobian)(x, jnp.arange(T))
    jac = jac.astype(dtype)
    m = jac.shape[1]
    var = jnp.broadcast_to(problem.obs_var, mask.shape)
    wo = jnp.reshape(jnp.where(mask, 1.0 / var, 0.0), (T, m)).astype(dtype)
    r = jnp.where(mask, jnp.reshape(hx, mask.shape) - problem.obs.values, 0.0)
    r = jnp.reshape(r, (T, m)).astype(dtype)
    diagonal = jnp.einsum("tki,tk,tkj->tij", jac, wo, jac)
    grad = jnp.einsum("tki,tk->ti", jac, wo * r)
    cost = 0.5 * jnp.sum(wo * r**2)
    return diagonal, grad, cost, wo


def linearise(
    problem: WeakConstraint4DVar, x: Float[Array, " T *state"]
) -> NormalEquations:
    r"""The block-tridiagonal Gauss-Newton normal equations of `problem` at `x`.

    With an observation operator $h_t$ the observation blocks are
    $H_t^\top W^o_t H_t$ with $H_t = \partial h_t/\partial x\,(x_t)$ (the dense
    $H_t$ of a linear operator; forward-mode derivatives of a nonlinear one) and the
    gradient gains $H_t^\top W^o_t (h_t(x_t) - y_t)$; without one (or with an
    `IdentityOperator`) $W^o_t = \mathrm{diag}(m_t / r_t)$ is added to the diagonal.
    """
    T = x.shape[0]
    state_shape = x.shape[1:]
    xf = jnp.reshape(x, (T, -1))
    n = xf.shape[1]
    dtype = xf.dtype
    eye = jnp.eye(n, dtype=dtype)
    if is_state_mask(problem.operator):
        diagonal, grad, cost, wo = _state_mask_terms(problem, x, T, n, dtype)
    else:
        diagonal, grad, cost, wo = _operator_terms(problem, x, T, dtype)
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
    return factor.solve(rhs, throw=False), factor.result == RESULTS.successful


def _check_weak(solver_name: str, problem) -> None:
    if not isinstance(problem, WeakConstraint4DVar):
        raise TypeError(
            f"{solver_name} solves a WeakConstraint4DVar; got "
            f"{type(problem).__name__} (use DenseGaussNewton or a gradient solver)."
        )


def _damp(diagonal, damping):
    """The blocks of $A + \\lambda\\,\\mathrm{diag}(A)$ (unchanged for `None`)."""
    if damping is None:
        return diagonal
    d = jnp.diagonal(diagonal, axis1=1, axis2=2)
    return diagonal + damping * d[:, :, None] * jnp.eye(d.shape[1], dtype=d.dtype)


class AbstractNormalSolve(eqx.Module):
    """How a Gauss-Newton step solves its linearised problem."""

    @abc.abstractmethod
    def direction(self, problem, u, damping):
        r"""`(delta, grad, ok)`: the step $\delta$ solving
        $(A + \lambda\,\mathrm{diag}(A))\,\delta = -\nabla J(u)$ ($A = J_r^T J_r$ at
        `u`; no damping when `damping` is `None`), the gradient $\nabla J(u)$, both
        shaped like `u`, and whether the linear solve succeeded (SPD)."""

    def check_problem(self, solver_name: str, problem) -> None:
        """Raise `TypeError` unless the problem has the structure this solve needs."""


class BlockTridiagonalNormal(AbstractNormalSolve):
    """The block-tridiagonal normal equations of a weak-constraint problem, solved by
    `jaxda.linalg.BlockTridiagonal` (see the module docstring).

    **Arguments:**

    - `method`: `"sequential"` (default; CPU) or `"parallel"` (long windows on
      accelerators) block-tridiagonal Cholesky.
    """

    method: Literal["sequential", "parallel"] = eqx.field(
        static=True, default="sequential"
    )

    def __check_init__(self):
        check_choice("method", self.method, ("sequential", "parallel"))

    def check_problem(self, solver_name, problem):
        _check_weak(solver_name, problem)

    def direction(self, problem, u, damping):
        ne = linearise(problem, u)
        diagonal = _damp(ne.diagonal, damping)
        delta, ok = block_solve(diagonal, ne.lower, -ne.grad, self.method)
        return jnp.reshape(delta, u.shape), jnp.reshape(ne.grad, u.shape), ok


def _dense_system(problem, u, jacobian: str):
    flat, unravel = ravel_pytree(u)

    def res(z):
        return problem.residuals(unravel(z))

    r = res(flat)
    jac = jax.jacfwd(res)(flat) if jacobian == "fwd" else jax.jacrev(res)(flat)
    return jac.T @ jac, jac.T @ r, unravel


def _chol_solve(A, b):
    chol = jnp.linalg.cholesky(A)
    ok = jnp.all(jnp.isfinite(chol))
    return jax.scipy.linalg.cho_solve((chol, True), b), ok


class DenseNormal(AbstractNormalSolve):
    r"""Dense normal equations $J_r^T J_r\,\delta = -J_r^T r$ over the flattened
    control, solved by Cholesky: $O(m n^2 + n^3)$ per step for $m$ residuals and $n$
    unknowns, for small controls only.

    **Arguments:**

    - `jacobian`: `"fwd"` (default; $n$ tangent passes) or `"rev"` (one adjoint pass
      per residual) for $J_r$. A `DiffraxTrajectory` needs an adjoint compatible with
      the mode (see `DiffraxTrajectory`).
    """

    jacobian: Literal["fwd", "rev"] = eqx.field(static=True, default="fwd")

    def __check_init__(self):
        check_choice("jacobian", self.jacobian, ("fwd", "rev"))

    def direction(self, problem, u, damping):
        A, g, unravel = _dense_system(problem, u, self.jacobian)
        if damping is not None:
            A = A + damping * jnp.diag(jnp.diagonal(A))
        delta, ok = _chol_solve(A, -g)
        return unravel(delta), unravel(g), ok
