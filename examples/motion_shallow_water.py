"""Motion from shallow-water heights: 4DVar, penalised 4DVar and learning over 4DVar.

The set-up of Filoche et al. [FBC23]: a non-rotating shallow-water basin (64 x 64
nodes over 1000 km, H = 100 m), a random Gaussian bump spun up for 1000 steps, then a
10-step window whose height is observed at steps 0, 3, 6 and 9 with noise 0.05 m. The
initial velocity is never observed; it is recovered by

- strong-constraint 4DVar (L-BFGS), unpenalised: an ill-posed problem, regularised by
  the number of iterations (chosen on validation windows);
- 4DVar with smoothness and divergence penalties, their weights chosen on validation
  windows among multiples of [FBC23]'s;
- learning over 4DVar: a UNet from the observed heights to the initial state, trained
  with the penalised 4DVar cost of its output as the loss (no ground truth);
- the hybrid: 4DVar started from the network's output.

Prints the end-point and angular errors on the test windows beside [FBC23]'s table and
writes `results.json` and a map of the true and estimated motions. The default runs in
a few minutes on a 2-core CPU; `--train 512 --steps 1500 --test 100` is the size of
the benchmark (`benchmarks/bench_motion_learned.py`).
"""

import argparse
import pathlib
import time

import jax
import numpy as np

from jaxda import io, metrics, motion, plot, var


