r"""The paper-reproduction experiments behind `reproduce_b24.py`, `reproduce_f21.py`,
`bench_incremental.py` and `bench_fourdvarnet.py`.

- [B24] (neural incremental DA, Table 1): `run_b24(args)` trains the neural
  band-Gaussian prior and the cold-diffusion ablation on B24-L63 / B24-pendulum and
  evaluates first guess, 4DVar, cold diffusion, neural incremental and neural + 4DVar
  on test windows whose observation phases are unseen in training.
- [F21] (4DVarNet, Tables 1-2, Figs. 2/4): `setup`, `build`, `train_config`,
  `gauss_newton`, `iterates`, `scores`, `markdown_table`, `run_f21_system`.

Timing uses `_common.time_call` (compile time apart, median of synchronised calls).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import time_call

import jaxda.data as jd
import jaxda.fourdvarnet as fdn
import jaxda.io as jio
from jaxda import incremental, metrics, plot, train, var
from jaxda.io import atomic_path, save_json
from jaxda.models import flow_map
from jaxda.obs import Observations


def write_text(path, text: str) -> None:
    """Write `text` to `path` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def variance_to_original(norm: jd.Normalisation, std) -> jax.Array:
    r"""A noise standard deviation given in normalised units as a variance in original
    units, $(\sigma_{norm} \sigma_c)^2$ per component (the inverse of
    `Normalisation.scale_std`, squared; the library has no such method yet)."""
    return (jnp.asarray(std) * norm.std) ** 2


# == [B24]: neural incremental data assimilation ======================================

# [B24], Table 1, Lorenz 63 and pendulum rows (its error metric is not defined in the
# paper; the time unit is the run time of the fastest method, cold diffusion).
B24_PAPER = {
    "B24-L63": {
        "4DVar": (0.9, 10),
        "cold diffusion": (1.1, 1),
        "neural incremental": (0.5, 2),
    },
    "B24-pendulum": {
        "4DVar": (0.1, 10),
        "cold diffusion": (0.15, 1),
        "neural incremental": (0.12, 2),
    },
}


def b24_refiner(norm: jd.Normalisation, preset, max_steps: int, model_var: float):
    """One-window weak-constraint 4DVar in original units (structured Gauss-Newton):
    `refine(x_init, obs) -> Solution`, taking and returning normalised trajectories."""
    flow = flow_map(preset.model, preset.dt, "rk4")
    solver = var.GaussNewton(rtol=1e-6, atol=1e-9)

    def refine(x_init, obs):
        dtype = x_init.dtype
        problem = var.WeakConstraint4DVar(
            flow,
            norm.invert_obs(obs),
            variance_to_original(norm, preset.noise_std).astype(dtype),
            jnp.asarray(model_var, dtype),
        )
        sol = var.solve(
            problem, solver, norm.invert(x_init), max_steps=max_steps, throw=False
        )
        return eqx.tree_at(lambda s: s.x, sol, norm.apply(sol.x))

    return refine


