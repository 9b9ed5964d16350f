r"""The generative learned motion estimator on [FBC23]'s shallow-water basin: a UNet
with noise inputs trained on the fair ensemble CRPS, scored as the 4DVar ensembles.

    python benchmarks/run.py --suite full --only motion_generative --out results.json
    python benchmarks/bench_motion_generative.py --suite quick      # a quick look

The problem (`motion-sw64`): `jaxda.motion.basin_motion_samples` ([FBC23]'s set-up,
64 x 64 closed basin, 10-state windows, the height observed at steps 0, 3, 6, 9 with
noise 0.05). Training and validation windows are `bench_motion_learned`'s keys; the
test windows are `bench_motion_uq`'s (its `n_test` = 4 windows, scored against its
RML and Laplace ensembles) and, in the full suite, also `bench_motion_learned`'s 100
(scored against its learned estimators).

Methods (`method`):

- `generative-crps-<N>`: `jaxda.motion.GenerativeMotionNet` (`MotionNet`'s UNet,
  `input_noise` standard normal channels at the input and `bottleneck_noise` at the
  bottleneck) trained by `train_generative_motion_net` on the fair ensemble CRPS of
  `train_members` members per window against the true initial state (supervised);
  `N` members per test window (19, as `rml-19`);
- `gaussian-crps-<N>`: `jaxda.motion.GaussianMotionNet` (the same UNet with a mean
  and a standard-deviation head) trained on the closed-form Gaussian CRPS, `N` draws
  per test window (`crps_closed_form`: the CRPS of the Gaussian itself);
- `4dvar-penalised-lbfgs-250`: the reference of the time ratio, measured in the same
  run on the first test set: `LBFGS` 250 iterations from the first guess on the
  penalised cost with `bench_motion`'s validation-chosen weights (`bench_motion_uq`'s
  `map-penalised-lbfgs-250`).

Fields (as `bench_motion_uq`): `epe`, `ae_deg` (of the ensemble mean's initial
velocity, means over the test windows of `jaxda.metrics.endpoint_error` /
`angular_error`), `member_epe` (the mean EPE of single members), `spread_skill`
(`spread_skill_ratio`, $(N+1)/N$-corrected), `coverage_90` (`interval_coverage` at
0.9, order statistics at $p(N+1)$, exact for a calibrated ensemble of 19), `crps`
(fair `crps_ensemble`), all on $(u, v)$ pooled over the test windows; `spread`,
`rmse_of_mean`; `time_per_sample_s` (the whole $N$-member ensemble of one window,
one jitted call, median of timed calls, compile excluded), `time_per_sample_batched_s`
(one call on all test windows, divided by their number), `compile_s`, `train_s`,
`n_train`, `steps`, `parameters`, `val_crps` (validation CRPS in the net's
normalised units during training), `speedup_vs_4dvar` (the reference's time per
window over this row's, one run). The machine is shared: times are noisy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scoringrules
from _common import record, time_call

from jaxda import metrics, motion, var
from jaxda.nn import count_parameters


PROBLEM = "motion-sw64"
# bench_motion_uq's test key, bench_motion_learned's training / validation keys
TEST_KEY, TRAIN_KEY, VALIDATION_KEY = 20230, 4101, 4102
ENSEMBLE_KEY = 4242
GRID_WEIGHTS = (3.6864e11, 1.2288e11)  # bench_motion's validation choice (grid)
CHUNK = 8  # windows per vmapped call of the batched ensemble (bounds the memory)

SUITES = {
    "quick": dict(
        n_train=16, n_val=4, test_sets=(2,), steps=30, batch=4, width=4, depth=2,
        lr=3e-3, train_members=4, members=19, input_noise=4, bottleneck_noise=4,
        methods=("noise-inputs", "gaussian"),
    ),
    "full": dict(
        n_train=512, n_val=8, test_sets=(4, 100), steps=2000, batch=4, width=8,
        depth=3, lr=3e-3, train_members=8, members=19, input_noise=4,
        bottleneck_noise=4, methods=("noise-inputs", "gaussian"),
    ),
}  # fmt: skip


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def ensemble_scores(ens, truth) -> dict:
    """`bench_motion_uq`'s scores of ensembles `(B, N, 2, ny, nx)` of the velocity
    against the truth `(B, 2, ny, nx)`."""
    mean = jnp.mean(ens, axis=1)
    pooled = jnp.moveaxis(ens, 1, 0)  # (N, B, 2, ny, nx): the windows pooled
    member_epe = jax.vmap(jax.vmap(metrics.endpoint_error, (0, None)))(ens, truth)
    return {
        "epe": float(jnp.mean(jax.vmap(metrics.endpoint_error)(mean, truth))),
        "ae_deg": float(jnp.mean(jax.vmap(metrics.angular_error)(mean, truth))),
        "member_epe": float(jnp.mean(member_epe)),
        "spread_skill": float(metrics.spread_skill_ratio(pooled, truth)),
        "coverage_90": float(metrics.interval_coverage(pooled, truth, 0.9)),
        "crps": float(metrics.crps_ensemble(pooled, truth)),
        "spread": float(jnp.sqrt(jnp.mean(jnp.var(ens, axis=1, ddof=1)))),
        "rmse_of_mean": float(jnp.sqrt(jnp.mean((mean - truth) ** 2))),
    }


def _reference(test, n_ref) -> dict:
    """Penalised L-BFGS 250 on the first `n_ref` windows: EPE and time per window."""
    penalty = motion.MotionPenalty(
        test.grid, smoothness=GRID_WEIGHTS[0], divergence=GRID_WEIGHTS[1]
    )

    @eqx.filter_jit
    def solve(obs):
        problem = motion.motion_4dvar(test.flow, obs, test.noise_std, penalty=penalty)
        sol = var.solve(
            problem, var.LBFGS(memory_size=100), motion.first_guess(obs),
            max_steps=250, throw=False,
        )  # fmt: skip
        return sol.x[1:3]

    times, epe = [], []
    bar = _progress(n_ref + 1, "4dvar reference")
    for i in [0, *range(n_ref)]:  # the first call compiles
        x0, obs = test.sample(i)
        t0 = time.perf_counter()
        w = jax.block_until_ready(solve(obs))
        times.append(time.perf_counter() - t0)
        epe.append(float(metrics.endpoint_error(w, x0[1:3])))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    run = float(np.median(times[1:]))
    return dict(
        epe=float(np.mean(epe[1:])), time_per_sample_s=run,
        compile_s=max(times[0] - run, 0.0), n_test=n_ref, batch=1, iterations=250,
        smoothness=GRID_WEIGHTS[0], divergence=GRID_WEIGHTS[1], convention="grid",
    )  # fmt: skip


def records(suite: str, **overrides) -> Iterator[dict]:
    """The records; `overrides` replace entries of the suite's configuration."""
    cfg = dict(SUITES[suite], **overrides)
    t0 = time.perf_counter()
    train = motion.basin_motion_samples(jax.random.key(TRAIN_KEY), cfg["n_train"])
    val = motion.basin_motion_samples(jax.random.key(VALIDATION_KEY), cfg["n_val"])
    tests = [
        motion.basin_motion_samples(jax.random.key(TEST_KEY), n)
        for n in cfg["test_sets"]
    ]
    jax.block_until_ready((train.initial, val.initial, [t.initial for t in tests]))
    data_s = time.perf_counter() - t0

    ref = _reference(tests[0], cfg["test_sets"][0])
    yield record(PROBLEM, "4dvar-penalised-lbfgs-250", data_s=data_s, **ref)

    for design in cfg["methods"]:
        yield from _design_records(design, cfg, train, val, tests, ref, data_s)


