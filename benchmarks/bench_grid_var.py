"""Matrix-free strong-constraint 4DVar on a 128 x 128 grid: L-BFGS against GN-CG.

    python benchmarks/run.py --only grid_var --x64            # records (float64)
    python benchmarks/bench_grid_var.py --n 64                # a smaller grid

The problem (`advection-128`): a tracer on a periodic 128 x 128 grid advected by a
stationary, divergence-free velocity (`Advection2D`, van Leer limiter, `SSPRK3` at
0.9 of its stable step: nonlinear in the tracer through the limiter); a window of 20
steps (21 states), 2 % of the cells observed at random at every 4th state with noise
sd 0.05; background = truth + a sample of B, B a Gaussian `SpectralCovariance`
(sd 0.3, length scale 6 cells). The control is the control-variable transform
`ControlTransform` ($x_0 = x_b + U w$, 16384 unknowns). Methods:

- `gn-cg-reference` (full suite, or `--reference`): `GaussNewtonCG` to tight
  tolerances: the reference cost $J^\\star$ of the `cost_gap` fields;
- `lbfgs`: `LBFGS(rtol=1e-4)` (relative gradient 1e-4, the issue's criterion);
- `gn-cg`: `GaussNewtonCG` with inner CG at rtol 1e-3 (full suite, or n <= 64);
- `gn-cg-to-lbfgs-cost`: the same, stopped at L-BFGS's final cost (`cost_target`).

Fields: `rmse` (of the initial state against the truth; `rmse_background` for
$x_b$), `cost`, `cost_gap` $= (J - J^\\star)/J^\\star$, `relative_gradient`
$= \\max|\\nabla J| / \\max|\\nabla J(x_b)|$, `time_s` (one call of the solve, compiled
ahead of time: the machine is shared, times are noisy), `compile_s`,
`iterations`, `peak_rss_mb` (peak resident memory of the process so far, which
bounds what the record needed), and `model_evaluations`: single model steps counted
analytically, with $S = 20$ steps per run of the window: a cost is $S$ forward
steps; a cost and gradient $S$ forward + $S$ adjoint (L-BFGS: each line-search trial);
a GN-CG outer iteration is $S$ forward (linearisation) + $S$ adjoint (gradient) +
$(k + 1 + \\lfloor k/10 \\rfloor)(S + S)$ tangent-linear and adjoint steps for $k$ CG
iterations (lineax's initial residual and its exact residual every 10 iterations) +
$S$ forward per line-search trial (from the accepted step length $2^{-b}$: $b + 1$
trials). The GN-CG counts come from driving the same solver step by step
(`init` / `step`, recomputing each CG solve to read its iteration count), which
reproduces `solve`'s iterates.

`gradient-memory` records: XLA's temporary buffer size of the compiled cost gradient
(`memory_analysis().temp_size_in_bytes`) without and with `rollout(...,
checkpoint=True)`, on the same window.
"""

import argparse
import json
import math
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import record

from jaxda.grid import Grid, SpectralCovariance
from jaxda.models import rollout
from jaxda.models.advection import SSPRK3, Advection2D, velocity_from_streamfunction
from jaxda.obs import Observations
from jaxda.var import (
    LBFGS,
    ControlTransform,
    GaussNewtonCG,
    StrongConstraint4DVar,
    solve,
)


STEPS = 20
OBS_EVERY = 4
OBS_FRACTION = 0.02
OBS_SD = 0.05
B_SD, B_LENGTH_CELLS = 0.3, 6.0


