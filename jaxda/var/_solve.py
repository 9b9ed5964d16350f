"""`solve`: the one public entry point of the 4DVar solvers."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._results import RESULTS, raise_if_failed
from .._validation import check_int, check_positive
from ._solution import SaveIterates, Solution
from ._solver import AbstractIterativeSolver, AbstractSolver, iterate


def _cast_control(problem, x_init):
    """`x_init` with every leaf cast to the problem's floating dtype; `TypeError`
    naming `x_init` for a leaf that is not floating-point."""
    dtype = problem.dtype

    def cast(a):
        a = jnp.asarray(a)
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(
                f"`x_init` must be a floating-point array (it is cast to the "
                f"problem's dtype {jnp.dtype(dtype).name}); got dtype {a.dtype}."
            )
        return a.astype(dtype)

    return jax.tree_util.tree_map(cast, x_init)


def _run(problem, solver, x_init, max_steps, save, cost_target=None):
    if cost_target is None:
        sol = solver.run(problem, x_init, max_steps, save)
    else:
        sol = iterate(solver, problem, x_init, max_steps, save, cost_target)
    # Value checks that could not raise on traced arguments (a variance <= 0, a
    # non-finite observation): reported in the result instead of being skipped.
    result = RESULTS.where(problem.values_valid(), sol.result, RESULTS.invalid_input)
    return eqx.tree_at(lambda s: s.result, sol, result)


_run_jit = eqx.filter_jit(_run)


def solve(
    problem,
    solver: AbstractSolver,
    x_init,
    *,
    max_steps: int = 100,
    save: SaveIterates | None = None,
    cost_target: float | None = None,
    throw: bool = True,
) -> Solution:
    r"""Minimise a 4DVar problem's cost $J$ with `solver`, starting from `x_init`.

    Validates the arguments (shapes and types always, values when concrete), then runs
    the solver under `jit` until its tolerances are met, the cost becomes non-finite,
    the solver cannot decrease the cost, or `max_steps` iterations were taken. The
    estimate is the iterate with the lowest cost seen, so it is finite whenever
    `x_init` is. Works under `jax.jit` and `jax.vmap` (vmap over a batch of windows by
    vmapping over `problem` and `x_init`; pass `throw=False` to keep the windows that
    converged when others fail).

    **Arguments:**

    - `problem`: a `WeakConstraint4DVar`, `StrongConstraint4DVar` or
      `JointStateParameter`.
    - `solver`: a `GaussNewton`, `LevenbergMarquardt`, `Incremental4DVar`,
      `DenseGaussNewton`, `DenseLevenbergMarquardt`, `GradientDescent`,
      `OptaxSolver`, `JaxoptGaussNewton`, `JaxoptLevenbergMarquardt`, `QuasiStatic`
      or `ModelErrorContinuation` instance.
    - `x_init`: the first guess of the control, shaped as `problem.shape` (a tuple
      `(state, params)` for `JointStateParameter`). Floating-point leaves are cast to
      the problem's dtype `problem.dtype`; other dtypes raise a `TypeError`.
    - `max_steps`: iteration cap (>= 0).
    - `save`: `None`, or a `SaveIterates` to record the iterates in
      `Solution.iterates` (arrays of length `max_steps + 1`).
    - `cost_target`: optional $J^\star > 0$: stop, successfully, at the first iterate
      (the first guess included) with $J \le J^\star$ ([B24] refines its neural
      estimates "until the objective function (2.1) becomes lower than 0.05").
      Iterative solvers only (those with `init` / `step` / `terminate`).
    - `throw`: raise an `equinox.EquinoxRuntimeError` with the result's message when
      the solve did not succeed (eagerly and under `jit`; under `vmap` when any window
      failed). With `throw=False`, inspect `Solution.result`.

    **Returns:** a `Solution` (`x`, `cost`, `n_steps`, `result`, `stats`,
    `iterates`; `converged` is `result == RESULTS.successful`).
    """
    max_steps = check_int("max_steps", max_steps, minimum=0)
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"`solver` must be a jaxda.var solver; got {type(solver).__name__}."
        )
    if save is not None and not isinstance(save, SaveIterates):
        raise TypeError(
            f"`save` must be None or a jaxda.var.SaveIterates; got "
            f"{type(save).__name__}."
        )
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {type(throw).__name__}.")
    if cost_target is not None:
        if not isinstance(solver, AbstractIterativeSolver):
            raise TypeError(
                "`cost_target` needs an iterative solver (init / step / terminate); "
                f"got {type(solver).__name__}."
            )
        check_positive("cost_target", cost_target)
        cost_target = jnp.asarray(cost_target, problem.dtype)
    solver.check_problem(problem)
    problem.check_control("x_init", x_init)
    x_init = _cast_control(problem, x_init)
    run = _run_jit if solver.jit_in_solve else _run
    sol = run(problem, solver, x_init, max_steps, save, cost_target)
    return raise_if_failed(sol, sol.result, throw)
