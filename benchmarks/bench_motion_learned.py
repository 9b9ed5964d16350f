r"""Learning over 4DVar on [FBC23]'s shallow-water basin: a UNet from the observed
heights to the initial state, trained with the 4DVar cost (no truth) or supervised.

    python benchmarks/run.py --suite full --only motion_learned --out results.json
    python benchmarks/bench_motion_learned.py --suite quick     # a quick look

The problem (`motion-sw64`): `jaxda.motion.basin_motion_samples` ([FBC23]'s set-up,
64 x 64 closed basin, 10-state windows, the height observed at steps 0, 3, 6, 9 with
noise 0.05). Training, validation and test windows come from three different keys;
the test key is `bench_motion`'s (same test windows for the same `n_test`).

Methods (`method`):

- `learned-4dvar-loss`: `MotionNet` trained on $\frac1B\sum_b J_b(f_\theta(y_b))$,
  $J_b$ the penalised strong-constraint cost of window $b$ with [FBC23]'s weights
  ($\alpha = 5\cdot10^3$, $\beta = 5\cdot10^2$ converted by `fbc23_weights`, their
  zero-padded penalty `convention="authors"`): no ground truth;
- `learned-supervised`: the same net trained on the true initial states
  (`supervised_loss`);
- `hybrid-lbfgs-<k>`: `jaxda.var.LBFGS` on the same penalised cost for `k`
  iterations from the `learned-4dvar-loss` net's output (`hybrid_4dvar`);
- `deep-prior`: `deep_prior_4dvar` per window on the same penalised cost, Adam at
  [FBC23]'s 0.002 / 0.5, background the first guess; fewer steps and a narrower
  generator than theirs on this CPU (`steps`, `generator_width` in the record);
- `4dvar-penalised-lbfgs-250`: the reference of the time ratio, measured in the
  same run on the first `n_reference` test windows: `LBFGS`, 250 iterations, from
  the first guess, same cost.

Fields: `epe`, `ae_deg` (means over the test windows of the per-window
`jaxda.metrics.endpoint_error` / `angular_error`, [FBC23]'s `EPE` / `Angular_error`),
`grad_norm` (mean `velocity_gradient_norm`, grid units), `time_per_sample_s`
(inference, jitted, one window per call: the median of timed calls, compile
excluded), `time_per_sample_batched_s` (one call on all test windows, divided by
their number), `compile_s`, `train_s`, `n_train`, `n_test`, `epochs`, `parameters`,
`paper_epe` / `paper_ae_deg` ([FBC23], 100 test samples), and for the learned rows
`speedup_vs_4dvar` (the reference's time per window over this row's, one run).
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
from _common import record, time_call

from jaxda import metrics, motion, var
from jaxda.nn import count_parameters


PROBLEM = "motion-sw64"
PAPER = {"deep-prior": (0.0455, 26.7), "penalised": (0.0156, 9.9)}  # [FBC23]
ALPHA, BETA = 5e3, 5e2  # [FBC23]'s penalty weights (their cost's convention)
TEST_KEY, TRAIN_KEY, VALIDATION_KEY = 20230, 4101, 4102

SUITES = {
    "quick": dict(
        n_train=16, n_val=4, n_test=4, steps=30, batch=4, width=4, depth=2,
        lr=3e-3, hybrid=(10,), n_reference=1, n_deep=1, deep_steps=50,
        deep_width=4,
    ),
    "full": dict(
        n_train=512, n_val=8, n_test=100, steps=1500, batch=8, width=8, depth=3,
        lr=3e-3, hybrid=(10, 50), n_reference=100, n_deep=2, deep_steps=2000,
        deep_width=8,
    ),
}  # fmt: skip


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def scores(samples, w_hat) -> dict:
    """[FBC23]'s per-window scores, averaged over the windows."""
    w = samples.velocity[: w_hat.shape[0]]
    epe = jax.vmap(metrics.endpoint_error)(w_hat, w)
    ae = jax.vmap(metrics.angular_error)(w_hat, w)
    grad = jax.vmap(metrics.velocity_gradient_norm)(w_hat)
    return {
        "epe": float(jnp.mean(epe)),
        "ae_deg": float(jnp.nanmean(ae)),
        "grad_norm": float(jnp.mean(grad)),
    }


