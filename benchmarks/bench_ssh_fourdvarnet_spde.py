r"""The generative 4DVarNet with an SPDE prior ([BF24]) against the OIs, on a Gaussian
non-stationary truth and on QG SSH: reconstructions, estimated parameter fields,
conditional ensembles through the trained solver.

    python benchmarks/run.py --suite full --only ssh_fourdvarnet_spde \
        --out benchmarks/results/cpu-2core-x86_64.full-ssh-fourdvarnet-spde.json
    python benchmarks/bench_ssh_fourdvarnet_spde.py --suite quick     # a quick look

Problems (9 daily states per window, the nadir masks of `bench_ssh_fourdvarnet`'s QG
OSSE, noise 1 cm, train / validation / test windows from independent keys):

- `gmrf-nonstationary<n>-nadir`: windows drawn from `bench_ssh_spde`'s
  non-stationary SPDE ($\alpha = 4$, damping, amplitude and advection varying in
  space, closed square of 1000 km), about 6 cm RMS. The truth is Gaussian: the OI
  with the SPDE that drew it is the optimal estimator.
- `ssh-qg<n>-nadir`: QG SSH on the doubly periodic square (the SPDE prior of the
  networks lives on the closed square over it; the networks pad periodically).

Methods (`method`), all SPDE priors with $\alpha = 4$ in km and days:

- `spde-oi-true` (Gaussian problem): `jaxda.spde.spde_map` with the true SPDE;
  `oi-kernel`: `bench_ssh_spde.oi_row` (kernel OI, scales chosen on validation);
- `spde-oi-start`: the SPDE OI with the stationary prior fitted by maximum
  likelihood on the first `fit_windows` training truths, $\Theta^{(0)}$ of the
  networks below;
- `gd-spde-start`: $K$ gradient steps (step $1/\lambda_{max}$ of the Hessian, by power
  iteration) on the cost of that prior: the untrained solver;
- `4dvarnet-spde-true-prior` (Gaussian problem): `SPDEFourDVarNet` with the true
  $\Theta$ fixed (`update_theta=False`) and a trained ConvLSTM solver, reconstruction
  loss on the window: its gap to `spde-oi-true` is the convergence of 4DVarNet to the
  OI ([BF24], Fig. 6); `history` holds the validation RMSE during training;
- `4dvarnet-spde`: the generative 4DVarNet, $\Theta$ estimated by the solver from
  $\Theta^{(0)}$, trained on the window's MSE plus the truth's negative
  log-likelihood under the estimated prior (`nll_weight`); 200-member conditional
  ensembles through the trained network (`spde_conditional_ensemble`);
- `spde-oi-learned-fields`: the exact SPDE OI with the fields the network estimated
  for each window (a non-stationary prior per window).

Figures in `benchmarks/results/ssh-fourdvarnet-spde/`: a test window's truth,
observations, ensemble mean, members, std and estimated $\log\kappa$; the RMSE per
solver iteration of the true-prior network against gradient descent ($10K$ steps of
$1/L$) and the OI, and its validation RMSE during training (`rmse_by_iteration`
fields hold the curves).

Fields: `rmse` (centre step, metres), `rmse_nrt` (last step), `rmse_window`,
`lambda_x_km` (effective resolution of the centre step); the OI rows score the first
`oi_windows` test windows and their ensembles `oi_members` members on
`oi_ens_windows` (each CG iteration runs the banded recursion twice), the networks all
test windows and `members` members on `ens_windows`; ensemble fields `crps`,
`spread_skill`, `coverage_90` (centre step, pooled over the windows),
`ensemble_time_s` (one window); `rmse_oi_windows` (a network's RMSE on the OI rows'
windows); `time_s` (one window's estimate, median, compile excluded); `train_s`,
`steps`, `parameters`, `n_iter`;
`nll` (test truths' negative log-density per value under the estimated prior,
normalised units); `log_kappa_corr` (Gaussian problem: correlation of the estimated
and the true $\log\kappa$ fields).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import record, time_call
from bench_ssh_fourdvarnet import N_TIMES, NOISE_STD, _resolution_km, make_ssh_osse
from bench_ssh_spde import _km_grid, _true_prior, oi_row

from jaxda import RESULTS, fourdvarnet as fdn, metrics, spde, train
from jaxda.grid import Grid
from jaxda.io import save_json
from jaxda.nn import count_parameters
from jaxda.obs import Observations


CENTRE = N_TIMES // 2
FIGURES = pathlib.Path(__file__).parent / "results" / "ssh-fourdvarnet-spde"
SUITES = {
    "quick": dict(
        n=16, spinup_days=30, n_train=8, n_val=2, n_test=2, steps=4, batch=2,
        n_iter=3, hidden=4, members=8, ens_windows=1, oi_windows=2, oi_members=8,
        oi_ens_windows=1, lr=2e-3, nll_weight=1.0,
        fit_steps=20, fit_windows=8, eval_every=2,
    ),
    "full": dict(
        n=32, spinup_days=180, n_train=128, n_val=16, n_test=32, steps=300, batch=4,
        n_iter=10, hidden=32, members=200, ens_windows=4, oi_windows=4,
        oi_members=50, oi_ens_windows=1, lr=("cosine", 2e-3),
        nll_weight=1.0, fit_steps=150, fit_windows=32, eval_every=100,
    ),
}  # fmt: skip


# ------------------------------------------------------------------ the data
def _split(truth, mask, key, std):
    """Normalised truth, observations (noise `NOISE_STD` metres) and the mask."""
    noise = NOISE_STD * jax.random.normal(key, truth.shape, truth.dtype)
    obs = Observations(jnp.where(mask, (truth + noise) / std, 0.0), mask)
    return {"truth": truth / std, "obs": obs}


def make_problems(cfg):
    """`{problem: (km grid of the prior, splits, std, raw splits, extra)}`."""
    qg_grid, qg = make_ssh_osse(cfg)
    n = cfg["n"]
    closed = _km_grid(Grid(n, n, qg_grid.dy, qg_grid.dx, "closed"))
    problems = {}
    # the Gaussian problem: truths from the non-stationary SPDE, the QG masks
    true_prior = _true_prior(closed)
    raw = {}
    for i, name in enumerate(("train", "validation", "test")):
        n_w = qg[name]["truth"].shape[0]
        raw[name] = true_prior.sample(jax.random.fold_in(jax.random.key(7), i), n_w)
    scale = 0.06 / float(jnp.std(raw["train"]))
    splits, metres = {}, {}
    for i, name in enumerate(("train", "validation", "test")):
        truth, mask = raw[name] * scale, qg[name]["obs"].mask
        splits[name] = _split(
            truth, mask, jax.random.fold_in(jax.random.key(8), i), scale
        )
        metres[name] = {
            "truth": truth,
            "obs": Observations(splits[name]["obs"].values * scale, mask),
        }
    problems[f"gmrf-nonstationary{n}-nadir"] = dict(
        grid=closed, data_grid=Grid(n, n, qg_grid.dy, qg_grid.dx, "closed"),
        splits=splits, std=scale, metres=metres, true_prior=true_prior,
        periodic=False,
    )  # fmt: skip
    mean = float(jnp.mean(qg["train"]["truth"]))
    std = float(jnp.std(qg["train"]["truth"]))
    splits = {}
    for i, name in enumerate(("train", "validation", "test")):
        s = qg[name]
        values = jnp.where(s["obs"].mask, (s["obs"].values - mean) / std, 0.0)
        splits[name] = {
            "truth": (s["truth"] - mean) / std,
            "obs": Observations(values, s["obs"].mask),
        }
    problems[f"ssh-qg{n}-nadir"] = dict(
        grid=closed, data_grid=qg_grid, splits=splits, std=std, metres=qg,
        true_prior=None, periodic=True, mean=mean,
    )  # fmt: skip
    return problems


# ---------------------------------------------------------- the start Theta_0
def fit_start(field_map, truths, steps):
    """The stationary prior (constant $\\kappa$, $\\tau$, $\\gamma$) of maximum
    likelihood on `truths` `(N, T, ny, nx)`: $\\theta^{(0)}$ of the networks."""
    plain = fdn.SPDEFieldMap(
        field_map.grid, field_map.n_times, field_map.dt, alpha=field_map.alpha,
        advection=False, anisotropy=False,
    )  # fmt: skip

    def build(log_values):
        k, t, h = jnp.exp(log_values)
        return plain.prior(plain.fields(kappa=k, tau=t, diffusion=h))

    start = jnp.log(jnp.array([0.3, 1.0, 1000.0]))
    # a run that meets a non-finite value keeps its best finite iterate (recorded)
    fit = spde.fit_maximum_likelihood(build, start, truths, steps=steps, throw=False)
    k, t, h = (float(v) for v in jnp.exp(fit.theta))
    theta = field_map.fields(kappa=k, tau=t, diffusion=h)
    return theta, dict(
        kappa=k, tau=t, h_km2_per_day=h, fit_nll=float(fit.nll),
        fit_steps=int(fit.num_steps),
        fit_successful=bool(fit.result == RESULTS.successful),
    )  # fmt: skip


# -------------------------------------------------------------- estimators
def _banded(field_map, theta):
    """The prior of `theta` with direct (banded LU) solves: the SPDE OI then
    runs CG in the control-variable form."""
    return field_map.prior(theta, solver="banded")


def _rmse_fields(est, truth, std, grid=None) -> dict:
    """RMSEs (metres) and, with the data `grid`, the effective resolution of the
    centre step."""
    sq = (est - truth) ** 2
    extra = {} if grid is None else _resolution_km(est * std, truth * std, grid, CENTRE)
    return extra | dict(
        rmse=float(jnp.sqrt(jnp.mean(sq[:, CENTRE]))) * std,
        rmse_nrt=float(jnp.sqrt(jnp.mean(sq[:, -1]))) * std,
        rmse_window=float(jnp.sqrt(jnp.mean(sq))) * std,
    )


def _ensemble_scores(ens, truth, std) -> dict:
    """`ens` `(members, windows, ny, nx)`, `truth` `(windows, ny, nx)`: normalised."""
    ens, truth = ens * std, truth * std
    return dict(
        crps=float(metrics.crps_ensemble(ens, truth)),
        spread_skill=float(metrics.spread_skill_ratio(ens, truth)),
        coverage_90=float(metrics.interval_coverage(ens, truth, 0.9)),
    )


OI_RTOL = 1e-4  # float32 CG breaks down at 1e-5 on these priors; 1e-4 is far
# below the observation noise


def oi_rows(name, prob, prior, method, cfg, extra) -> dict:
    """The SPDE OI of `prior` on the test windows, with its conditional ensembles."""
    # the first `oi_windows` test windows: each CG iteration runs the recursion
    # (sequential banded solves) twice
    test = jax.tree.map(lambda a: a[: cfg["oi_windows"]], prob["splits"]["test"])
    std = prob["std"]
    var = (NOISE_STD / std) ** 2
    n_test = test["truth"].shape[0]

    @eqx.filter_jit
    def run(p, o):
        sol = spde.spde_map(p, o.values, o.mask, var, rtol=OI_RTOL, throw=False)
        return sol.mean, sol.result

    first = jax.tree.map(lambda a: a[0], test["obs"])
    _, time_s = time_call(run, prior, first, repeats=3)
    # all windows in one batched CG: the banded solves' sequential scans then
    # carry every window at once
    maps, results = eqx.filter_jit(jax.vmap(run, in_axes=(None, 0)))(prior, test["obs"])
    ok = bool(jnp.all(results == RESULTS.successful))

    @eqx.filter_jit
    def ensemble(p, key, o):
        return spde.conditional_ensemble(
            key, p, o.values, o.mask, var, cfg["oi_members"], rtol=OI_RTOL, throw=False
        )

    members = []
    for i in range(cfg["oi_ens_windows"]):
        o = jax.tree.map(lambda a: a[i], test["obs"])
        ens = ensemble(prior, jax.random.key(100 + i), o)
        ok &= bool(ens.result == RESULTS.successful)
        members.append(ens.members[:, CENTRE])
    scores = {}
    if members:
        scores = _ensemble_scores(
            jnp.stack(members, 1), test["truth"][: cfg["oi_ens_windows"], CENTRE], std
        )
    energy = jnp.mean(jax.vmap(prior.energy)(test["truth"]))
    nll = (energy - 0.5 * prior.logdet_precision()) / prior.size
    return record(
        name, method,
        **_rmse_fields(maps, test["truth"], std, prob["data_grid"]),
        **scores,
        time_s=time_s, members=cfg["oi_members"], ens_windows=cfg["oi_ens_windows"],
        n_test=n_test, nll=float(nll),
        successful=ok, cg_rtol=OI_RTOL, **extra,
    )  # fmt: skip


def _lambda_max(cost, theta, obs, x, n_power=50):
    """The largest eigenvalue of the Hessian of $J(\\cdot, \\theta)$ (power
    iteration)."""

    def hvp(v):
        g = jax.grad(lambda z: cost(z, theta, obs))
        return jax.jvp(g, (x,), (v,))[1]

    v = jax.random.normal(jax.random.key(0), x.shape, x.dtype)
    for _ in range(n_power):
        w = hvp(v)
        lam = jnp.vdot(v, w) / jnp.vdot(v, v)
        v = w / jnp.linalg.norm(w)
    return float(lam)


def make_model(prob, cfg, theta0, *, update_theta=True, solver=None, n_iter=None):
    fm = fdn.SPDEFieldMap(prob["grid"], N_TIMES, 1.0, alpha=4)
    var = (NOISE_STD / prob["std"]) ** 2
    cost = fdn.SPDECost(fm, 1 / (2 * var), 1.0)
    if solver is None:
        solver = fdn.AugmentedConvLSTMSolver(
            N_TIMES, fm.n_channels, key=jax.random.key(3), hidden=cfg["hidden"],
            periodic_space=prob["periodic"],
        )  # fmt: skip
    return fdn.SPDEFourDVarNet(
        cost,
        solver,
        theta0,
        n_iter=n_iter or cfg["n_iter"],
        update_theta=update_theta,
        train_theta_init=update_theta,
    )


def network_row(name, prob, model, method, cfg, extra, *, ensembles=True) -> dict:
    test, std = prob["splits"]["test"], prob["std"]
    rec = fdn.spde_reconstruct(model, test["obs"], throw=False)
    one = eqx.filter_jit(lambda m, o: fdn.spde_reconstruct(m, o, throw=False).x)
    first = jax.tree.map(lambda a: a[0], test["obs"])
    _, time_s = time_call(one, model, first, repeats=3)
    fields = dict(
        _rmse_fields(rec.x, test["truth"], std, prob["data_grid"]), time_s=time_s,
        successful=bool(jnp.all(rec.result == RESULTS.successful)),
        n_iter=model.n_iter, n_test=int(test["truth"].shape[0]), **extra,
    )  # fmt: skip
    k = cfg["oi_windows"]
    fields["rmse_oi_windows"] = _rmse_fields(rec.x[:k], test["truth"][:k], std)["rmse"]
    nll = jax.vmap(lambda th, x: fdn.truth_nll(model, th, x))(rec.theta, test["truth"])
    fields["nll"] = float(jnp.mean(nll))
    if prob["true_prior"] is not None and model.update_theta:
        true_log_kappa = jnp.log(prob["true_prior"].params.kappa[0]).reshape(-1)
        est = rec.theta[:, 0].reshape(rec.theta.shape[0], -1)
        if float(jnp.max(jnp.std(est, axis=1))) > 1e-4:  # the fields vary
            corr = [float(jnp.corrcoef(e, true_log_kappa)[0, 1]) for e in est]
            fields["log_kappa_corr"] = float(np.mean(corr))
    if ensembles:
        var = (NOISE_STD / std) ** 2
        members, t0 = [], time.perf_counter()
        for i in range(cfg["ens_windows"]):
            o = jax.tree.map(lambda a: a[i], test["obs"])
            ens = fdn.spde_conditional_ensemble(
                jax.random.key(200 + i), model, o, var, cfg["members"], throw=False
            )
            members.append(ens.members[:, CENTRE])
            if i == 0:
                jax.block_until_ready(ens.members)
                fields["ensemble_time_s"] = time.perf_counter() - t0  # with compile
                plot_window(name, method, prob, o, test["truth"][0], ens)
                t0 = time.perf_counter()
        if cfg["ens_windows"] > 1:
            jax.block_until_ready(members[-1])
            fields["ensemble_time_s"] = (time.perf_counter() - t0) / (
                cfg["ens_windows"] - 1
            )
        fields.update(
            _ensemble_scores(
                jnp.stack(members, 1), test["truth"][: cfg["ens_windows"], CENTRE], std
            ),
            members=cfg["members"],
        )
    return record(name, method, **fields)


def learned_oi_row(name, prob, model, cfg) -> dict:
    """The exact SPDE OI with the network's estimated fields of each window."""
    test = jax.tree.map(lambda a: a[: cfg["oi_windows"]], prob["splits"]["test"])
    std = prob["std"]
    var = (NOISE_STD / std) ** 2
    rec = fdn.spde_reconstruct(model, test["obs"], throw=False)

    @eqx.filter_jit
    def run(theta, o):
        prior = model.field_map.prior(theta, solver="banded")
        sol = spde.spde_map(prior, o.values, o.mask, var, rtol=OI_RTOL, throw=False)
        return sol.mean, sol.result

    maps, results = eqx.filter_jit(jax.vmap(run))(rec.theta, test["obs"])
    ok = bool(jnp.all(results == RESULTS.successful))
    return record(
        name, "spde-oi-learned-fields",
        **_rmse_fields(maps, test["truth"], std, prob["data_grid"]),
        successful=ok, cg_rtol=OI_RTOL, n_test=int(test["truth"].shape[0]),
    )  # fmt: skip


