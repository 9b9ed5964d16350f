"""Conditional ensembles of SSH maps with an SPDE prior, against kernel OI.

QG turbulence (1.5 layers, 32 x 32 cells over 1000 km, spun up about 180 days) seen
by three nadir altimeters binned to the grid, 1 cm noise, over a 9-day window:

1. an SPDE prior ([BF24]'s advection-diffusion SPDE, constant kappa, tau,
   diffusion h and initial amplitude tau_0, alpha = 4 for smooth fields) is fitted
   by maximum likelihood (`spde.fit_maximum_likelihood`, L-BFGS, exact
   log-determinant by FFT) on the 90 days before the window;
2. the window is mapped by the SPDE OI (conjugate gradients on the precision-form
   MAP, in control variables) and by kernel OI (Gaussian, 100 km and 10 days);
3. a conditional ensemble (perturbation-optimisation) gives the standard-deviation
   map and the CRPS, spread-skill ratio and 90 % coverage on the centre day.

Writes maps.png and ensemble.png. About three minutes on a 2-core CPU.
"""

import argparse
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxda import gaussian, metrics, models, obs, plot, spde
from jaxda.grid import Grid, SpaceTimeKernel


SATELLITES = ("jason", "sentinel-3", "saral")
N_TIMES = 9


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="cells per side (32)")
    p.add_argument("--members", type=int, default=100, help="ensemble size (100)")
    p.add_argument("--fit-steps", type=int, default=60, help="L-BFGS steps (60)")
    p.add_argument("--history-days", type=int, default=90, help="training days")
    p.add_argument("--noise", type=float, default=0.01, help="obs noise, m (0.01)")
    p.add_argument("--alpha", type=int, default=4, help="SPDE power: 2 or 4 (4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ssh_spde_out", help="output directory")
    return p.parse_args(argv)


def daily_ssh(key, n, n_days):
    """`n_days` daily SSH maps `(n_days, n, n)` of spun-up QG turbulence."""
    qg = models.qg_turbulence(key, n=n)
    per_day = math.ceil(86400.0 / qg.dt)
    flow = models.QGStep(qg.model, 86400.0 / per_day)

    def day(q, _):
        q = jax.lax.fori_loop(0, per_day, lambda i, q: flow(q), q)
        return q, qg.model.ssh(q)

    _, ssh = jax.lax.scan(day, qg.state, None, length=n_days)
    return qg.grid, ssh


def prior_from(theta, grid, alpha):
    """The stationary SPDE prior of `theta` = (log(kappa^2 - 0.05), log tau, log h,
    log tau_0): tau_0 free (tied to kappa and tau the likelihood has a no-memory
    basin), kappa^2 >= 0.05 / day (the mean mode's variance tau_0^2 / kappa^(2 alpha)
    stays within float32 CG)."""
    k, (tau, h, tau0) = jnp.sqrt(0.05 + jnp.exp(theta[0])), jnp.exp(theta[1:])
    p = spde.SPDEParameters(
        grid, N_TIMES, kappa=k, tau=tau, diffusion=h, initial_tau=tau0, alpha=alpha
    )
    return spde.SPDEPrior(p, grid, 1.0)


def fit_prior(windows, grid, steps, alpha):
    """Maximum likelihood of the SPDE parameters on training windows (L-BFGS)."""
    theta = jnp.log(jnp.array([0.04, 1.0, 1000.0, 0.064]))  # kappa^2 = 0.09 / day
    fit = spde.fit_maximum_likelihood(
        lambda th: prior_from(th, grid, alpha), theta, windows, steps=steps,
        optimizer=optax.lbfgs(), throw=False,
    )  # fmt: skip
    return fit.theta, float(fit.nll)


def plot_ensemble(sd, mask, members, grid, out):
    """The ensemble's standard deviation (observed cells dotted) and members."""
    import matplotlib.pyplot as plt

    km = (0, grid.nx * grid.dx / 1e3, 0, grid.ny * grid.dy / 1e3)
    fig, axes = plt.subplots(1, 1 + len(members), figsize=(3.4 * (1 + len(members)), 3))
    fig.colorbar(axes[0].imshow(100 * sd, origin="lower", extent=km), ax=axes[0])
    jj, ii = np.nonzero(mask)
    axes[0].plot((ii + 0.5) * km[1] / grid.nx, (jj + 0.5) * km[3] / grid.ny, "w.", ms=2)
    axes[0].set_title("ensemble std (cm)")
    lo, hi = float(members.min()), float(members.max())
    for k, (ax, m) in enumerate(zip(axes[1:], members)):
        im = ax.imshow(m, origin="lower", extent=km, vmin=lo, vmax=hi)
        ax.set_title(f"member {k}, SSH (m)")
    fig.colorbar(im, ax=axes[-1])
    plot.save_figure(fig, out / "ensemble.png")


