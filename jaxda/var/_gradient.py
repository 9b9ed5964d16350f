r"""First-order solvers: fixed-step gradient descent and any optax optimizer.

Stopping rule (both): converged when the cost change and the step are below
`atol + rtol * |.|` (`cauchy_converged`) *and* the gradient has shrunk,
$\max|\nabla J(u_k)| \le \mathrm{atol} + \mathrm{rtol}\,\max|\nabla J(u_0)|$. A small
step alone proves nothing for a first-order method (a tiny learning rate makes every
step small), so `converged` always implies a small gradient. `rtol` is raised to at
least 100 machine epsilons of the iterate's dtype.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._custom_types import Array, Bool, Scalar
from .._results import RESULTS
from .._validation import check_positive
from ._solver import (
    AbstractIterativeSolver,
    AbstractSolverState,
    cauchy_converged,
    effective_rtol,
    tree_dtype,
    tree_max_abs,
)


class FirstOrderState(AbstractSolverState):
    u: Any
    cost: Scalar
    grad: Any
    grad0: Scalar  # max |grad J(u_0)|, the scale of the gradient test
    opt_state: Any
    converged: Bool[Array, ""]


class _AbstractFirstOrder(AbstractIterativeSolver):
    """`init` / `terminate` shared by the first-order solvers; subclasses give
    `update` (the new iterate and optimizer state)."""

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]

    def __check_init__(self):
        check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)

    @abc.abstractmethod
    def update(self, u, grad, opt_state) -> tuple[Any, Any]:
        """`(u_new, opt_state_new)`."""

    def init_opt_state(self, u0) -> Any:
        return None

    def init(self, problem, u0):
        cost, grad = jax.value_and_grad(problem.cost)(u0)
        return FirstOrderState(
            u0,
            cost,
            grad,
            tree_max_abs(grad),
            self.init_opt_state(u0),
            jnp.array(False),
        )

    def step(self, problem, state):
        u, opt_state = self.update(state.u, state.grad, state.opt_state)
        cost, grad = jax.value_and_grad(problem.cost)(u)
        cauchy = cauchy_converged(state.cost, cost, state.u, u, self.rtol, self.atol)
        rtol = effective_rtol(self.rtol, tree_dtype(u))
        small_grad = tree_max_abs(grad) <= self.atol + rtol * state.grad0
        return FirstOrderState(
            u, cost, grad, state.grad0, opt_state, cauchy & small_grad
        )

    def terminate(self, problem, state):
        return state.converged, RESULTS.successful


class GradientDescent(_AbstractFirstOrder):
    r"""Fixed-step gradient descent: $u_{k+1} = u_k - \eta \nabla J(u_k)$.

    The "FSGD" baseline of 4DVarNet ([F21]). Stopping rule in the module docstring;
    diverges (and reports `nonfinite`) when the step is too large.
    """

    learning_rate: float | Array
    rtol: float
    atol: float

    def __init__(self, learning_rate, rtol: float = 1e-6, atol: float = 1e-10):
        """**Arguments:**

        - `learning_rate`: $\\eta > 0$.
        - `rtol`, `atol`: stopping tolerances (>= 0; defaults 1e-6, 1e-10).
        """
        check_positive("learning_rate", learning_rate)
        self.learning_rate = learning_rate
        self.rtol = rtol
        self.atol = atol

    def update(self, u, grad, opt_state):
        u = jax.tree_util.tree_map(lambda a, g: a - self.learning_rate * g, u, grad)
        return u, opt_state


class OptaxSolver(_AbstractFirstOrder):
    r"""Minimise the cost with any optax optimizer, e.g. `optax.adam(1e-2)`.

    $u_{k+1} = u_k + \mathrm{update}(\nabla J(u_k), \text{state}_k)$; stopping rule in
    the module docstring. Optimizers with normalised steps (Adam) keep moving by about
    their learning rate near a minimiser, so the gradient test may never hold with a
    constant learning rate: use a decaying schedule, or read `max_steps_reached` as
    "ran to the cap".
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    rtol: float
    atol: float

    def __init__(
        self,
        optimizer: optax.GradientTransformation,
        rtol: float = 1e-6,
        atol: float = 1e-10,
    ):
        """**Arguments:**

        - `optimizer`: an `optax.GradientTransformation`.
        - `rtol`, `atol`: stopping tolerances (>= 0; defaults 1e-6, 1e-10).
        """
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                "`optimizer` must be an optax.GradientTransformation; got "
                f"{type(optimizer).__name__}."
            )
        self.optimizer = optimizer
        self.rtol = rtol
        self.atol = atol

    def init_opt_state(self, u0):
        return self.optimizer.init(u0)

    def update(self, u, grad, opt_state):
        updates, opt_state = self.optimizer.update(grad, opt_state, u)
        return optax.apply_updates(u, updates), opt_state
