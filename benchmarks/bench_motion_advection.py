r"""The tracer-advection motion sweep: noise x gaps, optical flow against motion 4DVar
and learning over 4DVar.

    python benchmarks/run.py --suite full --only motion_advection --out results.json
    python benchmarks/bench_motion_advection.py --suite quick        # a quick look
    python benchmarks/bench_motion_advection.py --figure results.json  # table, figure

The problem (`motion-advection-n{noise}-g{gaps}`): tracer images advected by random
smooth, stationary, divergence-free motions (`jaxda.motion.advection_motion_samples`:
a periodic 32 x 32 grid of unit cells, $\max|\mathbf w| = 1$ cell per unit time,
`SSPRK3` steps of $\Delta t = 0.2$, 10 frames, every frame observed), with noise
$\sigma \in \{0, 0.02, 0.05\}$ and a fraction $g \in \{0, 0.5, 0.8\}$ of the pixels
of each frame missing at random. The samples are generated once without noise or gaps
and each setting observes them with the library's observation model
(`jaxda.obs.observe`, the uniform draw that decides the gaps and the noise draw are
the same in every setting): the nine settings score the same sequences, so the
differences between settings are those of the noise and the gaps, not of the
samples. Test, validation and training sequences come from three different keys.

Methods (`method`), every tuned weight chosen on the validation sequences by EPE:

- `horn-schunck`: `jaxda.motion.horn_schunck` on the observed frames (their masks),
  smoothness $\alpha = f\,\overline{|\nabla I|^2}$ (the mean squared image gradient
  of the validation frames), $f$ from `HS_FACTORS`;
- `lucas-kanade`: `jaxda.motion.lucas_kanade`, window from `LK_WINDOWS` (cells);
- `4dvar-strong-lbfgs`: `jaxda.motion.motion_4dvar`, strong constraint, no penalty,
  `jaxda.var.LBFGS` for `ITERATIONS` iterations from `first_guess`;
- `4dvar-weak-lbfgs`: weak constraint [HBM12], no penalty, $Q = q I$ with $q$ from
  `MODEL_VARS`, from the first guess's model trajectory;
- `4dvar-penalised-lbfgs`: strong constraint with the smoothness penalty
  $\lambda_s = f\,(1 - g)/\sigma^2$ (`MotionPenalty`, grid convention; the data
  term's weight per pixel, so $f$ is dimensionless), $f$ from `PENALTY_FACTORS`;
- `learned-4dvar-loss`: a `MotionNet` for the noise level, trained on the sequences
  of all three gap fractions (its input holds the mask) with the penalised cost of
  each sequence's setting as the loss (no ground truth); on this CPU only for the
  noise levels of the suite's `learned` (the full suite: $\sigma = 0.02$);
- `hybrid-lbfgs`: `hybrid_4dvar`, the same L-BFGS budget on the penalised cost from
  the net's output.

Where the images are noise-free ($\sigma = 0$) the costs use the nominal
$\sigma$ = `NOMINAL_SIGMA` (only the relative weights of the terms matter, and those
are chosen on validation). Fields: `epe`, `ae_deg` (means over the test sequences of
the per-sequence `jaxda.metrics.endpoint_error` / `angular_error`), `epe_std`,
`time_per_sample_s` (median over the sequences of one jitted call, compile
excluded; the machine is shared, times are noisy), `compile_s` (where the call was
compiled), `n_test`, `n_val`, `grid`, `noise_std`, `gap_fraction`, the chosen
weight and the validation sweep.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import device_name, record, write_text

from jaxda import metrics, motion, var
from jaxda.grid import Grid
from jaxda.models import rollout
from jaxda.nn import count_parameters
from jaxda.obs import observe


HERE = pathlib.Path(__file__).resolve().parent
FIGURE = HERE.parent / "docs" / "img" / "motion_advection_sweep.png"
GRID_N = 32
N_TIMES = 10
NOISES = (0.0, 0.02, 0.05)
GAPS = (0.0, 0.5, 0.8)
NOMINAL_SIGMA = 0.01
ITERATIONS = 100
HS_FACTORS = (1e-3, 1e-2, 1e-1, 1.0)
LK_WINDOWS = (1.0, 2.0, 4.0, 8.0)
PENALTY_FACTORS = (3e-3, 3e-2, 3e-1, 3.0)
MODEL_VARS = (1e-5, 1e-4, 1e-3)
TEST_KEY, VALIDATION_KEY, TRAIN_KEY = 2012, 2013, 2014
METHODS = (
    "horn-schunck",
    "lucas-kanade",
    "4dvar-strong-lbfgs",
    "4dvar-weak-lbfgs",
    "4dvar-penalised-lbfgs",
    "learned-4dvar-loss",
    "hybrid-lbfgs",
)

SUITES = {
    "quick": dict(
        settings=((0.02, 0.5),), n_test=2, n_val=1, hs=(1e-1,), lk=(4.0,),
        penalty=(3e-2,), model_var=(1e-4,), learned=(),
    ),
    "full": dict(
        settings=tuple((n, g) for n in NOISES for g in GAPS), n_test=8, n_val=2,
        hs=HS_FACTORS, lk=LK_WINDOWS, penalty=PENALTY_FACTORS, model_var=MODEL_VARS,
        learned=(0.02,), n_train_per_gap=48, steps=300, batch=8, width=8, depth=2,
        lr=3e-3,
    ),
}  # fmt: skip


def problem_name(noise: float, gaps: float) -> str:
    return f"motion-advection-n{noise:g}-g{round(100 * gaps)}"


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# --- data: the sequences once, observed in every setting


def base_samples(key: int, n: int) -> motion.MotionSamples:
    """Noise-free, gap-free sequences: `obs.values[:, :, 0]` is the true tracer."""
    grid = Grid(GRID_N, GRID_N, boundary="periodic")
    return motion.advection_motion_samples(
        jax.random.key(key), n, grid, n_times=N_TIMES, noise_std=0.0
    )


@eqx.filter_jit
def _observe_all(key, truth, noise, gaps):
    """Channel 0 of every frame, each pixel kept where its uniform draw is >= `gaps`,
    with noise of standard deviation `noise`."""
    k_gap, k_noise = jax.random.split(key)
    n, t, c, ny, nx = truth.shape
    kept = jax.random.uniform(k_gap, (n, t, ny, nx)) >= gaps
    mask = jnp.zeros(truth.shape, bool).at[:, :, 0].set(kept)
    keys = jax.random.split(k_noise, n)
    return jax.vmap(lambda k, x, m: observe(k, x, m, noise_std=noise))(
        keys, truth, mask
    )


def observed(base: motion.MotionSamples, noise: float, gaps: float, key: int):
    """`base`'s sequences observed with `noise` and a fraction `gaps` missing."""
    dtype = base.obs.values.dtype
    obs = _observe_all(
        jax.random.key(key),
        base.obs.values,
        jnp.asarray(noise, dtype),
        jnp.asarray(gaps, dtype),
    )
    return motion.MotionSamples(base.initial, obs, base.flow, base.grid, float(noise))


