r"""Motion 4DVar on [FBC23]'s shallow-water basin: the velocity from observed heights.

    python benchmarks/run.py --suite full --only motion --out results.json
    python benchmarks/bench_motion.py --n-test 8            # a quick look

The problem (`motion-sw64`): `jaxda.motion.basin_motion_samples` ([FBC23]'s set-up:
64 x 64 closed basin, forward-backward shallow water, a random bump spun up 1000
steps, a window of 10 states, the height observed at steps 0, 3, 6, 9 with noise
0.05); the control is the whole initial state $(\eta, u, v)$ from [FBC23]'s first
guess (the first observed height, zero velocity), no background term. Test samples
come from one key, validation samples from another (the penalty weights are chosen on
the validation samples only).

Methods (`method`):

- `4dvar-fbc23-250`, `4dvar-penalised-fbc23-250`: [FBC23]'s optimiser as their code
  runs it: L-BFGS with a fixed step 0.75 along the direction (no line search),
  history 100, at most 250 iterations, stopped by its tolerances (max gradient
  1e-7, cost change 1e-9, step 1e-9) on their cost's scale (their cost is ours times
  $2\sigma^2/N$, `fbc23_weights`); the penalised run with their weights
  $\alpha = 5\cdot10^3$, $\beta = 5\cdot10^2$ and their zero-padded penalty
  (`convention="authors"`);
- `4dvar-lbfgs-250`, `4dvar-lbfgs-converged`: `jaxda.var.LBFGS` (zoom line search),
  250 iterations, and to its tolerance;
- `4dvar-penalised-lbfgs-250` / `-converged`: with the weights chosen on the
  validation sequences (`jaxda.grid` penalty, `convention="grid"`);
- `4dvar-penalised-authors-weights`: `LBFGS`, 250 iterations, with [FBC23]'s weights
  converted to our cost and their penalty formula;
- `4dvar-weak-...`: weak-constraint 4DVar (control the trajectory, model error
  variance `model_var`);
- `gncg-...`: `jaxda.var.GaussNewtonCG`.

Fields: `epe`, `ae_deg` (the means over test samples of [FBC23]'s per-sample scores,
their `EPE` and `Angular_error`), `grad_norm`, `div_norm` (means of their
`norm_gradw` / `norm_divw`, in grid units), `time_per_sample_s` (median over samples of
one jitted solve, compile excluded), `compile_s`, `iterations` (mean), `n_test`,
`paper_epe`, `paper_ae_deg` ([FBC23], 100 test samples). The machine is shared:
times are noisy.
"""

import argparse
import json
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import record

from jaxda import metrics, motion, var
from jaxda._results import RESULTS
from jaxda.models import rollout
from jaxda.var._solver import AbstractIterativeSolver, AbstractSolverState, tree_max_abs


PROBLEM = "motion-sw64"
PAPER = {  # [FBC23], Table: 100 test samples, EPE / AE (degrees)
    "4dvar": (0.0423, 28.4),
    "penalised": (0.0156, 9.9),
}
PAPER_TRUTH_GRAD_NORM = 1.67
ALPHA, BETA = 5e3, 5e2  # [FBC23]'s penalty weights (their cost's convention)
TEST_KEY, VALIDATION_KEY = 20230, 777


# --- scores: [FBC23]'s per-window EPE / AE / norms (`jaxda.metrics`), per window


def _per_window(score, *fields):
    """`score` of each window of `fields` `(*lead, 2, ny, nx)`: `(*lead,)`."""
    for _ in range(fields[0].ndim - 3):
        score = jax.vmap(score)
    return score(*fields)


def endpoint_error(w, w_hat):
    """EPE of each window (truth `w`, estimate `w_hat`, broadcast together)."""
    w, w_hat = jnp.broadcast_arrays(w, w_hat)
    return _per_window(lambda a, b: metrics.endpoint_error(b, a), w, w_hat)


def angular_error(w, w_hat):
    """AE (degrees) of each window, over the pixels where it is defined."""
    w, w_hat = jnp.broadcast_arrays(w, w_hat)
    return _per_window(lambda a, b: metrics.angular_error(b, a), w, w_hat)


def gradient_norm(w):
    """[FBC23]'s `norm_gradw` of each window (grid units)."""
    return _per_window(metrics.velocity_gradient_norm, w)


def divergence_norm(w):
    """[FBC23]'s `norm_divw` of each window (grid units)."""
    return _per_window(metrics.velocity_divergence_norm, w)


