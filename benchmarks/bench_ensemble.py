"""Cycled ensemble DA on DAPPER's Lorenz-63 and Lorenz-96 settings, jaxda beside DAPPER.

    python benchmarks/run.py --only ensemble --suite quick    # always float64

Set-ups ([DAPPER]'s `sakov2012` and `sakov2008` models, DESIGN.md):

- `cycled-L63`: Lorenz-63, dt 0.01 (RK4), all components observed every 25 steps,
  R = 2 I, N = 10, initial ensemble N(x0, 2 I);
- `cycled-L96`: Lorenz-96, n = 40, F = 8, dt 0.05 (RK4), all components observed
  every 4 steps, R = I, N = 20, initial ensemble N(x0, 0.001 I).

The quick suite runs 3000 cycles, the full suite 10^4; the first 500 cycles are burn-in.
Metric: [DAPPER]'s `rmse.a`, the time average over the analysis times of
sqrt(mean_i (analysis mean_i - truth_i)^2), and `rmv.a` (`spread`), the time average
of sqrt(mean_i ensemble variance_i). Each method runs as one compiled call over the
whole sequence (compile time apart); `time_per_cycle_s` is its run time / cycles.

`envar` (cycled-L96 only): hybrid EnVar (`jaxda.ensemble.HybridEnVar`), the ETKF
ensemble recentred on a 3D variational analysis with a hybrid B; its hyperparameters
are chosen on a separate tuning twin (`ENVAR_GRID`, `_tune_envar`), never on the
scored sequence. No DAPPER twin.

When the `dapper` package (1.7.1) can be imported, DAPPER's methods run in the same
process on the same truth, observations and initial ensemble (`method`
`dapper-<name>`), and every jaxda record that has a DAPPER twin gets
`rmse_minus_dapper` and `speedup_vs_dapper` (measured in this run). DAPPER's own
random draws (rotations, perturbed observations) differ from ours; DAPPER is seeded
(`DAPPER_SEED`), so its records are reproducible.

The stochastic EnKF's time-averaged RMSE of one run varies by about 0.1 from one
random key to another (N = 10 on Lorenz-63: a few runs lose the attractor's lobe for
a while), more than the difference between the two codes, so its records also carry
the distribution over `SEED_SPREAD` keys (jaxda, one vmapped call) and seeds (DAPPER):
`rmse_over_keys`, `rmse_over_seeds`. The jaxda `enkf` uses DAPPER's perturbations
(`perturbations="rescaled"`, centred and scaled by sqrt(N / (N - 1))), its default
(`"centred"`) is reported beside it (`centred_rmse_over_keys`).
"""

import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import record

from jaxda import RESULTS
from jaxda.ensemble import (
    ETKF,
    LETKF,
    EnKF,
    EnKFN,
    HybridEnVar,
    IEnKS,
    TaperCovariance,
    assimilate,
    assimilate_envar,
    ienks_cycle,
)
from jaxda.models import Lorenz63, Lorenz96, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import DenseGaussNewton


# [DAPPER]'s published rmse.a on these set-ups (DESIGN.md, the models' files).
PUBLISHED = {
    "cycled-L63": {
        "iEnKS N=10 infl 1.02 rot": 0.31,
        "EnKF Sqrt N=10 infl 1.02 rot": 0.60,
        "EnKF PertObs N=10 infl 1.04": 0.65,
        "3D-Var": 1.04,
    },
    "cycled-L96": {"iEnKS N=20 lag 4 xN 2": 0.31, "4D-Var lag 4": 0.37},
}

SETUPS = {
    "cycled-L63": dict(
        model=Lorenz63(), dt=0.01, every=25, obs_var=2.0, n_members=10, init_var=2.0
    ),
    "cycled-L96": dict(
        model=Lorenz96(), dt=0.05, every=4, obs_var=1.0, n_members=20, init_var=0.001
    ),
}