# --- running one estimator over sequences


class Timed:
    """A jitted `fn(obs, *args) -> velocity` run sequence by sequence: its first call
    compiles it (`compile_s` is then reported once)."""

    def __init__(self, fn):
        self.fn = eqx.filter_jit(fn)
        self.compiled = False

    def run(self, samples, *args, desc=None) -> dict:
        w_hat, times = [], []
        bar = _progress(len(samples), desc) if desc else None
        for i in range(len(samples)):
            obs = samples.sample(i)[1]
            t0 = time.perf_counter()
            w_hat.append(jax.block_until_ready(self.fn(obs, *args)))
            times.append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        first_compiles = not self.compiled
        self.compiled = True
        runs = times[1:] if first_compiles and len(times) > 1 else times
        median = float(np.median(runs))
        w_hat = jnp.stack(w_hat)
        w = samples.velocity
        epe = np.asarray(jax.vmap(metrics.endpoint_error)(w_hat, w))
        ae = np.asarray(jax.vmap(metrics.angular_error)(w_hat, w))
        out = dict(
            epe=float(np.mean(epe)), ae_deg=float(np.mean(ae)),
            epe_std=float(np.std(epe)), time_per_sample_s=median,
        )  # fmt: skip
        if first_compiles:
            out["compile_s"] = max(times[0] - median, 0.0)
        return out


def _frames(obs, dt):
    return obs.values[:, 0], obs.mask[:, 0], jnp.arange(obs.values.shape[0]) * dt


def _cost_sigma(noise: float) -> float:
    return noise if noise > 0 else NOMINAL_SIGMA


