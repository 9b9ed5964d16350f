"""Staged solvers: a sequence of easier problems, each from the last solution.

Used by `QuasiStatic` and `ModelErrorContinuation`."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._validation import check_int
from ._solution import Solution
from ._solver import AbstractSolver


class AbstractStagedSolver(AbstractSolver):
    r"""Run `solver` on a sequence of modified problems, then on the problem itself.

    Stage $j$ solves `stage_problem(problem, stage_inputs(problem)[j])` from the
    previous stage's estimate (at most `steps_per_stage` steps); the stages run in one
    `lax.scan`, and the final solve uses `solve`'s `max_steps`. `Solution.n_steps` is
    the total over the stages; `result`/`cost` (and `iterates`, when saved) are those
    of the last solve. It wraps `solver` (any `AbstractSolver`) rather than iterating
    itself; subclasses give `stage_inputs` and `stage_problem`.
    """

    solver: eqx.AbstractVar[AbstractSolver]
    steps_per_stage: eqx.AbstractVar[int]

    def __check_init__(self):
        if not isinstance(self.solver, AbstractSolver):
            raise TypeError(
                "`solver` must be a jaxda.var solver; got "
                f"{type(self.solver).__name__}."
            )
        check_int("steps_per_stage", self.steps_per_stage, minimum=0)

    @abc.abstractmethod
    def stage_inputs(self, problem):
        """An array whose leading axis indexes the intermediate stages."""

    @abc.abstractmethod
    def stage_problem(self, problem, stage_input):
        """The problem solved at the stage given by `stage_input`."""

    def run(self, problem, u0, max_steps: int, save=None) -> Solution:
        def body(carry, stage_input):
            u, n = carry
            stage = self.stage_problem(problem, stage_input)
            sol = self.solver.run(stage, u, self.steps_per_stage)
            return (sol.x, n + sol.n_steps), None

        (u, n), _ = jax.lax.scan(body, (u0, jnp.array(0)), self.stage_inputs(problem))
        sol = self.solver.run(problem, u, max_steps, save)
        return eqx.tree_at(lambda s: s.n_steps, sol, sol.n_steps + n)