def b24_train(label, model, loss, truth, args, key, out):
    """`jaxda.train.fit` with Adam; returns `(model, seconds, losses)`."""
    print(f"\nTraining {label} ({args.steps} steps, batch {args.batch_size}):")
    t0 = time.perf_counter()
    res = train.fit(
        model,
        loss,
        truth,
        key=key,
        n_steps=args.steps,
        batch_size=min(args.batch_size, truth.shape[0]),
        optimizer=optax.adam(args.lr),
        header=model.hyperparameters,
        checkpoint_path=out / f"{label.replace(' ', '_')}.ckpt",
        resume=False,
        progress=not args.no_progress,
        print_every=max(args.steps // 4, 1),
    )
    seconds = time.perf_counter() - t0
    last = float(np.mean(res.losses[-20:])) if len(res.losses) else float("nan")
    print(f"  training loss (last 20 steps) {last:.4g}, {seconds:.1f} s incl. compile")
    return res.model, seconds, res.losses


def b24_table(rows: dict, n_test: int, paper_rows: dict) -> str:
    """The text table: errors, times (relative to cold diffusion), batch-1 latency,
    Gauss-Newton iterations, compile time and [B24]'s (error, time)."""
    ref = rows["cold diffusion"]["run_s"]
    head = (
        f"{'method':<20}{'MSE':>8}{'RMSE':>8}{'med.MSE':>9}{'ms/window':>11}"
        f"{'rel. time':>11}{'ms batch 1':>12}"
        f"{'GN its':>8}{'compile s':>11}   [B24] (error, time)"
    )
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        its = f"{row['gn_iterations']:.1f}" if "gn_iterations" in row else ""
        paper = "{:>5}, {:>3}".format(*paper_rows[name]) if name in paper_rows else ""
        lat = f"{1e3 * row['latency_s']:>12.3f}" if "latency_s" in row else " " * 12
        lines.append(
            f"{name:<20}{row['mse']:>8.3f}{row['rmse']:>8.3f}"
            f"{row['median_window_mse']:>9.3f}{1e3 * row['run_s'] / n_test:>11.3f}"
            f"{row['run_s'] / ref:>11.1f}{lat}"
            f"{its:>8}{row['compile_s']:>11.1f}   {paper}"
        )
    return "\n".join(lines)


def run_b24(args) -> dict:
    """The [B24] experiment (options of `reproduce_b24.parse_args`); returns the
    results dict also written to `args.out / "results.json"`."""
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    k_model, k_ablation, k_fit = jax.random.split(jax.random.key(args.seed), 3)

    preset = jd.get_preset(args.preset)
    tr, te = jd.make_preset_splits(
        preset, args.seed, n_train=args.train_windows, n_test=args.test_windows
    )
    r = preset.noise_std**2  # observation noise variance, normalised units
    levels = incremental.default_levels(args.levels)
    print(
        f"{preset.name}: {tr.n_windows} training / {te.n_windows} test windows of "
        f"{tr.n_times} x {tr.state_shape[0]}; device {jax.devices()[0]}"
    )

    # First guess: Gaussian MAP under the empirical moments of the training windows, on
    # the (at most max_obs) observed entries of each window.
    mean, cov = jd.empirical_moments(tr.truth)
    max_obs = None
    if not args.state_space_map:
        patterns = (preset.train_pattern, preset.test_pattern)
        max_obs = max(q.max_count(tr.n_times, tr.state_shape) for q in patterns)
        print(f"Gaussian MAPs on the observed block: at most {max_obs} observations")

    def first_guess(obs):
        return jd.gaussian_first_guess(obs, mean, cov, r, max_obs=max_obs)

    loss = incremental.make_incremental_loss(
        first_guess, preset.train_pattern, preset.noise_std, levels, max_obs=max_obs
    )
    arch = dict(
        width=args.width, depth=args.depth, form=args.form, bandwidth=args.bandwidth
    )
    shape = (tr.n_times, tr.state_shape)
    model = incremental.NeuralBandGaussian(*shape, key=k_model, **arch)
    ablation = incremental.NeuralBandGaussian(
        *shape, key=k_ablation, conditional=False, **arch
    )
    model, t_model, losses = b24_train(
        "neural", model, loss, tr.truth, args, k_fit, out
    )
    ablation, t_ablation, losses_ab = b24_train(
        "cold diffusion", ablation, loss, tr.truth, args, k_fit, out
    )
    jio.save_model(out / "model.eqx", model)
    jio.save_model(out / "ablation.eqx", ablation)
    model = jio.load_model(out / "model.eqx")  # as a user would

    norm = tr.normalisation
    if norm is None:  # B24-pendulum is not normalised
        norm = jd.Normalisation.identity(tr.state_shape)
    model_var = args.model_var
    if model_var is None:
        model_var = preset.process_noise_std**2 or 1e-4
    refine = b24_refiner(norm, preset, args.fourdvar_steps, model_var)

    # Each stage is compiled once and the pipelines chain them. The trained networks
    # are closed over (compile-time constants): passing a model as an argument of
    # `eqx.filter_jit` costs ~1 ms of flattening per call, which would dominate the
    # time of one window.
    guess = jax.jit(jax.vmap(first_guess))
    fourdvar = jax.jit(jax.vmap(refine))

    def assimilator(m):
        def one(z, o):
            return incremental.incremental_assimilation(
                m, z, o, r, levels, max_obs=max_obs, throw=False
            ).x

        return jax.jit(jax.vmap(one))

    neural, cold = assimilator(model), assimilator(ablation)
    methods = {
        "first guess": guess,
        "4DVar": lambda o: fourdvar(guess(o), o),
        "cold diffusion": lambda o: cold(guess(o), o),
        "neural incremental": lambda o: neural(guess(o), o),
        "neural + 4DVar": lambda o: fourdvar(neural(guess(o), o), o),
    }
    rows, estimates = {}, {}
    for name, fn in methods.items():
        compile_s, run_s = time_call(fn, te.obs, repeats=3, min_time=0.0)
        est = fn(te.obs)
        row = {"compile_s": compile_s, "run_s": run_s}
        if isinstance(est, var.Solution):
            row["gn_iterations"] = float(jnp.mean(est.n_steps))
            row["gn_converged"] = float(jnp.mean(est.converged))
            est = est.x
        err = float(metrics.mse(est, te.truth))
        per_window = jax.vmap(metrics.mse)(est, te.truth)
        rows[name] = {
            "mse": err,
            "rmse": float(np.sqrt(err)),
            "median_window_mse": float(jnp.median(per_window)),
            **row,
        }
        if args.latency:
            one = jax.tree_util.tree_map(lambda a: a[:1], te.obs)
            compile_1, run_1 = time_call(fn, one, repeats=3)
            rows[name].update(latency_s=run_1, latency_compile_s=compile_1)
        estimates[name] = est

    units = "normalised" if tr.normalisation is not None else "original"
    print(
        f"\nTest set: {te.n_windows} windows, observation phases unseen in training. "
        f"MSE / RMSE: {units} units, all entries;\nmed.MSE: median over windows "
        "of the per-window MSE; time: per window, vmapped over the test set, after "
        "compilation, relative to cold diffusion."
    )
    print(b24_table(rows, te.n_windows, B24_PAPER[preset.name]))
    it_fg = rows["4DVar"]["gn_iterations"]
    it_nn = rows["neural + 4DVar"]["gn_iterations"]
    print(f"Gauss-Newton iterations: {it_fg:.2f} from z0, {it_nn:.2f} from neural.")

    figure = None
    if not args.no_plot:
        shown = ("first guess", "4DVar", "neural incremental")
        try:
            fig = plot.trajectories(
                te.truth, te.obs, {k: estimates[k] for k in shown}, time=te.time
            )
            figure = str(plot.save_figure(fig, out / "trajectories.png"))
        except ImportError as e:
            print(f"{e} No figure.")

    def last(losses):
        return float(np.mean(losses[-20:])) if len(losses) else None

    results = {
        "experiment": preset.name,
        "model_var": model_var,
        "args": {k: str(v) for k, v in vars(args).items()},
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "n_train": tr.n_windows,
        "n_test": te.n_windows,
        "units": f"MSE/RMSE in {units} units over all test entries; run_s and "
        "compile_s in seconds for the whole test set (latency_s: one window)",
        "train_seconds": {"neural": t_model, "cold diffusion": t_ablation},
        "final_train_loss": {"neural": last(losses), "cold diffusion": last(losses_ab)},
        "rows": rows,
        "paper_table1": {
            k: {"error": e, "time": t} for k, (e, t) in B24_PAPER[preset.name].items()
        },
        "figure": figure,
        "model": str(out / "model.eqx"),
        "total_seconds": time.perf_counter() - t_start,
    }
    save_json(out / "results.json", results)
    print(f"\nSaved in {out}/ (total {results['total_seconds']:.0f} s).")
    return results


# == [F21]: 4DVarNet ==================================================================

F21_PAPER = {
    "l63": {
        ("none", "ode", "fsgd"): 3.55,
        ("unsupervised", "ode", "cnn"): 3.52,
        ("unsupervised", "ode", "lstm"): 4.52,
        ("unsupervised", "genn", "cnn"): 7.05,
        ("unsupervised", "genn", "lstm"): 7.05,
        ("supervised", "ode", "cnn"): 2.82,
        ("supervised", "ode", "lstm"): 4.00,
        ("supervised", "genn", "cnn"): 1.34,
        ("supervised", "genn", "lstm"): 1.62,
    },
    "l96": {
        ("none", "ode", "4dvar"): 1.06,
        ("unsupervised", "ode", "cnn"): 1.00,
        ("unsupervised", "ode", "lstm"): 1.32,
        ("supervised", "ode", "cnn"): 0.82,
        ("supervised", "ode", "lstm"): 0.97,
        ("supervised", "genn", "cnn"): 0.49,
        ("supervised", "genn", "lstm"): 0.38,
    },
}
# Table 1 prints "L63-GENN" beside the first unsupervised rows (3.52, 4.52) and no
# label beside the 7.05 rows; we follow the text and the ODE-score column instead: the
# 3.52 / 4.52 rows have the RK4 prior's ODE-score (< 1e-4), and "the use of a GINN prior
# results in very poor reconstruction performance" with ODE-score 2.0e-4 (the 7.05
# rows), as the supervised rows pair ODE-score < 1e-4 with RK4 and 0.16 with GENN.
F21_PRESET = {"l63": "F21-L63", "l96": "F21-L96"}
F21_COLUMNS = (
    "mode", "prior", "solver", "iters", "r_score", "fourdvar_score", "ode_score"
)  # fmt: skip
F21_DEFAULT_CONFIGS = {
    # L63 observes u1 only: unsupervised / semi-supervised GENN priors leave u2, u3
    # unconstrained (see docs/benchmarks.md), so the defaults are the paper's best
    # supervised row and the RK4-prior rows
    "l63": ["supervised-genn-cnn", "supervised-ode-cnn", "unsupervised-ode-cnn"],
    "l96": ["supervised-genn-lstm", "unsupervised-ode-cnn", "semisupervised-genn-lstm"],
}


@dataclasses.dataclass
class Setup:
    """Data of one system: train / test splits, normalisation, normalised arrays."""

    system: str
    preset: jd.Preset
    train: jd.Dataset
    test: jd.Dataset
    norm: jd.Normalisation
    obs_tr: Observations
    truth_tr: jax.Array
    obs_te: Observations
    truth_te: jax.Array
    rk4: fdn.ODEPrior  # the true RK4 prior in normalised units

    @property
    def noise_var(self) -> float:
        return self.preset.noise_std**2


def setup(system: str, seed: int, n_train: int, n_test: int) -> Setup:
    """Simulate the F21 train / test windows of `system` ("l63" or "l96")."""
    preset = jd.get_preset(F21_PRESET[system])
    train_set, test_set = jd.make_preset_splits(
        preset, seed, n_train=n_train, n_test=n_test
    )
    norm = jd.Normalisation.fit(train_set.truth)
    rk4 = fdn.ODEPrior.from_model(preset.model, preset.dt, normalisation=norm)
    return Setup(
        system,
        preset,
        train_set,
        test_set,
        norm,
        norm.apply_obs(train_set.obs),
        norm.apply(train_set.truth),
        norm.apply_obs(test_set.obs),
        norm.apply(test_set.truth),
        rk4,
    )


def first_guess(s: Setup) -> jax.Array:
    """Interpolated test observations, never-observed components at the mean
    (original units)."""
    fill = np.asarray(s.norm.mean)
    return jax.vmap(lambda o: jd.interpolate_observations(o, fill))(s.test.obs)


def build(system, prior_name, solver_name, norm, preset, key, n_iter):
    """A fresh 4DVarNet of the configuration (prior "ode" / "genn", solver "cnn" /
    "lstm") with the paper's initial cost weights."""
    k1, k2 = jax.random.split(key)
    shape = preset.model.state_shape
    field = system == "l96"
    layout = "field" if field else "channels"
    if prior_name == "ode":
        prior = fdn.ODEPrior.from_model(preset.model, preset.dt, normalisation=norm)
    else:
        prior = fdn.GENN(
            shape,
            key=k1,
            layout=layout,
            width=10 if not field else 8,
            kernel_size=5 if not field else 3,
            pool=4 if not field else 2,
            periodic_space=field,
        )
    if solver_name == "lstm":
        solver = fdn.ConvLSTMSolver(shape, key=k2, layout=layout, periodic_space=field)
    else:
        solver = fdn.CNNSolver(shape, key=k2, layout=layout, periodic_space=field)
    # lam_obs : lam_prior = 0.01 : 1 initially, as the paper's fixed cost weights
    cost = fdn.VariationalCost(prior, 0.01, 1.0)
    return fdn.FourDVarNet(cost, solver, n_iter=n_iter, train_prior=prior_name != "ode")


def train_config(
    cfg: str,
    s: Setup,
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    progress: bool = False,
    curriculum: tuple[int, ...] = (5, 10, 20),
    init: fdn.FourDVarNet | None = None,
) -> tuple[fdn.FourDVarNet, dict]:
    """Train configuration `cfg` = "mode-prior-solver" (e.g. "supervised-genn-cnn")
    with the iteration curriculum K = 5 -> 10 -> 20 and Adam (`lr`, divided by 10 in
    the last stage), gradient clipping at norm 1, from a fresh model or from `init`
    (a trained one; `steps=0` returns it unchanged). **Returns:** `(model, info)`."""
    mode, prior_name, solver_name = cfg.split("-")
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(cfg.encode()) % 2**31)
    if init is not None and steps == 0:
        return init, {"train_s": 0.0, "train_steps": 0, "final_loss": None}
    if init is not None:
        model = init.with_iterations(curriculum[0])
    else:
        model = build(
            s.system, prior_name, solver_name, s.norm, s.preset, key, curriculum[0]
        )
    stages = fdn.default_curriculum(steps, learning_rate=lr, iterations=curriculum)
    data = fdn.make_training_data(s.obs_tr, s.truth_tr)
    t0 = time.perf_counter()
    res = fdn.fit_fourdvarnet(
        model,
        data,
        key=key,
        batch_size=batch,
        stages=stages,
        mode=mode,
        prior_weight=0.1 if mode == "supervised" else 0.0,
        clip_norm=1.0,
        progress=progress,
        print_every=50,
    )
    info = {
        "train_s": time.perf_counter() - t0,
        "train_steps": sum(st.n_steps for st in stages),
        "final_loss": round(float(np.mean(res.losses[-20:])), 6),
    }
    return res.model, info