def estimators(flow, grid):
    """The jitted estimators of the sweep (one compilation each for all settings:
    weights and noise are array arguments)."""
    lbfgs = var.LBFGS()

    def hs(obs, smoothness):
        images, mask, times = _frames(obs, flow.dt)
        return motion.horn_schunck(
            images, smoothness=smoothness, times=times, mask=mask, grid=grid,
            max_steps=4000, throw=False,
        ).velocity  # fmt: skip

    def lk(obs, window):
        images, mask, times = _frames(obs, flow.dt)
        return motion.lucas_kanade(
            images, window_std=window, times=times, mask=mask, grid=grid, throw=False
        ).velocity

    def strong(obs, sigma, smoothness):
        penalty = motion.MotionPenalty(grid, smoothness=smoothness)
        problem = motion.motion_4dvar(flow, obs, sigma, penalty=penalty)
        sol = var.solve(
            problem, lbfgs, motion.first_guess(obs), max_steps=ITERATIONS, throw=False
        )
        return sol.x[1:3]

    def weak(obs, sigma, model_var):
        problem = motion.motion_4dvar(flow, obs, sigma, weak=True, model_var=model_var)
        x0 = rollout(flow, motion.first_guess(obs), obs.values.shape[0] - 1)
        sol = var.solve(problem, lbfgs, x0, max_steps=ITERATIONS, throw=False)
        return problem.initial_state(sol.x)[1:3]

    def hybrid(obs, net, sigma, smoothness):
        penalty = motion.MotionPenalty(grid, smoothness=smoothness)
        problem = motion.motion_4dvar(flow, obs, sigma, penalty=penalty)
        sol = motion.hybrid_4dvar(
            net, problem, lbfgs, obs=obs, max_steps=ITERATIONS, throw=False
        )
        return sol.x[1:3]

    def learned(obs, net):
        return net(obs)[1:3]

    names = ("hs", "lk", "strong", "weak", "hybrid", "learned")
    fns = (hs, lk, strong, weak, hybrid, learned)
    return {name: Timed(fn) for name, fn in zip(names, fns)}


def _choose(est, val, candidates, make_args, desc):
    """The candidate of lowest validation EPE, and the sweep."""
    sweep = []
    for c in candidates:
        out = est.run(val, *make_args(c), desc=f"{desc} {c:g} (validation)")
        sweep.append({"value": float(c), "epe": out["epe"]})
    best = min(sweep, key=lambda s: s["epe"])
    return best["value"], sweep


def _penalty_weight(factor: float, noise: float, gaps: float) -> float:
    return factor * (1.0 - gaps) / _cost_sigma(noise) ** 2


# --- the suite


