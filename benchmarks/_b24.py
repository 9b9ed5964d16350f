r"""The [B24] experiment behind `reproduce_b24.py` and `bench_incremental.py`
(neural incremental DA, Table 1): `run_b24(args)` trains the neural band-Gaussian
prior and the cold-diffusion ablation on B24-L63 / B24-pendulum and evaluates first
guess, 4DVar, cold diffusion, neural incremental and neural + 4DVar on test windows
whose observation phases are unseen in training.

Timing uses `_common.time_call` (compile time apart, median of synchronised calls).
"""

from __future__ import annotations

import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import time_call

import jaxda.data as jd
import jaxda.io as jio
from jaxda import incremental, metrics, plot, train, var
from jaxda.io import save_json
from jaxda.models import flow_map


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


def b24_refiner(
    norm: jd.Normalisation, preset, max_steps: int, model_var: float, cost_target=None
):
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
            problem,
            solver,
            norm.invert(x_init),
            max_steps=max_steps,
            cost_target=cost_target,
            throw=False,
        )
        return eqx.tree_at(lambda s: s.x, sol, norm.apply(sol.x))

    return refine


def analytic_prior(preset, process_std: float) -> jd.GaussMarkovPrior:
    """[B24]'s analytic first-guess prior for an unnormalised preset (the pendulum):
    the model linearised at rest, $x_0$ with the mean and covariance of the preset's
    uniform initial law, process noise `process_std` per step and component."""
    init = preset.initial_state
    if not isinstance(init, jd.UniformInitialState):
        raise ValueError(
            f"the analytic prior needs a uniform initial law; {preset.name} has "
            f"{type(init).__name__}."
        )
    low, high = np.asarray(init.low, float), np.asarray(init.high, float)
    eye = np.eye(low.shape[0])
    return jd.GaussMarkovPrior.linearised(
        preset.model,
        preset.dt,
        (low + high) / 2,
        np.diag((high - low) ** 2 / 12),
        process_std**2 * eye,
    )


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
    pendulum = preset.name == "B24-pendulum"
    ell = args.levels if args.levels is not None else (0 if pendulum else 5)
    levels = incremental.default_levels(ell)
    first_guess_kind = args.first_guess or ("analytic" if pendulum else "empirical")
    print(
        f"{preset.name}: {tr.n_windows} training / {te.n_windows} test windows of "
        f"{tr.n_times} x {tr.state_shape[0]}; device {jax.devices()[0]}"
    )

    max_obs = None
    if not args.state_space_map:
        patterns = (preset.train_pattern, preset.test_pattern)
        max_obs = max(q.max_count(tr.n_times, tr.state_shape) for q in patterns)
        print(f"Gaussian MAPs on the observed block: at most {max_obs} observations")
    if first_guess_kind == "analytic" and tr.normalisation is not None:
        raise ValueError(
            f"--first-guess analytic needs an unnormalised preset; {preset.name} is "
            "normalised."
        )
    if first_guess_kind == "analytic":
        # [B24] section 4.1: z0 = MAP(y; mu0, P0) under the linearised model's
        # Gauss-Markov prior (a Kalman smoother, one block-tridiagonal solve).
        prior = analytic_prior(preset, args.prior_process_std)
        print(f"First guess: the linearised model's prior, M =\n{prior.transition}")

        def first_guess(obs):
            return prior.map(obs, r).mean

    else:
        # Gaussian MAP under the empirical moments of the training windows, on the
        # (at most max_obs) observed entries of each window.
        mean, cov = jd.empirical_moments(tr.truth)

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
    refine_neural = refine
    if args.cost_target is not None:
        refine_neural = b24_refiner(
            norm, preset, args.fourdvar_steps, model_var, args.cost_target
        )

    # Each stage is compiled once and the pipelines chain them. The trained networks
    # are closed over (compile-time constants): passing a model as an argument of
    # `eqx.filter_jit` costs ~1 ms of flattening per call, which would dominate the
    # time of one window.
    guess = jax.jit(jax.vmap(first_guess))
    fourdvar = jax.jit(jax.vmap(refine))
    fourdvar_neural = jax.jit(jax.vmap(refine_neural))

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
        "neural + 4DVar": lambda o: fourdvar_neural(neural(guess(o), o), o),
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
        "levels": [float(v) for v in levels],
        "first_guess": first_guess_kind,
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