def _obs(samples, i):
    return samples.sample(int(i))[1]


def _per_window(fn, samples, n, desc):
    """`fn(obs_i)` for the first `n` windows: outputs, compile time, median time."""
    outs, times = [], []
    if n == 1:  # a warm-up call, so that the one timed call excludes compilation
        t0 = time.perf_counter()
        jax.block_until_ready(fn(_obs(samples, 0)))
        times.append(time.perf_counter() - t0)
    bar = _progress(n, desc)
    for i in range(n):
        t0 = time.perf_counter()
        outs.append(jax.block_until_ready(fn(_obs(samples, i))))
        times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    run = float(np.median(times[1:]))
    return outs, max(times[0] - run, 0.0), run


def _inference(net, samples) -> dict:
    """The net's velocities on the test windows and its inference times."""
    apply_one = eqx.filter_jit(lambda o: net(o))
    obs = samples.obs
    compile_s, run_s = time_call(apply_one, _obs(samples, 0))
    batch_compile_s, batch_s = time_call(motion.predict, net, obs, repeats=3)
    w_hat = motion.predict(net, obs)[:, 1:3]
    return {
        "w_hat": w_hat,
        "time_per_sample_s": run_s,
        "time_per_sample_batched_s": batch_s / obs.values.shape[0],
        "compile_s": compile_s,
        "compile_batched_s": batch_compile_s,
    }


GRID_WEIGHTS = (3.6864e11, 1.2288e11)  # bench_motion's validation choice (grid)


