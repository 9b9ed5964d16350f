"""Optimal interpolation of satellite-track observations onto a space-time grid.

Problem `oi-<ny>x<nx>x<T>`: a doubly periodic grid of unit spacing, T times one unit
apart; the truth is a sample of the prior, a Gaussian correlation of length scale 6
cells (`SpectralCovariance`) times a Gaussian time correlation of scale 3
(`SpaceTimeCovariance`), unit variance; at each time 8 straight tracks (alternately
ascending and descending at 45 degrees, random offsets) observe 125 grid nodes each,
with noise variance 0.01: 10^4 observations on the 128 x 128 x 10 grid (the goal of
issue 19: OI in <= 10 s on the 2-core CPU).

Methods:

- `obs-space`: `jaxda.gaussian.map_kernel` with the kernel of the same Gaussian
  space-time model (Euclidean distances, no periodic wrap): the m x m system by a
  dense Cholesky, the analysis by products of the kernel's axis factors;
- `cg`: `jaxda.gaussian.map_covariance_cg` with the spectral space-time covariance
  operator and a per-time `SelectionOperator`, Jacobi-preconditioned CG at its
  default tolerance (`rtol` 1e-4 in float32, 1e-8 in float64; `iterations`
  reported).

`time_s` is the median of synchronised runs after a compiling call
(`compile_time_s` apart); `rmse` is against the truth over the whole grid,
`rmse_to_cg` (obs-space) the RMS difference between the two analyses (the priors
differ only by the periodic wrap). `peak_memory_mb` is the process's peak resident
memory after the method ran (monotone over a run: `cg` runs first). Run in float32
by default (`--x64`, or `benchmarks/run.py --x64`, for float64):

    python benchmarks/bench_grid_oi.py [--suite quick|full] [--x64]
"""

import argparse
import json
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from _common import record, time_call

from jaxda import gaussian
from jaxda.grid import Grid, SpaceTimeCovariance, SpaceTimeKernel, SpectralCovariance
from jaxda.obs import SelectionOperator


LENGTH_SCALE, TIME_SCALE, OBS_VAR = 6.0, 3.0, 0.01
TRACKS_PER_TIME, POINTS_PER_TRACK = 8, 125
_SIZES = {
    "quick": [(128, 10, ("cg", "obs-space"))],
    "full": [(128, 10, ("cg", "obs-space")), (256, 10, ("cg",))],
}


def track_indices(rng, n: int, n_times: int) -> np.ndarray:
    """Flat node indices `(T, tracks * points)` of straight 45-degree tracks."""
    out = []
    for _ in range(n_times):
        idx = []
        for k in range(TRACKS_PER_TIME):
            x = np.arange(POINTS_PER_TRACK) * n // POINTS_PER_TRACK
            slope = 1 if k % 2 == 0 else -1
            y = (rng.integers(0, n) + slope * x) % n
            idx.append(y * n + x)
        out.append(np.concatenate(idx))
    return np.stack(out)


def make_problem(n: int, n_times: int, seed: int = 0):
    dtype = jnp.result_type(float)
    grid = Grid(n, n)
    times = jnp.arange(n_times, dtype=dtype)
    space = SpectralCovariance(grid, jnp.asarray(LENGTH_SCALE, dtype))
    prior = SpaceTimeCovariance(space, times, jnp.asarray(TIME_SCALE, dtype))
    key_truth, key_noise = jax.random.split(jax.random.key(seed))
    truth = prior.sqrt(jax.random.normal(key_truth, prior.field_shape, dtype))
    rng = np.random.default_rng(seed)
    idx = track_indices(rng, n, n_times)
    operator = SelectionOperator(jnp.asarray(idx), grid.shape)
    y = operator.trajectory(truth)
    y = y + np.sqrt(OBS_VAR) * jax.random.normal(key_noise, y.shape, dtype)
    yy, xx = (np.asarray(a).ravel() for a in grid.meshgrid())
    t = np.repeat(np.arange(n_times), idx.shape[1])
    points = np.stack([t, yy[idx.ravel()], xx[idx.ravel()]], -1)
    return grid, times, prior, truth, operator, y, jnp.asarray(points, dtype)


def records(suite: str) -> Iterator[dict]:
    for n, n_times, methods in _SIZES[suite]:
        grid, times, prior, truth, operator, y, points = make_problem(n, n_times)
        problem = f"oi-{n}x{n}x{n_times}"
        n_obs = int(y.size)
        means = {}
        for method in methods:
            if method == "cg":

                def run(y, prior=prior, operator=operator):
                    out = gaussian.map_covariance_cg(
                        jnp.zeros(prior.field_shape, y.dtype),
                        prior,
                        y,
                        None,
                        OBS_VAR,
                        operator=operator,
                        max_steps=2000,
                        throw=False,
                    )
                    return out.mean, out.result._value, out.num_steps

                args = (y,)
            else:
                kernel = SpaceTimeKernel(1.0, LENGTH_SCALE, TIME_SCALE)

                def run(points, y, kernel=kernel, grid=grid, times=times):
                    out = gaussian.map_kernel(
                        kernel, grid, times, points, y.ravel(), OBS_VAR, throw=False
                    )
                    return out.mean, out.result._value, jnp.zeros((), int)

                args = (points, y)
            fn = jax.jit(run)
            compile_s, run_s = time_call(fn, *args, repeats=3, min_time=0.0)
            mean, result, steps = fn(*args)
            means[method] = mean
            extra = {"iterations": int(steps)} if method == "cg" else {}
            rec = record(
                problem,
                method,
                batch=1,
                n_obs=n_obs,
                d=int(np.prod(prior.field_shape)),
                time_s=run_s,
                compile_time_s=compile_s,
                rmse=float(jnp.sqrt(jnp.mean((mean - truth) ** 2))),
                successful=bool(result == 0),
                **extra,
            )
            rec["peak_memory_mb"] = rec["peak_rss_mb"]
            if method == "obs-space" and "cg" in means:
                diff = jnp.sqrt(jnp.mean((means["cg"] - mean) ** 2))
                rec["rmse_to_cg"] = float(diff)
            yield rec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(_SIZES), default="quick")
    parser.add_argument("--x64", action="store_true", help="run in float64")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    for rec in records(args.suite):
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
