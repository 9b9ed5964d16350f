r"""SPDE priors against covariance OI on gridded SSH-like fields: maps, conditional
ensembles and their scores, and the cost of prior sampling ([BF24]).

    python benchmarks/run.py --suite full --only ssh_spde \
        --out benchmarks/results/cpu-2core-x86_64.full-ssh-spde.json
    python benchmarks/bench_ssh_spde.py --suite quick           # a quick look

Two problems, 9 daily states per window, the nadir-track masks of
`bench_ssh_fourdvarnet`'s QG OSSE (three altimeters binned to the grid, about 9 % of
the cells per day at 32 x 32), noise 1 cm; train / validation / test windows from
independent keys:

- `ssh-qg<n>-nadir`: `bench_ssh_fourdvarnet.make_ssh_osse`'s QG SSH (stationary
  statistics on a doubly periodic square of 1000 km);
- `gmrf-nonstationary<n>-nadir`: a non-stationary Gaussian truth on a closed square
  of 1000 km, drawn from an SPDE prior ($\alpha = 4$, $h$ = 2000 km$^2$/day) with a
  damping $\kappa(s)$ from 0.1 to 0.4 per day across the domain (west: long memory
  and large scales; east: 4x shorter), an amplitude $\tau(s)$ and a rotating
  advection $\mathbf m(s)$ of 25 km/day; scaled to about 6 cm RMS.

Methods (`method`):

- `oi-kernel`: `jaxda.gaussian.map_kernel` with a Gaussian `SpaceTimeKernel` of the
  training variance, length and time scales chosen on the validation windows by
  the RMSE of the centre step (`bench_ssh_fourdvarnet.make_oi`);
- `spde-oi-stationary` (`-alpha4`, `-alpha2` on the QG problem):
  `jaxda.spde.spde_map` with an `SPDEPrior` of constant fields ($\kappa$, $\tau$,
  isotropic $\mathbf H = h\mathbf I$, the initial amplitude $\tau_0$, and on the
  closed problem a constant $\mathbf m$), fitted by maximum likelihood on the
  training truths (`jaxda.spde.fit_maximum_likelihood`: L-BFGS on unconstrained
  parameters with $\kappa^2 \ge 0.05$ per day, see `_stationary`; the exact
  log-determinant: FFT on the periodic grid, banded Cholesky on the closed one);
  $\alpha = 4$ for the smooth QG SSH, and [BF24]'s $\alpha = 2$ for comparison
  (its white-in-space innovations make rough fields);
- `spde-oi-fields` (closed problem): $\log\kappa(s)$, $\log\tau(s)$ and
  $\mathbf m(s)$ as fields on the grid, fitted by Adam (banded log-det), from the
  stationary fit;
- `spde-oi-true` (closed problem): the SPDE that drew the truth (the optimum).

SPDE rows also score `conditional_ensemble` (perturbation-optimisation, `members`
members per window): `crps` (fair), `spread_skill`, `coverage_90`, all on the
centre step pooled over test windows, in metres. Fields: `rmse` (centre step),
`rmse_window` (all steps), `time_s` (one window's MAP, median, compile excluded),
`ensemble_time_s` (one window's ensemble), `fit_s`, `fit_steps` (updates taken),
`fit_steps_allowed`, `fit_nll` and `fit_gradient_norm` (the objective of
`fit_maximum_likelihood` on the training truths and its gradient's norm),
`fit_result`, `nll` (the same objective on the test truths: mean negative
log-density per value without 0.5 log 2 pi, normalised units).

`fit-diagnosis-<tau_0>-<start>` records (`--parts diagnosis`, QG problem): the
alpha = 4 fit of three forms of $\tau_0$ from two starts (`diagnosis_records`).

`prior-sampling` records (`problem="spde-sampling-128x128x9"`): 200 prior samples of
a 128 x 128 x 9 window (`SPDEPrior.sample`), `time_s` (median, compile excluded),
for constant fields on a periodic grid (`solver="fft"`) and fields varying in space
on a closed grid (`"banded"`, stationary in time: one factorisation).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import record, time_call
from bench_ssh_fourdvarnet import (
    N_TIMES,
    NOISE_STD,
    OI_LENGTHS_KM,
    OI_TIMES_DAYS,
    make_oi,
    make_ssh_osse,
)

from jaxda import RESULTS, metrics, spde
from jaxda.grid import Grid
from jaxda.obs import Observations


CENTRE = N_TIMES // 2
SUITES = {
    "quick": dict(
        n=16, spinup_days=30, n_train=8, n_val=2, n_test=2, members=16,
        fit_steps=10, fields_fit_steps=30, sampling=(32, 8),
    ),
    "full": dict(
        n=32, spinup_days=180, n_train=64, n_val=16, n_test=32, members=100,
        fit_steps=60, fields_fit_steps=400, sampling=(128, 200),
    ),
}  # fmt: skip


def _km_grid(grid: Grid) -> Grid:
    """The same cells in kilometres (SPDE parameters in km and days)."""
    return Grid(grid.ny, grid.nx, grid.dy / 1e3, grid.dx / 1e3, grid.boundary)


# ------------------------------------------------------------------ the priors
KAPPA2_MIN = 0.05  # per day: the floor of kappa^2 (see `_stationary`)
LBFGS = optax.lbfgs()  # its zoom line search (the backtracking one stalled here)


def _stationary(theta, grid, mean, alpha=2):
    """Constant fields from unconstrained `theta` = (log(kappa^2 - KAPPA2_MIN), log
    tau, log h, log tau_0[, m_x, m_y]).

    The initial amplitude tau_0 is a parameter of its own: tied to kappa and tau (the
    default of `SPDEParameters`) the likelihood of the QG SSH has a no-memory basin
    that the fit ran into. The floor of kappa^2 keeps the prior variance of the
    spatial-mean mode, about tau_0^2 / kappa^(2 alpha), within what float32 conjugate
    gradients resolve: on `ssh-qg32-nadir` (alpha = 4) the maximum likelihood leaves
    kappa^2 unidentified between 1e-6 and 2e-4 / day, where that variance is 1e11 or
    more (normalised units), the OI's CG stops at its cap and the MAP breaks down
    (the `fit-diagnosis-free-*` records); at the floor the objective is 0.09 per
    value higher, CG takes about 210 steps and a 100-member ensemble 15 s."""
    kappa = jnp.sqrt(KAPPA2_MIN + jnp.exp(theta[0]))
    tau, h, tau0 = jnp.exp(theta[1]), jnp.exp(theta[2]), jnp.exp(theta[3])
    advection = theta[4:6] if not grid.periodic else jnp.zeros(2, theta.dtype)
    params = spde.SPDEParameters(
        grid, N_TIMES, kappa=kappa, tau=tau, diffusion=h, advection=advection,
        initial_tau=tau0, alpha=alpha,
    )  # fmt: skip
    return spde.SPDEPrior(params, grid, 1.0, mean=mean)


def _fields(theta, grid, mean, alpha=4):
    """Fields `(log kappa, log tau, m_x, m_y)` `(4, ny, nx)`, log h and log tau_0."""
    fields, log_h, log_tau0 = theta
    params = spde.SPDEParameters(
        grid, N_TIMES, kappa=jnp.exp(fields[0]), tau=jnp.exp(fields[1]),
        advection=fields[2:4], diffusion=jnp.exp(log_h), initial_tau=jnp.exp(log_tau0),
        alpha=alpha,
    )  # fmt: skip
    return spde.SPDEPrior(params, grid, 1.0, mean=mean)


def _initial_theta(grid, alpha):
    r"""A prior of about 100 km and 10 days with unit stationary variance: for
    constant fields the variance is the mean over wavenumbers of
    $\tau^2\Delta t / (|1 + \Delta t\,a(k)^{\alpha/2}|^2 - 1)$, $a$ the symbol of
    $\kappa^2 - h\Delta$; $\tau_0$ the default of `SPDEParameters`."""
    kappa2, h = 0.1, 0.1 * 100.0**2
    k = 2 * np.pi * np.fft.fftfreq(grid.nx)
    lap = (2 - 2 * np.cos(k))[:, None] / grid.dx**2 + (2 - 2 * np.cos(k))[
        None
    ] / grid.dy**2
    a = (kappa2 + h * lap) ** (alpha // 2)
    tau = 1 / math.sqrt(np.mean(1.0 / ((1 + a) ** 2 - 1)))
    p = alpha // 2
    tau0 = tau * kappa2 ** (p / 2) / math.sqrt(2 + kappa2**p)
    return jnp.array(
        [math.log(kappa2 - KAPPA2_MIN), math.log(tau), math.log(h), math.log(tau0),
         0.0, 0.0]
    )  # fmt: skip


def fit(build, theta, truths, steps, optimizer=LBFGS, logdet="auto"):
    """Maximum likelihood (`jaxda.spde.fit_maximum_likelihood`, L-BFGS by default):
    the fit and the time it took."""
    t0 = time.perf_counter()
    out = spde.fit_maximum_likelihood(
        build, theta, truths, steps=steps, optimizer=optimizer, logdet=logdet,
        throw=False,
    )  # fmt: skip
    return out, time.perf_counter() - t0


def _fit_fields(out, fit_s, allowed):
    """The record fields of a fit: its objective, gradient, steps and time."""
    return dict(
        fit_s=fit_s, fit_steps=int(out.num_steps), fit_steps_allowed=allowed,
        fit_nll=float(out.nll), fit_gradient_norm=float(out.gradient_norm),
        fit_result=next(
            name for name in ("successful", "nonfinite_loss", "max_steps_reached")
            if out.result == getattr(RESULTS, name)
        ),
    )  # fmt: skip


# ---------------------------------------------------------------- the scores
def _map_fn():
    @eqx.filter_jit
    def run(prior, y, mask, var):
        return spde.spde_map(prior, y, mask, var, throw=False).mean

    return run


def spde_rows(problem, method, prior, test, std, members, extra):
    """MAP and ensemble scores of an SPDE prior on the test windows (normalised
    units in, metres out)."""
    var = (NOISE_STD / std) ** 2
    y, mask, truth = test["y"], test["mask"], test["truth"]
    run = _map_fn()
    compile_s, time_s = time_call(run, prior, y[0], mask[0], var, repeats=3)
    maps = jnp.stack([run(prior, y[i], mask[i], var) for i in range(len(y))])

    @eqx.filter_jit
    def ensemble(prior, key, y, mask):
        out = spde.conditional_ensemble(key, prior, y, mask, var, members, throw=False)
        return out.members, out.result

    _, ens_s = time_call(ensemble, prior, jax.random.key(0), y[0], mask[0], repeats=1)
    members_c, ok = [], True
    for i in range(len(y)):
        m, result = ensemble(prior, jax.random.key(100 + i), y[i], mask[i])
        ok &= bool(result == RESULTS.successful)
        members_c.append(m[:, CENTRE])
    ens = jnp.stack(members_c, 1) * std  # (N, windows, ny, nx), metres
    centre = truth[:, CENTRE] * std
    return record(
        problem, method,
        rmse=float(jnp.sqrt(jnp.mean((maps[:, CENTRE] * std - centre) ** 2))),
        rmse_window=float(jnp.sqrt(jnp.mean((maps - truth) ** 2)) * std),
        crps=float(metrics.crps_ensemble(ens, centre)),
        spread_skill=float(metrics.spread_skill_ratio(ens, centre)),
        coverage_90=float(metrics.interval_coverage(ens, centre, 0.9)),
        members=members, ensemble_successful=ok, time_s=time_s, compile_s=compile_s,
        ensemble_time_s=ens_s, n_test=len(y), **extra,
    )  # fmt: skip


def oi_row(problem, grid, data, cfg):
    """Kernel OI, scales chosen on validation by the centre-step RMSE."""
    variance = float(jnp.var(data["train"]["truth"]))
    oi = make_oi(grid, variance)

    def scored(split, length, days):
        s = data[split]
        est = oi(s["obs"], s["obs"].mask, length * 1e3, days)
        return est, float(
            jnp.sqrt(jnp.mean((est[:, CENTRE] - s["truth"][:, CENTRE]) ** 2))
        )

    best = min(
        (scored("validation", L, t)[1], L, t)
        for L in OI_LENGTHS_KM
        for t in OI_TIMES_DAYS
    )
    _, length, days = best
    est, rmse = scored("test", length, days)
    truth = data["test"]["truth"]
    return record(
        problem, "oi-kernel", rmse=rmse,
        rmse_window=float(jnp.sqrt(jnp.mean((est - truth) ** 2))),
        oi_length_km=length, oi_time_days=days, n_test=int(truth.shape[0]),
    )  # fmt: skip


def _normalised(split, mean, std):
    o = split["obs"]
    return {
        "truth": (split["truth"] - mean) / std,
        "y": jnp.where(o.mask, (o.values - mean) / std, 0.0),
        "mask": o.mask,
    }


# ------------------------------------------------------------------- problems
def qg_records(cfg, parts=("qg", "nonstationary")) -> Iterator[dict]:
    grid, data = make_ssh_osse(cfg)
    problem = f"ssh-qg{cfg['n']}-nadir"
    if "qg" not in parts:
        yield from nonstationary_records(cfg, grid, data)
        return
    yield oi_row(problem, grid, data, cfg)
    mean = float(jnp.mean(data["train"]["truth"]))
    std = float(jnp.std(data["train"]["truth"]))
    train = (data["train"]["truth"] - mean) / std
    test = _normalised(data["test"], mean, std)
    kgrid = _km_grid(grid)
    for alpha in (4, 2):
        out, fit_s = fit(
            lambda th: _stationary(th, kgrid, 0.0, alpha),
            _initial_theta(kgrid, alpha)[:4], train, cfg["fit_steps"],
        )  # fmt: skip
        prior = _stationary(out.theta, kgrid, 0.0, alpha)
        kappa, tau, h = prior.params.at(0)[0], prior.params.at(0)[3], out.theta[2]
        yield spde_rows(
            problem, f"spde-oi-stationary-alpha{alpha}", prior, test, std,
            cfg["members"],
            dict(**_fit_fields(out, fit_s, cfg["fit_steps"]),
                 nll=float(spde.negative_log_likelihood(prior, test["truth"])),
                 kappa=float(kappa.squeeze()), tau=float(tau.squeeze()),
                 h_km2_per_day=float(jnp.exp(h)),
                 initial_tau=float(prior.params.initial_tau.squeeze()), alpha=alpha),
        )  # fmt: skip
    # the masks of the QG OSSE serve the non-stationary problem
    if "nonstationary" in parts:
        yield from nonstationary_records(cfg, grid, data)


def _true_prior(grid):
    """The non-stationary SPDE of `gmrf-nonstationary`: km and days."""
    ny, nx = grid.shape
    yy, xx = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
    kappa = 0.1 + 0.3 * (1 + np.tanh((xx - nx / 2) / (nx / 10))) / 2
    tau = 1.0 + 0.5 * np.cos(2 * np.pi * yy / ny)
    speed = 25.0  # km / day
    u = -speed * np.sin(np.pi * yy / ny) * np.cos(np.pi * xx / nx)
    v = speed * np.cos(np.pi * yy / ny) * np.sin(np.pi * xx / nx)
    params = spde.SPDEParameters(
        grid, N_TIMES, kappa=jnp.asarray(kappa, jnp.float32),
        tau=jnp.asarray(tau, jnp.float32),
        advection=jnp.asarray(np.stack([u, v]), jnp.float32), diffusion=2000.0,
        dt=1.0, alpha=4,
    )  # fmt: skip
    return spde.SPDEPrior(params, grid, 1.0, solver="banded")


def nonstationary_records(cfg, qg_grid, qg_data) -> Iterator[dict]:
    n = cfg["n"]
    grid = Grid(n, n, qg_grid.dy, qg_grid.dx, "closed")
    kgrid = _km_grid(grid)
    problem = f"gmrf-nonstationary{n}-nadir"
    truth_prior = _true_prior(kgrid)
    data = {}
    raw = {}
    for i, split in enumerate(("train", "validation", "test")):
        n_w = qg_data[split]["truth"].shape[0]
        raw[split] = truth_prior.sample(jax.random.fold_in(jax.random.key(7), i), n_w)
    scale = 0.06 / float(jnp.std(raw["train"]))  # metres: about 6 cm RMS
    for i, split in enumerate(("train", "validation", "test")):
        truth = raw[split] * scale
        mask = qg_data[split]["obs"].mask
        noise = NOISE_STD * jax.random.normal(
            jax.random.fold_in(jax.random.key(8), i), truth.shape, truth.dtype
        )
        data[split] = {
            "truth": truth,
            "obs": Observations(jnp.where(mask, truth + noise, 0.0), mask),
        }
    yield oi_row(problem, grid, data, cfg)
    mean, std = 0.0, scale  # the truth's law is known to be centred
    train = data["train"]["truth"] / std
    test = _normalised(data["test"], mean, std)
    test["truth"] = data["test"]["truth"] / std
    out, fit_s = fit(
        lambda th: _stationary(th, kgrid, 0.0, 4), _initial_theta(kgrid, 4), train,
        cfg["fit_steps"],
    )  # fmt: skip
    prior = _stationary(out.theta, kgrid, 0.0, 4)
    yield spde_rows(
        problem, "spde-oi-stationary", prior, test, std, cfg["members"],
        dict(**_fit_fields(out, fit_s, cfg["fit_steps"]),
             nll=float(spde.negative_log_likelihood(prior, test["truth"]))),
    )  # fmt: skip
    theta = out.theta
    log_kappa = 0.5 * jnp.log(KAPPA2_MIN + jnp.exp(theta[0]))
    fields0 = jnp.stack(
        [jnp.full(kgrid.shape, log_kappa), jnp.full(kgrid.shape, theta[1]),
         jnp.full(kgrid.shape, theta[4]), jnp.full(kgrid.shape, theta[5])]
    )  # fmt: skip
    out_f, fit_f = fit(  # Adam: L-BFGS's line search makes a long compilation here
        lambda th: _fields(th, kgrid, 0.0), (fields0, theta[2], theta[3]), train,
        cfg["fields_fit_steps"], optimizer=optax.adam(0.01),
    )  # fmt: skip
    prior_f = _fields(out_f.theta, kgrid, 0.0)
    yield spde_rows(
        problem, "spde-oi-fields", prior_f, test, std, cfg["members"],
        dict(**_fit_fields(out_f, fit_f, cfg["fields_fit_steps"]),
             nll=float(spde.negative_log_likelihood(prior_f, test["truth"]))),
    )  # fmt: skip
    true = spde.SPDEPrior(truth_prior.params, kgrid, 1.0)
    yield spde_rows(problem, "spde-oi-true", true, test, std, cfg["members"], {})


def sampling_records(cfg) -> Iterator[dict]:
    n, n_samples = cfg["sampling"]
    problem = f"spde-sampling-{n}x{n}x{N_TIMES}"
    for boundary, solver in (("periodic", "fft"), ("closed", "banded")):
        grid = Grid(n, n, 1.0, 1.0, boundary)
        if solver == "fft":
            params = spde.SPDEParameters(
                grid, N_TIMES, kappa=0.3, tau=1.0, advection=jnp.array([0.5, 0.2]),
                diffusion=jnp.array([1.5, 0.3, 1.0]), dt=1.0,
            )  # fmt: skip
        else:
            yy, xx = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")
            params = spde.SPDEParameters(
                grid, N_TIMES, kappa=0.3 + 0.2 * jnp.sin(2 * jnp.pi * xx / n),
                tau=1.0,
                advection=jnp.stack([0.5 * jnp.cos(2 * jnp.pi * yy / n),
                                     0.3 * jnp.sin(2 * jnp.pi * xx / n)]),
                diffusion=spde.diffusion_from_anisotropy(
                    1.0 + 0 * xx, jnp.stack([0.8 * jnp.cos(2 * jnp.pi * yy / n),
                                             0.5 + 0 * xx])),
                dt=1.0,
            )  # fmt: skip
        prior = spde.SPDEPrior(params, grid, 1.0, solver=solver)
        sample = eqx.filter_jit(lambda p, k: p.sample(k, n_samples, throw=False))
        compile_s, time_s = time_call(sample, prior, jax.random.key(0), repeats=3)
        yield record(
            problem, f"prior-sampling-{solver}", batch=n_samples, time_s=time_s,
            compile_s=compile_s, boundary=boundary,
            fields="constant" if solver == "fft" else "varying in space",
        )  # fmt: skip


def _tied(theta, grid, formula):
    """(log kappa, log tau, log h) with tau_0 tied: `"alpha4"` the default of
    `SPDEParameters`, tau kappa^2 / sqrt(2 + kappa^4); `"alpha2"` the default before
    alpha moved into `SPDEParameters`, tau kappa / sqrt(2 + kappa^2)."""
    kappa, tau, h = jnp.exp(theta[0]), jnp.exp(theta[1]), jnp.exp(theta[2])
    tau0 = None if formula == "alpha4" else tau * kappa / jnp.sqrt(2 + kappa**2)
    params = spde.SPDEParameters(
        grid, N_TIMES, kappa=kappa, tau=tau, diffusion=h, initial_tau=tau0, dt=1.0,
        alpha=4,
    )  # fmt: skip
    return spde.SPDEPrior(params, grid, 1.0)


def _free(theta, grid):
    """(log kappa, log tau, log h, log tau_0): tau_0 free, no floor on kappa."""
    kappa, tau, h, tau0 = (jnp.exp(theta[i]) for i in range(4))
    params = spde.SPDEParameters(
        grid, N_TIMES, kappa=kappa, tau=tau, diffusion=h, initial_tau=tau0, alpha=4
    )
    return spde.SPDEPrior(params, grid, 1.0)


def diagnosis_records(cfg) -> Iterator[dict]:
    """`fit-diagnosis` records on the QG OSSE's training windows: the alpha = 4
    maximum likelihood of three parametrisations of tau_0 (`tied-alpha4`, the
    current default; `tied-alpha2`, the earlier one; `free`) from two starts
    (`short`: `_initial_theta`'s kappa^2 = 0.1 / day; `long`: kappa^2 = 0.0064 / day,
    tau = 0.01), L-BFGS; the objective, gradient and parameters reached, and the
    MAP's centre-step RMSE on the first 8 test windows (`map_successful`: whether
    every CG met its tolerance)."""
    grid, data = make_ssh_osse(cfg)
    problem = f"ssh-qg{cfg['n']}-nadir"
    mean = float(jnp.mean(data["train"]["truth"]))
    std = float(jnp.std(data["train"]["truth"]))
    train = (data["train"]["truth"] - mean) / std
    test = {k: v[:8] for k, v in _normalised(data["test"], mean, std).items()}
    kgrid = _km_grid(grid)
    short = _initial_theta(kgrid, 4)
    short = jnp.array([0.5 * math.log(0.1), short[1], short[2], short[3]])
    long = jnp.log(jnp.array([0.08, 0.01, 1000.0, 0.01 * 0.0064 / math.sqrt(2)]))
    builds = {
        "tied-alpha4": (lambda th: _tied(th, kgrid, "alpha4"), 3),
        "tied-alpha2": (lambda th: _tied(th, kgrid, "alpha2"), 3),
        "free": (lambda th: _free(th, kgrid), 4),
    }
    run = eqx.filter_jit(
        lambda prior, y, mask, var: spde.spde_map(prior, y, mask, var, throw=False)
    )
    var = (NOISE_STD / std) ** 2
    for name, (build, n_theta) in builds.items():
        for start_name, start in (("short", short), ("long", long)):
            out, fit_s = fit(build, start[:n_theta], train, cfg["fit_steps"])
            prior = build(out.theta)
            maps, ok = [], True
            for i in range(len(test["y"])):
                sol = run(prior, test["y"][i], test["mask"][i], var)
                maps.append(sol.mean)
                ok &= bool(sol.result == RESULTS.successful)
            maps = jnp.stack(maps)
            err = (maps[:, CENTRE] - test["truth"][:, CENTRE]) * std
            kappa, _, _, tau = prior.params.at(0)
            yield record(
                problem, f"fit-diagnosis-{name}-{start_name}",
                **_fit_fields(out, fit_s, cfg["fit_steps"]),
                kappa2=float(kappa.squeeze()) ** 2, tau=float(tau.squeeze()),
                h_km2_per_day=float(jnp.exp(out.theta[2])),
                initial_tau=float(prior.params.initial_tau.squeeze()),
                rmse=float(jnp.sqrt(jnp.mean(err**2))), map_successful=ok, n_test=8,
            )  # fmt: skip


def records(
    suite: str = "quick", parts=("sampling", "qg", "nonstationary")
) -> Iterator[dict]:
    cfg = SUITES[suite]
    if "sampling" in parts:
        yield from sampling_records(cfg)
    if "qg" in parts or "nonstationary" in parts:
        yield from qg_records(cfg, parts)
    if "diagnosis" in parts:
        yield from diagnosis_records(cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument(
        "--parts", nargs="+", default=["sampling", "qg", "nonstationary"],
        choices=["sampling", "qg", "nonstationary", "diagnosis"],
    )  # fmt: skip
    args = parser.parse_args(argv)
    for rec in records(args.suite, tuple(args.parts)):
        print(json.dumps({**rec, "suite": args.suite}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