def rmse_by_iteration(prob, model) -> list[float]:
    """Centre-step RMSE (metres) of the iterates $x^{(0)}, \dots, x^{(K)}$."""
    test, std = prob["splits"]["test"], prob["std"]
    paths = eqx.filter_jit(jax.vmap(lambda o: model(o, return_path=True)[2]))(
        test["obs"]
    )  # (N, K + 1, T, ny, nx)
    sq = (paths[:, :, CENTRE] - test["truth"][:, None, CENTRE]) ** 2
    return [float(v) * std for v in jnp.sqrt(jnp.mean(sq, axis=(0, 2, 3)))]


def plot_convergence(name, curves: dict, oi_rmse: float, history) -> None:
    """RMSE per solver iteration, and validation RMSE during training, against the
    OI with the true prior ([BF24], Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxda import plot

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, curve in curves.items():
        a.plot(range(len(curve)), 100 * np.asarray(curve), marker="o", label=label)
    a.axhline(100 * oi_rmse, color="k", ls="--", label="SPDE OI, true prior")
    a.set_xlabel("solver iteration k")
    a.set_ylabel("RMSE, centre day (cm)")
    a.legend(fontsize=7)
    steps = [h["step"] for h in history]
    b.plot(steps, [100 * h["val_rmse"] for h in history], marker="o", label="4DVarNet")
    b.axhline(100 * oi_rmse, color="k", ls="--", label="SPDE OI, true prior")
    b.set_xlabel("training step")
    b.set_ylabel("validation RMSE (cm)")
    b.legend(fontsize=7)
    fig.suptitle(f"{name}: 4DVarNet with the true Gaussian prior", fontsize=9)
    FIGURES.mkdir(parents=True, exist_ok=True)
    plot.save_figure(fig, FIGURES / f"{name}-convergence-to-oi.png")
    plt.close(fig)


def _learning_rate(lr, n_steps):
    if isinstance(lr, tuple):
        return optax.cosine_decay_schedule(lr[1], n_steps, alpha=0.05)
    return lr


def fit_model(prob, model, cfg, *, nll_weight, checkpoint=None):
    """Train `model` with `jaxda.train.fit`; with `checkpoint` (a path) a finished
    run's state is loaded instead of retrained (same configuration)."""
    splits, std = prob["splits"], prob["std"]
    data = {"obs": splits["train"]["obs"], "truth": splits["train"]["truth"]}
    loss = fdn.make_generative_loss(nll_weight=nll_weight)
    val = splits["validation"]

    def eval_fn(m, step):
        x = fdn.spde_reconstruct(m, val["obs"], throw=False).x
        return {"val_rmse": _rmse_fields(x, val["truth"], std)["rmse"]}

    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adam(_learning_rate(cfg["lr"], cfg["steps"])),
    )
    t0 = time.perf_counter()
    out = train.fit(
        model, loss, data, key=jax.random.key(11), n_steps=cfg["steps"],
        batch_size=cfg["batch"], optimizer=opt, eval_fn=eval_fn,
        eval_every=cfg["eval_every"], print_every=50, checkpoint_path=checkpoint,
        checkpoint_every=100 if checkpoint else 0,
        header={k: str(v) for k, v in sorted(cfg.items())} | {"nll": nll_weight},
    )  # fmt: skip
    info = dict(
        train_s=time.perf_counter() - t0, steps=cfg["steps"], batch_size=cfg["batch"],
        n_train=int(data["truth"].shape[0]), parameters=count_parameters(out.model),
        nll_weight=nll_weight, final_train_loss=float(np.mean(out.losses[-20:])),
        train_successful=bool(out.result == RESULTS.successful),
        history=[dict(step=int(step), **{k: float(v) for k, v in m.items()})
                 for step, m in out.history],
    )  # fmt: skip
    return out.model, info