# --- [FBC23]'s optimiser


class _FixedStepState(AbstractSolverState):
    u: jax.Array
    cost: jax.Array
    grad: jax.Array
    opt_state: optax.OptState
    converged: jax.Array


class FBC23LBFGS(AbstractIterativeSolver):
    """L-BFGS with a fixed step along its direction and [FBC23]'s stopping tests.

    Their code's `optim.LBFGS(lr=0.75, max_iter=250)` (history 100, no line search,
    `tolerance_grad=1e-7`, `tolerance_change=1e-9`) on their cost, which is ours
    times `cost_scale` $= 2\\sigma^2/N$: the iterations run on the scaled cost, so
    the first step (the gradient times `lr`, capped at unit length) and the tests are
    theirs; stops when $\\max|g| \\le$ `tol_grad`, or the cost changes by less than
    `tol_change`, or the step is at most `tol_change` (max norm). The direction is
    `optax.lbfgs`'s two-loop recursion (their code skips pairs with
    $s^\\top y \\le 10^{-10}$; optax keeps every pair with $s^\\top y \\ne 0$).
    """

    cost_scale: float
    lr: float = 0.75
    memory_size: int = eqx.field(static=True, default=100)
    tol_grad: float = 1e-7
    tol_change: float = 1e-9
    rtol: float = 0.0
    atol: float = 0.0

    def _optimizer(self):
        return optax.lbfgs(self.lr, memory_size=self.memory_size, linesearch=None)

    def _value_and_grad(self, problem, u):
        return jax.value_and_grad(lambda v: self.cost_scale * problem.cost(v))(u)

    def init(self, problem, u0):
        cost, grad = self._value_and_grad(problem, u0)
        done = tree_max_abs(grad) <= self.tol_grad
        opt_state = self._optimizer().init(u0)
        return _FixedStepState(u0, cost, grad, opt_state, done)

    def step(self, problem, state):
        updates, opt_state = self._optimizer().update(
            state.grad, state.opt_state, state.u
        )
        u = optax.apply_updates(state.u, updates)
        cost, grad = self._value_and_grad(problem, u)
        converged = (
            (tree_max_abs(grad) <= self.tol_grad)
            | (tree_max_abs(updates) <= self.tol_change)
            | (jnp.abs(cost - state.cost) < self.tol_change)
        )
        return _FixedStepState(u, cost, grad, opt_state, converged)

    def terminate(self, problem, state):
        return state.converged, RESULTS.successful


# --- running one method over samples


def _first_guess(problem, flow, obs):
    x_b = motion.first_guess(obs)
    if problem.weak:  # the model trajectory of the first guess
        return rollout(flow, x_b, obs.values.shape[0] - 1)
    return x_b


def make_solve(flow, noise_std, solver, max_steps, *, weak=False, save=False):
    """A jitted `(obs, penalty, model_var) -> (w0_hat, n_steps, result, path)`;
    `path` the velocities of the iterates `(max_steps + 1, 2, ny, nx)` when `save`."""

    def run(obs, penalty, model_var):
        problem = motion.motion_4dvar(
            flow, obs, noise_std, penalty=penalty, weak=weak, model_var=model_var
        )
        sol = var.solve(
            problem,
            solver,
            _first_guess(problem, flow, obs),
            max_steps=max_steps,
            save=var.SaveIterates(cost=False) if save else None,
            throw=False,
        )
        w0 = problem.initial_state(sol.x)[1:3]
        path = None
        if save:
            xs = sol.iterates.x
            path = (xs[:, 0] if weak else xs)[np.asarray(PATH_ITERATIONS), 1:3]
        return w0, sol.n_steps, sol.result, path

    return eqx.filter_jit(run)