def records(suite: str) -> Iterator[dict]:
    cfg = SUITES[suite]
    t0 = time.perf_counter()
    base_test = base_samples(TEST_KEY, cfg["n_test"])
    base_val = base_samples(VALIDATION_KEY, cfg["n_val"])
    base_train = None
    if cfg["learned"]:  # the noise levels with a learned estimator
        base_train = base_samples(TRAIN_KEY, cfg["n_train_per_gap"])
    jax.block_until_ready((base_test.initial, base_val.initial))
    data_s = time.perf_counter() - t0
    flow, grid = base_test.flow, base_test.grid
    est = estimators(flow, grid)
    w = base_test.velocity
    zero_epe = float(jnp.mean(jax.vmap(metrics.endpoint_error)(0 * w, w)))
    grad_sq = float(
        jnp.mean(
            jnp.sum(
                jnp.stack(jnp.gradient(base_val.obs.values[:, :, 0], axis=(-2, -1)))
                ** 2,
                axis=0,
            )
        )
    )
    common = dict(
        batch=1, n_test=cfg["n_test"], n_val=cfg["n_val"], grid=f"{GRID_N}x{GRID_N}",
        n_times=N_TIMES, dt=float(flow.dt), zero_velocity_epe=zero_epe,
    )  # fmt: skip
    out_records = []

    def emit(noise, gaps, method, out, **extra):
        rec = record(
            problem_name(noise, gaps), method, **common, noise_std=noise,
            gap_fraction=gaps, **out, **extra,
        )  # fmt: skip
        out_records.append(rec)
        return rec

    by_noise = {}
    for noise, gaps in cfg["settings"]:
        by_noise.setdefault(noise, []).append(gaps)
    for noise, gap_list in by_noise.items():
        sigma = _cost_sigma(noise)
        s_arr = jnp.asarray(sigma)
        chosen_penalty = {}
        for gaps in gap_list:
            test = observed(base_test, noise, gaps, TEST_KEY + 1)
            val = observed(base_val, noise, gaps, VALIDATION_KEY + 1)
            tag = problem_name(noise, gaps)
            # optical flow
            f_hs, sweep = _choose(
                est["hs"], val, cfg["hs"],
                lambda f: (jnp.asarray(f * grad_sq),), f"{tag} HS f=",
            )  # fmt: skip
            out = est["hs"].run(test, jnp.asarray(f_hs * grad_sq))
            yield emit(
                noise, gaps, "horn-schunck", out, smoothness=f_hs * grad_sq,
                smoothness_factor=f_hs, mean_squared_image_gradient=grad_sq,
                validation_sweep=sweep,
            )  # fmt: skip
            window, sweep = _choose(
                est["lk"], val, cfg["lk"], lambda s: (jnp.asarray(s),), f"{tag} LK"
            )
            out = est["lk"].run(test, jnp.asarray(window))
            yield emit(
                noise, gaps, "lucas-kanade", out, window_std=window,
                validation_sweep=sweep,
            )  # fmt: skip
            # 4DVar: strong, weak, penalised
            out = est["strong"].run(test, s_arr, jnp.asarray(0.0), desc=f"{tag} strong")
            yield emit(
                noise, gaps, "4dvar-strong-lbfgs", out, iterations=ITERATIONS,
                cost_sigma=sigma,
            )  # fmt: skip
            q, sweep = _choose(
                est["weak"], val, cfg["model_var"],
                lambda q: (s_arr, jnp.asarray(q)), f"{tag} weak Q",
            )  # fmt: skip
            out = est["weak"].run(test, s_arr, jnp.asarray(q), desc=f"{tag} weak")
            yield emit(
                noise, gaps, "4dvar-weak-lbfgs", out, iterations=ITERATIONS,
                cost_sigma=sigma, model_var=q, validation_sweep=sweep,
            )  # fmt: skip
            f_pen, sweep = _choose(
                est["strong"], val, cfg["penalty"],
                lambda f: (s_arr, jnp.asarray(_penalty_weight(f, noise, gaps))),
                f"{tag} penalty f=",
            )  # fmt: skip
            lam = _penalty_weight(f_pen, noise, gaps)
            chosen_penalty[gaps] = lam
            out = est["strong"].run(
                test, s_arr, jnp.asarray(lam), desc=f"{tag} penalised"
            )
            yield emit(
                noise, gaps, "4dvar-penalised-lbfgs", out, iterations=ITERATIONS,
                cost_sigma=sigma, smoothness=lam, smoothness_factor=f_pen,
                validation_sweep=sweep,
            )  # fmt: skip
        if noise not in cfg["learned"]:
            continue
        yield from _learned_rows(
            cfg,
            noise,
            gap_list,
            chosen_penalty,
            est,
            (base_test, base_train),
            emit,
            flow,
            grid,
        )
    yield record(
        "motion-advection", "data", **common, data_s=data_s,
        note="the test and validation sequences (noise-free, gap-free) generated once",
    )  # fmt: skip
    if suite == "full":
        path = HERE / "results" / f"{device_name()}.full-motion-advection.json"
        write_outputs(out_records, path.with_suffix(".md"), FIGURE)
    else:
        print(table(out_records))


