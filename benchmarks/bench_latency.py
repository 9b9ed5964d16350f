"""Per-call overhead of every public entry point at batch 1.

    python benchmarks/bench_latency.py --size tiny --out latency.json
    python benchmarks/run.py --only latency --suite quick

For each entry point (`var.solve` with Gauss-Newton, Levenberg-Marquardt and gradient
descent, `var.cycle`, `gaussian.map_precision` / `map_covariance` /
`posterior_variance`, `linalg.solve`, `models.simulate`, `incremental.assimilate` /
`incremental_assimilation`, `fourdvarnet.assimilate` / `assimilate_batch` (one
window), `data.interpolate_observations`), one window or state is assimilated:

- `time_per_call_s`: the public call, after warm-up (median of synchronised calls,
  `_common.time_call`), with its argument checks, dispatch and result handling;
- `compiled_s`: the same work compiled once (`jax.jit` of the public call over the
  array leaves of its arguments, `.lower(...).compile()`), called directly;
- `overhead_s` = the difference, `overhead_fraction` = `overhead_s / compiled_s`.

The goal is an overhead below ~10% of the compiled work; the benchmark reports it and
asserts nothing. Timings depend on the machine's load: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
from _common import record, time_call

import jaxda.data as jd
import jaxda.fourdvarnet as fdn
from jaxda import gaussian, incremental, linalg, models, var


_SIZES = {
    # window length T, Lorenz-63 cycling windows, banded dimension d and bandwidth b,
    # min_time of each timing (s)
    "tiny": {"T": 32, "n_windows": 2, "d": 64, "b": 4, "min_time": 0.02},
    "quick": {"T": 64, "n_windows": 4, "d": 512, "b": 6, "min_time": 0.2},
    "full": {"T": 200, "n_windows": 8, "d": 4096, "b": 12, "min_time": 1.0},
}


def compile_public(fn: Callable, *args):
    """`(compiled, dynamic)`: `fn(*args)` compiled once over the array leaves of
    `args` (the rest is baked in), and those leaves to call it with."""
    dynamic, static = eqx.partition(args, eqx.is_array)

    def inner(dyn):
        return eqx.filter(fn(*eqx.combine(dyn, static)), eqx.is_array)

    return jax.jit(inner).lower(dynamic).compile(), dynamic


def measure(problem: str, method: str, fn: Callable, *args, min_time: float = 0.2):
    """One latency record: `fn(*args)` against its compiled work, batch 1."""
    first_s, public_s = time_call(fn, *args, min_time=min_time)
    compiled, dynamic = compile_public(fn, *args)
    _, compiled_s = time_call(compiled, dynamic, min_time=min_time)
    overhead = public_s - compiled_s
    return record(
        problem,
        method,
        batch=1,
        time_per_call_s=public_s,
        compiled_s=compiled_s,
        overhead_s=overhead,
        overhead_fraction=overhead / compiled_s,
        first_call_s=first_s + public_s,
    )


def _cases(size: dict) -> Iterator[tuple]:
    """`(problem, method, fn, *args)` of every entry point."""
    T = size["T"]
    key = jax.random.key(0)

    # Lorenz-63 windows ([F21]'s observation setup), one assimilated, a long sequence
    # for cycling.
    preset = jd.get_preset("F21-L63", n_times=T)
    _, test = jd.make_preset_splits(preset, 0, n_train=2, n_test=size["n_windows"])
    obs = jax.tree_util.tree_map(lambda a: a[0], test.obs)
    x0 = jd.interpolate_observations(obs)
    flow = models.flow_map(preset.model, preset.dt)
    r, q = preset.noise_std**2, 0.01
    problem = var.WeakConstraint4DVar(flow, obs, r, q)
    name = f"L63-T{T}"
    for method, solver, steps in (
        ("gauss_newton", var.GaussNewton(), 10),
        ("levenberg_marquardt", var.LevenbergMarquardt(), 10),
        ("gradient_descent", var.GradientDescent(1e-3, rtol=0.0, atol=0.0), 50),
    ):

        def solve(p, x, solver=solver, steps=steps):
            return var.solve(p, solver, x, max_steps=steps, throw=False)

        yield name, f"var.solve-{method}", solve, problem, x0

    def cycle(o, xb):
        return var.cycle(
            flow, o, obs_var=r, window=T, shift=T, x_b=xb, background_var=1.0,
            solver=var.GaussNewton(), model_var=q, max_steps=5, throw=False,
        )  # fmt: skip

    seq = jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), test.obs)
    yield f"L63-{size['n_windows']}x{T}", "var.cycle", cycle, seq, x0[0]

    def simulate(x):
        return models.simulate(preset.model, x, dt=preset.dt, n_steps=T)

    yield name, "models.simulate", simulate, test.truth[0, 0]
    yield name, "data.interpolate_observations", jd.interpolate_observations, obs

    # Banded Gaussian MAP and linear algebra: a banded SPD matrix of dimension d.
    d, b = size["d"], size["b"]
    band = jnp.zeros((b + 1, d)).at[0].set(2.5).at[1].set(-1.0)
    A = linalg.SymmetricBandMatrix(band)
    k1, k2 = jax.random.split(key)
    y = jax.random.normal(k1, (d,))
    mask = jnp.arange(d) % 4 == 0
    mu = jnp.zeros(d)
    band_name = f"band-d{d}-b{b}"
    yield band_name, "linalg.solve", linalg.solve, A, y
    yield band_name, "gaussian.map_precision", gaussian.map_precision, mu, A, y, mask, r
    yield (
        band_name,
        "gaussian.map_covariance",
        gaussian.map_covariance,
        mu,
        A,
        y,
        mask,
        r,
    )

    def posterior_variance(Q, m):
        return gaussian.posterior_variance(Q, m, r)

    yield band_name, "gaussian.posterior_variance", posterior_variance, A, mask

    # Neural incremental ([B24]): an untrained band-Gaussian prior on the L63 window.
    norm = jd.Normalisation.fit(test.truth)
    obs_n = norm.apply_obs(obs)
    z0 = norm.apply(x0)
    net = incremental.NeuralBandGaussian(T, (3,), key=k2, width=16, depth=2)
    levels = incremental.default_levels(2)
    s2 = 0.05**2

    def neural_step(m, z, o):
        return incremental.assimilate(m, z, o, 1.0, s2, throw=False)

    def algorithm2(m, z, o):
        return incremental.incremental_assimilation(m, z, o, s2, levels, throw=False)

    yield name, "incremental.assimilate", neural_step, net, z0, obs_n
    yield name, "incremental.incremental_assimilation", algorithm2, net, z0, obs_n

    # 4DVarNet ([F21]): an untrained GENN prior and CNN solver, 5 iterations.
    kp, ks = jax.random.split(k1)
    prior = fdn.GENN((3,), key=kp, layout="channels", width=10, kernel_size=5, pool=4)
    solver = fdn.CNNSolver((3,), key=ks, layout="channels")
    model = fdn.FourDVarNet(fdn.VariationalCost(prior, 0.01, 1.0), solver, n_iter=5)
    batch1 = jax.tree_util.tree_map(lambda a: a[None], obs_n)
    yield name, "fourdvarnet.assimilate", fdn.assimilate, model, obs_n
    yield name, "fourdvarnet.assimilate_batch", fdn.assimilate_batch, model, batch1


def records(suite: str, only: str | None = None) -> Iterator[dict]:
    size = _SIZES[suite]
    for problem, method, fn, *args in _cases(size):
        if only is not None and only not in method:
            continue
        yield measure(problem, method, fn, *args, min_time=size["min_time"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=tuple(_SIZES), default="quick")
    p.add_argument("--only", default=None, help="substring of the method names")
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON records")
    args = p.parse_args(argv)
    from jaxda.io import save_json

    results = []
    print(f"{'method':<40}{'public ms':>11}{'compiled ms':>13}{'overhead':>10}")
    for rec in records(args.size, args.only):
        results.append(rec)
        print(
            f"{rec['method']:<40}{1e3 * rec['time_per_call_s']:>11.3f}"
            f"{1e3 * rec['compiled_s']:>13.3f}{rec['overhead_fraction']:>10.1%}",
            flush=True,
        )
        if args.out is not None:
            save_json(args.out, results, indent=1)  # atomic, after every record
    return 0


if __name__ == "__main__":
    sys.exit(main())
