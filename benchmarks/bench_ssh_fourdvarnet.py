r"""4DVarNet-UNet against covariance OI on a QG SSH OSSE with nadir altimetry: the
mapping, near-real-time and short-forecast tasks of a 9-day window (seed 002).

    python benchmarks/run.py --suite full --only ssh_fourdvarnet \
        --out benchmarks/results/cpu-2core-x86_64.full-ssh-fourdvarnet.json
    python benchmarks/bench_ssh_fourdvarnet.py --suite full --per-task mapping \
        --no-shared --out per_task.json     # the per-task mapping network
    python benchmarks/bench_ssh_fourdvarnet.py --suite quick     # a quick look

(the results file holds the first command's records and the second's
`4dvarnet-unet-task/mapping` row; its OI rows are the same numbers).

The OSSE (`problem="ssh-qg<n>-nadir"`): `jaxda.models.qg_turbulence`'s 1.5-layer QG
model on an `n` x `n` doubly periodic square of 1000 km; every window starts from
its own random state (`QG.random_state`, RMS speed 0.2 m/s) spun up for
`spinup_days` days (`make_osse_splits(..., burn_in_steps=...)`, one step = one day of
4-hour QG steps), then 9 daily states; the truth is the SSH $\eta = f_0\psi/g$
(about 6 cm RMS). Three nadir altimeters (`SatelliteTracks`: Jason, Sentinel-3,
SARAL, a random phase of their repeat cycles per window) give, binned to the grid
(the cells holding a track point on that day, about 9 % of the cells of a day at
32 x 32), $y = \eta + \varepsilon$, $\varepsilon \sim \mathcal N(0, (1\text{ cm})^2)$.
Train, validation and test windows come from `make_osse_splits`' independent keys.

Tasks (the scored step of the 9-step window, what the estimator sees):

- `mapping`: step 4 (the centre), all observations;
- `nrt` (near real time): step 8 (the last), all observations;
- `forecast-2`, `forecast-4`: step 8, the observations of the last 2 / 4 steps
  removed (`jaxda.fourdvarnet.forecast_observations`).

Methods (`method` = `<estimator>/<task>`):

- `oi-kernel`: `jaxda.gaussian.map_kernel`, a Gaussian `SpaceTimeKernel` of the
  training SSH variance (climatology), noise variance (1 cm)^2, the binned
  observations at the cell centres (the input of the 4DVarNet); the length and
  time scales chosen per task on the validation windows from a grid
  (`oi_length_km`, `oi_time_days`); Euclidean distances (the kernel does not wrap
  around the periodic domain).
- `4dvarnet-unet`: `FourDVarNet` with a `UNetPrior` (time as channels, periodic
  padding), the 3-d `ConvLSTMSolver` (`layout="field"`, periodic in space), the
  mean-reduced cost, supervised loss, trained by `fit_fourdvarnet` in normalised
  units (the training SSH's mean and standard deviation). ONE network serves the
  four tasks: it is trained on the whole window with every training window given
  three times, with 0, 2 and 4 final steps of observations removed (so the
  forecast inputs are seen in training), and scored per task. With `--per-task
  TASK ...` the same network is also trained for each named task alone, the loss
  on the task's step only and the task's input (seed 002's set-up:
  `fit_fourdvarnet(..., steps=...)`), method `4dvarnet-unet-task/<task>`
  (`--no-shared` skips the shared network).

Fields: `rmse` (metres, on the scored step over the test windows), `rmse_ratio_oi`
(this row's RMSE over the OI row of the same task), `lambda_x_km` (the wavelength
where `jaxda.metrics.psd_score` of the scored step, spectra averaged over the test
windows, crosses 0.5; absent when it never does), `time_s` (inference, one window
per jitted call: median, compile excluded), `train_s`, `n_train` (distinct training
windows), `epochs` (passes over the training examples), `steps`, `batch_size`,
`parameters`.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import record, time_call

from jaxda import RESULTS, data, fourdvarnet as fdn, gaussian, metrics, models, obs
from jaxda.grid import SpaceTimeKernel
from jaxda.io import save_json
from jaxda.nn import count_parameters


N_TIMES, NOISE_STD = 9, 0.01  # daily steps; 1 cm noise
TASKS = {  # name: (scored step, lead: final steps without observations)
    "mapping": (4, 0),
    "nrt": (8, 0),
    "forecast-2": (8, 2),
    "forecast-4": (8, 4),
}
LEADS = (0, 2, 4)
OI_LENGTHS_KM = (40.0, 60.0, 90.0, 130.0)
OI_TIMES_DAYS = (6.0, 12.0, 24.0, 48.0, 96.0)
SATELLITES = ("jason", "sentinel-3", "saral")

SUITES = {
    "quick": dict(
        n=16, spinup_days=30, n_train=8, n_val=2, n_test=2, width=4, hidden=2,
        stages=((3, 10, 2e-3),), batch=4,
    ),
    "full": dict(
        n=32, spinup_days=180, n_train=256, n_val=16, n_test=64, width=12,
        hidden=4, stages=((5, 900, ("cosine", 2e-3)),), batch=4,
    ),
}  # fmt: skip


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def make_ssh_osse(cfg: dict, seed: int = 0):
    """The three splits as dicts of SSH truth `(N, T, n, n)` and binned `Observations`
    (metres), with the QG set-up."""
    n = cfg["n"]
    qg = models.qg_turbulence(jax.random.key(seed), n=n, spinup_steps=0)
    per_day = math.ceil(86400.0 / qg.dt)  # QG steps of at most the stable dt
    flow = models.QGStep(qg.model, 86400.0 / per_day)

    def daily(q):
        return jax.lax.fori_loop(0, per_day, lambda i, q: flow(q), q)

    def initial(key, shape, dtype):
        return qg.model.random_state(key, speed=0.2, dtype=dtype)

    sats = tuple(obs.Satellite.preset(s, "m") for s in SATELLITES)
    tracks = obs.SatelliteTracks(qg.grid, sats, dt=1.0)
    splits = data.make_osse_splits(
        seed, qg.model, qg.grid, n_train=cfg["n_train"], n_validation=cfg["n_val"],
        n_test=cfg["n_test"], n_times=N_TIMES, dt=86400.0, initial_state=initial,
        pattern=tracks, noise_std=0.0, step=daily, burn_in_steps=cfg["spinup_days"],
    )  # fmt: skip
    out = {}
    for i, (name, osse) in enumerate(zip(("train", "validation", "test"), splits)):
        ssh = qg.model.ssh(osse.truth)
        mask = osse.obs.mask[:, :, 0]
        noise = NOISE_STD * jax.random.normal(
            jax.random.fold_in(jax.random.key(seed + 1), i), ssh.shape, ssh.dtype
        )
        out[name] = {
            "truth": ssh,
            "obs": obs.Observations(jnp.where(mask, ssh + noise, 0.0), mask),
        }
    return qg.grid, out


# ---------------------------------------------------------------- covariance OI


def _cell_rows(grid, mask):
    """Fixed-size `(M, 3)` rows `(t days, y m, x m)` of the observed cells of each
    window and their validity, `M` the largest count (padding invalid)."""
    mask = np.asarray(mask)
    n_windows = mask.shape[0]
    m = max(int(mask.reshape(n_windows, -1).sum(1).max()), 1)
    t, yy, xx = np.meshgrid(
        np.arange(N_TIMES, dtype=float), np.asarray(grid.y), np.asarray(grid.x),
        indexing="ij",
    )  # fmt: skip
    coords = np.stack([t.ravel(), yy.ravel(), xx.ravel()], -1)
    idx = np.zeros((n_windows, m), int)
    valid = np.zeros((n_windows, m), bool)
    for w in range(n_windows):
        where = np.flatnonzero(mask[w].ravel())
        idx[w, : where.size], valid[w, : where.size] = where, True
    return jnp.asarray(coords[idx]), jnp.asarray(idx), jnp.asarray(valid)


def make_oi(grid, variance: float):
    """`oi(obs, length_m, time_days) -> (N, T, n, n)`: the kernel OI of each window
    (one compilation for every scale and lead)."""

    @jax.jit
    def run(values, mask, rows, idx, valid, length, tau):
        kernel = SpaceTimeKernel(variance, length, tau)
        times = jnp.arange(N_TIMES, dtype=values.dtype)

        def one(args):
            v, m, r, i, ok = args
            ok = ok & m.ravel()[i]
            y = jnp.where(ok, v.ravel()[i], 0.0)
            return gaussian.map_kernel(
                kernel, grid, times, r, y, NOISE_STD**2, mask=ok, throw=False
            ).mean

        return jax.lax.map(one, (values, mask, rows, idx, valid))

    def oi(o, full_mask, length_m, time_days):
        rows, idx, valid = _cell_rows(grid, full_mask)
        return run(o.values, o.mask, rows, idx, valid, length_m, time_days)

    return oi


def _rmse(est, truth, step) -> float:
    return float(jnp.sqrt(jnp.mean((est[:, step] - truth[:, step]) ** 2)))


def _resolution_km(est, truth, grid, step) -> dict:
    score = metrics.psd_score(est[:, step], truth[:, step], grid)
    lam = float(score.resolved_wavelength)
    return {"lambda_x_km": lam / 1e3} if np.isfinite(lam) else {}


# ---------------------------------------------------------------- 4DVarNet


def make_model(cfg, key, n_iter):
    n = cfg["n"]
    k1, k2 = jax.random.split(key)
    prior = fdn.UNetPrior(
        (n, n), N_TIMES, key=k1, width=cfg["width"], periodic=(True, True)
    )
    solver = fdn.ConvLSTMSolver(
        (n, n), key=k2, layout="field", hidden=cfg["hidden"], periodic_space=True
    )
    cost = fdn.VariationalCost(prior, reduction="mean")
    return fdn.FourDVarNet(cost, solver, n_iter=n_iter)


def _normalised(o, truth, mean, std):
    values = jnp.where(o.mask, (o.values - mean) / std, 0.0)
    return obs.Observations(values, o.mask), (truth - mean) / std


def _training_set(split, mean, std, leads):
    obs_list, truths = [], []
    for lead in leads:
        o = fdn.forecast_observations(split["obs"], lead, time_axis=1)
        o, t = _normalised(o, split["truth"], mean, std)
        obs_list.append(o)
        truths.append(t)
    o = jax.tree.map(lambda *a: jnp.concatenate(a), *obs_list)
    return fdn.make_training_data(o, jnp.concatenate(truths))


def _learning_rate(lr, n_steps):
    """A float, or `("cosine", peak)`: cosine decay from `peak` to 5 % of it."""
    if isinstance(lr, tuple):
        return optax.cosine_decay_schedule(lr[1], n_steps, alpha=0.05)
    return lr


def train(cfg, split, mean, std, leads, steps=None, seed=0):
    stages = [
        fdn.CurriculumStage(k, s, _learning_rate(lr, s)) for k, s, lr in cfg["stages"]
    ]
    model = make_model(cfg, jax.random.key(seed), stages[0].n_iter)
    train_data = _training_set(split, mean, std, leads)
    t0 = time.perf_counter()
    fit = fdn.fit_fourdvarnet(
        model, train_data, key=jax.random.key(seed + 1), batch_size=cfg["batch"],
        stages=stages, steps=steps, clip_norm=1.0, print_every=50,
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    n_steps = sum(s.n_steps for s in stages)
    info = dict(
        train_s=train_s, n_train=int(split["truth"].shape[0]),
        n_examples=int(train_data["truth"].shape[0]), steps=n_steps,
        batch_size=cfg["batch"], epochs=n_steps * cfg["batch"] / train_data[
            "truth"].shape[0],
        parameters=count_parameters(fit.model), n_iter=fit.model.n_iter,
        final_train_loss=float(np.mean(fit.losses[-20:])),
        stages=[[k, s, str(lr)] for k, s, lr in cfg["stages"]],
        train_successful=bool(fit.result == RESULTS.successful),
    )  # fmt: skip
    return fit.model, info


def run_model(model, o, mean, std):
    """The model's SSH estimates (metres) of a batch of windows, and the inference
    time of one window (jitted, compile excluded)."""
    z = obs.Observations(jnp.where(o.mask, (o.values - mean) / std, 0.0), o.mask)
    sol = fdn.assimilate_batch(model, z, chunk_size=8, throw=False)
    one = eqx.filter_jit(lambda w: fdn.assimilate(model, w, throw=False).x)
    first = jax.tree.map(lambda a: a[0], z)
    _, run_s = time_call(one, first, repeats=5, min_time=0.0)
    return mean + std * sol.x, run_s


# ---------------------------------------------------------------- records


def records(
    suite: str, per_task: tuple[str, ...] = (), shared: bool = True, **overrides
) -> Iterator[dict]:
    """The OI rows, the shared network's rows (`shared`) and a per-task network's
    rows for each task of `per_task`; `overrides` replace entries of the suite."""
    cfg = dict(SUITES[suite], **overrides)
    unknown = set(per_task) - set(TASKS)
    if unknown:
        raise ValueError(f"`per_task`: unknown tasks {sorted(unknown)}.")
    t0 = time.perf_counter()
    grid, splits = make_ssh_osse(cfg)
    jax.block_until_ready(splits["test"]["truth"])
    data_s = time.perf_counter() - t0
    tr, va, te = splits["train"], splits["validation"], splits["test"]
    mean, std = float(jnp.mean(tr["truth"])), float(jnp.std(tr["truth"]))
    problem = f"ssh-qg{cfg['n']}-nadir"
    common = dict(
        batch=1, n_val=cfg["n_val"], n_test=cfg["n_test"], data_s=data_s,
        obs_fraction=float(jnp.mean(te["obs"].mask)), ssh_std_m=std,
    )  # fmt: skip
    print(f"[ssh] OSSE {problem}: {data_s:.0f} s, {common['obs_fraction']:.3f} "
          f"observed, SSH std {std:.4f} m", flush=True)  # fmt: skip

    # Covariance OI, scales chosen on the validation windows per task.
    oi = make_oi(grid, std**2)
    inputs = {
        (name, lead): fdn.forecast_observations(s["obs"], lead, time_axis=1)
        for name, s in (("validation", va), ("test", te))
        for lead in LEADS
    }
    oi_rows = {}
    grid_scales = [(ell, tau) for ell in OI_LENGTHS_KM for tau in OI_TIMES_DAYS]
    bar = _progress(len(grid_scales) * len(LEADS), "OI scales")
    val_est = {}
    for ell, tau in grid_scales:
        for lead in LEADS:
            o = inputs["validation", lead]
            val_est[ell, tau, lead] = oi(o, va["obs"].mask, ell * 1e3, tau)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    for task, (step, lead) in TASKS.items():
        val = {
            (ell, tau): _rmse(val_est[ell, tau, lead], va["truth"], step)
            for ell, tau in grid_scales
        }
        ell, tau = min(val, key=val.get)
        o = inputs["test", lead]
        est = oi(o, te["obs"].mask, ell * 1e3, tau)
        # inference time of one window: the jitted OI of a batch of one
        first = jax.tree.map(lambda a: a[:1], o)
        _, run_s = time_call(
            lambda: oi(first, te["obs"].mask[:1], ell * 1e3, tau), min_time=0.0
        )
        rmse = _rmse(est, te["truth"], step)
        oi_rows[task] = rmse
        yield record(
            problem, f"oi-kernel/{task}", **common, rmse=rmse,
            **_resolution_km(est, te["truth"], grid, step), time_s=run_s,
            oi_length_km=ell, oi_time_days=tau, val_rmse=val[ell, tau],
            scored_step=step, lead=lead,
        )  # fmt: skip

    # 4DVarNet-UNet: one network for the four tasks.
    model, info = train(cfg, tr, mean, std, LEADS) if shared else (None, None)
    for task, (step, lead) in TASKS.items() if shared else ():
        est, run_s = run_model(model, inputs["test", lead], mean, std)
        rmse = _rmse(est, te["truth"], step)
        yield record(
            problem, f"4dvarnet-unet/{task}", **common, **info, rmse=rmse,
            rmse_ratio_oi=rmse / oi_rows[task],
            **_resolution_km(est, te["truth"], grid, step), time_s=run_s,
            scored_step=step, lead=lead, trained_on="whole window, leads 0/2/4",
        )  # fmt: skip

    for task in per_task:
        step, lead = TASKS[task]
        model, info = train(cfg, tr, mean, std, (lead,), steps=step)
        est, run_s = run_model(model, inputs["test", lead], mean, std)
        rmse = _rmse(est, te["truth"], step)
        yield record(
            problem, f"4dvarnet-unet-task/{task}", **common, **info, rmse=rmse,
            rmse_ratio_oi=rmse / oi_rows[task],
            **_resolution_km(est, te["truth"], grid, step), time_s=run_s,
            scored_step=step, lead=lead, trained_on=f"step {step}, lead {lead}",
        )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--per-task", nargs="*", default=(), choices=tuple(TASKS))
    parser.add_argument("--no-shared", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, help="also write the records")
    args = parser.parse_args(argv)
    overrides = {"n_train": args.n_train} if args.n_train else {}
    recs = []
    for rec in records(
        args.suite, tuple(args.per_task), not args.no_shared, **overrides
    ):
        rec.setdefault("suite", args.suite)
        recs.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "jax_version"}))
        if args.out is not None:
            save_json(args.out, recs, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
