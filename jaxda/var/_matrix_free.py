r"""Matrix-free Gauss-Newton: the normal equations solved by conjugate gradients.

For controls of $10^4$–$10^6$ unknowns (gridded fields) nothing $n \times n$ may be
formed. `ConjugateGradientNormal` solves the Gauss-Newton normal equations of any
`jaxda.var` problem with residuals $r(u)$,

$$J_r^\top J_r\,\delta = -J_r^\top r, \qquad J_r = \partial r / \partial u\,(u),$$

by (preconditioned) conjugate gradients (`lineax.CG`) on a
`lineax.FunctionLinearOperator` $v \mapsto J_r^\top (J_r v)$. The residuals are
linearised once per Gauss-Newton (outer) iteration (`jax.linearize`: one run of the
model, its tangent-linear residuals stored); each CG (inner) iteration applies the
tangent-linear model $J_r v$ and, by `jax.linear_transpose` of it, the adjoint model
$J_r^\top w$: one tangent-linear and one adjoint run, no re-run of the nonlinear
model. This is incremental 4DVar as operational centres run it [CTH94]: outer loops
relinearising the model, inner conjugate-gradient loops on the linearised quadratic
problem. With the control-variable transform (`ControlTransform`, $u = w$,
$x_0 = x_b + U w$) the inner Hessian is $I + U^\top H^\top R^{-1} H U$, whose
eigenvalues are $\ge 1$: CG converges in few iterations, and $B^{-1}$ is never
needed.

`GaussNewtonCG` is the Gauss-Newton solver (`AbstractGaussNewton`: Armijo
backtracking, the family's stopping rule) with this linear solve.

**Cost per outer iteration**, in runs of the model over the window (a run = the
$T-1$ steps of a window of $T$ states): one nonlinear run to linearise, one adjoint
run for the gradient $J_r^\top r$, $k + 1 + \lfloor k / 10 \rfloor$ tangent-linear and
adjoint pairs for $k$ CG iterations (lineax evaluates the initial residual
$b - A\,0$ and recomputes the residual exactly every 10 iterations), and one nonlinear
run per line-search trial (usually one).
"""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .._results import RESULTS, all_finite
from .._validation import check_choice, check_int, check_positive
from ._gauss_newton import AbstractGaussNewton
from ._globalisation import ArmijoBacktracking
from ._normal import AbstractNormalSolve
from ._solver import tree_max_abs


_SPD = (lx.symmetric_tag, lx.positive_semidefinite_tag)


def _tree_axpy(a, x, y):
    """$a x + y$ over two pytrees of the same structure."""
    return jax.tree_util.tree_map(lambda xi, yi: a * xi + yi, x, y)


def _linearise(problem, u, mode: str):
    r"""`(residuals, jvp, vjp)`: $r(u)$, $v \mapsto J_r v$ and $w \mapsto J_r^\top w$.

    `"fwd"`: `jax.linearize` (one forward run, tangent-linear residuals stored) and
    the transpose of its linear map. `"rev"`: `jax.vjp` (reverse mode, needed by a
    `DiffraxTrajectory` with its default `RecursiveCheckpointAdjoint`) and the
    transpose of the pullback for $J_r v$.
    """
    if mode == "fwd":
        res, jvp = jax.linearize(problem.residual_terms, u)
        transpose = jax.linear_transpose(jvp, u)

        def vjp(w):
            return transpose(w)[0]

        return res, jvp, vjp
    res, pullback = jax.vjp(problem.residual_terms, u)
    transpose = jax.linear_transpose(pullback, res)

    def vjp(w):
        return pullback(w)[0]

    def jvp(v):
        return transpose((v,))[0]

    return res, jvp, vjp


class NormalCGSolution(eqx.Module):
    r"""One conjugate-gradient solve of the Gauss-Newton normal equations.

    **Fields:**

    - `delta`: the step $\delta$ (shaped like the control).
    - `grad`: the gradient $\nabla J(u) = J_r^\top r$.
    - `cost`: $J(u) = \tfrac12\|r(u)\|^2$.
    - `result`: lineax's result of the CG solve (`successful`, `max_steps_reached`,
      or `nonfinite` when the step is not finite: a breakdown, e.g. an operator
      that is not positive definite).
    - `num_steps`: the number of CG iterations taken.
    """

    delta: object
    grad: object
    cost: jax.Array
    result: RESULTS
    num_steps: jax.Array


