r"""Wrappers around jaxopt's Gauss-Newton and Levenberg-Marquardt (its only user).

jaxopt is unmaintained upstream and slow to import, so it is imported lazily inside the
functions here. Two measured pitfalls are handled (docs/performance.md):

- jaxopt's `LevenbergMarquardt` fails on a `(T, n)` unknown: the control is flattened to
  1-D (`jax.flatten_util.ravel_pytree`) for both solvers.
- jaxopt's default implicit differentiation through `GaussNewton` (normal-equations CG
  at tol 1e-5) returned a silently wrong gradient on a Lorenz-63 4DVar. The wrappers
  pass an accurate `implicit_diff_solve` (LU by default) so that derivatives of the
  solution with respect to the observations or model parameters are right.

The problem's array leaves are passed to jaxopt's `run` as arguments, so implicit
differentiation reaches them. jaxopt's own error estimate is not trusted alone: a
solve is `successful` only when the gradient norm $\|J_r^T r\|_2$ recomputed at the
returned point is below `tol` too, or below 100 machine epsilons times its value at the
first guess (which float32 can reach): jaxopt reported error 0 at an untouched first
guess with $|\nabla J| = 4\cdot 10^{15}$. Batching: `vmap` over a jaxopt solver is much
slower than `lax.map` (docs/performance.md); prefer `jax.lax.map` over windows.
"""

import abc
import functools
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._results import RESULTS
from .._validation import check_choice, check_positive
from ._solution import Solution
from ._solver import AbstractSolver


def _implicit_solve(name: str, tol: float):
    import jaxopt

    if name == "lu":
        return jaxopt.linear_solve.solve_lu
    if name == "cg":
        return functools.partial(jaxopt.linear_solve.solve_cg, tol=tol)
    if name == "normal_cg":
        return functools.partial(jaxopt.linear_solve.solve_normal_cg, tol=tol)
    raise ValueError(
        f"`implicit_diff_solve` must be 'lu', 'cg' or 'normal_cg'; got {name!r}."
    )


_IMPLICIT = ("lu", "cg", "normal_cg")


class _AbstractJaxopt(AbstractSolver):
    """Runs a jaxopt least-squares solver on the flattened control (jaxopt's loop, so
    `run` only); subclasses give `make` (the jaxopt solver)."""

    jit_in_solve: ClassVar[bool] = False
    tol: eqx.AbstractVar[float]
    implicit_diff_solve: eqx.AbstractVar[str]
    implicit_diff_tol: eqx.AbstractVar[float]

    def __check_init__(self):
        check_positive("tol", self.tol)
        check_positive("implicit_diff_tol", self.implicit_diff_tol)
        check_choice("implicit_diff_solve", self.implicit_diff_solve, _IMPLICIT)

    @abc.abstractmethod
    def make(self, residual_fun, max_steps: int):
        """The jaxopt solver minimising `0.5 * |residual_fun(flat, dynamic)|^2`."""

    def run(self, problem, u0, max_steps: int, save=None) -> Solution:
        if save is not None:
            raise TypeError(
                f"{type(self).__name__} runs jaxopt's own loop and cannot save "
                "iterates; use `save=None` or a jaxda solver (e.g. GaussNewton)."
            )
        flat0, unravel = ravel_pytree(u0)
        dynamic, static = eqx.partition(problem, eqx.is_inexact_array)

        def residual_fun(flat, dynamic):
            prob = eqx.combine(dynamic, static)
            return prob.residuals(unravel(flat))

        def cost_fun(flat):
            return 0.5 * jnp.sum(residual_fun(flat, dynamic) ** 2)

        if max_steps == 0:
            return Solution(
                u0, problem.cost(u0), jnp.array(0), RESULTS.max_steps_reached
            )
        solver = self.make(residual_fun, max_steps)
        flat, state = solver.run(flat0, dynamic)
        flat = flat.astype(flat0.dtype)  # jaxopt's LM promotes float32 controls
        cost = cost_fun(flat)
        cost0 = cost_fun(flat0)
        finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(flat))
        keep = finite & (cost <= cost0)
        flat = jnp.where(keep, flat, flat0)

        # Check jaxopt's verdict: the gradient at the returned point (no derivative
        # flows through this check; the implicit derivative is jaxopt's).
        def grad_norm_at(z):
            return jnp.linalg.norm(jax.grad(cost_fun)(jax.lax.stop_gradient(z)))

        grad_norm = grad_norm_at(flat)
        # `tol`, or 100 eps of the first guess's gradient (reachable in float32).
        eps = jnp.finfo(flat.dtype).eps
        gtol = jnp.maximum(self.tol, 100 * eps * grad_norm_at(flat0))
        converged = finite & (state.error <= self.tol) & (grad_norm <= gtol)
        result = RESULTS.where(
            ~finite,
            RESULTS.nonfinite,
            RESULTS.where(
                converged,
                RESULTS.successful,
                RESULTS.where(
                    (cost > cost0) | (state.iter_num < max_steps),
                    RESULTS.no_decrease,
                    RESULTS.max_steps_reached,
                ),
            ),
        )
        return Solution(
            x=unravel(flat),
            cost=jnp.where(keep, cost, cost0),
            n_steps=jnp.asarray(state.iter_num),
            result=result,
            stats={"error": state.error, "grad_norm": grad_norm},
        )


