"""The [F21] Lorenz-96 4DVar baseline (paper: MSE 1.06) from the observations alone.

Per test window of the F21-L96 preset: an EnKS-ETKF over the window's observations
from a climatological ensemble (training states), its smoothed mean as the first guess
of weak-constraint Gauss-Newton 4DVar (`var.GaussNewton`, R = the noise variance,
scalar Q), the window MSE against the truth (original units). See `_l96_baseline.py`.
Writes one JSON record per method (`enks`, `4dvar-enks-first-guess-q<Q>`, with
`--interpolated` also `4dvar-interpolated-first-guess-q<Q>`) to `--out`.

`--model-var 0.16` is [F21]'s weighting of the two terms (see `_l96_baseline.py`).
The run behind the committed records (about 25 minutes on 2 loaded CPU cores, the
Gauss-Newton steps dominating; the full test set is `--n-test 256`):

    python benchmarks/reproduce_l96_4dvar.py --n-test 24 --model-var 0.16 0.1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import device_name  # noqa: E402
from _l96_baseline import (  # noqa: E402
    climatology_ensembles,
    enks_first_guess,
    gauss_newton_4dvar,
    interpolated_first_guess,
    summary,
    window_mse,
)

import jaxda.data as jd  # noqa: E402
import jaxda.io as jio  # noqa: E402
from jaxda import RESULTS  # noqa: E402


PAPER_MSE = 1.06  # [F21] Table 2, 4DVar on Lorenz-96


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=64, help="climatology windows")
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--n-times", type=int, default=None, help="override the preset T")
    p.add_argument("--members", type=int, default=40)
    p.add_argument("--lag", type=int, default=20, help="EnKS lag (model steps)")
    p.add_argument("--inflation", type=float, default=1.05)
    p.add_argument("--model-var", type=float, nargs="+", default=[0.16])
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--far-threshold", type=float, default=1.0)
    p.add_argument(
        "--interpolated",
        action="store_true",
        help="also run GN from the interpolated observations",
    )
    p.add_argument(
        "--no-enks-start",
        action="store_true",
        help="skip GN from the EnKS guess (with --interpolated: that start only)",
    )
    p.add_argument("--out", default="benchmarks/results/f21-l96-4dvar")
    return p.parse_args(argv)


def _record(args, method, fields, **extra):
    return {
        "problem": "F21-L96",
        "method": method,
        **fields,
        "paper_mse": PAPER_MSE,
        "seed": args.seed,
        "n_train_climatology": args.n_train,
        "members": args.members,
        "lag": args.lag,
        "inflation": args.inflation,
        "device": device_name(),
        "dtype": "float64",
        "note": "timings on a contended machine",
        "command": args.command,
        **extra,
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python benchmarks/reproduce_l96_4dvar.py", *given])
    os.makedirs(args.out, exist_ok=True)
    overrides = {} if args.n_times is None else {"n_times": args.n_times}
    preset = jd.get_preset("F21-L96", **overrides)
    t0 = time.perf_counter()
    train, test = jd.make_preset_splits(
        preset,
        args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
        dtype=jnp.float64,
    )
    truth, obs = test.truth, test.obs
    print(f"data: {args.n_test} test windows, {time.perf_counter() - t0:.1f} s")
    records = []

    def save(rec):
        name = rec["method"].replace(".", "p") + ".json"
        if args.n_times is not None:
            name = f"T{args.n_times}-" + name
        jio.save_json(os.path.join(args.out, name), rec)
        records.append(rec)
        print(
            f"{rec['method']}: MSE {rec['mse']:.3f} (median {rec['mse_median']:.3f}),"
            f" far {rec['fraction_far']:.2f}, {rec['time_s']:.1f} s",
            flush=True,
        )

    key = jax.random.PRNGKey(args.seed + 1)
    k_draw, k_enks = jax.random.split(key)
    states = train.truth.reshape(-1, train.truth.shape[-1])
    e0 = climatology_ensembles(k_draw, states, args.n_test, args.members)
    t0 = time.perf_counter()
    guess, spread, res = enks_first_guess(
        preset, obs, e0, k_enks, lag=args.lag, inflation=args.inflation
    )
    guess = jax.block_until_ready(guess)
    t_enks = time.perf_counter() - t0
    failed = int(np.sum(~np.asarray(res == RESULTS.successful)))
    save(
        _record(
            args,
            "enks",
            summary(window_mse(guess, truth), args.far_threshold),
            time_s=t_enks,
            failed_windows=failed,
            mean_spread=float(jnp.sqrt(jnp.mean(spread**2))),
        )
    )

    starts = [] if args.no_enks_start else [("enks", guess)]
    if args.interpolated:
        fill = np.asarray(states.mean(axis=0))
        starts.append(("interpolated", interpolated_first_guess(obs, fill)))
    for q in args.model_var:
        for start, x0 in starts:
            t0 = time.perf_counter()
            x, n_steps, res = gauss_newton_4dvar(
                preset, obs, x0, model_var=q, max_steps=args.max_steps
            )
            x = jax.block_until_ready(x)
            dt = time.perf_counter() - t0
            n_steps = np.asarray(n_steps)
            fields = summary(window_mse(x, truth), args.far_threshold)
            save(
                _record(
                    args,
                    f"4dvar-{start}-first-guess-q{q:g}",
                    fields,
                    model_var=q,
                    obs_var=preset.noise_std**2,
                    max_steps=args.max_steps,
                    iterations_mean=float(n_steps.mean()),
                    iterations_max=int(n_steps.max()),
                    converged_fraction=float(
                        np.mean(np.asarray(res == RESULTS.successful))
                    ),
                    time_s=dt + (t_enks if start == "enks" else 0.0),
                )
            )
    return records


if __name__ == "__main__":
    sys.exit(main() and 0)
