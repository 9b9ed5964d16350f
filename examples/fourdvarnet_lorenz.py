r"""4DVarNet [F21] on Lorenz-63 or Lorenz-96: train, save, compare with 4DVar.

    python examples/fourdvarnet_lorenz.py --system l63          # minutes on a CPU
    python examples/fourdvarnet_lorenz.py --system l96 --n-times 20

The steps of the tutorial `docs/tutorials/fourdvarnet_lorenz96.md` on the F21-L63 /
F21-L96 presets (smaller than the paper): normalise the windows with the training
statistics, train a 4DVarNet (GENN prior, CNN or ConvLSTM solver) supervised through a
curriculum of unrolled iterations, save and reload it, and compare on the test windows
with the interpolated observations and with weak-constraint 4DVar (structured
Gauss-Newton on the true RK4 cost, R = the noise variance, Q = `--model-var`). The
table gives the MSE in original units (the paper's R-score) and the time per window
(vmapped over the test set, after compilation).

Outputs in `--out`: `model.eqx` (`jaxda.io.load_model`) and `results.json`. The
paper-reproduction harness (every configuration of Tables 1-2 with the paper's
numbers, FSGD, energy pathways, `--init-from`) is `benchmarks/reproduce_f21.py`.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp

import jaxda.fourdvarnet as fdn
from jaxda import data, io, metrics, var
from jaxda.models import flow_map


SYSTEMS = {  # prior and solver sizes of each system
    "l63": dict(preset="F21-L63", layout="channels", width=10, kernel=5, pool=4),
    "l96": dict(preset="F21-L96", layout="field", width=8, kernel=3, pool=2),
}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--system", choices=tuple(SYSTEMS), default="l63")
p.add_argument("--n-train", type=int, default=256)
p.add_argument("--n-test", type=int, default=64)
p.add_argument("--n-times", type=int, default=None, help="window length (preset's)")
p.add_argument("--steps", type=int, default=300, help="Adam steps in all")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--curriculum", type=int, nargs="+", default=[5, 10, 20])
p.add_argument("--solver", choices=("cnn", "lstm"), default="cnn")
p.add_argument("--gn-steps", type=int, default=20, help="Gauss-Newton cap")
p.add_argument("--model-var", type=float, default=0.01, help="Q of 4DVar")
p.add_argument("--out", type=pathlib.Path, default="outputs/fourdvarnet_lorenz")


def main(argv=None) -> dict:
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = SYSTEMS[args.system]
    k_prior, k_solver, k_fit = jax.random.split(jax.random.key(0), 3)

    # -- data, normalised with the training statistics --
    window = {"n_times": args.n_times} if args.n_times else {}
    preset = data.get_preset(cfg["preset"], **window)
    tr, te = data.make_preset_splits(
        preset, 0, n_train=args.n_train, n_test=args.n_test
    )
    norm = data.Normalisation.fit(tr.truth)
    print(f"{preset.name}: {tr.n_windows} train / {te.n_windows} test windows")

    # -- the model: a GENN prior and a learned gradient solver --
    shape, field = preset.model.state_shape, cfg["layout"] == "field"
    prior = fdn.GENN(
        shape,
        key=k_prior,
        layout=cfg["layout"],
        width=cfg["width"],
        kernel_size=cfg["kernel"],
        pool=cfg["pool"],
        periodic_space=field,
    )
    Solver = fdn.ConvLSTMSolver if args.solver == "lstm" else fdn.CNNSolver
    solver = Solver(shape, key=k_solver, layout=cfg["layout"], periodic_space=field)
    cost = fdn.VariationalCost(prior, 0.01, 1.0)  # the paper's initial weights
    model = fdn.FourDVarNet(cost, solver, n_iter=args.curriculum[0])

    # -- supervised training through the curriculum of unrolled iterations --
    stages = fdn.default_curriculum(
        args.steps, learning_rate=3e-3, iterations=tuple(args.curriculum)
    )
    fit = fdn.fit_fourdvarnet(
        model,
        fdn.make_training_data(norm.apply_obs(tr.obs), norm.apply(tr.truth)),
        key=k_fit,
        batch_size=min(args.batch, tr.n_windows),
        stages=stages,
        prior_weight=0.1,
        clip_norm=1.0,
        progress=False,
    )
    print(f"training loss: first {fit.losses[0]:.3f}, last {fit.losses[-1]:.3f}")
    io.save_model(args.out / "model.eqx", fit.model)
    model = io.load_model(args.out / "model.eqx")  # as a user would

    # -- evaluation on the test windows (original units) --
    fill = norm.mean  # never-observed components start at the training mean

    def interpolation(obs):
        return data.interpolate_observations(obs, fill)

    flow = flow_map(preset.model, preset.dt)

    def fourdvar(obs):
        problem = var.WeakConstraint4DVar(
            flow, obs, preset.noise_std**2, args.model_var
        )
        sol = var.solve(
            problem,
            var.GaussNewton(),
            interpolation(obs),
            max_steps=args.gn_steps,
            throw=False,
        )
        return sol.x, sol.n_steps

    def fourdvarnet(obs):  # the batch entry point: normalise, assimilate, invert
        sol = fdn.assimilate_batch(model, norm.apply_obs(obs))
        return norm.invert(sol.x)

    methods = {
        "interpolation": jax.jit(jax.vmap(interpolation)),
        "4DVar (Gauss-Newton)": jax.jit(jax.vmap(fourdvar)),
        f"4DVarNet (K={model.n_iter})": fourdvarnet,
    }
    print(f"\n{'method':<24}{'MSE':>8}{'ms/window':>11}{'iterations':>12}")
    rows = {}
    for name, fn in methods.items():
        jax.block_until_ready(fn(te.obs))  # compile
        t0 = time.perf_counter()
        est = jax.block_until_ready(fn(te.obs))
        run_s = time.perf_counter() - t0
        row = {}
        if isinstance(est, tuple):  # 4DVar: (estimate, iterations)
            est, n_steps = est
            row["iterations"] = float(jnp.mean(n_steps))
        rows[name] = {"mse": float(metrics.mse(est, te.truth)), "run_s": run_s, **row}
        its = f"{row['iterations']:>12.1f}" if row else ""
        ms = 1e3 * run_s / te.n_windows
        print(f"{name:<24}{rows[name]['mse']:>8.3f}{ms:>11.3f}{its}")

    results = {
        "system": preset.name,
        "n_train": tr.n_windows,
        "n_test": te.n_windows,
        "train_steps": sum(st.n_steps for st in stages),
        "final_loss": float(fit.losses[-1]),
        "units": "MSE in original units over all test entries; run_s: test set",
        "rows": rows,
    }
    io.save_json(args.out / "results.json", results)
    print(f"\nSaved model.eqx and results.json in {args.out}/")
    return results


if __name__ == "__main__":
    main()