class JaxoptGaussNewton(_AbstractJaxopt):
    r"""`jaxopt.GaussNewton` on the whitened residuals $r(u)$ (flattened control).

    Each step solves $J_r^T J_r\,\delta = -J_r^T r$ generically (CG on the normal
    equations), without exploiting the block-tridiagonal structure; see `GaussNewton`
    for that. Differentiable through implicit differentiation with an accurate linear
    solve. `successful` requires both jaxopt's error and the recomputed gradient norm
    $\|J_r^T r\|_2$ at the returned point below `tol` (see the module docstring).
    """

    tol: float
    implicit_diff_solve: Literal["lu", "cg", "normal_cg"] = eqx.field(static=True)
    implicit_diff_tol: float

    def __init__(
        self,
        tol: float = 1e-8,
        implicit_diff_solve: Literal["lu", "cg", "normal_cg"] = "lu",
        implicit_diff_tol: float = 1e-10,
    ):
        """**Arguments:**

        - `tol`: stopping tolerance on the gradient norm (> 0; default 1e-8).
        - `implicit_diff_solve`: the linear solve of implicit differentiation,
          `"lu"` (default), `"cg"` or `"normal_cg"`.
        - `implicit_diff_tol`: its tolerance for the CG variants (default 1e-10).
        """
        self.tol = tol
        self.implicit_diff_solve = implicit_diff_solve
        self.implicit_diff_tol = implicit_diff_tol

    def make(self, residual_fun, max_steps):
        import jaxopt

        return jaxopt.GaussNewton(
            residual_fun,
            maxiter=max_steps,
            tol=self.tol,
            implicit_diff_solve=_implicit_solve(
                self.implicit_diff_solve, self.implicit_diff_tol
            ),
        )


class JaxoptLevenbergMarquardt(_AbstractJaxopt):
    r"""`jaxopt.LevenbergMarquardt` on the whitened residuals (flattened control).

    Note: LM may stop in a poor local minimum on chaotic 4DVar problems
    (docs/performance.md). `successful` as `JaxoptGaussNewton`.
    """

    tol: float
    implicit_diff_solve: Literal["lu", "cg", "normal_cg"] = eqx.field(static=True)
    implicit_diff_tol: float
    damping: float
    linear_solver: Literal["cholesky", "lu", "qr", "inv", "cg"] = eqx.field(static=True)

    def __init__(
        self,
        tol: float = 1e-8,
        implicit_diff_solve: Literal["lu", "cg", "normal_cg"] = "lu",
        implicit_diff_tol: float = 1e-10,
        damping: float = 1e-6,
        linear_solver: Literal["cholesky", "lu", "qr", "inv", "cg"] = "cholesky",
    ):
        """**Arguments:**

        - `tol`, `implicit_diff_solve`, `implicit_diff_tol`: as `JaxoptGaussNewton`.
        - `damping`: jaxopt's initial damping parameter (> 0; default 1e-6).
        - `linear_solver`: `"cholesky"` (default), `"lu"`, `"qr"`, `"inv"` (dense
          $J^T J$) or `"cg"` (matrix-free, for large controls).
        """
        check_choice(
            "linear_solver", linear_solver, ("cholesky", "lu", "qr", "inv", "cg")
        )
        check_positive("damping", damping)
        self.tol = tol
        self.implicit_diff_solve = implicit_diff_solve
        self.implicit_diff_tol = implicit_diff_tol
        self.damping = damping
        self.linear_solver = linear_solver

    def make(self, residual_fun, max_steps):
        import jaxopt

        return jaxopt.LevenbergMarquardt(
            residual_fun,
            maxiter=max_steps,
            tol=self.tol,
            xtol=0.0,
            gtol=0.0,
            damping_parameter=self.damping,
            solver=(
                jaxopt.linear_solve.solve_cg
                if self.linear_solver == "cg"
                else self.linear_solver
            ),
            materialize_jac=self.linear_solver != "cg",
            implicit_diff_solve=_implicit_solve(
                self.implicit_diff_solve, self.implicit_diff_tol
            ),
        )