def fourdvar_scores(x, obs, rk4):
    """Mean 4DVar-score (normalised units, true RK4 prior) of a batch of windows."""
    score = eqx.filter_jit(jax.vmap(metrics.fourdvar_score, in_axes=(None, 0, 0)))
    return float(jnp.mean(score(rk4, x, obs)))


def scores(x, truth, obs, norm, prior, rk4_prior):
    """R-score (orig units), 4DVar-score and ODE-score (normalised) of a batch."""
    r = float(jnp.mean((norm.invert(x) - norm.invert(truth)) ** 2))
    ode = eqx.filter_jit(jax.vmap(lambda t: jnp.mean((t - prior(t))[1:] ** 2)))
    return r, fourdvar_scores(x, obs, rk4_prior), float(jnp.mean(ode(truth)))


def _problem(preset, obs_var, model_var, values, mask):
    flow = flow_map(preset.model, preset.dt)
    return var.WeakConstraint4DVar(flow, Observations(values, mask), obs_var, model_var)


def gauss_newton(preset, obs_var, model_var, n_steps, chunk_size=None):
    """A jitted, vmapped `(values, mask, x_init) -> (estimates, iterations)`; with
    `chunk_size`, vmapped over that many windows at a time in one compiled loop (as
    `jaxda.fourdvarnet.assimilate_batch(..., chunk_size=...)`)."""

    def one(values, mask, x0):
        problem = _problem(preset, obs_var, model_var, values, mask)
        sol = var.solve(problem, var.GaussNewton(), x0, max_steps=n_steps, throw=False)
        return sol.x, sol.n_steps

    if chunk_size is None:
        return eqx.filter_jit(jax.vmap(one))
    return eqx.filter_jit(
        lambda *a: jax.lax.map(lambda w: one(*w), a, batch_size=chunk_size)
    )


