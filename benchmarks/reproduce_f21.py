"""Reproduce [F21]'s Tables 1-2 and Figs. 2/4 (4DVarNet on Lorenz-63 / Lorenz-96).

Trains learned variational costs and solvers on the F21-L63 / F21-L96 presets (smaller
than the paper unless you ask for more), evaluates them beside the 4DVar baselines
(fixed-step gradient descent and structured Gauss-Newton on the true RK4 cost), prints a
table shaped like the paper's (prior x solver x learning scheme: supervised MSE,
unsupervised = the 4DVar cost as loss (eq. 13), semi-supervised = held-out observations
as target), and saves in `--out` the trained models (`model_<system>_<config>.eqx`, see
`jaxda.io.load_model`), the energy-pathway figure (4DVar cost and reconstruction error
against iteration), the table as Markdown (`table_<system>.md`) and a JSON record (with
the run size), all written atomically.

Metrics (all on the test windows):

- R-score: MSE over all state entries in original units (the authors' code).
- 4DVar-score: $0.01\\,\\mathrm{mean}_\\Omega (x - y)^2 +
  \\mathrm{mean}(x - \\Phi_{RK4}(x))^2$ in normalised units (means over the observed
  entries and over all entries: the authors' normalisation of the paper's fixed
  weights).
- ODE-score: $\\overline{(x^{true} - \\Phi(x^{true}))^2}$ of the configuration's prior
  (normalised units; times $t \\ge 1$).

Example (about 10 minutes on 2 CPU cores):

    python benchmarks/reproduce_f21.py --system l63 --n-train 512 --steps 600

Evaluate (or, with `--steps N`, train further) the models of an earlier run:

    python benchmarks/reproduce_f21.py --system l63 --n-train 10000 --n-test 2000 \
        --configs supervised-genn-cnn --init-from benchmarks/results/fourdvarnet/l63 \
        --steps 0

`examples/fourdvarnet_lorenz.py` is the short version of this experiment.
"""

from __future__ import annotations

import argparse
import os

from _f21 import run_f21_system

from jaxda.io import save_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=("l63", "l96", "both"), default="both")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument(
        "--steps", type=int, default=300, help="Adam steps per configuration"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--curriculum",
        type=int,
        nargs="+",
        default=[5, 10, 20],
        help="unrolled iterations K of the training stages (steps split evenly)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start from the models model_<system>_<config>.eqx saved in DIR by an "
        "earlier run (same --seed and --n-train, hence the same normalisation); "
        "--steps 0 only evaluates them",
    )
    p.add_argument("--gd-steps", type=int, default=2000)
    p.add_argument(
        "--model-var",
        type=float,
        default=0.01,
        help="Q of the 4DVar baselines (R = the noise variance 2)",
    )
    p.add_argument(
        "--q-sweep",
        type=float,
        nargs="*",
        default=None,
        help="also Gauss-Newton on the RK4 cost with these model-error variances Q",
    )
    p.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="mode-prior-solver, e.g. supervised-genn-cnn unsupervised-ode-lstm",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=128,
        help="windows vmapped at a time in the timed runs (both methods; on a CPU "
        "the working set then stays in cache)",
    )
    p.add_argument(
        "--reduction",
        choices=("mean", "sum"),
        default=None,
        help="form of the learned cost: means over the observed entries and over all "
        "entries (the authors' Compute_Grad) or sums (default: supervised mean, "
        "unsupervised sum)",
    )
    p.add_argument(
        "--lam-obs",
        type=float,
        default=None,
        help="observation weight of the learned cost (default: unsupervised 0.005 = "
        "Q / R of the 4DVar baseline, fixed; supervised 1, learned)",
    )
    p.add_argument(
        "--gradient-rms",
        choices=("each", "first"),
        default="each",
        help="solvers' gradient normalisation: the RMS at each iteration or at the "
        "first",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="initial gradient scaling (eqs. 11-12; default: unsupervised 0.05, "
        "supervised 1)",
    )
    p.add_argument(
        "--clip-norm", type=float, default=1.0, help="gradient clipping (0: none)"
    )
    p.add_argument(
        "--cnn-architecture",
        choices=("f21", "small"),
        default="f21",
        help="CNN solver: the authors' model_GradUpdate1 or the small one of 0.2.0",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show training progress")
    p.add_argument("--out", default="outputs/reproduce_f21")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    systems = ("l63", "l96") if args.system == "both" else (args.system,)
    out = [run_f21_system(s, args) for s in systems]
    save_json(
        os.path.join(args.out, "results.json"), {"args": vars(args), "results": out}
    )
    print(f"\nwrote {args.out}/results.json, table_*.md, pathways_*.png, model_*.eqx")
    return out


if __name__ == "__main__":
    main()