def _learned_rows(cfg, noise, gap_list, chosen_penalty, est, bases, emit, flow, g):
    """Train one `MotionNet` for the noise level on all its gap fractions, then score
    it and the hybrid in each setting."""
    sigma = _cost_sigma(noise)
    base_test, base_train = bases
    parts = [observed(base_train, noise, gaps, TRAIN_KEY + 1 + k) for k, gaps in
             enumerate(gap_list)]  # fmt: skip
    initial = jnp.concatenate([p.initial for p in parts])
    obs = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *[p.obs for p in parts])
    kept = jnp.asarray([1.0 - gaps for gaps in gap_list])
    weights = jnp.asarray([chosen_penalty[gaps] for gaps in gap_list])

    def problem_fn(o):
        # each sequence's own setting, told by its observed fraction
        fraction = jnp.mean(o.mask[:, 0])
        lam = weights[jnp.argmin(jnp.abs(kept - fraction))]
        penalty = motion.MotionPenalty(g, smoothness=lam)
        return motion.motion_4dvar(flow, o, sigma, penalty=penalty)

    net0 = motion.MotionNet(
        obs.values.shape[1:], key=jax.random.key(0), width=cfg["width"],
        depth=cfg["depth"], control_scale=(1.0, 0.5, 0.5),
    )  # fmt: skip
    t0 = time.perf_counter()
    net, result = motion.train_motion_net(
        net0, (initial, obs), motion.fourdvar_loss(problem_fn),
        key=jax.random.key(1), n_steps=cfg["steps"], batch_size=cfg["batch"],
        learning_rate=cfg["lr"],
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    training = dict(
        train_s=train_s, n_train=int(initial.shape[0]), steps=cfg["steps"],
        batch_size=cfg["batch"], learning_rate=cfg["lr"], width=cfg["width"],
        depth=cfg["depth"], parameters=count_parameters(net),
        final_train_loss=float(np.mean(result.losses[-10:])),
        trained_on_gaps=list(gap_list),
    )  # fmt: skip
    for gaps in gap_list:
        test = observed(base_test, noise, gaps, TEST_KEY + 1)
        tag = problem_name(noise, gaps)
        lam = chosen_penalty[gaps]
        out = est["learned"].run(test, net)
        yield emit(noise, gaps, "learned-4dvar-loss", out, smoothness=lam, **training)
        out = est["hybrid"].run(
            test, net, jnp.asarray(sigma), jnp.asarray(lam), desc=f"{tag} hybrid"
        )
        yield emit(
            noise, gaps, "hybrid-lbfgs", out, iterations=ITERATIONS, smoothness=lam,
            cost_sigma=sigma,
        )  # fmt: skip


# --- the table and the figure


def _deg(ae) -> str:
    # undefined where the estimate is zero everywhere (no direction)
    return "n/a" if ae is None or not np.isfinite(ae) else f"{ae:.1f}"


def table(recs) -> str:
    """Markdown: one row per method, one column per setting, `EPE / AE`."""
    recs = [r for r in recs if r["method"] in METHODS]
    settings = sorted({(r["noise_std"], r["gap_fraction"]) for r in recs})
    cell = {(r["method"], r["noise_std"], r["gap_fraction"]): r for r in recs}
    head = "| method | " + " | ".join(
        f"σ {n:g}, gaps {round(100 * g)} %" for n, g in settings
    )
    lines = [head + " |", "|---" * (len(settings) + 1) + "|"]
    for m in METHODS:
        cells = []
        for n, g in settings:
            r = cell.get((m, n, g))
            cells.append("" if r is None else f"{r['epe']:.3f} / {_deg(r['ae_deg'])}")
        if any(cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if recs:
        r = recs[0]
        lines.append("")
        lines.append(
            f"EPE (cells per unit time) / AE (degrees), mean over {r['n_test']} test "
            f"sequences, {r['grid']} periodic grid, {r['n_times']} frames; zero "
            f"velocity: EPE {r['zero_velocity_epe']:.3f}. AE n/a: the estimate is "
            "zero on every pixel of some sequence (no direction)."
        )
    return "\n".join(lines) + "\n"


def figure(recs, path) -> None:
    """EPE and AE against the gap fraction, one line per method, one panel per noise
    level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in recs if r["method"] in METHODS]
    noises = sorted({r["noise_std"] for r in recs})
    fig, axes = plt.subplots(
        2, len(noises), figsize=(4 * len(noises), 6.5), squeeze=False, sharex=True
    )
    for j, noise in enumerate(noises):
        for m in METHODS:
            rows = sorted(
                (r for r in recs if r["method"] == m and r["noise_std"] == noise),
                key=lambda r: r["gap_fraction"],
            )
            if not rows:
                continue
            g = [100 * r["gap_fraction"] for r in rows]
            axes[0, j].plot(g, [r["epe"] for r in rows], "o-", label=m)
            axes[1, j].plot(g, [r["ae_deg"] for r in rows], "o-", label=m)
        zero = recs[0]["zero_velocity_epe"]
        axes[0, j].axhline(zero, color="grey", ls=":", label="zero velocity")
        axes[0, j].set_title(f"noise σ = {noise:g}")
        axes[1, j].set_xlabel("missing pixels (%)")
    axes[0, 0].set_ylabel("EPE")
    axes[1, 0].set_ylabel("angular error (deg)")
    legend = {}  # every method once, from whichever panel has it
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, h)
    fig.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=8
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    from jaxda.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_outputs(recs, table_path, figure_path) -> None:
    text = table(recs)
    print(text)
    write_text(table_path, text)
    figure(recs, figure_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument(
        "--figure", type=pathlib.Path, default=None,
        help="a JSON of records: write its table (next to it) and the figure",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.figure is not None:
        recs = json.loads(args.figure.read_text())
        write_outputs(recs, args.figure.with_suffix(".md"), FIGURE)
        return 0
    for rec in records(args.suite):
        print(json.dumps({k: v for k, v in rec.items() if k != "jax_version"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