def records(
    suite: str,
    penalty_kind: str = "authors",
    learned_only: bool = False,
    **overrides,
) -> Iterator[dict]:
    """The records; `penalty_kind="grid"` trains the 4DVar-loss net on the
    `jaxda.grid` penalty with `bench_motion`'s validation-chosen weights instead of
    [FBC23]'s; `learned_only` runs only the 4DVar-loss net (and a 2-window
    reference); `overrides` replace entries of the suite's configuration."""
    cfg = dict(SUITES[suite], **overrides)
    t0 = time.perf_counter()
    test = motion.basin_motion_samples(jax.random.key(TEST_KEY), cfg["n_test"])
    train = motion.basin_motion_samples(jax.random.key(TRAIN_KEY), cfg["n_train"])
    val = motion.basin_motion_samples(jax.random.key(VALIDATION_KEY), cfg["n_val"])
    jax.block_until_ready((test.initial, train.initial, val.initial))
    data_s = time.perf_counter() - t0
    flow, grid, sigma = test.flow, test.grid, test.noise_std
    n_entries = int(np.prod(test.obs.values.shape[1:]))
    smooth, div = motion.fbc23_weights(
        ALPHA, BETA, n_entries=n_entries, noise_std=sigma
    )
    if penalty_kind == "grid":
        smooth, div = GRID_WEIGHTS
    penalty = motion.MotionPenalty(
        grid, smoothness=smooth, divergence=div, convention=penalty_kind
    )

    def problem_fn(obs):
        return motion.motion_4dvar(flow, obs, sigma, penalty=penalty)

    common = dict(
        batch=1, n_train=cfg["n_train"], n_val=cfg["n_val"], n_test=cfg["n_test"],
        data_s=data_s,
        penalty="fbc23-authors" if penalty_kind == "authors" else "validated-grid",
    )  # fmt: skip

    # Reference: penalised 4DVar, L-BFGS 250 iterations, from the first guess.
    solver = var.LBFGS()

    @eqx.filter_jit
    def reference(obs):
        problem = problem_fn(obs)
        sol = var.solve(
            problem, solver, motion.first_guess(obs), max_steps=250, throw=False
        )
        return sol.x[1:3]

    n_ref = min(cfg["n_reference"], cfg["n_test"], 2 if learned_only else 10**9)
    outs, ref_compile, ref_s = _per_window(reference, test, n_ref, "4dvar")
    yield record(
        PROBLEM, "4dvar-penalised-lbfgs-250", **common, **scores(test, jnp.stack(outs)),
        time_per_sample_s=ref_s, compile_s=ref_compile, n_scored=n_ref,
        iterations=250, paper_epe=PAPER["penalised"][0],
        paper_ae_deg=PAPER["penalised"][1],
    )  # fmt: skip

    nets = {}
    for method, loss_fn in (
        ("learned-4dvar-loss", motion.fourdvar_loss(problem_fn)),
        ("learned-supervised", motion.supervised_loss),
    )[: 1 if learned_only else 2]:
        net0 = motion.MotionNet(
            test.obs.values.shape[1:], key=jax.random.key(0), width=cfg["width"],
            depth=cfg["depth"],
        )  # fmt: skip
        t0 = time.perf_counter()
        net, result = motion.train_motion_net(
            net0, train, loss_fn, key=jax.random.key(1), n_steps=cfg["steps"],
            batch_size=cfg["batch"], learning_rate=cfg["lr"], validation=val,
            eval_every=max(cfg["steps"] // 5, 1),
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        nets[method] = net
        inf = _inference(net, test)
        w_hat = inf.pop("w_hat")
        yield record(
            PROBLEM, method, **common, **scores(test, w_hat), **inf,
            train_s=train_s, epochs=cfg["steps"] * cfg["batch"] / cfg["n_train"],
            steps=cfg["steps"], batch_size=cfg["batch"], learning_rate=cfg["lr"],
            parameters=count_parameters(net), width=cfg["width"], depth=cfg["depth"],
            final_train_loss=float(np.mean(result.losses[-10:])),
            val_loss=[float(m["val_loss"]) for _, m in result.history],
            test_4dvar_cost=motion.mean_loss(
                motion.fourdvar_loss(problem_fn), net, test
            ),
            speedup_vs_4dvar=ref_s / inf["time_per_sample_s"],
            speedup_vs_4dvar_batched=ref_s / inf["time_per_sample_batched_s"],
            paper_epe=PAPER["penalised"][0], paper_ae_deg=PAPER["penalised"][1],
        )  # fmt: skip

    if learned_only:
        return
    # Hybrid: L-BFGS from the 4DVar-loss net's output.
    net = nets["learned-4dvar-loss"]
    for k in cfg["hybrid"]:

        def hybrid(obs, k=k):
            sol = motion.hybrid_4dvar(
                net, problem_fn(obs), solver, max_steps=k, throw=False
            )
            return sol.x[1:3]

        outs, compile_s, run_s = _per_window(hybrid, test, cfg["n_test"], f"hybrid {k}")
        yield record(
            PROBLEM, f"hybrid-lbfgs-{k}", **common, **scores(test, jnp.stack(outs)),
            time_per_sample_s=run_s, compile_s=compile_s, iterations=k,
            speedup_vs_4dvar=ref_s / run_s,
        )  # fmt: skip

    # Deep prior, per window.
    n_deep = min(cfg["n_deep"], cfg["n_test"])

    @eqx.filter_jit
    def deep(obs):
        sol = motion.deep_prior_4dvar(
            problem_fn(obs), jax.random.key(5), steps=cfg["deep_steps"],
            background=motion.first_guess(obs), width=cfg["deep_width"], throw=False,
        )  # fmt: skip
        return sol.x[1:3]

    outs, compile_s, run_s = _per_window(deep, test, n_deep, "deep prior")
    yield record(
        PROBLEM, "deep-prior", **common, **scores(test, jnp.stack(outs)),
        time_per_sample_s=run_s, compile_s=compile_s, n_scored=n_deep,
        steps=cfg["deep_steps"], generator_width=cfg["deep_width"],
        paper_epe=PAPER["deep-prior"][0], paper_ae_deg=PAPER["deep-prior"][1],
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument("--penalty", choices=("authors", "grid"), default="authors")
    parser.add_argument("--learned-only", action="store_true")
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in (("n_train", args.n_train), ("steps", args.steps)) if v
    }
    for rec in records(args.suite, args.penalty, args.learned_only, **overrides):
        print(json.dumps({k: v for k, v in rec.items() if k != "jax_version"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
