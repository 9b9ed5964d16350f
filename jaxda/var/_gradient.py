"""First-order solvers: fixed-step gradient descent and any optax optimizer."""

from typing import Any

import equinox as eqx
import jax
import optax

from .._custom_types import Array, Scalar
from .._validation import check_positive
from ._solution import AbstractSolver, cauchy_converged


class _GradState(eqx.Module):
    u: Any
    cost: Scalar
    grad: Any
    opt_state: Any = None


class GradientDescent(AbstractSolver):
    r"""Fixed-step gradient descent: $u_{k+1} = u_k - \eta \nabla J(u_k)$.

    The "FSGD" baseline of 4DVarNet ([F21]). Stops when the cost change and the step
    are both below `atol + rtol * |.|`; diverges (and reports `nonfinite`) when the step
    is too large.

    **Arguments:** `learning_rate` $\eta > 0$; `rtol`, `atol` (stopping tolerances).
    """

    learning_rate: float | Array
    rtol: float = 1e-6
    atol: float = 1e-10

    def __check_init__(self):
        check_positive("learning_rate", self.learning_rate)
        check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)

    def init(self, problem, u0):
        cost, grad = jax.value_and_grad(problem.cost)(u0)
        return _GradState(u0, cost, grad)

    def step(self, problem, state):
        u = jax.tree_util.tree_map(
            lambda a, g: a - self.learning_rate * g, state.u, state.grad
        )
        cost, grad = jax.value_and_grad(problem.cost)(u)
        new = _GradState(u, cost, grad)
        conv = cauchy_converged(state.cost, cost, state.u, u, self.rtol, self.atol)
        return new, conv, jax.numpy.array(False)


class OptaxSolver(AbstractSolver):
    r"""Minimise the cost with any optax optimizer, e.g. `optax.adam(1e-2)`.

    $u_{k+1} = u_k + \mathrm{update}(\nabla J(u_k), \text{state}_k)$; same stopping test
    as `GradientDescent`.

    **Arguments:** `optimizer` (an `optax.GradientTransformation`); `rtol`, `atol`.
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    rtol: float = 1e-6
    atol: float = 1e-10

    def __check_init__(self):
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise TypeError(
                "`optimizer` must be an optax.GradientTransformation; got "
                f"{type(self.optimizer).__name__}."
            )

    def init(self, problem, u0):
        cost, grad = jax.value_and_grad(problem.cost)(u0)
        return _GradState(u0, cost, grad, self.optimizer.init(u0))

    def step(self, problem, state):
        updates, opt_state = self.optimizer.update(state.grad, state.opt_state, state.u)
        u = optax.apply_updates(state.u, updates)
        cost, grad = jax.value_and_grad(problem.cost)(u)
        new = _GradState(u, cost, grad, opt_state)
        conv = cauchy_converged(state.cost, cost, state.u, u, self.rtol, self.atol)
        return new, conv, jax.numpy.array(False)
