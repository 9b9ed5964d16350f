r"""Neural incremental data assimilation [B24] on Lorenz-63, end to end.

    python examples/lorenz63_incremental.py        # defaults: minutes on a CPU

The tutorial `docs/tutorials/neural_incremental.md` as a script, on the B24-L63 preset
(windows of 32 states, $u_1$ observed every 8 steps, test observation phases unseen in
training, normalised components): first guess $z_0$ = Gaussian MAP under the training
windows' empirical moments; training (objective 3.5) of the neural band-Gaussian prior
and, with the same budget, of the unconditional cold-diffusion ablation; evaluation of
first guess, 4DVar, cold diffusion, neural incremental (Algorithm 2) and neural +
4DVar: MSE / RMSE (normalised units) and time per window (vmapped over the test set,
after compilation). Writes `results.json`, `model.eqx`, `ablation.eqx` and
`trajectories.png` in `--out`. The harness with [B24]'s numbers, the pendulum, batch-1
latency and every option is `benchmarks/reproduce_b24.py`.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import optax

from jaxda import data, incremental, io, metrics, plot, train, var
from jaxda.models import flow_map


p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--train-windows", type=int, default=None, help="preset's default")
p.add_argument("--test-windows", type=int, default=None, help="preset's default")
p.add_argument("--steps", type=int, default=400, help="Adam steps per model")
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--levels", type=int, default=5, help="ell (ell + 1 levels)")
p.add_argument("--width", type=int, default=32)
p.add_argument("--depth", type=int, default=4)
p.add_argument("--fourdvar-steps", type=int, default=50, help="Gauss-Newton cap")
p.add_argument("--out", type=pathlib.Path, default="outputs/lorenz63_incremental")
p.add_argument("--no-progress", action="store_true")


def main(argv=None) -> dict:
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    k_model, k_abl, k_fit = jax.random.split(jax.random.key(0), 3)

    # -- data: normalised windows; test observation phases never seen in training --
    preset = data.get_preset("B24-L63")
    tr, te = data.make_preset_splits(
        preset, 0, n_train=args.train_windows, n_test=args.test_windows
    )
    norm = tr.normalisation  # fitted on the training windows
    r = preset.noise_std**2  # observation noise variance (normalised units)
    levels = incremental.default_levels(args.levels)
    print(f"B24-L63: {tr.n_windows} training / {te.n_windows} test windows")

    # -- first guess: Gaussian MAP under the empirical moments, on the observed block --
    mean, cov = data.empirical_moments(tr.truth)
    patterns = (preset.train_pattern, preset.test_pattern)
    max_obs = max(q.max_count(tr.n_times, tr.state_shape) for q in patterns)

    def first_guess(obs):
        return data.gaussian_first_guess(obs, mean, cov, r, max_obs=max_obs)

    # -- training: the neural prior and the unconditional ablation, same budget --
    loss = incremental.make_incremental_loss(
        first_guess, preset.train_pattern, preset.noise_std, levels, max_obs=max_obs
    )
    models, shape = {}, (tr.n_times, tr.state_shape)
    for name, key, conditional in (("model", k_model, 1), ("ablation", k_abl, 0)):
        arch = dict(width=args.width, depth=args.depth, conditional=bool(conditional))
        model = incremental.NeuralBandGaussian(*shape, key=key, **arch)
        print(f"\nTraining the {name} ({args.steps} Adam steps):")
        fit = train.fit(
            model,
            loss,
            tr.truth,
            key=k_fit,
            n_steps=args.steps,
            batch_size=min(args.batch_size, tr.n_windows),
            optimizer=optax.adam(1e-3),
            progress=not args.no_progress,
            print_every=max(args.steps // 4, 1),
        )
        io.save_model(args.out / f"{name}.eqx", fit.model)
        models[name] = io.load_model(args.out / f"{name}.eqx")  # as a user would

    # -- 4DVar in original units (the dynamics' units; model error N(0, dt I)) --
    flow = flow_map(preset.model, preset.dt, "rk4")
    obs_var = (preset.noise_std * norm.std) ** 2  # noise 0.05 in normalised units
    model_var, steps = preset.process_noise_std**2, args.fourdvar_steps
    solver = var.GaussNewton(rtol=1e-6, atol=1e-9)

    def fourdvar(z, obs):
        problem = var.WeakConstraint4DVar(
            flow, norm.invert_obs(obs), obs_var, model_var
        )
        sol = var.solve(problem, solver, norm.invert(z), max_steps=steps, throw=False)
        return norm.apply(sol.x), sol.n_steps

    def neural(name):
        def run(obs):
            sol = incremental.incremental_assimilation(
                models[name], first_guess(obs), obs, r, levels, max_obs=max_obs,
                throw=False,
            )  # fmt: skip
            return sol.x

        return run

    # -- evaluation: each method maps observations to an estimate (vmapped, jitted) --
    methods = {
        "first guess": first_guess,
        "4DVar": lambda obs: fourdvar(first_guess(obs), obs),
        "cold diffusion": neural("ablation"),
        "neural incremental": neural("model"),
        "neural + 4DVar": lambda obs: fourdvar(neural("model")(obs), obs),
    }
    rows, estimates = {}, {}
    for name, method in methods.items():
        fn = jax.jit(jax.vmap(method))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(te.obs))  # compile and run
        t1 = time.perf_counter()
        est = jax.block_until_ready(fn(te.obs))
        run_s = time.perf_counter() - t1
        row = {"run_s": run_s, "compile_s": max(t1 - t0 - run_s, 0.0)}
        if isinstance(est, tuple):  # 4DVar: (estimate, Gauss-Newton iterations)
            est, n_steps = est
            row["gn_iterations"] = float(jnp.mean(n_steps))
        err = float(metrics.mse(est, te.truth))
        rows[name] = {"mse": err, "rmse": err**0.5, **row}
        estimates[name] = est

    print(f"\nTest set: {te.n_windows} windows; MSE / RMSE in normalised units;")
    print("time per window after compilation, relative to cold diffusion.")
    print(
        f"{'method':<20}{'MSE':>8}{'RMSE':>8}{'ms/window':>11}{'rel. time':>11}"
        f"{'GN its':>8}{'compile s':>11}"
    )
    for name, row in rows.items():
        its = f"{row['gn_iterations']:.1f}" if "gn_iterations" in row else ""
        print(
            f"{name:<20}{row['mse']:>8.3f}{row['rmse']:>8.3f}"
            f"{1e3 * row['run_s'] / te.n_windows:>11.3f}"
            f"{row['run_s'] / rows['cold diffusion']['run_s']:>11.1f}"
            f"{its:>8}{row['compile_s']:>11.1f}"
        )

    figure = None
    shown = ("first guess", "4DVar", "neural incremental")
    try:
        fig = plot.trajectories(
            te.truth, te.obs, {k: estimates[k] for k in shown}, time=te.time
        )
        figure = str(plot.save_figure(fig, args.out / "trajectories.png"))
    except ImportError as e:  # matplotlib is the `plot` extra
        print(f"{e} No figure.")
    results = {
        "n_train": tr.n_windows,
        "n_test": te.n_windows,
        "units": "MSE/RMSE normalised, all test entries; run_s: whole test set",
        "rows": rows,
        "figure": figure,
    }
    io.save_json(args.out / "results.json", results)
    print(f"\nSaved results.json, model.eqx, ablation.eqx, figure in {args.out}/")
    return results


if __name__ == "__main__":
    main()
