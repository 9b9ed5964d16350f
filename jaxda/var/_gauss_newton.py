r"""The Gauss-Newton family: one loop, a linear solve and a globalisation.

`AbstractGaussNewton` owns `init` / `step` / `terminate`; each final solver composes

- a linear solve of the linearised problem (`_normal.py`, `_incremental.py`):
  `BlockTridiagonalNormal` (weak constraint, $O(T n^3)$), `DenseNormal` (small
  controls) or `IncrementalMAP` (the Gaussian MAP of [B24]);
- a globalisation (`_globalisation.py`): `ArmijoBacktracking` (Gauss-Newton) or
  `AdaptiveDamping` (Levenberg-Marquardt),

as optimistix composes a descent and a search.

With an observation operator on the problem (`operator=`, `jaxda.obs`) the
structured solves add $H_t^\top R_t^{-1} H_t$ to the diagonal blocks, $H_t$ the
Jacobian of $h_t$ at the iterate (a nonlinear $h_t$ is linearised with forward-mode
derivatives at every step); the dense solves differentiate the residuals.

Stopping rule (all of them): after an accepted step, converged when both the cost
change and the step are below `atol + rtol * |.|` (`cauchy_converged`); after a
rejected step, converged when the point is stationary (predicted decrease
$|\nabla J^T\delta|/2 \le$ `atol + rtol * |J|`), `no_decrease` when the globalisation
gave up. `rtol` is raised to at least 100 machine epsilons of the cost's dtype.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Bool, Scalar
from .._results import RESULTS
from .._validation import check_positive
from ._globalisation import AbstractGlobalisation, AdaptiveDamping, ArmijoBacktracking
from ._incremental import IncrementalMAP
from ._normal import AbstractNormalSolve, BlockTridiagonalNormal, DenseNormal
from ._solver import (
    AbstractIterativeSolver,
    AbstractSolverState,
    cauchy_converged,
    effective_rtol,
)


class GaussNewtonState(AbstractSolverState):
    """`u`, `cost`; the globalisation's `search` state; this step's verdicts."""

    u: object
    cost: Scalar
    search: object
    converged: Bool[Array, ""]
    failed: Bool[Array, ""]


class AbstractGaussNewton(AbstractIterativeSolver):
    """A Gauss-Newton-type solver: `normal_solve` gives the step, `globalisation`
    takes it (see the module docstring)."""

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    normal_solve: eqx.AbstractVar[AbstractNormalSolve]
    globalisation: eqx.AbstractVar[AbstractGlobalisation]

    def __check_init__(self):
        check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)

    def check_problem(self, problem):
        super().check_problem(problem)
        self.normal_solve.check_problem(type(self).__name__, problem)

    def _negligible(self, cost):
        def negligible(decrease):
            rtol = effective_rtol(self.rtol, jnp.result_type(cost))
            return decrease <= self.atol + rtol * jnp.abs(cost)

        return negligible

    def init(self, problem, u0):
        cost = problem.cost(u0)
        false = jnp.array(False)
        return GaussNewtonState(u0, cost, self.globalisation.init(cost), false, false)

    def step(self, problem, state):
        trial = self.globalisation.step(
            problem,
            self.normal_solve,
            state.u,
            state.cost,
            state.search,
            self._negligible(state.cost),
        )
        converged = jnp.where(
            trial.accepted,
            cauchy_converged(
                state.cost, trial.cost, state.u, trial.u, self.rtol, self.atol
            ),
            trial.stationary,
        )
        failed = trial.gave_up & ~converged
        return GaussNewtonState(trial.u, trial.cost, trial.search, converged, failed)

    def terminate(self, problem, state):
        result = RESULTS.where(state.converged, RESULTS.successful, RESULTS.no_decrease)
        return state.converged | state.failed, result

    def stats(self, state):
        return self.globalisation.stats(state.search)


class GaussNewton(AbstractGaussNewton):
    r"""Gauss-Newton with a backtracking (Armijo) line search, structured in time.

    Each step solves the block-tridiagonal normal equations $A\,\delta = -\nabla J$ of
    a `WeakConstraint4DVar` (`BlockTridiagonalNormal`: an iterated extended Kalman
    smoother, $O(T n^3)$) and takes $x \leftarrow x + \alpha\delta$ with the largest
    $\alpha \in \{1, 1/2, \dots\}$ meeting
    $J(x + \alpha\delta) \le J(x) + c\,\alpha\,\nabla J^T\delta$ (`ArmijoBacktracking`).
    Stopping rule in the module docstring. `Solution.stats["last_step_length"]` is the
    last accepted $\alpha$.
    """

    rtol: float
    atol: float
    normal_solve: BlockTridiagonalNormal
    globalisation: ArmijoBacktracking

    def __init__(
        self,
        rtol: float = 1e-8,
        atol: float = 1e-12,
        method: Literal["sequential", "parallel"] = "sequential",
        max_backtracks: int = 20,
        armijo: float = 1e-4,
    ):
        """**Arguments:**

        - `rtol`, `atol`: stopping tolerances (>= 0; defaults 1e-8, 1e-12).
        - `method`: `"sequential"` (CPU) or `"parallel"` (long windows on
          accelerators) block-tridiagonal Cholesky.
        - `max_backtracks`: the most step halvings per iteration (default 20).
        - `armijo`: the sufficient-decrease constant $c$ (default 1e-4).
        """
        self.rtol = rtol
        self.atol = atol
        self.normal_solve = BlockTridiagonalNormal(method)
        self.globalisation = ArmijoBacktracking(max_backtracks, armijo)


class LevenbergMarquardt(AbstractGaussNewton):
    r"""Levenberg-Marquardt with adaptive damping, structured in time.

    Each step solves $(A + \lambda\,\mathrm{diag}(A))\,\delta = -\nabla J$ (Marquardt's
    scaling) with the block-tridiagonal Cholesky; a step that lowers the cost is
    accepted and $\lambda \leftarrow \lambda/3$, otherwise $\lambda \leftarrow
    4\lambda$ (`AdaptiveDamping`). Fails (`no_decrease`) once $\lambda$ exceeds
    `max_damping`. `Solution.stats["damping"]` is the last $\lambda$.
    """

    rtol: float
    atol: float
    normal_solve: BlockTridiagonalNormal
    globalisation: AdaptiveDamping

    def __init__(
        self,
        rtol: float = 1e-8,
        atol: float = 1e-12,
        method: Literal["sequential", "parallel"] = "sequential",
        damping: float = 1e-3,
        max_damping: float = 1e10,
    ):
        """**Arguments:**

        - `rtol`, `atol`: stopping tolerances (>= 0; defaults 1e-8, 1e-12).
        - `method`: `"sequential"` or `"parallel"` block-tridiagonal Cholesky.
        - `damping`: the initial $\\lambda$ (> 0; default 1e-3).
        - `max_damping`: the largest $\\lambda$ before giving up (default 1e10).
        """
        self.rtol = rtol
        self.atol = atol
        self.normal_solve = BlockTridiagonalNormal(method)
        self.globalisation = AdaptiveDamping(damping, max_damping)


class Incremental4DVar(AbstractGaussNewton):
    r"""Incremental weak-constraint 4DVar [B24, Algorithm 1]: Gaussian-MAP inner
    solves and a line search.

    $x_k = \mathrm{MAP}(y; \mu(z_k), P(z_k))$ (`IncrementalMAP`), then
    $z_{k+1} = z_k + \alpha_k (x_k - z_k)$ with $\alpha_k$ the largest of
    $1, 1/2, \dots$ meeting the Armijo condition on the full cost. In exact arithmetic
    each step equals a `GaussNewton` step; stopping rule as `GaussNewton`.
    """

    rtol: float
    atol: float
    normal_solve: IncrementalMAP
    globalisation: ArmijoBacktracking

    def __init__(
        self,
        rtol: float = 1e-8,
        atol: float = 1e-12,
        method: Literal["sequential", "parallel"] = "sequential",
        max_backtracks: int = 20,
        armijo: float = 1e-4,
    ):
        """**Arguments:** as `GaussNewton` (`method` is the inner block-tridiagonal
        Cholesky)."""
        self.rtol = rtol
        self.atol = atol
        self.normal_solve = IncrementalMAP(method)
        self.globalisation = ArmijoBacktracking(max_backtracks, armijo)


class DenseGaussNewton(AbstractGaussNewton):
    r"""Gauss-Newton with Armijo backtracking and dense normal equations.

    For small controls: the initial state of a `StrongConstraint4DVar` (and model
    parameters in a `JointStateParameter`). Each step forms the residual Jacobian $J_r$
    and solves $(J_r^T J_r)\,\delta = -J_r^T r$ by Cholesky (`DenseNormal`), then
    backtracks as `GaussNewton`. Cost $O(m n^2 + n^3)$ per step for $m$ residuals and
    $n$ unknowns: do not use it on a whole trajectory.
    """

    rtol: float
    atol: float
    normal_solve: DenseNormal
    globalisation: ArmijoBacktracking

    def __init__(
        self,
        rtol: float = 1e-8,
        atol: float = 1e-12,
        jacobian: Literal["fwd", "rev"] = "fwd",
        max_backtracks: int = 20,
        armijo: float = 1e-4,
    ):
        """**Arguments:**

        - `rtol`, `atol`: stopping tolerances (>= 0; defaults 1e-8, 1e-12).
        - `jacobian`: `"fwd"` (default) or `"rev"` mode for $J_r$.
        - `max_backtracks` (default 20), `armijo` (default 1e-4): as `GaussNewton`.
        """
        self.rtol = rtol
        self.atol = atol
        self.normal_solve = DenseNormal(jacobian)
        self.globalisation = ArmijoBacktracking(max_backtracks, armijo)


class DenseLevenbergMarquardt(AbstractGaussNewton):
    r"""Levenberg-Marquardt with adaptive damping and dense normal equations.

    Solves $(J_r^T J_r + \lambda\,\mathrm{diag}(J_r^T J_r))\,\delta = -J_r^T r$; damping
    rule as `LevenbergMarquardt`. For small controls (strong-constraint $x_0$, model
    parameters).
    """

    rtol: float
    atol: float
    normal_solve: DenseNormal
    globalisation: AdaptiveDamping

    def __init__(
        self,
        rtol: float = 1e-8,
        atol: float = 1e-12,
        jacobian: Literal["fwd", "rev"] = "fwd",
        damping: float = 1e-3,
        max_damping: float = 1e10,
    ):
        """**Arguments:**

        - `rtol`, `atol`: stopping tolerances (>= 0; defaults 1e-8, 1e-12).
        - `jacobian`: `"fwd"` (default) or `"rev"` mode for $J_r$.
        - `damping` (1e-3), `max_damping` (1e10): as `LevenbergMarquardt`.
        """
        self.rtol = rtol
        self.atol = atol
        self.normal_solve = DenseNormal(jacobian)
        self.globalisation = AdaptiveDamping(damping, max_damping)
