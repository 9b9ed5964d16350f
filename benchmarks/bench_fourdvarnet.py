"""4DVarNet vs structured Gauss-Newton 4DVar: accuracy and time per window, same batch.

For F21-L63 (and F21-L96 in the full suite): a GENN prior + CNN solver 4DVarNet is
trained (supervised, a short iteration curriculum 5 -> 10 -> 20) on `n_train` windows,
then both it and `jaxda.var.GaussNewton` (<= 20 iterations, weak-constraint RK4 cost,
R = 2, Q = 0.01, first guess = interpolated observations) assimilate the same
`batch` test windows, vmapped under one jit. `time_per_window_s` is the median batch
time
over the batch size, `mse` the R-score (MSE over all entries, original units). The quick
suite trains for a handful of steps only: its accuracy numbers are not meaningful, its
timings are.
"""

from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
from _common import record, time_call

import jaxda.data as jd
import jaxda.nn as nn
from jaxda.models import flow_map
from jaxda.obs import Observations
from jaxda.var import GaussNewton, WeakConstraint4DVar


_SIZES = {
    "quick": {"systems": ("F21-L63",), "n_train": 32, "batch": 16, "steps": 9},
    "full": {
        "systems": ("F21-L63", "F21-L96"),
        "n_train": 512,
        "batch": 256,
        "steps": 600,
    },
}


def _model(preset, key):
    field = preset.name == "F21-L96"
    layout = "field" if field else "channels"
    shape = preset.model.state_shape
    k1, k2 = jax.random.split(key)
    prior = nn.GENN(
        shape,
        key=k1,
        layout=layout,
        width=10 if not field else 8,
        kernel_size=5 if not field else 3,
        pool=4 if not field else 2,
        periodic_space=field,
    )
    solver = nn.CNNSolver(shape, key=k2, layout=layout, periodic_space=field)
    return nn.FourDVarNet(nn.VariationalCost(prior, 0.01, 1.0), solver, n_iter=5)


def records(suite: str) -> Iterator[dict]:
    cfg = _SIZES[suite]
    for name in cfg["systems"]:
        preset = jd.get_preset(name)
        train, test = jd.make_preset_splits(
            name, 0, n_train=cfg["n_train"], n_test=cfg["batch"]
        )
        norm = jd.Normalisation.fit(train.truth)
        data = nn.make_training_data(norm.apply_obs(train.obs), norm.apply(train.truth))
        key = jax.random.key(0)
        stages = nn.default_curriculum(
            cfg["steps"], learning_rate=3e-3, iterations=(5, 10, 20)
        )
        model = nn.fit_fourdvarnet(
            _model(preset, key),
            data,
            key=key,
            batch_size=min(32, cfg["n_train"]),
            stages=stages,
            prior_weight=0.1,
            clip_norm=1.0,
            progress=False,
        ).model
        obs_n = norm.apply_obs(test.obs)

        @eqx.filter_jit
        def learned(m, obs):
            return jax.vmap(m)(obs)

        compile_s, run_s = time_call(learned, model, obs_n, repeats=3)
        x = norm.invert(learned(model, obs_n))
        mse = float(jnp.mean((x - test.truth) ** 2))
        yield record(
            name,
            "4dvarnet-genn-cnn",
            batch=cfg["batch"],
            n_iter=model.n_iter,
            n_train=cfg["n_train"],
            train_steps=cfg["steps"],
            mse=mse,
            time_per_window_s=run_s / cfg["batch"],
            run_s=run_s,
            compile_s=compile_s,
        )

        flow = flow_map(preset.model, preset.dt)
        fill = norm.mean
        x0 = jax.vmap(lambda o: jd.interpolate_observations(o, fill))(test.obs)
        var_r = preset.noise_std**2

        @jax.jit
        def gn(values, mask, x0):
            def one(v, m, x):
                p = WeakConstraint4DVar(flow, Observations(v, m), var_r, 0.01)
                sol = GaussNewton().run(p, x, 20)
                return sol.x, sol.n_steps

            return jax.vmap(one)(values, mask, x0)

        args = (test.obs.values, test.obs.mask, x0)
        compile_s, run_s = time_call(gn, *args, repeats=3)
        xg, steps = gn(*args)
        yield record(
            name,
            "gauss_newton",
            batch=cfg["batch"],
            mean_iterations=float(jnp.mean(steps)),
            mse=float(jnp.mean((xg - test.truth) ** 2)),
            time_per_window_s=run_s / cfg["batch"],
            run_s=run_s,
            compile_s=compile_s,
        )
