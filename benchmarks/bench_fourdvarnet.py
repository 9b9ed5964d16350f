"""4DVarNet vs structured Gauss-Newton 4DVar: accuracy and time per window, same batch.

For F21-L63 (and F21-L96 in the full suite), 4DVarNets are trained with the functions of
`benchmarks/_f21.py` (`setup`, `train_config`: iteration curriculum
5 -> 10 -> 20, Adam, clipping) on `n_train` windows, in the learning schemes listed in
`configs`: supervised; in the full suite also unsupervised (the 4DVar cost as loss,
with the RK4 prior) and, on L96, semi-supervised (held-out observations as target; L63
observes u1 only, which leaves learned priors unconstrained in u2, u3 without truth).
Each of them, and `jaxda.var.GaussNewton` (<= 20 iterations, weak-constraint RK4 cost,
R = 2, Q = 0.01, first guess = interpolated observations), assimilates the same `batch`
test windows, vmapped under one jit. `time_per_window_s` is the median batch time over
the batch size, `mse` the R-score (MSE over all entries, original units). The quick
suite trains for a handful of steps only: its accuracy numbers are not meaningful, its
timings are.

The training step at the authors' network sizes (`4dvarnet-train-step-<config>`: the
GENN of their Lorenz-63 notebook and the CNN or a ConvLSTM solver, K = 10, float32,
`TRAIN_STEP` windows a batch) is timed per window for the variants of `STEP_VARIANTS`
side by side in one run (`variant`: the convolutions of jaxda 0.2.0 or XLA's, with or
without rematerialisation), with the parameter counts:

    python benchmarks/bench_fourdvarnet.py --suite full
"""

import dataclasses
import time
from collections.abc import Iterator

import _f21 as ex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import record, time_call

import jaxda.fourdvarnet as fdn
import jaxda.nn as nn
from jaxda import train


_SIZES = {
    "quick": {
        "systems": ("l63",),
        "configs": {"l63": ("supervised-genn-cnn",)},
        "n_train": 32,
        "batch": 16,
        "steps": 9,
    },
    "full": {
        "systems": ("l63", "l96"),
        "configs": {
            "l63": (
                "supervised-genn-cnn",
                "supervised-ode-cnn",
                "unsupervised-ode-cnn",
            ),
            "l96": (
                "supervised-genn-lstm",
                "unsupervised-ode-cnn",
                "semisupervised-genn-lstm",
            ),
        },
        "n_train": 512,
        "batch": 256,
        "steps": 600,
    },
}


@eqx.filter_jit
def _learned(model, obs):
    return jax.vmap(model)(obs)


def records(suite: str) -> Iterator[dict]:
    cfg = _SIZES[suite]
    for system in cfg["systems"]:
        s = ex.setup(system, 0, cfg["n_train"], cfg["batch"])
        name = ex.F21_PRESET[system]
        for config in cfg["configs"][system]:
            model, info = ex.train_config(
                config,
                s,
                steps=cfg["steps"],
                lr=3e-3,
                batch=min(32, cfg["n_train"]),
                seed=0,
            )
            compile_s, run_s = time_call(_learned, model, s.obs_te, repeats=3)
            x = s.norm.invert(_learned(model, s.obs_te))
            mode = config.split("-")[0]
            yield record(
                name,
                f"4dvarnet-{config}",
                scheme=mode,
                batch=cfg["batch"],
                n_iter=model.n_iter,
                n_train=cfg["n_train"],
                train_steps=info["train_steps"],
                train_s=info["train_s"],
                mse=float(jnp.mean((x - s.test.truth) ** 2)),
                time_per_window_s=run_s / cfg["batch"],
                run_s=run_s,
                compile_s=compile_s,
            )

        gn = ex.gauss_newton(s.preset, s.noise_var, 0.01, 20)
        args = (s.test.obs.values, s.test.obs.mask, ex.first_guess(s))
        compile_s, run_s = time_call(gn, *args, repeats=3)
        xg, steps = gn(*args)
        yield record(
            name,
            "gauss_newton",
            batch=cfg["batch"],
            mean_iterations=float(jnp.mean(steps)),
            mse=float(jnp.mean((xg - s.test.truth) ** 2)),
            time_per_window_s=run_s / cfg["batch"],
            run_s=run_s,
            compile_s=compile_s,
        )
    yield from train_step_records(suite, TRAIN_STEP.get(suite, {}).get("variants"))


# -- the training step at the authors' network sizes ---------------------------------