def _methods(problem: str):
    """(method name, jaxda method, DAPPER constructor or None, published key)."""
    if problem == "cycled-L63":
        return [
            (
                "ienks",
                IEnKS(max_iterations=10, tol=0.0, inflation=1.02, rotate=True),
                lambda da: da.iEnKS("Sqrt", N=10, infl=1.02, rot=True),
                "iEnKS N=10 infl 1.02 rot",
            ),
            (
                "ienks-tol1e-5",
                IEnKS(max_iterations=10, tol=1e-5, inflation=1.02, rotate=True),
                None,
                "iEnKS N=10 infl 1.02 rot",
            ),
            (
                "etkf",
                ETKF(inflation=1.02, rotate=True),
                lambda da: da.EnKF("Sqrt", N=10, infl=1.02, rot=True),
                "EnKF Sqrt N=10 infl 1.02 rot",
            ),
            (
                "enkf",
                # DAPPER's perturbations (its `mean0`): centred, times sqrt(N / N1).
                EnKF(inflation=1.04, perturbations="rescaled"),
                lambda da: da.EnKF("PertObs", N=10, infl=1.04),
                "EnKF PertObs N=10 infl 1.04",
            ),
        ]
    return [
        (
            "ienks-n",
            IEnKS(lag=4, max_iterations=10, tol=0.0, finite_size=2.0),
            lambda da: da.iEnKS("Sqrt", N=20, Lag=4, xN=2.0),
            "iEnKS N=20 lag 4 xN 2",
        ),
        (
            "ienks-n-tol1e-5",
            IEnKS(lag=4, max_iterations=10, tol=1e-5, finite_size=2.0),
            None,
            "iEnKS N=20 lag 4 xN 2",
        ),
        (
            "ienks-infl1.02",
            IEnKS(lag=4, max_iterations=10, tol=1e-5, inflation=1.02),
            None,
            "iEnKS N=20 lag 4 xN 2",
        ),
        (
            "etkf",
            # 1.10 (DAPPER's advice for 3 steps per cycle) diverged on both sides.
            ETKF(inflation=1.2, rotate=True),
            lambda da: da.EnKF("Sqrt", N=20, infl=1.2, rot=True),
            None,
        ),
        ("enkf-n", EnKFN(xN=2.0), lambda da: da.EnKF_N(N=20, xN=2.0), None),
        (
            "letkf",
            # DAPPER's loc_rad l is the Gaspari-Cohn half width c / 1.82.
            LETKF(radius=4 * 1.82, inflation=1.06, rotate=True),
            lambda da: da.LETKF(N=20, loc_rad=4, infl=1.06, rot=True),
            None,
        ),
    ]


# Hybrid EnVar on cycled-L96 (`envar`): the ETKF ensemble (N = 20, no localisation,
# rotations) recentred at each analysis on the 3D variational analysis with
# B = beta B_s + (1 - beta) P_e of the forecast ensemble, B_s = sigma_b^2 C and C a
# Gaussian correlation on the ring (length in grid units). (inflation, sigma_b^2,
# length, beta) are chosen on a separate tuning twin (`_twin(..., tuning=True)`:
# another truth and other noise, 1000 cycles, the first 200 not scored), never on
# the scored sequence; the choice and the grid go into the record.
ENVAR_GRID = dict(
    inflation=(1.15, 1.2),
    static_var=(0.1, 0.3),
    length=(1.0, 2.0),
    weight=(0.1, 0.2, 0.3, 0.5),
)
ENVAR_TUNING = dict(n_cycles=1000, burn_in_cycles=200)


def _ring_correlation(n: int, length):
    """The Gaussian correlation exp(-d^2 / (2 length^2)), d the distance on the ring
    (its round-off negative eigenvalues are set to 0 by `TaperCovariance`)."""
    i = jnp.arange(n)
    d = jnp.minimum(jnp.abs(i[:, None] - i), n - jnp.abs(i[:, None] - i))
    return jnp.exp(-0.5 * (d / length) ** 2)