def iterates(solver, preset, obs, x_init, obs_var, model_var, record, chunk_size=16):
    """`(x, path)`: `var.solve` with `solver` for `record[-1]` steps on every window,
    recording the iterates (`var.SaveIterates`); `x` is the estimate, `path` holds
    `x_init` and the iterates after the steps listed in `record` (sorted step numbers
    >= 1), shape `(len(record) + 1, N, T, n)`. Windows run `chunk_size` at a time, which
    bounds the memory of the full record."""
    keep = jnp.asarray([0, *record])

    def one(w):
        problem = _problem(preset, obs_var, model_var, w[0], w[1])
        save = var.SaveIterates(cost=False)
        sol = var.solve(
            problem, solver, w[2], max_steps=int(record[-1]), save=save, throw=False
        )
        return sol.x, sol.iterates.x[keep]

    run = eqx.filter_jit(lambda a: jax.lax.map(one, a, batch_size=chunk_size))
    x, path = run((obs.values, obs.mask, x_init))
    return x, path.swapaxes(0, 1)


def markdown_table(system, rows, timings, args, training) -> str:
    """[F21]'s Table 1 / 2 layout (scheme x prior x solver) with the paper's R-score
    beside ours, the 4DVar- and ODE-scores, and the time per window of the timed
    methods (same test windows, same chunk size)."""
    preset = jd.get_preset(F21_PRESET[system])
    steps = {cfg: info["train_steps"] for cfg, info in training.items()}
    if args.init_from and not any(steps.values()):
        trained = f"models trained by an earlier run, loaded from {args.init_from}"
    else:
        trained = (
            "Adam steps per configuration: "
            f"{', '.join(f'{c} {n}' for c, n in steps.items()) or '-'}"
            f"{' (continued from an earlier run)' if args.init_from else ''}"
        )
    lines = [
        f"**{F21_PRESET[system]}**: {args.n_train} train / {args.n_test} test windows "
        f"(paper {preset.n_train} / {preset.n_test}), {trained}; device "
        f"{jax.devices()[0].device_kind}.",
        "",
        "| scheme | prior | solver | iterations | R-score | paper | 4DVar-score "
        "| ODE-score | ms / window |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode, prior, solver, it, r, fv, od in rows:
        ref = F21_PAPER[system].get((mode, prior, solver))
        key = "gauss_newton" if solver == "4dvar" else f"{mode}-{prior}-{solver}"
        ms = timings.get(key)
        lines.append(
            f"| {mode} | {prior} | {solver} | {it} | {r:.3f} | "
            f"{'-' if ref is None else f'{ref:.2f}'} | {fv:.3e} | {od:.2e} | "
            f"{'-' if ms is None else f'{ms * 1e3:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def run_f21_system(system, args) -> dict:
    """Baselines (FSGD, Gauss-Newton) and the learned configurations of `system` with
    the options of `reproduce_f21.py`; writes the models, `table_<system>.md` and
    `pathways_<system>.png` in `args.out` and returns the system's JSON record."""
    t0 = time.perf_counter()
    s = setup(system, args.seed, args.n_train, args.n_test)
    preset, test, norm = s.preset, s.test, s.norm
    obs_te, truth_te, rk4 = s.obs_te, s.truth_te, s.rk4
    print(
        f"[{system}] data: {args.n_train} train / {args.n_test} test windows, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    rows, paths, timings, training = [], {}, {}, {}
    noise_var = s.noise_var

    # -- baselines on the true RK4 cost (original units) --
    x0 = first_guess(s)
    record = np.unique(np.geomspace(1, args.gd_steps, 25).astype(int))
    lr = 0.5 / (4.0 / args.model_var + 1.0 / noise_var)  # < 1/L of the weak cost
    fsgd = var.GradientDescent(lr, rtol=0.0, atol=0.0)  # fixed number of steps
    t0 = time.perf_counter()
    x_gd, gd_path = iterates(
        fsgd, preset, test.obs, x0, noise_var, args.model_var, record
    )
    r, fv, od = scores(norm.apply(x_gd), truth_te, obs_te, norm, rk4, rk4)
    rows.append(("none", "ode", "fsgd", f"{args.gd_steps} it", r, fv, od))
    paths["FSGD"] = (np.concatenate([[0], record]), norm.apply(gd_path))
    print(f"[{system}] FSGD: R={r:.3f} ({time.perf_counter() - t0:.1f} s)")
    gn = gauss_newton(preset, noise_var, args.model_var, 20, args.chunk)
    gn_args = (test.obs.values, test.obs.mask, x0)
    _, run_s = time_call(gn, *gn_args, repeats=1, min_time=0.0)
    timings["gauss_newton"] = run_s / args.n_test
    x_gn, _ = gn(*gn_args)
    r, fv, od = scores(norm.apply(x_gn), truth_te, obs_te, norm, rk4, rk4)
    rows.append(("none", "ode", "4dvar", "GN <=20 it", r, fv, od))
    _, gn_path = iterates(
        var.GaussNewton(), preset, test.obs, x0, noise_var, args.model_var,
        np.arange(1, 9),
    )  # fmt: skip
    paths["Gauss-Newton"] = (np.arange(9), norm.apply(gn_path))
    print(f"[{system}] GN: R={r:.3f}, {timings['gauss_newton'] * 1e3:.2f} ms/window")

    # -- learned configurations --
    for cfg in args.configs or F21_DEFAULT_CONFIGS[system]:
        mode, prior_name, solver_name = cfg.split("-")
        init = init_path = None
        if args.init_from:
            init_path = os.path.join(args.init_from, f"model_{system}_{cfg}.eqx")
            init = jio.load_model(init_path)
        trained, info = train_config(
            cfg,
            s,
            steps=args.steps,
            lr=args.lr,
            batch=args.batch,
            seed=args.seed,
            progress=args.progress,
            curriculum=tuple(args.curriculum),
            init=init,
        )
        if args.init_from:
            info["init_from"] = init_path
        path = os.path.join(args.out, f"model_{system}_{cfg}.eqx")
        jio.save_model(path, trained)  # atomic
        model = jio.load_model(path)  # as a user would
        training[cfg] = info

        def run(m=model):
            return fdn.assimilate_batch(m, obs_te, chunk_size=args.chunk).x

        _, run_s = time_call(run, repeats=1, min_time=0.0)
        timings[cfg] = run_s / args.n_test
        x = run()
        r, fv, od = scores(x, truth_te, obs_te, norm, model.cost.prior, rk4)
        rows.append((mode, prior_name, solver_name, f"K={model.n_iter}", r, fv, od))
        p = fdn.assimilate_batch(model, obs_te, return_path=True).path
        paths[cfg] = (np.arange(p.shape[1]), p.swapaxes(0, 1))
        print(
            f"[{system}] {cfg}: R={r:.3f}, train {info['train_s']:.0f} s "
            f"({info['train_steps']} steps, final loss {info['final_loss']}), "
            f"{timings[cfg] * 1e3:.2f} ms/window, "
            f"lam_obs={float(model.cost.lam_obs):.3g} "
            f"lam_prior={float(model.cost.lam_prior):.3g}, saved {path}"
        )

    # -- table (printed, and saved as Markdown) --
    table = markdown_table(system, rows, timings, args, training)
    print("\n" + table)
    write_text(os.path.join(args.out, f"table_{system}.md"), table)

    # -- energy pathways --
    def pathway(its, xs):
        cost = [fourdvar_scores(xk, obs_te, rk4) for xk in jnp.asarray(xs)]
        err = [float(jnp.mean((norm.invert(xk) - test.truth) ** 2)) for xk in xs]
        return np.asarray(its), np.asarray(cost), np.asarray(err)

    curves = {name: pathway(*v) for name, v in paths.items()}
    try:
        fig = plot.energy_pathways(
            curves,
            title=f"{F21_PRESET[system]}: energy pathways",
            cost_label="4DVar cost (normalised)",
            error_label="MSE (original units)",
        )
        plot.save_figure(fig, os.path.join(args.out, f"pathways_{system}.png"))
    except ImportError as e:
        print(f"{e} No figure.")
    return {
        "system": system,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "steps": args.steps,
        "batch": args.batch,
        "model_var": args.model_var,
        "paper_n_train": preset.n_train,
        "paper_n_test": preset.n_test,
        "device": str(jax.devices()[0]),
        "rows": [dict(zip(F21_COLUMNS, row)) for row in rows],
        "time_per_window_s": timings,
        "training": training,
        "pathways": {
            k: {"iter": v[0].tolist(), "cost": v[1].tolist(), "mse": v[2].tolist()}
            for k, v in curves.items()
        },
    }