PAPER = {  # [FBC23], 100 test windows: EPE (m/s), angular error (degrees)
    "4DVar": (0.0423, 28.4),
    "penalised 4DVar": (0.0156, 9.9),
    "deep prior": (0.0455, 26.7),
}
ALPHA, BETA = 5e3, 5e2  # [FBC23]'s penalty weights, in their cost's convention


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=64, help="training windows (64)")
    p.add_argument("--val", type=int, default=4, help="validation windows (4)")
    p.add_argument("--test", type=int, default=8, help="test windows (8)")
    p.add_argument("--steps", type=int, default=300, help="training steps (300)")
    p.add_argument("--width", type=int, default=8, help="UNet width (8)")
    p.add_argument("--iterations", type=int, default=250, help="L-BFGS budget (250)")
    p.add_argument("--hybrid-iterations", type=int, default=20, help="hybrid (20)")
    p.add_argument("--out", default="motion_shallow_water_out", help="output dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def scores(x0, samples):
    """Mean end-point and angular errors of the initial velocities `x0[:, 1:]`."""
    epe = jax.vmap(metrics.endpoint_error)(x0[:, 1:], samples.velocity)
    ae = jax.vmap(metrics.angular_error)(x0[:, 1:], samples.velocity)
    return float(np.mean(epe)), float(np.mean(ae))


def timed(fn, *args):
    """`fn(*args)` after a compiling call, and its seconds (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def main(argv=None):
    args = parse(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k_train, k_val, k_test, k_net, k_fit = jax.random.split(jax.random.key(0), 5)
    train = motion.basin_motion_samples(k_train, args.train)
    val = motion.basin_motion_samples(k_val, args.val)
    test = motion.basin_motion_samples(k_test, args.test)
    flow, grid, sigma = test.flow, test.grid, test.noise_std
    n_entries = int(np.prod(test.obs.values.shape[1:]))
    smooth, div = motion.fbc23_weights(
        ALPHA, BETA, n_entries=n_entries, noise_std=sigma
    )

    def problem(obs, weights):  # the penalty's weights are traced: one compilation
        penalty = motion.MotionPenalty(
            grid, smoothness=weights[0], divergence=weights[1]
        )
        return motion.motion_4dvar(flow, obs, sigma, penalty=penalty)

    def solver(max_steps, save=None):
        def run(obs, weights, x_init):
            return var.solve(problem(obs, weights), var.LBFGS(), x_init,
                             max_steps=max_steps, save=save, throw=False)  # fmt: skip

        return jax.jit(jax.vmap(run, in_axes=(0, None, 0)))

    start_val, start_test = (jax.vmap(motion.first_guess)(s.obs) for s in (val, test))
    solve = solver(args.iterations)
    rows, estimates = {}, {}

    # Unpenalised 4DVar is ill-posed: the iteration count regularises. Choose it on
    # the validation windows from the saved path.
    none = np.zeros(2)
    path = solver(50, var.SaveIterates(cost=False))(val.obs, none, start_val)
    path_epe = [scores(path.iterates.x[:, k], val)[0] for k in range(1, 51)]
    best_k = 1 + int(np.argmin(path_epe))
    sol, s = timed(solver(best_k), test.obs, none, start_test)
    rows[f"4DVar ({best_k} iterations)"] = (*scores(sol.x, test), s / len(test))
    sol, s = timed(solve, test.obs, none, start_test)
    rows[f"4DVar ({args.iterations} iterations)"] = (
        *scores(sol.x, test),
        s / len(test),
    )

    # Penalised 4DVar: weights chosen on the validation windows.
    factors = [(a, b) for a in (1.0, 3.0, 10.0) for b in (1.0, 10.0)]
    weights = {f: np.array([f[0] * smooth, f[1] * div]) for f in factors}
    val_epe = {
        f: scores(solve(val.obs, w, start_val).x, val)[0] for f, w in weights.items()
    }
    best = min(val_epe, key=val_epe.get)
    sol, s = timed(solve, test.obs, weights[best], start_test)
    name = f"penalised 4DVar ({best[0]:g}x, {best[1]:g}x [FBC23]'s weights)"
    rows[name] = (*scores(sol.x, test), s / len(test))
    estimates["penalised 4DVar"] = sol.x[0, 1:]

    # Learning over 4DVar: the penalised cost of the net's output is the loss.
    net = motion.MotionNet(test.obs.values.shape[1:], key=k_net, width=args.width)
    loss = motion.fourdvar_loss(lambda obs: problem(obs, weights[best]))
    t0 = time.perf_counter()
    net, _ = motion.train_motion_net(
        net, train, loss, key=k_fit, n_steps=args.steps, batch_size=8,
        learning_rate=3e-3, progress=not args.no_progress,
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    x_net, s_net = timed(motion.predict, net, test.obs)
    rows["learned (4DVar loss)"] = (*scores(x_net, test), s_net / len(test))
    estimates["learned"] = x_net[0, 1:]
    sol, s = timed(solver(args.hybrid_iterations), test.obs, weights[best], x_net)
    name = f"hybrid (learned + {args.hybrid_iterations} iterations)"
    rows[name] = (*scores(sol.x, test), (s + s_net) / len(test))

    print(f"\n{len(test)} test windows; {args.train} training windows, {train_s:.0f} s")
    print(f"{'method':48s} {'EPE':>8s} {'AE (deg)':>9s} {'s/window':>9s}")
    for name, (epe, ae, s) in rows.items():
        print(f"{name:48s} {epe:8.4f} {ae:9.2f} {s:9.4f}")
    for name, (epe, ae) in PAPER.items():
        print(f"{'[FBC23] ' + name:48s} {epe:8.4f} {ae:9.2f}")
    results = {
        "rows": {n: dict(epe=e, ae_deg=a, time_per_window_s=t)
                 for n, (e, a, t) in rows.items()},
        "paper": {n: dict(epe=e, ae_deg=a) for n, (e, a) in PAPER.items()},
        "n_train": args.train, "n_test": args.test, "train_s": train_s,
        "unpenalised_iterations": best_k, "penalty_factors": list(best),
    }  # fmt: skip
    io.save_json(out / "results.json", results)
    try:
        fig = plot.plot_motion(test.velocity[0], estimates, grid, units="m/s")
        plot.save_figure(fig, out / "motion.png")
    except ImportError:  # matplotlib is the `plot` extra
        pass
    return results


if __name__ == "__main__":
    main()
