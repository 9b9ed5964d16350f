"""Wrappers around jaxopt's Gauss-Newton and Levenberg-Marquardt (the only jaxopt user).

jaxopt is unmaintained upstream and slow to import, so it is imported lazily inside the
functions here. Two measured pitfalls are handled (docs/performance.md):

- jaxopt's `LevenbergMarquardt` fails on a `(T, n)` unknown: the control is flattened to
  1-D (`jax.flatten_util.ravel_pytree`) for both solvers.
- jaxopt's default implicit differentiation through `GaussNewton` (normal-equations CG
  at tol 1e-5) returned a silently wrong gradient on a Lorenz-63 4DVar. The wrappers
  pass an accurate `implicit_diff_solve` (LU by default) so that derivatives of the
  solution with respect to the observations or model parameters are right.

The problem's array leaves are passed to jaxopt's `run` as arguments, so implicit
differentiation reaches them. Batching: `vmap` over a jaxopt solver is much slower
than `lax.map` (docs/performance.md); prefer `jax.lax.map` over windows.
"""

import functools
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._validation import check_choice, check_positive
from ._solution import RESULTS, AbstractSolver, Solution


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


class _AbstractJaxopt(AbstractSolver):
    jit_in_solve: ClassVar[bool] = False
    tol: float = 1e-8
    implicit_diff_solve: str = eqx.field(static=True, default="lu")
    implicit_diff_tol: float = 1e-10

    def __check_init__(self):
        check_positive("tol", self.tol)
        check_positive("implicit_diff_tol", self.implicit_diff_tol)
        if self.implicit_diff_solve not in ("lu", "cg", "normal_cg"):
            raise ValueError(
                "`implicit_diff_solve` must be 'lu', 'cg' or 'normal_cg'; got "
                f"{self.implicit_diff_solve!r}."
            )

    def init(self, problem, u0):  # pragma: no cover - jaxopt runs its own loop
        raise NotImplementedError("jaxopt solvers run through `run`.")

    def step(self, problem, state):  # pragma: no cover
        raise NotImplementedError("jaxopt solvers run through `run`.")

    def _make(self, residual_fun, max_steps):
        raise NotImplementedError

    def run(self, problem, u0, max_steps: int) -> Solution:
        flat0, unravel = ravel_pytree(u0)
        dynamic, static = eqx.partition(problem, eqx.is_inexact_array)

        def residual_fun(flat, dynamic):
            prob = eqx.combine(dynamic, static)
            return prob.residuals(unravel(flat))

        solver = self._make(residual_fun, max(max_steps, 1))
        if max_steps == 0:
            cost0 = problem.cost(u0)
            return Solution(
                u0, cost0, jnp.array(0), jnp.array(False), RESULTS.max_steps_reached
            )
        flat, state = solver.run(flat0, dynamic)
        cost = 0.5 * jnp.sum(residual_fun(flat, dynamic) ** 2)
        cost0 = 0.5 * jnp.sum(residual_fun(flat0, dynamic) ** 2)
        finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(flat))
        keep = finite & (cost <= cost0)
        flat = jnp.where(keep, flat, flat0)
        converged = finite & (state.error <= self.tol)
        result = RESULTS.where(
            ~finite,
            RESULTS.nonfinite,
            RESULTS.where(
                converged,
                RESULTS.successful,
                RESULTS.where(
                    cost > cost0, RESULTS.no_decrease, RESULTS.max_steps_reached
                ),
            ),
        )
        return Solution(
            x=unravel(flat),
            cost=jnp.where(keep, cost, cost0),
            n_steps=jnp.asarray(state.iter_num),
            converged=converged,
            result=result,
            stats={"error": state.error},
        )


class JaxoptGaussNewton(_AbstractJaxopt):
    r"""`jaxopt.GaussNewton` on the whitened residuals $r(u)$ (flattened control).

    Each step solves $J_r^T J_r\,\delta = -J_r^T r$ generically (CG on the normal
    equations), without exploiting the block-tridiagonal structure; see `GaussNewton`
    for that. Differentiable through implicit differentiation with an accurate linear
    solve.

    **Arguments:** `tol` (jaxopt's stopping tolerance on the gradient norm);
    `implicit_diff_solve` (`"lu"` (default), `"cg"` or `"normal_cg"`) and
    `implicit_diff_tol` (for the CG variants).
    """

    def _make(self, residual_fun, max_steps):
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

    **Arguments:** as `JaxoptGaussNewton`, plus `damping` (initial damping parameter)
    and `linear_solver` (`"cholesky"` (default), `"lu"`, `"qr"`, `"inv"`: dense
    $J^T J$; `"cg"`: matrix-free, for large controls). Note: LM may stop in a poor
    local minimum on chaotic 4DVar problems (docs/performance.md).
    """

    damping: float = 1e-6
    linear_solver: str = eqx.field(static=True, default="cholesky")

    def __check_init__(self):
        check_choice(
            "linear_solver", self.linear_solver, ("cholesky", "lu", "qr", "inv", "cg")
        )

    def _make(self, residual_fun, max_steps):
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
