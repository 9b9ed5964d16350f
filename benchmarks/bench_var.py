"""4DVar benchmarks: F21-L63 / F21-L96 test windows and cycled Lorenz-63 / Lorenz-96.

    python benchmarks/run.py --x64 --only bench_var --suite quick

Windowed problems (seed 001's F21 setups): weak-constraint 4DVar with the true
observation variance (2) and a small model-error variance, first guess = linear
interpolation of the observations in time (climatological mean where a component is
never observed). Metric: MSE of the whole state over all windows ("R-score" of seed
001, original units), plus the fraction of windows whose MSE exceeds `far_threshold`
(ended far from the truth: a wrong local minimum). Our solvers are `vmap`ped over the
batch, jaxopt's run under `lax.map` (vmap over jaxopt was 20x slower, DESIGN.md).

Cycled problems (DAPPER settings): strong-constraint 4DVar windows of 4 observation
cycles shifted by one cycle, background = forecast of the previous analysis with a
static diagonal B; metric: time-averaged analysis RMSE at the observation times after a
burn-in (the estimate at the end of each window, DAPPER's `rmse.a`).
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import record, time_call

from jaxda.data import interpolate_observations, make_preset_dataset
from jaxda.models import Lorenz63, Lorenz96, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import (
    DenseGaussNewton,
    GaussNewton,
    GradientDescent,
    Incremental4DVar,
    JaxoptGaussNewton,
    JaxoptLevenbergMarquardt,
    LevenbergMarquardt,
    QuasiStatic,
    WeakConstraint4DVar,
    cycle,
    solve,
)


SEED001 = {"F21-L63": {"fsgd": 3.55}, "F21-L96": {"4dvar": 1.06}}
DAPPER = {"cycled-L63": {"iEnKS": 0.31, "3D-Var": 1.04}, "cycled-L96": {"4D-Var": 0.37}}


def _windows(name: str, n_windows: int):
    ds = make_preset_dataset(name, 0, split="test", n_windows=n_windows)
    flow = flow_map(ds.model, ds.dt, "rk4")
    clim = jnp.mean(rollout(flow, ds.truth[0, 0], 5000), axis=0)
    guess = jax.vmap(lambda o: interpolate_observations(o, clim))(ds.obs)
    return ds, flow, guess


def _methods(name: str, suite: str, model_var: float):
    gd_steps = 2000 if suite == "quick" else 10000
    lr = 0.2 * model_var  # stable: the Hessian's largest eigenvalue is ~ 4 / model_var
    lm_solver = "cholesky" if name.endswith("L63") else "cg"
    return [
        ("fsgd", GradientDescent(lr, rtol=1e-9), gd_steps, "vmap"),
        ("jaxopt-gn", JaxoptGaussNewton(tol=1e-6), 20, "map"),
        (
            "jaxopt-lm",
            JaxoptLevenbergMarquardt(tol=1e-6, linear_solver=lm_solver),
            20,
            "map",
        ),
        ("structured-gn", GaussNewton(), 20, "vmap"),
        ("structured-lm", LevenbergMarquardt(), 20, "vmap"),
        ("incremental-4dvar", Incremental4DVar(), 20, "vmap"),
        ("quasi-static-gn", QuasiStatic(GaussNewton(), n_stages=5), 20, "vmap"),
        ("gn-from-truth", GaussNewton(), 20, "vmap-truth"),
    ]


def _windowed_records(name: str, suite: str, n_windows: int, model_var: float):
    ds, flow, guess = _windows(name, n_windows)
    obs_var = 2.0
    far = 5.0  # window MSE above this: "far from the truth"

    def truth_cost(values, mask, x):
        obs = Observations(values, mask)
        return WeakConstraint4DVar(flow, obs, obs_var, model_var).cost(x)

    for method, solver, max_steps, batching in _methods(name, suite, model_var):

        def one(values, mask, x0, solver=solver, max_steps=max_steps):
            prob = WeakConstraint4DVar(
                flow, Observations(values, mask), obs_var, model_var
            )
            return solve(prob, solver, x0, max_steps=max_steps)

        if batching.startswith("vmap"):
            fn = jax.jit(jax.vmap(one))
        else:
            fn = jax.jit(lambda v, m, x: jax.lax.map(lambda a: one(*a), (v, m, x)))
        # "gn-from-truth" starts at the truth: the minimum it finds is the estimator's
        # own error (no optimisation failure), a floor for the other rows.
        x_init = ds.truth if batching == "vmap-truth" else guess
        args = (ds.obs.values, ds.obs.mask, x_init)
        compile_s, run_s = time_call(fn, *args, repeats=1, min_time=0.0)
        sol = fn(*args)
        mse_w = np.asarray(jnp.mean((sol.x - ds.truth) ** 2, axis=(1, 2)))
        yield record(
            name,
            method,
            batch=n_windows,
            batching=batching,
            mse=float(mse_w.mean()),
            rmse=float(math.sqrt(mse_w.mean())),
            mse_median=float(np.median(mse_w)),
            cost_of_truth=float(jnp.mean(jax.vmap(truth_cost)(*args[:2], ds.truth))),
            far_fraction=float(np.mean(mse_w > far)),
            far_threshold_mse=far,
            final_cost=float(jnp.mean(sol.cost)),
            iterations=float(jnp.mean(sol.n_steps)),
            converged_fraction=float(jnp.mean(sol.converged)),
            time_per_window_s=run_s / n_windows,
            compile_s=compile_s,
            obs_var=obs_var,
            model_var=model_var,
            max_steps=max_steps,
            seed001_reference=SEED001.get(name, {}),
        )


def _cycled_records(name: str, suite: str):
    if name == "cycled-L96":
        model, dt, every, obs_var, n, bvar = Lorenz96(), 0.05, 4, 1.0, 40, 0.1
    else:
        model, dt, every, obs_var, n, bvar = Lorenz63(), 0.01, 25, 2.0, 3, 0.5
    n_cycles = 600 if suite == "quick" else 5000
    burn_in = 100
    flow = flow_map(model, dt, "rk4")
    key = jax.random.key(42)
    x0 = rollout(flow, jnp.linspace(-1.0, 1.0, n) + 5.0, 2000)[-1]
    n_total = n_cycles * every + 1
    truth = rollout(flow, x0, n_total - 1)
    times = jnp.arange(n_total) % every == 0
    mask = jnp.broadcast_to(times[:, None], truth.shape)
    noise = jnp.sqrt(obs_var) * jax.random.normal(key, truth.shape)
    obs = Observations(truth + noise, mask)
    window, shift = 4 * every + 1, every
    x_b = truth[0] + jnp.sqrt(bvar) * jax.random.normal(jax.random.key(1), (n,))

    @jax.jit
    def run(obs):
        return cycle(
            flow,
            obs,
            obs_var=obs_var,
            window=window,
            shift=shift,
            x_b=x_b,
            background_var=bvar,
            solver=DenseGaussNewton(),
            max_steps=10,
        )

    t0 = time.perf_counter()
    res = jax.block_until_ready(run(obs))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jax.block_until_ready(run(obs))
    run_s = time.perf_counter() - t0
    n_a = res.analysis.shape[0]
    err = res.analysis - truth[:n_a]
    at_obs = np.asarray(times[:n_a])
    at_obs[: burn_in * every] = False
    rmse_t = np.sqrt(np.mean(np.asarray(err) ** 2, axis=1))
    yield record(
        name,
        "strong-4dvar-dense-gn",
        analysis_rmse=float(rmse_t[at_obs].mean()),
        rmse_all_times=float(rmse_t[burn_in * every :].mean()),
        n_cycles=n_cycles,
        burn_in_cycles=burn_in,
        window_cycles=4,
        background_var=bvar,
        converged_fraction=float(jnp.mean(res.converged)),
        iterations=float(jnp.mean(res.n_steps)),
        time_per_cycle_s=run_s / res.cost.shape[0],
        compile_s=max(first - run_s, 0.0),
        dapper_reference=DAPPER[name],
    )


def records(suite: str):
    quick = suite == "quick"
    yield from _windowed_records("F21-L63", suite, 32 if quick else 256, 1e-4)
    yield from _windowed_records("F21-L96", suite, 8 if quick else 64, 1e-4)
    yield from _cycled_records("cycled-L96", suite)
    yield from _cycled_records("cycled-L63", suite)
