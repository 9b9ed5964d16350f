r"""The solver interface and the one loop driver.

`AbstractSolver` declares only `run` (what `solve` calls after its argument checks).
`AbstractIterativeSolver` is the solver with an `init` / `step` / `terminate` loop (as
optimistix's iterative solvers); `iterate` drives it in one `lax.while_loop` until
`terminate` holds, the cost turns non-finite, or `max_steps` is reached. It returns the
last iterate when the solve succeeded (the tolerances hold there), else the best
iterate seen: the output is never NaN unless the first guess already was. Solvers that
run someone else's loop (jaxopt) or a sequence of solves (the staged solvers) implement
`run` directly and wrap an iterative solver instead of stubbing `init`/`step`.

Tolerances: a test $|a| \le \mathrm{atol} + \mathrm{rtol}\,|b|$ uses
$\max(\mathrm{rtol}, 100\,\varepsilon)$ with $\varepsilon$ the machine epsilon of the
iterate's dtype (so that float32 solves can meet the float64 defaults); every solver's
docstring says which quantities it tests.
"""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Int, Scalar
from .._results import RESULTS
from ._costs import AbstractVarProblem
from ._solution import Iterates, SaveIterates, Solution


def tree_max_abs(tree) -> Scalar:
    """Largest absolute entry of a pytree of arrays."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))


def tree_dtype(tree):
    return jnp.result_type(*jax.tree_util.tree_leaves(tree))


def tree_dot(a, b) -> Scalar:
    """$\\sum a \\cdot b$ over the leaves of two pytrees of the same structure."""
    return sum(
        jnp.sum(x * y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def effective_rtol(rtol, dtype) -> Scalar:
    """`rtol` raised to at least 100 machine epsilons of `dtype` (documented floor)."""
    return jnp.maximum(rtol, 100 * jnp.finfo(dtype).eps)


def cauchy_converged(f_old, f_new, u_old, u_new, rtol, atol) -> Bool[Array, ""]:
    r"""Both the cost change and the step are small (optimistix's Cauchy test):
    $|\Delta f| \le a + r|f|$ and $\max|\Delta u| \le a + r \max|u|$, with $r$ the
    `effective_rtol`."""
    rtol = effective_rtol(rtol, tree_dtype(u_new))
    df = jnp.abs(f_old - f_new) <= atol + rtol * jnp.abs(f_new)
    du_tree = jax.tree_util.tree_map(lambda a, b: a - b, u_new, u_old)
    du = tree_max_abs(du_tree) <= atol + rtol * tree_max_abs(u_new)
    return df & du


class AbstractSolver(eqx.Module):
    """A 4DVar solver: anything `solve` can run."""

    # Whether `solve` wraps `run` in `eqx.filter_jit` (jaxopt solvers jit themselves,
    # and their implicit differentiation fails when called inside an inner `jit`).
    jit_in_solve: ClassVar[bool] = True

    def check_problem(self, problem) -> None:
        """Raise `TypeError` unless this solver can handle `problem` (static)."""
        if not isinstance(problem, AbstractVarProblem):
            raise TypeError(
                f"`problem` must be a jaxda.var problem; got {type(problem).__name__}."
            )

    @abc.abstractmethod
    def run(
        self, problem, x_init, max_steps: int, save: SaveIterates | None = None
    ) -> Solution:
        """Solve from `x_init` in at most `max_steps` steps.

        Traceable and unchecked: `solve` is the public entry point (argument checks,
        `jit`, `throw`). Call `run` only inside another solver.
        """


class AbstractSolverState(eqx.Module):
    """The state of an iterative solver: at least the iterate `u` and its `cost`."""

    u: eqx.AbstractVar[Any]
    cost: eqx.AbstractVar[Scalar]


class AbstractIterativeSolver(AbstractSolver):
    """A solver defined by `init`, `step` and `terminate`, driven by `iterate`."""

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]

    @abc.abstractmethod
    def init(self, problem, u0) -> AbstractSolverState:
        """The initial state at the first guess `u0`."""

    @abc.abstractmethod
    def step(self, problem, state: AbstractSolverState) -> AbstractSolverState:
        """One iteration."""

    @abc.abstractmethod
    def terminate(
        self, problem, state: AbstractSolverState
    ) -> tuple[Bool[Array, ""], RESULTS]:
        """`(done, result)` after a step: whether to stop, and why (`successful` or a
        failure such as `no_decrease`)."""

    def stats(self, state: AbstractSolverState) -> dict:
        """Extra solver statistics to put in `Solution.stats`."""
        return {}

    def run(self, problem, x_init, max_steps: int, save=None) -> Solution:
        return iterate(self, problem, x_init, max_steps, save)


class _Carry(eqx.Module):
    state: Any
    best_u: Any
    best_cost: Scalar
    n_steps: Int[Array, ""]
    done: Bool[Array, ""]
    result: RESULTS
    saved_x: Any
    saved_cost: Any


def _write(buffer, index, value):
    if buffer is None:
        return None
    return jax.tree_util.tree_map(lambda b, v: b.at[index].set(v), buffer, value)


def _pad(buffer, n_steps):
    """Repeat entry `n_steps` over the entries after it."""
    if buffer is None:
        return None

    def pad(b):
        keep = (jnp.arange(b.shape[0]) <= n_steps).reshape((-1,) + (1,) * (b.ndim - 1))
        return jnp.where(keep, b, b[n_steps])

    return jax.tree_util.tree_map(pad, buffer)


def iterate(
    solver: AbstractIterativeSolver,
    problem,
    u0,
    max_steps: int,
    save: SaveIterates | None = None,
    cost_target=None,
) -> Solution:
    """Run `solver` on `problem` from `u0` for at most `max_steps` steps (traceable).

    With `cost_target`, the run also stops, successfully, at the first iterate
    (`u0` included) whose cost is at most `cost_target`."""
    state = solver.init(problem, u0)
    cost0 = state.cost
    finite0 = jnp.isfinite(cost0)
    reached0 = jnp.array(False)
    if cost_target is not None:
        reached0 = finite0 & (cost0 <= cost_target)
    saved_x = saved_cost = None
    if save is not None and save.x:
        saved_x = jax.tree_util.tree_map(
            lambda a: jnp.zeros((max_steps + 1, *jnp.shape(a)), jnp.result_type(a)), u0
        )
        saved_x = _write(saved_x, 0, u0)
    if save is not None and save.cost:
        saved_cost = (
            jnp.zeros((max_steps + 1,), jnp.result_type(cost0)).at[0].set(cost0)
        )
    carry = _Carry(
        state=state,
        best_u=u0,
        best_cost=jnp.where(finite0, cost0, jnp.inf),
        n_steps=jnp.array(0),
        done=~finite0 | reached0,
        result=RESULTS.where(
            reached0,
            RESULTS.successful,
            RESULTS.where(finite0, RESULTS.max_steps_reached, RESULTS.nonfinite),
        ),
        saved_x=saved_x,
        saved_cost=saved_cost,
    )

    def cond(c):
        return ~c.done & (c.n_steps < max_steps)

    def body(c):
        new_state = solver.step(problem, c.state)
        terminated, why = solver.terminate(problem, new_state)
        finite = jnp.isfinite(new_state.cost)
        if cost_target is not None:
            reached = finite & (new_state.cost <= cost_target)
            why = RESULTS.where(reached, RESULTS.successful, why)
            terminated = terminated | reached
        better = finite & (new_state.cost < c.best_cost)
        best_u = jax.tree_util.tree_map(
            lambda a, b: jnp.where(better, a, b), new_state.u, c.best_u
        )
        best_cost = jnp.where(better, new_state.cost, c.best_cost)
        result = RESULTS.where(
            ~finite,
            RESULTS.nonfinite,
            RESULTS.where(terminated, why, RESULTS.max_steps_reached),
        )
        n = c.n_steps + 1
        return _Carry(
            state=new_state,
            best_u=best_u,
            best_cost=best_cost,
            n_steps=n,
            done=~finite | terminated,
            result=result,
            saved_x=_write(c.saved_x, n, new_state.u),
            saved_cost=_write(c.saved_cost, n, new_state.cost),
        )

    carry = jax.lax.while_loop(cond, body, carry)
    # On success the tolerances hold at the last iterate: return it (its cost is within
    # them of the best; for first-order solvers the best may be an earlier, rounded
    # one). Otherwise the best iterate, finite whenever `u0` is.
    last = (carry.result == RESULTS.successful) & jnp.isfinite(carry.state.cost)
    x = jax.tree_util.tree_map(
        lambda a, b: jnp.where(last, a, b), carry.state.u, carry.best_u
    )
    cost = jnp.where(last, carry.state.cost, carry.best_cost)
    iterates = None
    if save is not None:
        iterates = Iterates(
            x=_pad(carry.saved_x, carry.n_steps),
            cost=_pad(carry.saved_cost, carry.n_steps),
            n_saved=carry.n_steps + 1,
        )
    return Solution(
        x=x,
        cost=cost,
        n_steps=carry.n_steps,
        result=carry.result,
        stats=solver.stats(carry.state),
        iterates=iterates,
    )
