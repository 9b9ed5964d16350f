r"""Uncertainty of motion 4DVar on [FBC23]'s shallow-water basin: RML ensembles and
Laplace samples of the penalised problem, scored against the true velocity.

    python benchmarks/run.py --suite full --only motion_uq --out results.json
    python benchmarks/bench_motion_uq.py --n-test 1           # a quick look

The problem (`motion-sw64`): `jaxda.motion.basin_motion_samples` ([FBC23]'s set-up,
64 x 64, a window of 10 states, the height observed at steps 0, 3, 6, 9 with noise
0.05), the penalised strong-constraint motion 4DVar (`motion_4dvar(...,
penalty=MotionPenalty(...))`, `convention="grid"`, no background term), control the
initial state $(\eta, u, v)$. The penalty weights are [FBC23]'s converted to our cost
(`fbc23_weights`) times factors chosen on validation samples (another key) by the
EPE of the penalised L-BFGS solution (full suite; the quick suite takes the factors
1, 1 without validation, and runs `laplace-<N>` only).

Methods (`method`):

- `map-penalised-lbfgs-250`: the penalised solution $x^\star$ (`LBFGS`, memory 100,
  at most 250 iterations, from [FBC23]'s first guess), the centre of the Laplace
  samples;
- `rml-<N>`: randomised maximum likelihood / perturbed-observation 4DVar
  (`jaxda.var.rml_ensemble`, `terms=(0,)`: the observations perturbed by
  $\varepsilon \sim \mathcal N(0, \sigma^2 I)$ on the observed heights; the problem
  has no background; the penalty is not perturbed), each member L-BFGS from the same
  first guess, at most 250 iterations;
- `laplace-<N>`: samples of the Gauss-Newton posterior $\mathcal N(x^\star,
  (J^\top J)^{-1})$ at $x^\star$ (`jaxda.var.laplace_ensemble`, every residual term
  perturbed: the penalty acts as an improper Gaussian prior), CG on the normal
  equations;
- `laplace-obs-<N>`: the same with only the observation residuals perturbed, the
  linearisation of `rml-<N>` (covariance $(J^\top J)^{-1} J_o^\top J_o
  (J^\top J)^{-1}$).

Fields: `epe`, `ae_deg` (of the ensemble mean's initial velocity, means over test
samples of `jaxda.metrics.endpoint_error` / `angular_error`), `spread_skill`
(`spread_skill_ratio`, $(N+1)/N$-corrected), `coverage_90` (`interval_coverage` at
0.9, order statistics at $p(N+1)$: exact for a calibrated ensemble of $N = 19$),
`crps` (fair `crps_ensemble`), all three on $(u, v)$ pooled over the test samples;
`time_per_sample_s` (median wall time of one window's ensemble, compile excluded),
`compile_s`, `iterations` (mean solver or CG iterations per member),
`members_converged` (fraction), `n_test`, `members`. The machine is shared: times
are noisy.
"""

import argparse
import json
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import record

from jaxda import metrics, motion, var


PROBLEM = "motion-sw64"
ALPHA, BETA = 5e3, 5e2  # [FBC23]'s penalty weights (their cost's convention)
TEST_KEY, VALIDATION_KEY, ENSEMBLE_KEY = 20230, 777, 4242
MAX_STEPS = 250
SUITES = {
    # test windows, members, validation windows, (smoothness, divergence) factors
    "quick": dict(
        n_test=1,
        members=19,
        n_val=0,
        factors=((1.0,), (1.0,)),
        laplace_obs=False,
        rml=False,
    ),
    "full": dict(
        n_test=4,
        members=19,
        n_val=4,
        factors=((0.3, 1.0, 3.0), (0.1, 1.0, 10.0, 100.0)),
        laplace_obs=True,
        rml=True,
    ),
}
CG_RTOL, CG_MAX_STEPS = 1e-3, 1000


def _progress(total, desc):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    except ImportError:  # tqdm is optional
        return None


def _tick(bar):
    if bar is not None:
        bar.update(1)


def _close(bar):
    if bar is not None:
        bar.close()


def _penalty(grid, smoothness, divergence):
    # arrays, not Python floats: one compilation for every weight
    return motion.MotionPenalty(
        grid,
        smoothness=jnp.asarray(smoothness),
        divergence=jnp.asarray(divergence),
    )


