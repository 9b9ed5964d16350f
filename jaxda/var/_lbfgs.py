r"""L-BFGS with a strong-Wolfe (zoom) line search: optax's `lbfgs` as a `var` solver.

The limited-memory BFGS method [LN89] keeps the last $m$ pairs
$s_k = u_{k+1} - u_k$, $y_k = \nabla J(u_{k+1}) - \nabla J(u_k)$ and applies the
inverse-Hessian approximation they define by the two-loop recursion
[NW06, Algorithm 7.4], $O(m n)$ per iteration and memory, no $n \times n$ matrix;
the step $u_{k+1} = u_k - \eta_k H_k \nabla J(u_k)$ takes $\eta_k$ from a zoom line
search meeting the strong Wolfe conditions [NW06, Algorithm 3.5-3.6] (sufficient
decrease and small curvature, which keeps $s_k^\top y_k > 0$ and $H_k$ positive
definite). Each line-search trial costs one cost-and-gradient evaluation (for 4DVar:
one forward and one adjoint run of the model); the value and gradient of the accepted
trial are reused by the next iteration.

We use optax's `optax.lbfgs` / `optax.scale_by_zoom_linesearch` rather than
optimistix's `LBFGS`: optax's line search enforces the curvature (second Wolfe)
condition that quasi-Newton updates rely on, while optimistix's L-BFGS defaults to an
Armijo backtracking search; optax's transformation also fits the `init` / `step`
loop of `jaxda.var` as a plain `(init, update)` pair, as `OptaxSolver` does.

Stopping rule: converged when the gradient has shrunk,
$\max|\nabla J(u_k)| \le \mathrm{atol} + \mathrm{rtol}\,\max|\nabla J(u_0)|$ (the
relative-gradient test; `rtol` is raised to at least 100 machine epsilons of the
iterate's dtype); `no_decrease` when a line search fails before that (no trial met
its decrease test and the cost did not go down). Near a minimiser the line search
accepts the approximate Wolfe conditions of [HZ06] (slopes instead of rounded cost
differences), so the cost may rise by rounding while the gradient still shrinks; the
estimate returned after a failure is the iterate with the lowest cost. `solve`'s
`cost_target` stops on the cost instead.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._custom_types import Array, Bool, Int, Scalar
from .._results import RESULTS
from .._validation import check_int, check_positive
from ._solver import (
    AbstractIterativeSolver,
    AbstractSolverState,
    effective_rtol,
    tree_dtype,
    tree_max_abs,
)


class LBFGSState(AbstractSolverState):
    """`u`, `cost`, `grad` at the iterate; `grad0` = max |grad J(u_0)|; optax's
    state; this step's verdicts; the number of cost-and-gradient evaluations."""

    u: Any
    cost: Scalar
    grad: Any
    grad0: Scalar
    opt_state: Any
    converged: Bool[Array, ""]
    failed: Bool[Array, ""]
    evaluations: Int[Array, ""]


class LBFGS(AbstractIterativeSolver):
    r"""Limited-memory BFGS with a zoom (strong Wolfe) line search (see the module
    docstring for the method, the stopping rule and the choice of optax).

    Works on any problem and any control pytree (a `ControlTransform`'s $w$, a
    `WeakConstraintForcing`'s $(w, v)$, a whole trajectory). The gradient is one
    reverse-mode pass, so memory is the model's adjoint: checkpoint the trajectory
    (`rollout(..., checkpoint=True)`) on large grids.
    `Solution.stats["evaluations"]` is the number of cost-and-gradient evaluations
    (the first one included): each is one forward and one adjoint model run.

    **Arguments:**

    - `rtol`, `atol`: the gradient test's tolerances (>= 0; defaults 1e-6, 1e-10).
    - `memory_size`: the number $m$ of stored pairs (>= 1; default 10).
    - `max_linesearch_steps`: the most trials per line search (>= 1; default 20).
    """

    rtol: float = 1e-6
    atol: float = 1e-10
    memory_size: int = eqx.field(static=True, default=10)
    max_linesearch_steps: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)
        check_int("memory_size", self.memory_size, minimum=1)
        check_int("max_linesearch_steps", self.max_linesearch_steps, minimum=1)

    def _optimizer(self) -> optax.GradientTransformationExtraArgs:
        linesearch = optax.scale_by_zoom_linesearch(
            max_linesearch_steps=self.max_linesearch_steps,
            initial_guess_strategy="one",
        )
        return optax.lbfgs(memory_size=self.memory_size, linesearch=linesearch)

    def init(self, problem, u0):
        cost, grad = jax.value_and_grad(problem.cost)(u0)
        return LBFGSState(
            u=u0,
            cost=cost,
            grad=grad,
            grad0=tree_max_abs(grad),
            opt_state=self._optimizer().init(u0),
            converged=jnp.array(False),
            failed=jnp.array(False),
            evaluations=jnp.array(1),
        )

    def step(self, problem, state):
        updates, opt_state = self._optimizer().update(
            state.grad,
            state.opt_state,
            state.u,
            value=state.cost,
            grad=state.grad,
            value_fn=problem.cost,
        )
        u = optax.apply_updates(state.u, updates)
        # The line search leaves the value and gradient of its accepted trial.
        cost = optax.tree.get(opt_state, "value")
        grad = optax.tree.get(opt_state, "grad")
        info = optax.tree.get(opt_state, "info")
        rtol = effective_rtol(self.rtol, tree_dtype(u))
        converged = tree_max_abs(grad) <= self.atol + rtol * state.grad0
        # A failed line search: its own (approximate-Wolfe) decrease test is violated
        # at the step it returned, and the cost did not go down.
        failed = ~converged & (info.decrease_error > 0) & ~(cost < state.cost)
        return LBFGSState(
            u=u,
            cost=cost,
            grad=grad,
            grad0=state.grad0,
            opt_state=opt_state,
            converged=converged,
            failed=failed,
            evaluations=state.evaluations + info.num_linesearch_steps,
        )

    def terminate(self, problem, state):
        result = RESULTS.where(state.converged, RESULTS.successful, RESULTS.no_decrease)
        return state.converged | state.failed, result

    def stats(self, state):
        return {"evaluations": state.evaluations}