class ConjugateGradientNormal(AbstractNormalSolve):
    r"""The Gauss-Newton normal equations $(J_r^\top J_r + \lambda I)\,\delta =
    -J_r^\top r$ solved matrix-free by preconditioned conjugate gradients (see the
    module docstring).

    The CG stops when $\max|b - A\delta_k| \le \mathrm{atol} + \mathrm{rtol}\,\max|b|$
    ($b = -\nabla J$) and its last update is below the same bound (lineax's test in
    both spaces; for a control-variable transform, Hessian $I + \dots$, the two
    scales agree), or after `max_steps` iterations. A CG stopped by `max_steps` still
    gives a descent direction (every CG iterate from 0 does): with
    `require_convergence=False` (default) that truncated step is taken, as
    operational incremental 4DVar runs a fixed number of inner iterations; with
    `require_convergence=True` it counts as a failed solve. A breakdown (a
    non-finite step, e.g. an operator that is not positive definite) always fails;
    the Gauss-Newton solver then rejects the step and reports `no_decrease` unless the
    point is stationary.

    The Levenberg-Marquardt damping is Levenberg's $\lambda I$ (the diagonal of
    $J_r^\top J_r$ that Marquardt's scaling needs is not available matrix-free).

    **Arguments:**

    - `rtol`, `atol`: CG tolerances (>= 0, not both 0; defaults 1e-6, 0).
    - `max_steps`: the most CG iterations per solve (>= 1; default 100).
    - `require_convergence`: whether a CG stopped by `max_steps` fails the step
      (default `False`: the truncated step is used).
    - `preconditioner`: `None` or a linear map $P \approx A^{-1}$ (symmetric positive
      definite) on the control, e.g. the `apply` of a background covariance for a
      problem in the $B^{-1}$ form (the control-variable transform needs none).
    - `linearisation`: `"fwd"` (default; `jax.linearize`) or `"rev"` (`jax.vjp`, for
      a `DiffraxTrajectory` with a reverse-mode adjoint).
    """

    rtol: float = 1e-6
    atol: float = 0.0
    max_steps: int = eqx.field(static=True, default=100)
    require_convergence: bool = eqx.field(static=True, default=False)
    preconditioner: Callable | None = None
    linearisation: Literal["fwd", "rev"] = eqx.field(static=True, default="fwd")

    def __check_init__(self):
        check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError(
                "`rtol` and `atol` of ConjugateGradientNormal must not both be 0 (use "
                "a tiny `rtol` and `max_steps` for a fixed number of iterations)."
            )
        check_int("max_steps", self.max_steps, minimum=1)
        if not isinstance(self.require_convergence, bool):
            raise TypeError(
                "`require_convergence` must be a bool; got "
                f"{type(self.require_convergence).__name__}."
            )
        if self.preconditioner is not None and not callable(self.preconditioner):
            raise TypeError(
                "`preconditioner` must be None or a callable v -> P v; got "
                f"{type(self.preconditioner).__name__}."
            )
        check_choice("linearisation", self.linearisation, ("fwd", "rev"))

    def solve_normal(self, problem, u, damping=None) -> NormalCGSolution:
        r"""Linearise `problem` at `u` and solve the normal equations by CG.

        **Returns:** a `NormalCGSolution` (the step, the gradient, the cost, lineax's
        result and the number of CG iterations).
        """
        res, jvp, vjp = _linearise(problem, u, self.linearisation)
        grad = vjp(res)
        cost = 0.5 * sum(jnp.sum(r**2) for r in jax.tree_util.tree_leaves(res))
        structure = jax.eval_shape(lambda: u)

        def normal_matvec(v):
            out = vjp(jvp(v))
            return out if damping is None else _tree_axpy(damping, v, out)

        operator = lx.FunctionLinearOperator(normal_matvec, structure, tags=_SPD)
        options = {}
        if self.preconditioner is not None:
            options["preconditioner"] = lx.FunctionLinearOperator(
                self.preconditioner, structure, tags=_SPD
            )
        rhs = jax.tree_util.tree_map(jnp.negative, grad)
        # lineax tests |r_i| <= atol + rtol |b_i| entry by entry (and the same on the
        # update): a scale-free bound needs the tolerance on max |b| instead.
        bound = self.atol + self.rtol * tree_max_abs(rhs)
        cg = lx.CG(rtol=0.0, atol=bound, max_steps=self.max_steps)
        sol = lx.linear_solve(operator, rhs, cg, options=options, throw=False)
        finite = all_finite(sol.value)
        result = RESULTS.where(finite, RESULTS.promote(sol.result), RESULTS.nonfinite)
        return NormalCGSolution(
            sol.value, grad, cost, result, jnp.asarray(sol.stats["num_steps"])
        )

    def direction(self, problem, u, damping):
        sol = self.solve_normal(problem, u, damping)
        ok = sol.result == RESULTS.successful
        if not self.require_convergence:
            ok = ok | (sol.result == RESULTS.max_steps_reached)
        return sol.delta, sol.grad, ok


class GaussNewtonCG(AbstractGaussNewton):
    r"""Matrix-free Gauss-Newton (incremental 4DVar): outer relinearisations, inner
    conjugate gradients.

    Each step solves $J_r^\top J_r\,\delta = -\nabla J$ by CG on the tangent-linear
    and adjoint models (`ConjugateGradientNormal`) and takes
    $u \leftarrow u + \alpha\delta$ with Armijo backtracking (`ArmijoBacktracking`),
    as `GaussNewton`; the stopping rule of the Gauss-Newton family. Works on any
    problem (strong or weak constraint, `ControlTransform`, `WeakConstraintForcing`)
    and never forms an $n \times n$ matrix; use a control-variable transform
    (`ControlTransform`) so that the inner problem is well conditioned.

    **Arguments:**

    - `rtol`, `atol`: outer stopping tolerances (>= 0; defaults 1e-8, 1e-12).
    - `cg_rtol`, `cg_atol`, `cg_max_steps`, `require_convergence`,
      `preconditioner`, `linearisation`: the inner solve's (see
      `ConjugateGradientNormal`; defaults 1e-6, 0, 100, `False`, `None`,
      `"fwd"`).
    - `max_backtracks` (default 20), `armijo` (default 1e-4): as `GaussNewton`.
    """

    rtol: float
    atol: float
    normal_solve: ConjugateGradientNormal
    globalisation: ArmijoBacktracking

    def __init__(
        self,
        rtol: float = 1e-8,
        atol: float = 1e-12,
        cg_rtol: float = 1e-6,
        cg_atol: float = 0.0,
        cg_max_steps: int = 100,
        require_convergence: bool = False,
        preconditioner: Callable | None = None,
        linearisation: Literal["fwd", "rev"] = "fwd",
        max_backtracks: int = 20,
        armijo: float = 1e-4,
    ):
        self.rtol = rtol
        self.atol = atol
        self.normal_solve = ConjugateGradientNormal(
            cg_rtol,
            cg_atol,
            cg_max_steps,
            require_convergence,
            preconditioner,
            linearisation,
        )
        self.globalisation = ArmijoBacktracking(max_backtracks, armijo)