def _map_solver(flow, sigma):
    """A jitted `(obs, penalty) -> x*`: the penalised L-BFGS solution."""

    def run(obs, penalty):
        problem = motion.motion_4dvar(flow, obs, sigma, penalty=penalty)
        sol = var.solve(
            problem,
            var.LBFGS(memory_size=100),
            motion.first_guess(obs),
            max_steps=MAX_STEPS,
            throw=False,
        )
        return sol.x, sol.n_steps, sol.result == var.RESULTS.successful

    return eqx.filter_jit(run)


def _timed(fn, *args, warm_up=False):
    """`(out, times)`: the wall time of `fn(*args)`, synchronised; with `warm_up`
    (the only window of a one-window run) two calls, so that the first, which
    compiles, is not the only time."""
    times = []
    for _ in range(2 if warm_up else 1):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return out, times


def _scores(name, ensembles, truth, times, iterations, converged, n_test, **extra):
    """One record: the ensemble-mean EPE / AE and the probabilistic scores of the
    velocity, pooled over the test windows."""
    ens = jnp.stack(ensembles, axis=1)[:, :, 1:3]  # (N, n_test, 2, ny, nx)
    w = truth[:, 1:3]
    mean = jnp.mean(ens, axis=0)
    run = times[1:] if len(times) > 1 else times
    median = float(np.median(run))
    return record(
        PROBLEM,
        name,
        batch=1,
        epe=float(np.mean([metrics.endpoint_error(m, t) for m, t in zip(mean, w)])),
        ae_deg=float(np.mean([metrics.angular_error(m, t) for m, t in zip(mean, w)])),
        spread_skill=float(metrics.spread_skill_ratio(ens, w)),
        coverage_90=float(metrics.interval_coverage(ens, w, 0.9)),
        crps=float(metrics.crps_ensemble(ens, w)),
        spread=float(jnp.sqrt(jnp.mean(jnp.var(ens, axis=0, ddof=1)))),
        rmse_of_mean=float(jnp.sqrt(jnp.mean((mean - w) ** 2))),
        time_per_sample_s=median,
        compile_s=max(times[0] - median, 0.0),
        iterations=float(np.mean(iterations)),
        members_converged=float(np.mean(converged)),
        n_test=n_test,
        members=int(ens.shape[0]),
        **extra,
    )


def _choose_penalty(grid, flow, sigma, sm_a, dv_a, cfg, map_fn):
    """The (smoothness, divergence) factors of [FBC23]'s weights with the lowest EPE
    of the penalised solution on validation windows; without validation windows, the
    first factors."""
    f_s, f_d = cfg["factors"]
    if cfg["n_val"] == 0:
        return f_s[0], f_d[0], None, []
    val = motion.basin_motion_samples(jax.random.key(VALIDATION_KEY), cfg["n_val"])
    sweep = []
    bar = _progress(len(f_s) * len(f_d) * cfg["n_val"], "validation: penalty")
    for a in f_s:
        for b in f_d:
            pen = _penalty(grid, a * sm_a, b * dv_a)
            epe = []
            for i in range(cfg["n_val"]):
                x_true, obs = val.sample(i)
                x_star = map_fn(obs, pen)[0]
                epe.append(float(metrics.endpoint_error(x_star[1:3], x_true[1:3])))
                _tick(bar)
            sweep.append((float(np.mean(epe)), a, b))
    _close(bar)
    v_epe, a, b = min(sweep)
    return a, b, v_epe, sweep