def advection_problem(n: int = 128, seed: int = 0):
    """The twin experiment: `(cvt, truth)`."""
    grid = Grid.square(n, 1.0, boundary="periodic")
    cov = SpectralCovariance(grid, B_LENGTH_CELLS / n, B_SD**2, n_channels=1)
    # A smooth streamfunction: two gyres plus smaller-scale random detail.
    psi_cov = SpectralCovariance(grid, 0.1, 0.01**2)
    Y, X = grid.meshgrid()
    psi0 = 0.15 / jnp.pi * jnp.sin(2 * jnp.pi * X) * jnp.sin(2 * jnp.pi * Y)

    @eqx.filter_jit
    def simulate(key):
        k_psi, k_truth, k_b, k_mask, k_noise = jax.random.split(key, 5)
        psi = psi0 + psi_cov.sqrt(jax.random.normal(k_psi, grid.shape))
        velocity = velocity_from_streamfunction(psi, grid)
        model = Advection2D(grid, velocity, staggered=True)
        dt = 0.9 * model.max_stable_dt()
        shape = (1, n, n)
        truth0 = 1.0 + cov.sqrt(jax.random.normal(k_truth, shape))
        truth = rollout(SSPRK3(model, dt), truth0, STEPS)
        times = (jnp.arange(STEPS + 1) % OBS_EVERY == 0)[:, None, None, None]
        mask = times & (jax.random.uniform(k_mask, truth.shape) < OBS_FRACTION)
        noise = OBS_SD * jax.random.normal(k_noise, truth.shape)
        background = truth0 + cov.sqrt(jax.random.normal(k_b, shape))
        return velocity, dt, truth, mask, noise, background

    velocity, dt, truth, mask, noise, background = simulate(jax.random.key(seed))
    flow = SSPRK3(Advection2D(grid, velocity, staggered=True), float(dt))
    obs = Observations(jnp.where(mask, truth + noise, 0.0), mask)
    strong = StrongConstraint4DVar(flow, obs, OBS_SD**2)
    return ControlTransform(strong, background, cov), truth


def _timed_solve(problem, solver, w0, **kwargs):
    """`(solution, compile_s, time_s)`: compiled ahead of time, then one timed call."""
    fn = eqx.filter_jit(lambda p, w: solve(p, solver, w, throw=False, **kwargs))
    t0 = time.perf_counter()
    compiled = fn.lower(problem, w0).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sol = jax.block_until_ready(compiled(problem, w0))
    return sol, compile_s, time.perf_counter() - t0