def _envar(inflation, static_var, length, weight, n: int) -> HybridEnVar:
    static = TaperCovariance(static_var * _ring_correlation(n, length))
    return HybridEnVar(
        ETKF(inflation=inflation, rotate=True), static, weight, None, DenseGaussNewton()
    )


def _tune_envar(problem: str) -> dict:
    """The best (lowest rmse.a) point of `ENVAR_GRID` on the tuning twin: one
    compilation, the hyperparameters traced."""
    setup = SETUPS[problem]
    n_cycles, burn_in = ENVAR_TUNING["n_cycles"], ENVAR_TUNING["burn_in_cycles"]
    flow, truth, values, mask, ensemble0 = _twin(problem, n_cycles, tuning=True)
    every, n = setup["every"], truth.shape[1]
    obs = Observations(jnp.asarray(values), jnp.asarray(mask))

    @jax.jit
    def run(inflation, static_var, length, weight):
        method = _envar(inflation, static_var, length, weight, n)
        res = assimilate_envar(
            method, flow, obs, jnp.asarray(ensemble0), key=jax.random.key(7),
            obs_var=setup["obs_var"], throw=False,
        )  # fmt: skip
        return res.analysis[every::every], res.spread[every::every]

    best = None
    for point in itertools.product(*ENVAR_GRID.values()):
        analysis, spread = run(*(jnp.asarray(v, jnp.float64) for v in point))
        rmse, _ = _scores(analysis, spread, truth[every::every], burn_in)
        if not np.isfinite(rmse):
            continue
        if best is None or rmse < best[0]:
            best = (rmse, point)
    return dict(zip(ENVAR_GRID, best[1]), tuning_rmse=best[0])


def _twin(problem: str, n_cycles: int, tuning: bool = False):
    """Truth `(K+1, n)`, observations (every `every` steps, none at step 0) and the
    initial ensemble, all float64 NumPy. `tuning=True`: a separate twin for choosing
    hyperparameters (its truth starts after the scored full-suite segment, other
    noise draws), never the scored sequence."""
    s = SETUPS[problem]
    flow = flow_map(s["model"], s["dt"], "rk4")
    n = s["model"].state_shape[0]
    start = s["model"].reference_state + jnp.linspace(-1.0, 1.0, n)
    x0 = rollout(flow, start, 5000)[-1]
    n_steps = n_cycles * s["every"]
    if tuning:  # beyond the 10^4 cycles of the full suite
        x0 = rollout(flow, x0, 10_000 * s["every"] + 1000)[-1]
    truth = np.asarray(rollout(flow, x0, n_steps))
    rng = np.random.default_rng(2025 if tuning else 2024)
    noise = np.sqrt(s["obs_var"]) * rng.standard_normal(truth.shape)
    times = (np.arange(n_steps + 1) % s["every"] == 0) & (np.arange(n_steps + 1) > 0)
    mask = np.broadcast_to(times[:, None], truth.shape)
    values = np.where(mask, truth + noise, 0.0)
    ensemble0 = np.asarray(x0) + np.sqrt(s["init_var"]) * rng.standard_normal(
        (s["n_members"], n)
    )
    return flow, truth, values, mask, ensemble0


def _scores(analysis, spread, truth_at, burn_in):
    """[DAPPER]'s rmse.a and rmv.a after `burn_in` cycles (arrays `(K, n)`, `(K,)`)."""
    err = np.sqrt(np.mean((np.asarray(analysis) - truth_at) ** 2, axis=1))
    return float(err[burn_in:].mean()), float(np.asarray(spread)[burn_in:].mean())