def main(argv=None):
    args = parse(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k_qg, k_tracks, k_noise, k_ens = jax.random.split(jax.random.key(args.seed), 4)

    # Truth: daily SSH; the days before the test window train the prior.
    n_days = args.history_days + N_TIMES
    qg_grid, ssh = daily_ssh(k_qg, args.n, n_days)
    history, truth = ssh[: args.history_days], ssh[args.history_days :]
    mean, std = float(jnp.mean(history)), float(jnp.std(history))
    train = jnp.stack(
        [history[s : s + N_TIMES] for s in range(0, args.history_days - N_TIMES, 3)]
    )
    train = (train - mean) / std
    grid = Grid(args.n, args.n, qg_grid.dy / 1e3, qg_grid.dx / 1e3, "periodic")  # km

    # Observations: nadir tracks binned to the grid cells, 1 cm noise.
    sats = tuple(obs.Satellite.preset(s, "m") for s in SATELLITES)
    tracks = obs.SatelliteTracks(qg_grid, sats, dt=1.0)
    mask = tracks.points(k_tracks, N_TIMES).nearest_mask(qg_grid)
    y = jnp.where(mask, truth + args.noise * jax.random.normal(k_noise, truth.shape), 0)

    # 1. The SPDE prior by maximum likelihood.
    theta, nll = fit_prior(train, grid, args.fit_steps, args.alpha)
    prior = prior_from(theta, grid, args.alpha)
    kappa2, h = float(prior.params.kappa.squeeze()) ** 2, float(jnp.exp(theta[2]))
    print(f"fit: kappa^2 {kappa2:.3g} / day, h {h:.3g} km^2 / day, nll {nll:.3f}")

    # 2. SPDE OI and kernel OI of the test window.
    y_n = jnp.where(mask, (y - mean) / std, 0.0)
    var_n = (args.noise / std) ** 2
    t0 = time.perf_counter()
    sol = spde.spde_map(prior, y_n, mask, var_n)
    spde_map = mean + std * sol.mean
    spde_s = time.perf_counter() - t0
    t_obs, j, i = np.nonzero(np.asarray(mask))  # the observed cells' centres
    rows = jnp.stack([jnp.asarray(t_obs, float), qg_grid.y[j], qg_grid.x[i]], -1)
    kernel = SpaceTimeKernel(std**2, 100e3, 10.0)
    t0 = time.perf_counter()
    times = jnp.arange(N_TIMES, dtype=float)
    d = (y - mean)[t_obs, j, i]
    oi = mean + gaussian.map_kernel(kernel, qg_grid, times, rows, d, args.noise**2).mean
    oi_s = time.perf_counter() - t0

    # 3. The conditional ensemble.
    t0 = time.perf_counter()
    members = (
        mean
        + std
        * spde.conditional_ensemble(
            k_ens, prior, y_n, mask, var_n, args.members
        ).members
    )
    ens_s = time.perf_counter() - t0
    mid = N_TIMES // 2
    rows_out = {
        name: dict(rmse_cm=100 * float(metrics.rmse(est[mid], truth[mid])), time_s=s)
        for name, est, s in (("SPDE OI", spde_map, spde_s), ("kernel OI", oi, oi_s))
    }
    m, t = members[:, mid], truth[mid]
    scores = dict(
        crps_cm=100 * float(metrics.crps_ensemble(m, t)),
        spread_skill=float(metrics.spread_skill_ratio(m, t)),
        coverage_90=float(metrics.interval_coverage(m, t, 0.9)),
        members=args.members,
        time_s=ens_s,
    )
    for name, r in rows_out.items():
        print(
            f"{name:10s} RMSE {r['rmse_cm']:.2f} cm (centre day), {r['time_s']:.1f} s"
        )
    print(", ".join(f"{k} {v:.3g}" for k, v in scores.items()))

    seen = np.where(np.asarray(mask[mid]), np.asarray(y[mid]), np.nan)
    maps = {"SPDE OI": spde_map[mid], "kernel OI": oi[mid]}
    plot.save_figure(plot.plot_maps(truth[mid], seen, maps, qg_grid), out / "maps.png")
    sd = np.asarray(jnp.std(members[:, mid], axis=0))
    plot_ensemble(sd, np.asarray(mask[mid]), np.asarray(members[:3, mid]), qg_grid, out)
    return dict(rows=rows_out, ensemble=scores, n_obs=int(mask.sum()), nll=nll)


if __name__ == "__main__":
    main()
