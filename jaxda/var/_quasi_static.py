r"""Quasi-static window growth (Pires, Vautard & Talagrand 1996) against local minima.

Minimising a long-window 4DVar cost of a chaotic model from a poor first guess often
ends in a wrong local minimum. Quasi-static variational assimilation first fits the
observations of a short window, then lengthens the window step by step, starting each
stage from the previous stage's solution.

Here the window keeps its full length `T` at every stage (one compiled shape): stage $j$
uses only the observations at times $t < k_j$, $k_j = \lceil (j+1) T / S \rceil$ for
$S$ = `n_stages`. The states after $k_j$ are then constrained by the dynamics (weak
constraint) or the flow map (strong constraint) only, so each stage's solution is the
short-window solution continued by a forecast: exactly the first guess the next stage
needs. The stages run in one `lax.scan`.

When it helps (on F21-L63, Lorenz-63 with only the first component observed every 8
steps over 2 time units; `benchmarks/bench_var.py`, numbers in docs/benchmarks.md):

- Strong constraint (control $x_0$): Gauss-Newton from an interpolated first guess often
  ends above the lowest cost found; with 20 stages of 10 steps it reaches the lowest
  cost on every window.
- Weak constraint (control: the whole trajectory): Gauss-Newton already reaches the
  lowest cost found on every window, and the windows it leaves far from the truth are
  the minimiser's own error (started at the truth, it converges to the same minimum).
  Growth then cannot help and may end in a higher minimum.
- The last stage starts from a forecast that is far from the late observations: give
  it a larger `max_steps` than a plain solve needs (a plain solve's budget left many
  windows unconverged there); early stages need enough observations to determine the
  state.
"""

import equinox as eqx
import jax.numpy as jnp

from .._validation import check_int
from ._costs import StrongConstraint4DVar, WeakConstraint4DVar
from ._solver import AbstractSolver
from ._staged import AbstractStagedSolver


class QuasiStatic(AbstractStagedSolver):
    r"""Run `solver` on windows growing in `n_stages` stages (see the module docstring).

    `Solution.n_steps` is the total over the stages, `converged`/`result` are those of
    the last stage (the full problem).

    **Arguments:** `solver` (any solver for the problem), `n_stages` (>= 1; default 4),
    `steps_per_stage` (iteration cap of the intermediate stages; the last stage uses
    `solve`'s `max_steps`; default 20).
    """

    solver: AbstractSolver
    n_stages: int = eqx.field(static=True, default=4)
    steps_per_stage: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        check_int("n_stages", self.n_stages, minimum=1)

    def check_problem(self, problem):
        if not isinstance(problem, WeakConstraint4DVar | StrongConstraint4DVar):
            raise TypeError(
                "QuasiStatic needs a WeakConstraint4DVar or StrongConstraint4DVar; got "
                f"{type(problem).__name__}."
            )
        self.solver.check_problem(problem)

    def stage_inputs(self, problem):
        return jnp.arange(self.n_stages - 1)

    def stage_problem(self, problem, j):
        # Observations at times t < k_j, k_j = ceil((j + 1) T / S).
        mask = problem.obs.mask
        T = mask.shape[0]
        times = jnp.arange(T).reshape((T,) + (1,) * (mask.ndim - 1))
        k = -((-(j + 1) * T) // self.n_stages)
        return eqx.tree_at(lambda p: p.obs.mask, problem, mask & (times < k))
