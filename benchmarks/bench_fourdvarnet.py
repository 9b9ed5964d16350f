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
"""

from collections.abc import Iterator

import _f21 as ex
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import record, time_call


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
