"""The `Solution` pytree, result codes, the solver interface and the one loop driver.

A solver is an immutable `eqx.Module` with `init(problem, u0) -> state` and
`step(problem, state) -> (state, converged, failed)`; its state is a Module with at
least the fields `u` (current iterate) and `cost`. `solve` runs `step` in one
`lax.while_loop` until the solver's stopping test holds, the cost turns non-finite, the
solver reports failure, or `max_steps` is reached, and keeps the best iterate: the
output is never NaN unless the initial guess already was.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Int, Scalar
from .._validation import check_int
from ._costs import AbstractVarProblem


class RESULTS(eqx.Enumeration):
    """Why a solver stopped."""

    successful = "The stopping tolerances were met."
    max_steps_reached = "The iteration cap `max_steps` was reached before convergence."
    nonfinite = "The cost became non-finite (NaN or inf); the best iterate is returned."
    no_decrease = (
        "The solver could not decrease the cost (line search or damping failed)."
    )


class Solution(eqx.Module):
    """The result of a 4DVar solve.

    **Fields:**
    - `x`: the estimate (the iterate with the lowest cost seen).
    - `cost`: its cost.
    - `n_steps`: the number of iterations taken.
    - `converged`: whether the stopping tolerances were met (`result == successful`).
    - `result`: a `RESULTS` code (successful, max_steps_reached, nonfinite,
      no_decrease).
    - `stats`: solver-specific extras (a dict of arrays; may be empty).
    """

    x: Any
    cost: Scalar
    n_steps: Int[Array, ""]
    converged: Bool[Array, ""]
    result: RESULTS
    stats: dict = eqx.field(default_factory=dict)


def tree_max_abs(tree) -> Scalar:
    """Largest absolute entry of a pytree of arrays."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))


def tree_dtype(tree):
    return jnp.result_type(*jax.tree_util.tree_leaves(tree))


def cauchy_converged(f_old, f_new, u_old, u_new, rtol, atol) -> Bool[Array, ""]:
    r"""Both the cost change and the step are small (optimistix's Cauchy test):
    $|\Delta f| \le a + r|f|$ and $\max|\Delta u| \le a + r \max|u|$. `rtol` is raised
    to at least 100 machine epsilons of the iterate's dtype, so that float32 solves can
    meet it."""
    eps = jnp.finfo(tree_dtype(u_new)).eps
    rtol = jnp.maximum(rtol, 100 * eps)
    df = jnp.abs(f_old - f_new) <= atol + rtol * jnp.abs(f_new)
    du_tree = jax.tree_util.tree_map(lambda a, b: a - b, u_new, u_old)
    du = tree_max_abs(du_tree) <= atol + rtol * tree_max_abs(u_new)
    return df & du


class AbstractSolver(eqx.Module):
    """A 4DVar solver: `init`, `step`; driven by `solve`."""

    # Whether `solve` wraps `run` in `eqx.filter_jit` (jaxopt solvers jit themselves,
    # and their implicit differentiation fails when called inside an inner `jit`).
    jit_in_solve: ClassVar[bool] = True

    @abc.abstractmethod
    def init(self, problem, u0):
        """Initial solver state (a Module with fields `u` and `cost`)."""

    @abc.abstractmethod
    def step(self, problem, state):
        """One iteration: returns `(state, converged, failed)`."""

    def stats(self, state) -> dict:
        """Extra solver statistics to put in `Solution.stats`."""
        return {}

    def check_problem(self, problem) -> None:
        """Raise `TypeError` unless this solver can handle `problem`."""
        if not isinstance(problem, AbstractVarProblem):
            raise TypeError(
                f"`problem` must be a jaxda.var problem; got {type(problem).__name__}."
            )

    def run(self, problem, u0, max_steps: int) -> Solution:
        """Solve (traceable; no argument checks). `solve` is the public entry point."""
        return iterate(self, problem, u0, max_steps)


class _Carry(eqx.Module):
    state: Any
    best_u: Any
    best_cost: Scalar
    n_steps: Int[Array, ""]
    done: Bool[Array, ""]
    result: RESULTS


def iterate(solver: AbstractSolver, problem, u0, max_steps: int) -> Solution:
    """Run `solver` on `problem` from `u0` for at most `max_steps` steps (traceable)."""
    state = solver.init(problem, u0)
    cost0 = state.cost
    finite0 = jnp.isfinite(cost0)
    carry = _Carry(
        state=state,
        best_u=u0,
        best_cost=jnp.where(finite0, cost0, jnp.inf),
        n_steps=jnp.array(0),
        done=~finite0,
        result=RESULTS.where(finite0, RESULTS.max_steps_reached, RESULTS.nonfinite),
    )

    def cond(c):
        return ~c.done & (c.n_steps < max_steps)

    def body(c):
        new_state, converged, failed = solver.step(problem, c.state)
        finite = jnp.isfinite(new_state.cost)
        better = finite & (new_state.cost < c.best_cost)
        best_u = jax.tree_util.tree_map(
            lambda a, b: jnp.where(better, a, b), new_state.u, c.best_u
        )
        best_cost = jnp.where(better, new_state.cost, c.best_cost)
        result = RESULTS.where(
            ~finite,
            RESULTS.nonfinite,
            RESULTS.where(
                converged,
                RESULTS.successful,
                RESULTS.where(failed, RESULTS.no_decrease, RESULTS.max_steps_reached),
            ),
        )
        done = ~finite | converged | failed
        return _Carry(new_state, best_u, best_cost, c.n_steps + 1, done, result)

    carry = jax.lax.while_loop(cond, body, carry)
    return Solution(
        x=carry.best_u,
        cost=carry.best_cost,
        n_steps=carry.n_steps,
        converged=carry.result == RESULTS.successful,
        result=carry.result,
        stats=solver.stats(carry.state),
    )


@eqx.filter_jit
def _solve_jit(problem, solver, u0, max_steps):
    return solver.run(problem, u0, max_steps)


def solve(problem, solver, x_init, *, max_steps: int = 100) -> Solution:
    r"""Minimise a 4DVar problem's cost with `solver`, starting from `x_init`.

    Validates the arguments (concrete values only), then runs the solver's iteration
    under `jit` until its tolerances are met, the cost becomes non-finite, the solver
    cannot decrease the cost, or `max_steps` iterations were taken. Works under
    `jax.jit` and `jax.vmap` (vmap over a batch of windows by vmapping over `problem`
    and `x_init`).

    **Arguments:**
    - `problem`: a `WeakConstraint4DVar`, `StrongConstraint4DVar` or
      `JointStateParameter`.
    - `solver`: a `GradientDescent`, `OptaxSolver`, `GaussNewton`, `LevenbergMarquardt`,
      `Incremental4DVar`, `StrongGaussNewton`, `JaxoptGaussNewton`, ... instance.
    - `x_init`: the first guess of the control.
    - `max_steps`: iteration cap (>= 0).

    **Returns:** a `Solution` (`x`, `cost`, `n_steps`, `converged`, `result`, `stats`).
    """
    max_steps = check_int("max_steps", max_steps, minimum=0)
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"`solver` must be a jaxda.var solver; got {type(solver).__name__}."
        )
    problem.check_control("x_init", x_init)
    solver.check_problem(problem)
    x_init = jax.tree_util.tree_map(jnp.asarray, x_init)
    if not solver.jit_in_solve:
        return solver.run(problem, x_init, max_steps)
    return _solve_jit(problem, solver, x_init, max_steps)