TRAIN_STEP = {
    "quick": {
        "batch": 32,
        "n_iter": 10,
        "configs": ("genn-cnn",),
        "variants": ("im2col",),
    },
    "full": {"batch": 128, "n_iter": 10, "configs": ("genn-cnn", "genn-lstm")},
}
# The variants timed side by side (one run, same data and weights): the convolutions
# of jaxda 0.2.0 (shifted views + einsum) against XLA's, with and without
# rematerialising each unrolled iteration.
STEP_VARIANTS = {
    "im2col": {"conv_method": "im2col", "checkpoint": False},
    "im2col-remat": {"conv_method": "im2col", "checkpoint": True},
    "xla": {"conv_method": "xla", "checkpoint": False},
}
# the ConvLSTM solver of the side-by-side training-step measurement (25,124 scalars)
LSTM_HIDDEN = 44


def train_step_model(config: str, n_iter: int, key, conv_method: str = "im2col"):
    """The L63 4DVarNet of `config` ("genn-cnn", "genn-lstm", "genn-lstm-paper") at the
    authors' sizes: GENN 15,300 parameters; CNN solver 4,339; ConvLSTM 25,125
    ("genn-lstm") or the paper's 3,346 ("genn-lstm-paper"); float32."""
    k1, k2 = jax.random.split(key)
    genn = fdn.GENN((3,), key=k1, conv_method=conv_method, **ex.F21_GENN["l63"])
    if config == "genn-cnn":
        solver = fdn.CNNSolver((3,), key=k2, conv_method=conv_method)
    else:
        hidden = LSTM_HIDDEN if config == "genn-lstm" else None
        solver = fdn.ConvLSTMSolver(
            (3,), key=k2, hidden=hidden, conv_method=conv_method
        )
    cost = fdn.VariationalCost(genn, reduction="mean")
    model = fdn.FourDVarNet(cost, solver, n_iter=n_iter)
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model
    )


def train_step_records(suite: str, variants=None) -> Iterator[dict]:
    """Time one supervised training step (loss, its gradient through the K unrolled
    iterations, an Adam update) per window on F21-L63 windows, float32, for each
    configuration and each variant of `STEP_VARIANTS`."""
    size = TRAIN_STEP.get(suite)
    if size is None:
        return
    batch = size["batch"]
    s = ex.setup("l63", 0, batch, 1)
    data = fdn.make_training_data(s.obs_tr, s.truth_tr)
    data = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, data
    )
    loss = fdn.make_fourdvarnet_loss("supervised", prior_weight=0.1)
    opt = optax.adam(1e-3)
    for config in size["configs"]:
        base = train_step_model(config, size["n_iter"], jax.random.key(0))
        names = tuple(variants or STEP_VARIANTS)
        steps, compile_s, times = {}, {}, {name: [] for name in names}
        for name in names:
            v = STEP_VARIANTS[name]
            model = nn.with_conv_method(base, v["conv_method"])
            model = dataclasses.replace(model, checkpoint=v["checkpoint"])
            state = train.init_state(model, opt, jax.random.key(1))
            step = train.make_train_step(loss, opt)
            compile_s[name], _ = time_call(step, state, data, repeats=1, min_time=0)
            steps[name] = (step, state, model)
        # interleaved rounds: on a loaded machine every variant sees the same load
        for _ in range(size.get("rounds", 5)):
            for name in names:
                step, state, _ = steps[name]
                t0 = time.perf_counter()
                jax.block_until_ready(step(state, data))
                times[name].append(time.perf_counter() - t0)
        for name in names:
            model = steps[name][2]
            run_s = float(np.median(times[name]))
            yield record(
                "F21-L63",
                f"4dvarnet-train-step-{config}",
                variant=name,
                batch=batch,
                n_iter=size["n_iter"],
                parameters=nn.count_parameters(model),
                prior_parameters=nn.count_parameters(model.cost.prior),
                solver_parameters=nn.count_parameters(model.solver),
                time_per_window_s=run_s / batch,
                run_s=run_s,
                run_s_all=[round(t, 4) for t in times[name]],
                compile_s=compile_s[name],
                dtype="float32",
            )


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Time the 4DVarNet training step.")
    p.add_argument("--suite", choices=tuple(TRAIN_STEP), default="full")
    p.add_argument("--variants", nargs="*", default=None, choices=tuple(STEP_VARIANTS))
    p.add_argument("--configs", nargs="*", default=None)
    p.add_argument("--out", default=None, help="write the records to this JSON file")
    args = p.parse_args()
    if args.configs:
        TRAIN_STEP[args.suite] = dict(TRAIN_STEP[args.suite], configs=args.configs)
    recs = []
    for rec in train_step_records(args.suite, args.variants):
        recs.append(rec)
        print(
            f"{rec['method']} [{rec['variant']}]: "
            f"{rec['time_per_window_s'] * 1e3:.2f} ms / window (batch {rec['batch']}, "
            f"{rec['parameters']} parameters, compile {rec['compile_s']:.1f} s)",
            flush=True,
        )
    if args.out:
        from jaxda.io import save_json

        save_json(args.out, recs)