def _run_jaxda(method, flow, values, mask, ensemble0, setup):
    """One compiled call over the sequence: (analysis (K, n), spread (K,), extra,
    compile_s, run_s)."""
    every, obs_var = setup["every"], setup["obs_var"]
    key = jax.random.key(7)
    if isinstance(method, IEnKS):

        def fn(values, mask, ensemble0, key):
            return ienks_cycle(
                method, flow, Observations(values, mask), ensemble0, obs_var=obs_var,
                steps_per_cycle=every, key=key, throw=False,
            )  # fmt: skip

    elif isinstance(method, HybridEnVar):

        def fn(values, mask, ensemble0, key):
            return assimilate_envar(
                method, flow, Observations(values, mask), ensemble0, key=key,
                obs_var=obs_var, throw=False,
            )  # fmt: skip

    else:

        def fn(values, mask, ensemble0, key):
            return assimilate(
                method, flow, Observations(values, mask), ensemble0, key=key,
                obs_var=obs_var, throw=False,
            )  # fmt: skip

    args = (jnp.asarray(values), jnp.asarray(mask), jnp.asarray(ensemble0), key)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jax.block_until_ready(compiled(*args))
    run_s = time.perf_counter() - t0
    if isinstance(method, IEnKS):
        analysis, spread = res.analysis, res.spread
        extra = dict(
            iterations=float(jnp.mean(res.n_iterations)),
            converged_fraction=float(jnp.mean(res.converged)),
            failed_windows=int(jnp.sum(~res.converged)),
            lag_cycles=method.lag,
            shift_cycles=method.shift,
            max_iterations=method.max_iterations,
            tol=method.tol,
            inflation=float(method.inflation),
            rotate=method.rotate,
            finite_size=method.finite_size,
        )
        extra["nonfinite_windows"] = int(
            jnp.sum(res.window_result == RESULTS.nonfinite)
        )
    elif isinstance(method, HybridEnVar):
        analysed = res.ensemble.analysed
        analysis, spread = res.analysis[every::every], res.spread[every::every]
        extra = dict(
            ok_fraction=float(jnp.mean(res.ensemble.converged)),
            var_failures=int(jnp.sum(res.var_result != RESULTS.successful)),
            var_iterations=float(jnp.sum(res.var_steps) / jnp.sum(analysed)),
            inflation=float(method.inflation),
            rotate=method.rotate,
            weight=float(method.weight),
            filter=type(method.filter).__name__,
        )
    else:
        analysis, spread = res.analysis[every::every], res.spread[every::every]
        extra = dict(
            ok_fraction=float(jnp.mean(res.converged)),
            inflation=float(method.inflation),
            rotate=method.rotate,
        )
    return analysis, spread, extra, compile_s, run_s


# DAPPER's random generator is seeded from the clock unless set: seed it.
DAPPER_SEED = 3000

# Stochastic methods whose records carry the RMSE over random keys / seeds:
# (problem, method name) -> (number of jaxda keys, number of DAPPER seeds).
SEED_SPREAD = {("cycled-L63", "enkf"): (16, 4)}


def _summary(values, seeds) -> dict:
    values = np.asarray(values, float)
    return dict(
        seeds=[int(k) for k in seeds],
        values=[float(v) for v in values],
        mean=float(values.mean()),
        standard_error=float(values.std(ddof=1) / np.sqrt(values.size)),
        sd=float(values.std(ddof=1)),
        min=float(values.min()),
        max=float(values.max()),
    )


def _rmse_over_keys(method, flow, values, mask, ensemble0, setup, truth_at, burn_in,
                    seeds) -> dict:  # fmt: skip
    """rmse.a of `assimilate(method, ...)` for each key `jax.random.key(seed)`, one
    vmapped call."""
    every, obs_var = setup["every"], setup["obs_var"]
    obs = Observations(jnp.asarray(values), jnp.asarray(mask))

    @jax.jit
    @jax.vmap
    def run(seed):
        res = assimilate(
            method, flow, obs, jnp.asarray(ensemble0), key=jax.random.key(seed),
            obs_var=obs_var, throw=False,
        )  # fmt: skip
        return res.analysis[every::every]

    analysis = np.asarray(run(jnp.asarray(seeds)))
    err = np.sqrt(np.mean((analysis - truth_at) ** 2, axis=-1))
    return _summary(err[:, burn_in:].mean(axis=1), seeds)