def records(
    suite: str,
    n_test: int | None = None,
    members: int | None = None,
    n_val: int | None = None,
) -> Iterator[dict]:
    cfg = dict(SUITES[suite])
    for name, value in (("n_test", n_test), ("members", members), ("n_val", n_val)):
        if value is not None:
            cfg[name] = value
    n_test, n = cfg["n_test"], cfg["members"]
    test = motion.basin_motion_samples(jax.random.key(TEST_KEY), n_test)
    flow, grid, sigma = test.flow, test.grid, test.noise_std
    n_entries = int(np.prod(test.obs.values.shape[1:]))
    sm_a, dv_a = motion.fbc23_weights(ALPHA, BETA, n_entries=n_entries, noise_std=sigma)
    map_fn = _map_solver(flow, sigma)
    a, b, v_epe, sweep = _choose_penalty(grid, flow, sigma, sm_a, dv_a, cfg, map_fn)
    penalty = _penalty(grid, a * sm_a, b * dv_a)
    chosen = dict(
        smoothness=a * sm_a,
        divergence=b * dv_a,
        smoothness_factor=a,
        divergence_factor=b,
        convention="grid",
        validation_epe=v_epe,
        n_val=cfg["n_val"],
        sweep=[
            {"smoothness_factor": fa, "divergence_factor": fb, "epe": e}
            for e, fa, fb in sweep
        ],
    )
    truth = test.initial

    # the penalised solutions x*
    x_stars, times, steps, ok = [], [], [], []
    bar = _progress(n_test, "map")
    for i in range(n_test):
        _, obs = test.sample(i)
        (x_star, k, conv), dts = _timed(map_fn, obs, penalty, warm_up=n_test == 1)
        x_stars.append(x_star)
        times.extend(dts)
        steps.append(int(k))
        ok.append(bool(conv))
        _tick(bar)
    _close(bar)
    xs = jnp.stack(x_stars)
    run = times[1:] if len(times) > 1 else times
    yield record(
        PROBLEM,
        f"map-penalised-lbfgs-{MAX_STEPS}",
        batch=1,
        epe=float(
            np.mean([metrics.endpoint_error(x[1:3], t[1:3]) for x, t in zip(xs, truth)])
        ),
        ae_deg=float(
            np.mean([metrics.angular_error(x[1:3], t[1:3]) for x, t in zip(xs, truth)])
        ),
        time_per_sample_s=float(np.median(run)),
        compile_s=max(times[0] - float(np.median(run)), 0.0),
        iterations=float(np.mean(steps)),
        members_converged=float(np.mean(ok)),
        n_test=n_test,
        **chosen,
    )

    # Laplace samples at x*: every term perturbed, and the observations only
    variants = [(f"laplace-{n}", None)]
    if cfg["laplace_obs"]:
        variants.append((f"laplace-obs-{n}", (0,)))
    for name, terms in variants:
        ens, times, iters, conv = [], [], [], []
        bar = _progress(n_test, name)
        for i in range(n_test):
            _, obs = test.sample(i)
            problem = motion.motion_4dvar(flow, obs, sigma, penalty=penalty)
            key = jax.random.fold_in(jax.random.key(ENSEMBLE_KEY), i)
            out, dts = _timed(
                lambda p, x, k: var.laplace_ensemble(
                    p,
                    x,
                    k,
                    n,
                    rtol=CG_RTOL,
                    max_steps=CG_MAX_STEPS,
                    terms=terms,
                    throw=False,
                ),
                problem,
                x_stars[i],
                key,
                warm_up=n_test == 1,
            )
            ens.append(out.members)
            times.extend(dts)
            iters.append(np.asarray(out.n_steps))
            conv.append(np.asarray(out.converged))
            _tick(bar)
        _close(bar)
        yield _scores(
            name,
            ens,
            truth,
            times,
            iters,
            conv,
            n_test,
            cg_rtol=CG_RTOL,
            cg_max_steps=CG_MAX_STEPS,
            perturbed="all residual terms" if terms is None else "observations",
            **chosen,
        )

    if not cfg["rml"]:
        return
    # randomised maximum likelihood: perturbed observations, from the first guess
    name = f"rml-{n}"
    ens, times, iters, conv = [], [], [], []
    bar = _progress(n_test, name)
    solver = var.LBFGS(memory_size=100)
    for i in range(n_test):
        _, obs = test.sample(i)
        problem = motion.motion_4dvar(flow, obs, sigma, penalty=penalty)
        key = jax.random.fold_in(jax.random.key(ENSEMBLE_KEY), i)
        out, dts = _timed(
            lambda p, x0, k: var.rml_ensemble(
                p,
                solver,
                x0,
                k,
                n,
                max_steps=MAX_STEPS,
                terms=(0,),
                chunk_size=1,
                throw=False,
            ),
            problem,
            motion.first_guess(obs),
            key,
            warm_up=n_test == 1,
        )
        ens.append(out.members)
        times.extend(dts)
        iters.append(np.asarray(out.n_steps))
        conv.append(np.asarray(out.converged))
        _tick(bar)
    _close(bar)
    yield _scores(
        name,
        ens,
        truth,
        times,
        iters,
        conv,
        n_test,
        max_steps=MAX_STEPS,
        perturbed="observations",
        **chosen,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--n-val", type=int, default=None)
    parser.add_argument("--x64", action="store_true")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    for rec in records(args.suite, args.n_test, args.members, args.n_val):
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