def count_gn_cg(problem, solver, w0, max_steps: int, cost_target=None):
    """Drive `solver` step by step; `(model_evaluations, outer, cg_total, cost)`."""
    state = solver.init(problem, w0)
    step = eqx.filter_jit(solver.step)
    normal = eqx.filter_jit(solver.normal_solve.solve_normal)
    evals = STEPS  # the initial cost
    cg_total = 0
    for outer in range(1, max_steps + 1):
        k = int(normal(problem, state.u).num_steps)
        cg_total += k
        state = step(problem, state)
        alpha = float(state.search.step_length)
        trials = (
            round(-math.log2(alpha)) + 1
            if alpha > 0
            else solver.globalisation.max_backtracks + 1
        )
        evals += 2 * STEPS + 2 * STEPS * (k + 1 + k // 10) + STEPS * trials
        done = bool(state.converged | state.failed)
        if cost_target is not None and float(state.cost) <= cost_target:
            done = True
        if done:
            break
    return evals, outer, cg_total, float(state.cost)


def _relative_gradient(problem, w, w0):
    grad = eqx.filter_jit(jax.grad(type(problem).cost, argnums=1))
    return float(
        jnp.max(jnp.abs(grad(problem, w))) / jnp.max(jnp.abs(grad(problem, w0)))
    )


def _gradient_temp_mb(problem, checkpoint: bool) -> float:
    strong = problem.problem
    obs = strong.obs

    def cost(x0):
        traj = rollout(strong.flow, x0, STEPS, checkpoint=checkpoint)
        r = jnp.where(obs.mask, traj - obs.values, 0.0)
        return 0.5 * jnp.sum(r**2) / strong.obs_var

    compiled = jax.jit(jax.grad(cost)).lower(problem.mean).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def records(suite: str, n: int = 128, reference: bool | None = None) -> Iterator[dict]:
    """The records; `reference` (default: only in the full suite) adds the long
    GN-CG run that gives $J^\\star$ and the `cost_gap` fields."""
    if reference is None:
        reference = suite == "full"
    cvt, truth = advection_problem(n)
    name = f"advection-{n}"
    w0 = cvt.initial_control()
    common = dict(
        batch=1,
        n_unknowns=int(np.prod(cvt.shape)),
        n_steps_window=STEPS,
        n_obs=int(jnp.sum(cvt.problem.obs.mask)),
        rmse_background=float(jnp.sqrt(jnp.mean((cvt.mean - truth[0]) ** 2))),
    )
    j_star = None

    def row(method, sol, compile_s, run_s, evals, **extra):
        x0 = cvt.state(sol.x)
        cost = float(sol.cost)
        return record(
            name,
            method,
            rmse=float(jnp.sqrt(jnp.mean((x0 - truth[0]) ** 2))),
            cost=cost,
            cost_gap=None if j_star is None else (cost - j_star) / j_star,
            relative_gradient=_relative_gradient(cvt, sol.x, w0),
            time_s=run_s,
            compile_s=compile_s,
            iterations=int(sol.n_steps),
            model_evaluations=evals,
            result=str(sol.result._value),
            converged=bool(sol.converged),
            **common,
            **extra,
        )

    if reference:
        ref_solver = GaussNewtonCG(rtol=1e-10, cg_rtol=1e-8, cg_max_steps=500)
        ref, c_ref, t_ref = _timed_solve(cvt, ref_solver, w0, max_steps=10)
        j_star = float(ref.cost)
        yield row("gn-cg-reference", ref, c_ref, t_ref, None)

    sol, c, t = _timed_solve(cvt, LBFGS(rtol=1e-4), w0, max_steps=2000)
    n_eval = int(sol.stats["evaluations"])
    lbfgs_evals, j_lbfgs = n_eval * 2 * STEPS, float(sol.cost)
    yield row("lbfgs", sol, c, t, lbfgs_evals, line_search_evaluations=n_eval)

    gn = GaussNewtonCG(rtol=1e-6, cg_rtol=1e-3, cg_max_steps=200)
    if suite == "full" or n <= 64:
        # GN-CG to its own tolerance: about 20 minutes at n = 128 on 2 cores (it runs
        # three times: compile, timed, counted), so only in the full suite there
        sol, c, t = _timed_solve(cvt, gn, w0, max_steps=30)
        evals, _, cg_total, _ = count_gn_cg(cvt, gn, w0, 30)
        yield row("gn-cg", sol, c, t, evals, cg_iterations=cg_total)

    sol, c, t = _timed_solve(cvt, gn, w0, max_steps=30, cost_target=j_lbfgs)
    evals, _, cg_total, counted = count_gn_cg(cvt, gn, w0, 30, cost_target=j_lbfgs)
    yield row(
        "gn-cg-to-lbfgs-cost",
        sol,
        c,
        t,
        evals,
        cg_iterations=cg_total,
        lbfgs_cost=j_lbfgs,
        lbfgs_model_evaluations=lbfgs_evals,
        evaluation_ratio=lbfgs_evals / evals,
        counted_cost=counted,
    )

    for checkpoint in (False, True):
        yield record(
            name,
            "gradient-memory-" + ("checkpoint" if checkpoint else "no-checkpoint"),
            batch=1,
            temp_mb=_gradient_temp_mb(cvt, checkpoint),
            n_steps_window=STEPS,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="grid size n (n x n)")
    parser.add_argument("--x32", action="store_true", help="float32 (default float64)")
    parser.add_argument(
        "--reference", action="store_true", help="add the long GN-CG reference run"
    )
    args = parser.parse_args()
    if not args.x32:
        jax.config.update("jax_enable_x64", True)
    for rec in records("quick", n=args.n, reference=args.reference):
        print(json.dumps(rec), flush=True)
