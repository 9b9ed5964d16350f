r"""Globalisations of a Gauss-Newton step: Armijo backtracking and adaptive damping.

A globalisation takes the linear solve of a Gauss-Newton solver (`_normal.py`) and
turns its step $\delta$ into an accepted (or rejected) move. Both share the
finiteness rule: a step whose linear solve failed or which is not finite is zeroed
and not taken. Both report the point *stationary* when the predicted decrease
$|\nabla J^T \delta| / 2$ is within the solver's tolerance on the cost: that is
success even when no step lowers the cost (e.g. at an exact minimiser, slope 0).
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Scalar
from .._results import all_finite
from .._validation import check_int, check_positive
from ._normal import AbstractNormalSolve
from ._solver import tree_dot


class Trial(eqx.Module):
    """The outcome of one globalised step.

    **Fields:** `u`, `cost` (the new iterate, or the old one when rejected);
    `search` (the globalisation's state); `accepted`; `stationary` (predicted decrease
    negligible); `gave_up` (the globalisation cannot make progress: a failure unless
    the point is converged).
    """

    u: Any
    cost: Scalar
    search: Any
    accepted: Bool[Array, ""]
    stationary: Bool[Array, ""]
    gave_up: Bool[Array, ""]


def _checked_step(delta, grad, ok):
    """Zero a step whose solve failed or which is not finite; its slope
    $\\nabla J^T \\delta$."""
    ok = ok & all_finite(delta)
    delta = jax.tree_util.tree_map(lambda d: jnp.where(ok, d, 0.0), delta)
    return delta, jnp.where(ok, tree_dot(grad, delta), 0.0), ok


def _move(accepted, alpha, u, delta):
    return jax.tree_util.tree_map(
        lambda a, d: jnp.where(accepted, a + alpha * d, a), u, delta
    )


class AbstractGlobalisation(eqx.Module):
    """How a Gauss-Newton solver turns its linear-solve step into a move."""

    @abc.abstractmethod
    def init(self, cost: Scalar) -> Any:
        """The initial search state."""

    @abc.abstractmethod
    def step(
        self,
        problem,
        normal_solve: AbstractNormalSolve,
        u,
        cost: Scalar,
        search,
        negligible: Callable[[Scalar], Bool[Array, ""]],
    ) -> Trial:
        """One globalised step from `u` (cost `cost`); `negligible(decrease)` is the
        solver's tolerance test on a cost decrease."""

    @abc.abstractmethod
    def stats(self, search) -> dict:
        """What to put in `Solution.stats`."""


class ArmijoState(eqx.Module):
    step_length: Scalar


class ArmijoBacktracking(AbstractGlobalisation):
    r"""Backtracking line search: $x \leftarrow x + \alpha\delta$ with the largest
    $\alpha \in \{1, 1/2, \dots, 2^{-b}\}$ such that
    $J(x + \alpha\delta) \le J(x) + c\,\alpha\,\nabla J^T\delta$.

    **Arguments:**

    - `max_backtracks`: the most halvings $b$ (>= 0; default 20).
    - `armijo`: the sufficient-decrease constant $c$ (> 0; default 1e-4).
    """

    max_backtracks: int = eqx.field(static=True, default=20)
    armijo: float = 1e-4

    def __check_init__(self):
        check_int("max_backtracks", self.max_backtracks, minimum=0)
        check_positive("armijo", self.armijo)

    def init(self, cost):
        return ArmijoState(jnp.zeros((), jnp.result_type(cost)))

    def step(self, problem, normal_solve, u, cost, search, negligible):
        delta, grad, ok = normal_solve.direction(problem, u, None)
        delta, slope, ok = _checked_step(delta, grad, ok)
        stationary = ok & negligible(0.5 * jnp.abs(slope))
        descent = ok & (slope < 0)
        delta = jax.tree_util.tree_map(lambda d: jnp.where(descent, d, 0.0), delta)
        slope = jnp.where(descent, slope, 0.0)

        def trial(alpha):
            f = problem.cost(_move(True, alpha, u, delta))
            return jnp.where(jnp.isfinite(f), f, jnp.inf)

        def sufficient(alpha, f_new):
            return f_new <= cost + self.armijo * alpha * slope

        def ls_cond(c):
            alpha, f_new, k = c
            return ~sufficient(alpha, f_new) & (k < self.max_backtracks)

        def ls_body(c):
            alpha, _, k = c
            return alpha / 2, trial(alpha / 2), k + 1

        one = jnp.ones((), jnp.result_type(cost))
        f1 = jnp.where(descent, trial(one), jnp.inf)
        alpha, f_new, _ = jax.lax.while_loop(ls_cond, ls_body, (one, f1, jnp.array(0)))
        accepted = descent & sufficient(alpha, f_new) & jnp.isfinite(f_new)
        return Trial(
            u=_move(accepted, alpha, u, delta),
            cost=jnp.where(accepted, f_new, cost),
            search=ArmijoState(jnp.where(accepted, alpha, 0.0)),
            accepted=accepted,
            stationary=stationary,
            gave_up=~accepted,
        )

    def stats(self, search):
        return {"last_step_length": search.step_length}


class DampingState(eqx.Module):
    damping: Scalar


class AdaptiveDamping(AbstractGlobalisation):
    r"""Levenberg-Marquardt damping: the step solves
    $(A + \lambda\,\mathrm{diag}(A))\,\delta = -\nabla J$; a step that lowers the cost
    is taken and $\lambda \leftarrow \lambda/3$, otherwise $\lambda \leftarrow
    4\lambda$. Gives up once $\lambda$ exceeds `max_damping`; stationary only while
    $\lambda \le 1$ (a heavily damped step predicts little decrease anywhere).

    **Arguments:**

    - `damping`: the initial $\lambda$ (> 0; default 1e-3).
    - `max_damping`: the largest $\lambda$ (> 0; default 1e10).
    """

    damping: float = 1e-3
    max_damping: float = 1e10

    def __check_init__(self):
        check_positive("damping", self.damping)
        check_positive("max_damping", self.max_damping)

    def init(self, cost):
        return DampingState(jnp.asarray(self.damping, jnp.result_type(cost)))

    def step(self, problem, normal_solve, u, cost, search, negligible):
        lam = search.damping
        delta, grad, ok = normal_solve.direction(problem, u, lam)
        delta, slope, ok = _checked_step(delta, grad, ok)
        f_new = problem.cost(_move(True, 1.0, u, delta))
        accepted = ok & jnp.isfinite(f_new) & (f_new < cost)
        lam_new = jnp.where(accepted, lam / 3, lam * 4)
        return Trial(
            u=_move(accepted, 1.0, u, delta),
            cost=jnp.where(accepted, f_new, cost),
            search=DampingState(lam_new),
            accepted=accepted,
            stationary=ok & negligible(0.5 * jnp.abs(slope)) & (lam <= 1.0),
            gave_up=lam_new > self.max_damping,
        )

    def stats(self, search):
        return {"damping": search.damping}