def _design_records(design, cfg, train, val, tests, ref, data_s) -> Iterator[dict]:
    """Train one design (`"noise-inputs"` or `"gaussian"`) and score it on every
    test set."""
    arch = dict(width=cfg["width"], depth=cfg["depth"])
    if design == "noise-inputs":
        arch.update(
            input_noise=cfg["input_noise"], bottleneck_noise=cfg["bottleneck_noise"]
        )
        net0 = motion.GenerativeMotionNet(
            train.obs.values.shape[1:], key=jax.random.key(0), **arch
        )
        name = "generative-crps"
        loss = "fair CRPS of (eta, u, v) / control_scale, supervised"
    else:
        net0 = motion.GaussianMotionNet(
            train.obs.values.shape[1:], key=jax.random.key(0), **arch
        )
        name = "gaussian-crps"
        loss = "closed-form Gaussian CRPS of (eta, u, v) / control_scale, supervised"
    t0 = time.perf_counter()
    net, result = motion.train_generative_motion_net(
        net0, train, key=jax.random.key(1), n_steps=cfg["steps"],
        n_members=cfg["train_members"], batch_size=cfg["batch"],
        learning_rate=cfg["lr"], validation=val,
        eval_every=max(cfg["steps"] // 5, 1),
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    n = cfg["members"]
    one = eqx.filter_jit(lambda o, k: net.sample(o, k, n))
    batched = eqx.Partial(motion.sample_ensembles, chunk_size=CHUNK)
    key = jax.random.key(ENSEMBLE_KEY)
    for test in tests:
        n_test = len(test)
        compile_s, run_s = time_call(one, test.sample(0)[1], key)
        batch_compile_s, batch_s = time_call(batched, net, test.obs, key, n, repeats=3)
        ens = batched(net, test.obs, key, n)[:, :, 1:3]
        extra = {}
        if design == "gaussian":  # the score of the Gaussian itself, not of draws
            mean, std = jax.vmap(net)(test.obs)
            crps = scoringrules.crps_normal(
                test.velocity, mean[:, 1:3], std[:, 1:3], backend="jax"
            )
            extra["crps_closed_form"] = float(jnp.mean(crps))
        yield record(
            PROBLEM, f"{name}-{n}", batch=1, n_test=n_test, members=n,
            **ensemble_scores(ens, test.velocity), **extra,
            time_per_sample_s=run_s, time_per_sample_batched_s=batch_s / n_test,
            compile_s=compile_s, compile_batched_s=batch_compile_s,
            speedup_vs_4dvar=ref["time_per_sample_s"] / run_s,
            train_s=train_s, data_s=data_s, n_train=cfg["n_train"],
            n_val=cfg["n_val"], steps=cfg["steps"], batch_size=cfg["batch"],
            learning_rate=cfg["lr"],
            train_members=cfg["train_members"] if design == "noise-inputs" else None,
            epochs=cfg["steps"] * cfg["batch"] / cfg["n_train"],
            parameters=count_parameters(net), **arch, design=design,
            final_train_loss=float(np.mean(result.losses[-10:])),
            val_crps=[float(m["val_crps"]) for _, m in result.history], loss=loss,
        )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument(
        "--n-test", type=int, nargs="+", help="test-set sizes (default the suite's)"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=("noise-inputs", "gaussian"), default=None
    )
    parser.add_argument("--out", help="also write the records to this JSON file")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("n_train", args.n_train),
            ("steps", args.steps),
            ("batch", args.batch),
            ("test_sets", tuple(args.n_test) if args.n_test else None),
            ("methods", tuple(args.methods) if args.methods else None),
        )
        if v
    }
    out = []
    for rec in records(args.suite, **overrides):
        rec.setdefault("suite", args.suite)
        out.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "jax_version"}))
        if args.out:
            from jaxda.io import save_json

            save_json(args.out, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
