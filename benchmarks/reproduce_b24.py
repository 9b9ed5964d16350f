r"""Reproduce [B24]'s Table 1 (neural incremental DA on Lorenz-63 and the pendulum).

    python benchmarks/reproduce_b24.py                    # minutes on a CPU
    python benchmarks/reproduce_b24.py --steps 5000 --train-windows 20000 --latency
    python benchmarks/reproduce_b24.py --preset B24-pendulum

1. Data: the `B24-L63` preset (`jaxda.data`): windows of T = 32 states, dt = 0.025,
   process noise N(0, dt I) per step in original units, each component normalised with
   the training statistics, $u_1$ observed every 8 steps from a random phase with noise
   0.05 (normalised units). Test windows use phases never seen in training.
2. First guess $z_0$: the Gaussian MAP under the empirical mean and covariance of the
   training windows (`jaxda.data.gaussian_first_guess`), solved on the at most
   `max_obs` observed entries of a window (`pattern.max_count`, 4 for B24-L63;
   `--state-space-map` solves the d x d banded / dense systems instead).
3. Training (objective 3.5, `jaxda.train.fit`, a fresh observation process per pair
   and step): the neural band-Gaussian prior (`incremental.NeuralBandGaussian`) and,
   with the same budget, the unconditional cold-diffusion ablation.
4. Evaluation on the test windows: first guess; weak-constraint 4DVar from $z_0$
   (structured Gauss-Newton); cold diffusion; neural incremental (Algorithm 2);
   neural + 4DVar. MSE, RMSE and median window MSE in normalised units; time per
   window of the whole pipeline from the observations, vmapped over the test set,
   after compilation (`_common.time_call`), compile time apart; Gauss-Newton
   iterations; [B24]'s (error, time). `--latency` also times each method on a single
   window (batch 1).
5. Outputs in `--out` (atomic): `results.json`, `model.eqx` and `ablation.eqx`
   (`jaxda.io.load_model`), `trajectories.png` (matplotlib, the `plot` extra).

4DVar runs in original units, where the data have model error $N(0, dt\,I)$ per step;
the observation noise 0.05 was added in normalised units, i.e. variance $(0.05\,
\sigma_c)^2$ in original units. `--preset B24-pendulum` runs the same pipeline on
[B24]'s pendulum (T = 100, the angle observed every 20 steps, noise 0.01, no
normalisation, no model error in the data: 4DVar uses `--model-var`, default 1e-4).
The same script runs unchanged on a GPU. `examples/lorenz63_incremental.py` is the
short version of this experiment.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from _b24 import run_b24


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=("B24-L63", "B24-pendulum"), default="B24-L63")
    p.add_argument("--train-windows", type=int, default=None, help="preset's default")
    p.add_argument("--test-windows", type=int, default=None, help="preset's default")
    p.add_argument("--steps", type=int, default=400, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--levels",
        type=int,
        default=None,
        help="ell (ell + 1 levels; default 5, and 0 (one shot) for the pendulum)",
    )
    p.add_argument(
        "--first-guess",
        choices=("empirical", "analytic"),
        default=None,
        help="z0 = MAP under the training windows' empirical moments, or under the "
        "linearised model's Gauss-Markov prior (default: analytic for the pendulum, "
        "as [B24] section 4.1; empirical for Lorenz-63)",
    )
    p.add_argument(
        "--prior-process-std",
        type=float,
        default=1e-3,
        help="per-step process noise std of the analytic prior (the authors' code: "
        "dt x 0.01)",
    )
    p.add_argument(
        "--cost-target",
        type=float,
        default=None,
        help="neural + 4DVar: stop Gauss-Newton once the 4DVar cost is below this "
        "([B24]: 0.05); default: run to convergence",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument(
        "--bandwidth",
        type=int,
        default=None,
        help="sub-diagonals of the banded factor (default: 2 x state size)",
    )
    p.add_argument(
        "--form",
        choices=("covariance", "precision"),
        default="covariance",
        help="the banded matrix is the prior covariance or precision",
    )
    p.add_argument(
        "--state-space-map",
        action="store_true",
        help="solve the Gaussian MAPs in state space (d x d) instead of on the "
        "observed block",
    )
    p.add_argument("--fourdvar-steps", type=int, default=50, help="GN iteration cap")
    p.add_argument(
        "--model-var",
        type=float,
        default=None,
        help="4DVar model-error variance per step, original units (default: the "
        "preset's process noise variance, 1e-4 when it has none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("outputs/reproduce_b24")
    )
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--latency",
        action="store_true",
        help="also time each method on one window (batch 1; compiles again)",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the experiment; returns the results dict also written to `results.json`."""
    return run_b24(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