def run_method(samples, fn, indices, penalty=None, model_var=None, progress=None):
    """Run `fn` on each sample of `indices`: scores, times and (optionally) paths."""
    w_hat, steps, results, paths, times = [], [], [], [], []
    for k, i in enumerate(indices):
        _, obs = samples.sample(int(i))
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(obs, penalty, model_var))
        times.append(time.perf_counter() - t0)
        w_hat.append(out[0])
        steps.append(int(out[1]))
        results.append(bool(out[2] == RESULTS.successful))
        if out[3] is not None:
            paths.append(out[3])
        if progress is not None:
            progress.update(1)
    run_times = times[1:] if len(times) > 1 else times
    median = float(np.median(run_times))
    w = samples.velocity[np.asarray(indices)]
    w_hat = jnp.stack(w_hat)
    return {
        "w_hat": w_hat,
        "epe_per_sample": np.asarray(endpoint_error(w, w_hat)),
        "ae_per_sample": np.asarray(angular_error(w, w_hat)),
        "grad_norm": float(jnp.mean(gradient_norm(w_hat))),
        "div_norm": float(jnp.mean(divergence_norm(w_hat))),
        "time_per_sample_s": median,
        "compile_s": max(times[0] - median, 0.0),
        "iterations": float(np.mean(steps)),
        "n_successful": int(np.sum(results)),
        "paths": jnp.stack(paths) if paths else None,
    }


def path_scores(samples, indices, paths):
    """EPE / AE of every iterate, averaged over samples: `(n_iterates,)` each."""
    w = samples.velocity[np.asarray(indices)][:, None]
    epe = np.asarray(jnp.mean(endpoint_error(w, paths), axis=0))
    ae = np.asarray(jnp.mean(angular_error(w, paths), axis=0))
    return epe, ae


def _record(name, out, n_test, paper=None, **extra):
    paper_epe, paper_ae = paper if paper is not None else (None, None)
    fields = {
        k: out[k]
        for k in (
            "grad_norm",
            "div_norm",
            "time_per_sample_s",
            "compile_s",
            "iterations",
            "n_successful",
        )
    }
    return record(
        PROBLEM,
        name,
        batch=1,
        epe=float(np.mean(out["epe_per_sample"])),
        ae_deg=float(np.mean(out["ae_per_sample"])),
        epe_std=float(np.std(out["epe_per_sample"])),
        ae_deg_std=float(np.std(out["ae_per_sample"])),
        n_test=n_test,
        paper_epe=paper_epe,
        paper_ae_deg=paper_ae,
        **fields,
        **extra,
    )


# --- the suite

SUITES = {
    # test / validation samples; test (validation) samples of the slow runs, the
    # converged and weak ones; the penalty weights swept on validation, as factors of
    # [FBC23]'s converted weights
    "quick": dict(n_test=4, n_val=0, n_converged=0, n_weak=0, n_val_weak=0),
    "full": dict(
        n_test=100,
        n_val=6,
        n_converged=10,
        n_weak=10,
        n_val_weak=3,
        factors=dict(smoothness=(0.3, 1.0, 3.0), divergence=(0.0, 0.1, 1.0, 10.0)),
    ),
}
MODEL_VARS = (1e-5, 1e-4, 1e-3)  # weak-constraint Q swept on validation
CONVERGED_STEPS = 2000
EARLY_STOP_CANDIDATES = (5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 250)
# the iterates kept of the saved L-BFGS paths (the EPE-vs-iterations curve)
PATH_ITERATIONS = tuple(sorted({0, 1, 2, 5, *EARLY_STOP_CANDIDATES}))


def _progress(total, desc):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    except ImportError:  # tqdm is optional
        return None