def _run_dapper(make, setup, truth, values, ensemble0, n_cycles, seed=DAPPER_SEED):
    """DAPPER's method on the same sequence, its generator seeded with `seed`:
    (analysis rmse.a series (K,), rmv.a series (K,), run_s)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import dapper.da_methods as da
    import dapper.mods as modelling
    import dapper.tools.progressbar as progressbar
    from dapper.tools.seeding import set_seed

    set_seed(seed)

    progressbar.disable_progbar = True
    every, n = setup["every"], truth.shape[1]
    if isinstance(setup["model"], Lorenz63):
        from dapper.mods.Lorenz63 import step
    else:
        from dapper.mods.Lorenz96 import step
    tseq = modelling.Chronology(setup["dt"], dko=every, Ko=n_cycles - 1, BurnIn=0)
    ens = np.array(ensemble0)
    X0 = modelling.RV(M=n, func=lambda N: ens[:N].copy())
    obs = modelling.partial_Id_Obs(n, np.arange(n))
    obs["noise"] = setup["obs_var"]
    if isinstance(setup["model"], Lorenz96):  # for DAPPER's LETKF
        from dapper.tools.localization import nd_Id_localization

        obs["localizer"] = nd_Id_localization((n,), (1,))
    dyn = {"M": n, "model": step, "noise": 0}
    HMM = modelling.HiddenMarkovModel(dyn, obs, tseq, X0)
    yy = values[every::every]
    xp = make(da)
    t0 = time.perf_counter()
    xp.assimilate(HMM, truth, yy)
    run_s = time.perf_counter() - t0
    return np.asarray(xp.stats.err.rms.a), np.asarray(xp.stats.spread.rms.a), run_s


def _dapper_version():
    try:
        import dapper
    except ImportError:
        return None
    return getattr(dapper, "__version__", "unknown")


def _problem_records(problem: str, suite: str, only: tuple[str, ...] | None = None):
    """The records of `problem`; `only`: the names of the jaxda methods to run (and
    their DAPPER twins), default all."""
    n_cycles = 3000 if suite == "quick" else 10_000
    burn_in = 500
    setup = SETUPS[problem]
    flow, truth, values, mask, ensemble0 = _twin(problem, n_cycles)
    every = setup["every"]
    truth_at = truth[every::every]
    dapper_version = _dapper_version()
    common = dict(
        n_cycles=n_cycles,
        burn_in_cycles=burn_in,
        n_members=setup["n_members"],
        steps_per_cycle=every,
        obs_var=setup["obs_var"],
        dapper_published=PUBLISHED[problem],
    )
    methods = _methods(problem)
    tuned = {}
    if problem == "cycled-L96" and (only is None or "envar" in only):
        choice = _tune_envar(problem)
        n = truth.shape[1]
        point = [choice[k] for k in ENVAR_GRID]
        methods.append(("envar", _envar(*point, n), None, None))
        tuned["envar"] = dict(
            static_var=choice["static_var"],
            static_length=choice["length"],
            tuning_rmse=choice["tuning_rmse"],
            tuning_grid={k: list(v) for k, v in ENVAR_GRID.items()},
            tuned_on=(
                "a separate tuning twin (other truth and noise), "
                f"{ENVAR_TUNING['n_cycles']} cycles, the first "
                f"{ENVAR_TUNING['burn_in_cycles']} not scored"
            ),
        )
    ours, theirs = [], {}
    for name, method, make, published in methods:
        if only is not None and name not in only:
            continue
        analysis, spread, extra, compile_s, run_s = _run_jaxda(
            method, flow, values, mask, ensemble0, setup
        )
        rmse, rmv = _scores(analysis, spread, truth_at, burn_in)
        rec = record(
            problem,
            name,
            analysis_rmse=rmse,
            spread=rmv,
            time_per_cycle_s=run_s / n_cycles,
            compile_s=compile_s,
            published_key=published,
            **extra,
            **tuned.get(name, {}),
            **common,
        )
        n_keys, n_seeds = SEED_SPREAD.get((problem, name), (0, 0))
        if n_keys:
            seeds = np.arange(7, 7 + n_keys)  # 7: the key of the single run
            args = (flow, values, mask, ensemble0, setup, truth_at, burn_in, seeds)
            rec["rmse_over_keys"] = _rmse_over_keys(method, *args)
            if isinstance(method, EnKF):
                rec["perturbations"] = method.perturbations
                if method.perturbations != "centred":
                    default = EnKF(inflation=method.inflation, rotate=method.rotate)
                    rec["centred_rmse_over_keys"] = _rmse_over_keys(default, *args)
        ours.append((rec, make))
        if make is not None and dapper_version is not None:
            err, dspread, d_run_s = _run_dapper(
                make, setup, truth, values, ensemble0, n_cycles
            )
            theirs[name] = record(
                problem,
                f"dapper-{name}",
                analysis_rmse=float(err[burn_in:].mean()),
                spread=float(dspread[burn_in:].mean()),
                time_per_cycle_s=d_run_s / n_cycles,
                compile_s=0.0,
                dapper_version=dapper_version,
                dapper_seed=DAPPER_SEED,
                published_key=published,
                **common,
            )
            if n_seeds:
                seeds = DAPPER_SEED + np.arange(n_seeds)
                rmses = [float(err[burn_in:].mean())] + [
                    float(
                        _run_dapper(
                            make, setup, truth, values, ensemble0, n_cycles, int(sd)
                        )[0][burn_in:].mean()
                    )
                    for sd in seeds[1:]
                ]
                theirs[name]["rmse_over_seeds"] = _summary(rmses, seeds)
    # Pair each DAPPER twin with the jaxda records of the same scheme (the same
    # settings, or only a different stopping rule).
    for rec, _ in ours:
        base = rec["method"].split("-tol")[0]
        twin = theirs.get(base)
        if twin is not None:
            rec["dapper_same_run_rmse"] = twin["analysis_rmse"]
            rec["rmse_minus_dapper"] = rec["analysis_rmse"] - twin["analysis_rmse"]
            rec["speedup_vs_dapper"] = (
                twin["time_per_cycle_s"] / rec["time_per_cycle_s"]
            )
            if "rmse_over_keys" in rec and "rmse_over_seeds" in twin:
                ours_, theirs_ = rec["rmse_over_keys"], twin["rmse_over_seeds"]
                rec["mean_rmse_minus_dapper"] = ours_["mean"] - theirs_["mean"]
                rec["mean_rmse_minus_dapper_standard_error"] = float(
                    np.hypot(ours_["standard_error"], theirs_["standard_error"])
                )
        yield rec
    yield from theirs.values()
    _print_table(problem, [r for r, _ in ours] + list(theirs.values()))


def _print_table(problem, recs):
    print(f"  {problem}: rmse.a (spread), ms per cycle; [DAPPER] published:")
    for key, value in PUBLISHED[problem].items():
        print(f"    published  {key:32s} {value:.2f}")
    for r in recs:
        line = (
            f"    {r['method']:22s} {r['analysis_rmse']:.3f} ({r['spread']:.3f})  "
            f"{1e3 * r['time_per_cycle_s']:8.3f} ms"
        )
        if r.get("published_key"):
            line += f"   published {PUBLISHED[problem][r['published_key']]:.2f}"
        if "speedup_vs_dapper" in r:
            line += (
                f"   vs DAPPER same run {r['rmse_minus_dapper']:+.3f}, "
                f"{r['speedup_vs_dapper']:.0f}x faster"
            )
        print(line, flush=True)
        for field in ("rmse_over_keys", "centred_rmse_over_keys", "rmse_over_seeds"):
            if field in r:
                v = r[field]
                print(
                    f"      {field}: {v['mean']:.3f} +- {v['standard_error']:.3f} "
                    f"(sd {v['sd']:.3f}, {v['min']:.3f}..{v['max']:.3f}, "
                    f"{len(v['seeds'])} runs)",
                    flush=True,
                )


def records(suite: str):
    with jax.enable_x64(True):
        for problem in ("cycled-L63", "cycled-L96"):
            yield from _problem_records(problem, suite)