# ------------------------------------------------------------------ figures
def plot_window(name, method, prob, o, truth, ens) -> None:
    """Truth, observations, ensemble mean, std, two members and the estimated
    log-kappa field of one test window (centre step), in metres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxda import plot

    std = prob["std"]
    seen = np.where(np.asarray(o.mask[CENTRE]), np.asarray(o.values[CENTRE]), np.nan)
    panels = [
        ("truth", truth[CENTRE] * std), ("observations", seen * std),
        ("ensemble mean", ens.mean[CENTRE] * std),
        ("member 1", ens.members[0, CENTRE] * std),
        ("member 2", ens.members[1, CENTRE] * std), ("std", ens.std[CENTRE] * std),
        ("estimated log kappa", ens.theta[0]),
    ]  # fmt: skip
    if prob["true_prior"] is not None:
        panels.append(("true log kappa", jnp.log(prob["true_prior"].params.kappa[0])))
    cols = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(2, cols, figsize=(2.8 * cols, 5.4), squeeze=False)
    axes = axes.reshape(-1)
    for ax in axes[len(panels) :]:
        ax.axis("off")
    lim = float(np.nanmax(np.abs(np.asarray(truth[CENTRE] * std))))
    for ax, (title, field) in zip(axes, panels):
        kw = (
            dict(vmin=-lim, vmax=lim)
            if title not in ("std",) and "kappa" not in title
            else {}
        )
        im = ax.imshow(
            np.asarray(field), origin="lower", cmap="RdBu_r" if kw else "viridis", **kw
        )
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{name}: {method}, centre day (m)", fontsize=9)
    FIGURES.mkdir(parents=True, exist_ok=True)
    plot.save_figure(fig, FIGURES / f"{name}-{method}.png")
    plt.close(fig)


# ------------------------------------------------------------------ records
def records(
    suite: str, problems=("gmrf", "qg"), checkpoints=None, **overrides
) -> Iterator[dict]:
    """The rows of each problem; `checkpoints` (a directory) keeps the trained
    networks, so that a rerun evaluates them without training again."""
    cfg = dict(SUITES[suite], **overrides)

    def ckpt(name, method):
        if checkpoints is None:
            return None
        pathlib.Path(checkpoints).mkdir(parents=True, exist_ok=True)
        return pathlib.Path(checkpoints) / f"{suite}-{name}-{method}.eqx"

    t0 = time.perf_counter()
    probs = make_problems(cfg)
    print(f"data: {time.perf_counter() - t0:.0f} s")
    for name, prob in probs.items():
        if not any(p in name for p in problems):
            continue
        metres = prob["metres"]
        data_grid = prob["data_grid"]
        yield oi_row(name, data_grid, metres, cfg)
        fm = fdn.SPDEFieldMap(prob["grid"], N_TIMES, 1.0, alpha=4)
        theta0, fit_info = fit_start(
            fm, prob["splits"]["train"]["truth"][: cfg["fit_windows"]],
            cfg["fit_steps"],
        )  # fmt: skip
        if prob["true_prior"] is not None:
            p = prob["true_prior"].params
            theta_true = fm.fields(
                kappa=p.kappa[0], tau=p.tau[0], diffusion=2000.0,
                advection=p.advection[0],
            )  # fmt: skip
        # the untrained solver: K gradient steps on the start prior's cost
        model = make_model(prob, cfg, theta0)
        first = jax.tree.map(lambda a: a[0], prob["splits"]["test"]["obs"])
        lam = _lambda_max(model.cost, theta0, first, model.first_guess(first))
        gd = make_model(prob, cfg, theta0, solver=fdn.AugmentedGradientDescent(1 / lam))
        gd_curve = rmse_by_iteration(prob, gd)
        yield network_row(
            name, prob, gd, "gd-spde-start", cfg,
            {"step": 1 / lam, "rmse_by_iteration": gd_curve}, ensembles=False,
        )  # fmt: skip
        curves = {}
        if prob["true_prior"] is not None:
            fixed = make_model(prob, cfg, theta_true, update_theta=False)
            fixed, info = fit_model(
                prob, fixed, cfg, nll_weight=0.0,
                checkpoint=ckpt(name, "4dvarnet-spde-true-prior"),
            )  # fmt: skip
            curves["4DVarNet (trained ConvLSTM)"] = rmse_by_iteration(prob, fixed)
            lam_true = _lambda_max(
                fixed.cost, theta_true, first, fixed.first_guess(first)
            )
            gd_true = make_model(
                prob, cfg, theta_true, update_theta=False,
                solver=fdn.AugmentedGradientDescent(1 / lam_true),
                n_iter=10 * cfg["n_iter"],
            )  # fmt: skip
            curves["gradient descent, step 1/L"] = rmse_by_iteration(prob, gd_true)
            yield network_row(
                name, prob, fixed, "4dvarnet-spde-true-prior", cfg,
                dict(info, rmse_by_iteration=curves["4DVarNet (trained ConvLSTM)"],
                     gd_rmse_by_iteration=curves["gradient descent, step 1/L"]),
                ensembles=False,
            )  # fmt: skip
            history = info["history"]
        model, info = fit_model(
            prob, model, cfg, nll_weight=cfg["nll_weight"],
            checkpoint=ckpt(name, "4dvarnet-spde"),
        )  # fmt: skip
        yield network_row(
            name, prob, model, "4dvarnet-spde", cfg, dict(info, **fit_info)
        )
        # the exact SPDE OIs last: each CG iteration runs the banded recursion twice
        yield learned_oi_row(name, prob, model, cfg)
        yield oi_rows(name, prob, _banded(fm, theta0), "spde-oi-start", cfg, fit_info)
        if prob["true_prior"] is not None:
            true_row = oi_rows(
                name, prob, _banded(fm, theta_true), "spde-oi-true", cfg, {}
            )
            yield true_row
            plot_convergence(name, curves, true_row["rmse"], history)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument(
        "--problems", nargs="*", default=("gmrf", "qg"), choices=("gmrf", "qg")
    )
    parser.add_argument("--steps", type=int, help="training steps (the suite's)")
    parser.add_argument("--out", type=pathlib.Path, help="also write the records")
    parser.add_argument(
        "--checkpoints",
        type=pathlib.Path,
        help="keep / reuse the trained networks here",
    )
    args = parser.parse_args(argv)
    overrides = {"steps": args.steps} if args.steps else {}
    recs = []
    for rec in records(args.suite, tuple(args.problems), args.checkpoints, **overrides):
        rec.setdefault("suite", args.suite)
        recs.append(rec)
        print(
            json.dumps(
                {k: v for k, v in rec.items() if k not in ("jax_version", "history")}
            )
        )
        if args.out is not None:
            save_json(args.out, recs, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
