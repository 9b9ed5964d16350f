r"""Model-error continuation: solve with an inflated $Q$ first, then the problem's $Q$.

A weak-constraint cost with a small model-error variance $Q$ over a long window of a
chaotic model is nearly the strong-constraint cost: many local minima, and Gauss-Newton
from a poor first guess (e.g. an interpolation of the observations) stalls far from the
truth. With $Q$ inflated by a factor $f \gg 1$ the dynamics term is a weaker
smoothness prior and the cost is much closer to convex; its minimiser is a good first
guess for a less inflated problem. The stages run in one `lax.scan` over the factors
$f_1 > f_2 > \dots$, then the problem itself is solved.

On F21-L96 windows (Lorenz-96, half the components observed every 4 steps, small
$Q$), Gauss-Newton from the interpolated observations ends far from the truth on every
window, and continuation with factors (200, 10) on none, at a far lower cost (the
numbers: docs/benchmarks.md).
"""

import equinox as eqx
import jax.numpy as jnp

from .._validation import check_positive
from ._costs import WeakConstraint4DVar
from ._solver import AbstractSolver
from ._staged import AbstractStagedSolver


class ModelErrorContinuation(AbstractStagedSolver):
    r"""Run `solver` on the problem with $Q$ multiplied by each of `inflation` in turn,
    then on the problem itself (see the module docstring).

    Stage $j$ minimises the weak-constraint cost with model-error variance $f_j Q$ from
    the previous stage's estimate (at most `steps_per_stage` steps); the last stage
    uses `solve`'s `max_steps`. `Solution.n_steps` is the total over the stages,
    `converged`/`result`/`cost` are those of the last stage (the problem's own cost).

    **Arguments:** `solver` (a solver for `WeakConstraint4DVar`, e.g. `GaussNewton()`),
    `inflation` (factors $f_j > 0$, applied in the given order; default `(200.0,
    10.0)`), `steps_per_stage` (>= 0; default 20).
    """

    solver: AbstractSolver
    inflation: tuple[float, ...] = eqx.field(static=True, default=(200.0, 10.0))
    steps_per_stage: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        if not isinstance(self.inflation, tuple) or not self.inflation:
            raise TypeError(
                "`inflation` must be a non-empty tuple of factors; got "
                f"{self.inflation!r}."
            )
        for f in self.inflation:
            check_positive("inflation", f)

    def check_problem(self, problem):
        if not isinstance(problem, WeakConstraint4DVar):
            raise TypeError(
                "ModelErrorContinuation needs a WeakConstraint4DVar; got "
                f"{type(problem).__name__}."
            )
        self.solver.check_problem(problem)

    def stage_inputs(self, problem):
        q = jnp.asarray(problem.model_var)
        return jnp.asarray(self.inflation, dtype=jnp.result_type(q, float))

    def stage_problem(self, problem, f):
        return eqx.tree_at(lambda p: p.model_var, problem, problem.model_var * f)