def records(
    suite: str, n_test: int | None = None, n_val: int | None = None
) -> Iterator[dict]:
    cfg = dict(SUITES[suite])
    if n_test is not None:
        cfg["n_test"] = n_test
    if n_val is not None:
        cfg["n_val"] = n_val
    n_test, n_val, n_conv = cfg["n_test"], cfg["n_val"], cfg["n_converged"]
    n_conv = min(n_conv, n_test)
    t0 = time.perf_counter()
    test = motion.basin_motion_samples(jax.random.key(TEST_KEY), n_test)
    jax.block_until_ready(test.initial)
    data_s = time.perf_counter() - t0
    flow, grid, sigma = test.flow, test.grid, test.noise_std
    n_entries = int(np.prod(test.obs.values.shape[1:]))
    scale = 2 * sigma**2 / n_entries
    sm_a, dv_a = motion.fbc23_weights(ALPHA, BETA, n_entries=n_entries, noise_std=sigma)
    authors_penalty = motion.MotionPenalty(
        grid, smoothness=sm_a, divergence=dv_a, convention="authors"
    )
    everyone = np.arange(n_test)
    converged_ix = np.arange(n_conv)
    paper_4dvar, paper_pen = PAPER["4dvar"], PAPER["penalised"]
    w = test.velocity
    yield record(
        PROBLEM,
        "truth",
        batch=1,
        grad_norm=float(jnp.mean(gradient_norm(w))),
        div_norm=float(jnp.mean(divergence_norm(w))),
        mean_speed=float(jnp.mean(endpoint_error(w, 0 * w))),
        paper_grad_norm=PAPER_TRUTH_GRAD_NORM,
        n_test=n_test,
        data_s=data_s,
        fbc23_weights_ours=[sm_a, dv_a],
    )
    zero = {"w_hat": 0 * w}
    yield record(
        PROBLEM,
        "first-guess",
        batch=1,
        epe=float(jnp.mean(endpoint_error(w, zero["w_hat"]))),
        n_test=n_test,
        note="zero velocity: the start of every method",
    )

    def go(name, fn, indices, penalty=None, model_var=None, **extra):
        bar = _progress(len(indices), name)
        out = run_method(test, fn, indices, penalty, model_var, bar)
        if bar is not None:
            bar.close()
        return out

    # [FBC23]'s optimiser, unpenalised and with their penalty
    fbc23 = FBC23LBFGS(scale)
    fn = make_solve(flow, sigma, fbc23, 250)
    out = go("4dvar-fbc23-250", fn, everyone)
    yield _record("4dvar-fbc23-250", out, n_test, paper_4dvar)
    out = go("4dvar-penalised-fbc23-250", fn, everyone, authors_penalty)
    yield _record(
        "4dvar-penalised-fbc23-250",
        out,
        n_test,
        paper_pen,
        smoothness=sm_a,
        divergence=dv_a,
        convention="authors",
    )

    # jaxda's L-BFGS, unpenalised: the EPE along the iterations
    lbfgs = var.LBFGS(memory_size=100)
    fn_path = make_solve(flow, sigma, lbfgs, 250, save=True)
    out = go("4dvar-lbfgs-250", fn_path, everyone)
    epe_path, ae_path = path_scores(test, everyone, out["paths"])
    yield _record(
        "4dvar-lbfgs-250",
        out,
        n_test,
        paper_4dvar,
        epe_by_iteration=dict(zip(map(str, PATH_ITERATIONS), map(float, epe_path))),
        ae_by_iteration=dict(zip(map(str, PATH_ITERATIONS), map(float, ae_path))),
    )
    paths = out["paths"]
    del out
    fn = make_solve(flow, sigma, lbfgs, CONVERGED_STEPS)
    if n_conv > 0:
        out = go("4dvar-lbfgs-converged", fn, converged_ix)
        yield _record("4dvar-lbfgs-converged", out, n_conv, paper_4dvar)

    # GN-CG unpenalised: 10 outer iterations of at most 25 CG iterations
    gncg_budget = var.GaussNewtonCG(cg_max_steps=25, cg_rtol=1e-6)
    fn_gn = make_solve(flow, sigma, gncg_budget, 10)
    out = go("gncg-10x25", fn_gn, everyone)
    yield _record("gncg-10x25", out, n_test, paper_4dvar, cg_max_steps=25)

    # [FBC23]'s weights in our cost (their formula), and with the grid's penalty
    fn_pen = make_solve(flow, sigma, lbfgs, 250)
    out = go("4dvar-penalised-authors-weights", fn_pen, everyone, authors_penalty)
    yield _record(
        "4dvar-penalised-authors-weights",
        out,
        n_test,
        paper_pen,
        smoothness=sm_a,
        divergence=dv_a,
        convention="authors",
    )
    grid_authors = motion.MotionPenalty(grid, smoothness=sm_a, divergence=dv_a)
    out = go("4dvar-penalised-authors-weights-grid", fn_pen, everyone, grid_authors)
    yield _record(
        "4dvar-penalised-authors-weights-grid",
        out,
        n_test,
        paper_pen,
        smoothness=sm_a,
        divergence=dv_a,
        convention="grid",
    )
    if n_val == 0:
        return

    # --- validation: early-stopping iteration, penalty weights, model error
    val = motion.basin_motion_samples(jax.random.key(VALIDATION_KEY), n_val)
    val_ix = np.arange(n_val)
    bar = _progress(n_val, "validation: lbfgs path")
    val_out = run_method(val, fn_path, val_ix, progress=bar)
    val_epe, _ = path_scores(val, val_ix, val_out["paths"])
    position = {k: j for j, k in enumerate(PATH_ITERATIONS)}
    k_best = min(EARLY_STOP_CANDIDATES, key=lambda k: val_epe[position[k]])
    w_k = paths[:, position[k_best]]
    yield record(
        PROBLEM,
        "4dvar-lbfgs-early-stopped",
        batch=1,
        epe=float(jnp.mean(endpoint_error(w, w_k))),
        ae_deg=float(jnp.mean(angular_error(w, w_k))),
        grad_norm=float(jnp.mean(gradient_norm(w_k))),
        div_norm=float(jnp.mean(divergence_norm(w_k))),
        iterations=k_best,
        n_test=n_test,
        n_val=n_val,
        validation_epe=float(val_epe[position[k_best]]),
        paper_epe=paper_4dvar[0],
        paper_ae_deg=paper_4dvar[1],
        note="the iterate k of the 4dvar-lbfgs-250 run, k chosen on validation",
    )
    del paths

    sweep = []
    f_s, f_d = cfg["factors"]["smoothness"], cfg["factors"]["divergence"]
    bar = _progress(len(f_s) * len(f_d) * n_val, "validation: penalty weights")
    for a in f_s:
        for b in f_d:
            pen = motion.MotionPenalty(grid, smoothness=a * sm_a, divergence=b * dv_a)
            o = run_method(val, fn_pen, val_ix, pen, progress=bar)
            sweep.append((float(np.mean(o["epe_per_sample"])), a, b))
    if bar is not None:
        bar.close()
    v_epe, a_best, b_best = min(sweep)
    best = motion.MotionPenalty(
        grid, smoothness=a_best * sm_a, divergence=b_best * dv_a
    )
    chosen = dict(
        smoothness=a_best * sm_a,
        divergence=b_best * dv_a,
        convention="grid",
        validation_epe=v_epe,
        n_val=n_val,
        sweep=[
            {"smoothness_factor": a, "divergence_factor": b, "epe": e}
            for e, a, b in sweep
        ],
    )
    out = go("4dvar-penalised-lbfgs-250", fn_pen, everyone, best)
    yield _record("4dvar-penalised-lbfgs-250", out, n_test, paper_pen, **chosen)
    if n_conv == 0:
        return
    out = go("4dvar-penalised-lbfgs-converged", fn, converged_ix, best)
    yield _record("4dvar-penalised-lbfgs-converged", out, n_conv, paper_pen, **chosen)
    out = go("gncg-penalised-10x25", fn_gn, everyone, best)
    yield _record("gncg-penalised-10x25", out, n_test, paper_pen, **chosen)
    gncg = var.GaussNewtonCG(cg_max_steps=200, cg_rtol=1e-6)
    fn_gnc = make_solve(flow, sigma, gncg, 30)
    out = go("gncg-penalised-converged", fn_gnc, converged_ix, best)
    yield _record("gncg-penalised-converged", out, n_conv, paper_pen, **chosen)

    # weak constraint: Q on validation, with the chosen penalty
    n_weak, n_val_weak = min(cfg["n_weak"], n_test), min(cfg["n_val_weak"], n_val)
    if n_weak == 0 or n_val_weak == 0:
        return
    weak_ix, val_weak_ix = np.arange(n_weak), np.arange(n_val_weak)
    fn_weak = make_solve(flow, sigma, lbfgs, 250, weak=True)
    bar = _progress(len(MODEL_VARS) * n_val_weak, "validation: weak Q")
    weak_sweep = []
    for q in MODEL_VARS:
        o = run_method(val, fn_weak, val_weak_ix, best, jnp.asarray(q), progress=bar)
        weak_sweep.append((float(np.mean(o["epe_per_sample"])), q))
    if bar is not None:
        bar.close()
    q_epe, q_best = min(weak_sweep)
    weak = dict(
        model_var=q_best,
        weak_validation_epe=q_epe,
        weak_sweep=[{"model_var": q, "epe": e} for e, q in weak_sweep],
        n_val_weak=n_val_weak,
    )
    name = "4dvar-weak-penalised-lbfgs-250"
    out = go(name, fn_weak, weak_ix, best, jnp.asarray(q_best))
    yield _record(name, out, n_weak, paper_pen, **chosen, **weak)
    name = "4dvar-weak-lbfgs-250"
    out = go(name, fn_weak, weak_ix, None, jnp.asarray(q_best))
    yield _record(name, out, n_weak, paper_4dvar, **weak)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--n-val", type=int, default=None)
    parser.add_argument("--x64", action="store_true")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    for rec in records(args.suite, args.n_test, args.n_val):
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
