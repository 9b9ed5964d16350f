"""Figures of reconstructions, solver pathways, gridded maps, motion fields and PSD
scores (needs matplotlib: the `plot` extra).

The functions build a `matplotlib.figure.Figure` with the object-oriented API (no
`pyplot`, no global backend change) and return it; `save_figure` writes it atomically.

    fig = jaxda.plot.trajectories(test.truth, test.obs, {"4DVar": x_4dvar})
    jaxda.plot.save_figure(fig, "out/trajectories.png")
"""

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from .io import atomic_path
from .obs import Observations


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "jaxda.plot needs matplotlib: pip install 'jaxda[plot]'."
        ) from None
    return Figure(**kwargs)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
    """Save `fig` to `path` atomically (format from the suffix, default PNG).

    **Returns:** the path written."""
    path = pathlib.Path(path)
    fmt = path.suffix[1:] or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


_STYLES = {
    "truth": dict(color="k", lw=2),
    "first guess": dict(color="0.6", ls="--"),
    "4DVar": dict(color="tab:orange"),
    "neural incremental": dict(color="tab:blue"),
}


def trajectories(
    truth,
    obs: Observations,
    estimates: Mapping[str, np.ndarray],
    *,
    time: Sequence[float] | None = None,
    n_windows: int = 3,
    component_names: Sequence[str] | None = None,
):
    r"""Truth, observations and estimates of the first windows, one panel per window
    and state component.

    **Arguments:**

    - `truth`: windows `(N, T, n)`; `obs`: their `Observations` (same shape); the
      observed entries are drawn as dots.
    - `estimates`: name to windows `(N, T, n)` (e.g. `{"4DVar": x}`); the names
      "first guess", "4DVar" and "neural incremental" get fixed styles.
    - `time`: the `T` times (default the indices); `n_windows`: how many windows;
      `component_names`: panel labels (default $u_1, u_2, \dots$).

    **Returns:** a `matplotlib.figure.Figure`.
    """
    truth = np.asarray(truth)
    if truth.ndim != 3:
        raise ValueError(f"`truth` must have shape (N, T, n); got {truth.shape}.")
    if obs.shape != truth.shape:
        raise ValueError(
            f"`obs` must have the shape of `truth` {truth.shape}; got {obs.shape}."
        )
    n_win = min(n_windows, truth.shape[0])
    n_comp = truth.shape[2]
    t = np.arange(truth.shape[1]) if time is None else np.asarray(time)
    names = component_names or [f"$u_{c + 1}$" for c in range(n_comp)]
    fig = _figure(figsize=(4 * n_win, 2.2 * n_comp))
    axes = np.asarray(fig.subplots(n_comp, n_win, sharex=True)).reshape(n_comp, n_win)
    mask, values = np.asarray(obs.mask), np.asarray(obs.values)
    for w in range(n_win):
        for c in range(n_comp):
            ax = axes[c, w]
            ax.plot(t, truth[w, :, c], label="truth", **_STYLES["truth"])
            for name, est in estimates.items():
                style = _STYLES.get(name, {})
                ax.plot(t, np.asarray(est)[w, :, c], lw=1.2, label=name, **style)
            m = mask[w, :, c]
            if m.any():
                ax.plot(t[m], values[w, m, c], "o", color="tab:red", ms=5, label="obs")
            if w == 0:
                ax.set_ylabel(names[c])
            if c == n_comp - 1:
                ax.set_xlabel("time")
        axes[0, w].set_title(f"window {w}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def energy_pathways(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str | None = None,
    cost_label: str = "4DVar cost",
    error_label: str = "MSE",
):
    r"""[F21]'s energy-pathway figure: cost and reconstruction error against the
    iteration, one line per solver (log-log axes, iteration + 1 on the x axis).

    **Arguments:** `curves` maps a solver name to `(iterations, cost, error)`, three
    sequences of equal length (e.g. learned solvers, gradient descent, Gauss-Newton).

    **Returns:** a `matplotlib.figure.Figure`.
    """
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    import matplotlib

    n_colours = len(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
    for i, (name, (its, cost, err)) in enumerate(curves.items()):
        its = np.asarray(its) + 1
        # a new line style each time the colour cycle comes round again
        style = dict(
            marker=".", label=name, linestyle=("-", "--", ":", "-.")[i // n_colours % 4]
        )
        axes[0].plot(its, np.asarray(cost), **style)
        axes[1].plot(its, np.asarray(err), **style)
    for ax, label in zip(axes, (cost_label, error_label)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("iteration + 1")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _field_2d(name: str, value, shape) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"`{name}` must be one field of shape {tuple(shape)} (the grid's (ny, nx));"
            f" got {arr.shape}."
        )
    return arr


def plot_maps(
    truth,
    obs,
    reconstruction,
    grid,
    *,
    titles: Sequence[str] | None = None,
    cmap: str = "viridis",
    error_cmap: str = "RdBu_r",
    label: str | None = None,
    panel_size: float = 3.2,
):
    r"""Maps of one field: truth, observations, reconstruction(s) and their errors.

    Panels from left to right: the truth, the observations (unobserved cells blank:
    NaN), then for each reconstruction the reconstruction and its error
    $\hat x - x$. The truth, the observations and the reconstructions share one colour
    scale (the truth's range); the errors share a symmetric one ($\pm$ the largest
    absolute error).

    **Arguments:**

    - `truth`: one field `(ny, nx)` (pick a time and a channel first).
    - `obs`: the observations of that field: a `jaxda.obs.Observations` of shape
      `(ny, nx)`, an array with NaN where unobserved, or `None` (no panel).
    - `reconstruction`: a field `(ny, nx)`, or a mapping from names (e.g. `"OI"`,
      `"4DVar"`) to fields.
    - `grid`: the `jaxda.grid.Grid` (axis extents and units).
    - `titles`: panel titles in order (default "truth", "observations", the names,
      "error (name)"); `cmap`, `error_cmap`: colour maps; `label`: colour-bar label;
      `panel_size`: inches per panel.

    **Returns:** a `matplotlib.figure.Figure`.
    """
    from .grid import Grid

    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    truth = _field_2d("truth", truth, grid.shape)
    if isinstance(obs, Observations):
        obs = np.where(np.asarray(obs.mask), np.asarray(obs.values, float), np.nan)
    if obs is not None:
        obs = _field_2d("obs", obs, grid.shape)
    if not isinstance(reconstruction, Mapping):
        reconstruction = {"reconstruction": reconstruction}
    recs = {
        n: _field_2d(f"reconstruction[{n!r}]", r, grid.shape)
        for n, r in reconstruction.items()
    }
    panels = [("truth", truth, "field")]
    if obs is not None:
        panels.append(("observations", obs, "field"))
    for name, rec in recs.items():
        panels.append((name, rec, "field"))
        panels.append((f"error ({name})", rec - truth, "error"))
    if titles is not None:
        titles = list(titles)
        if len(titles) != len(panels):
            raise ValueError(
                f"`titles` must give {len(panels)} titles (one per panel); got "
                f"{len(titles)}."
            )
        panels = [(t, f, k) for t, (_, f, k) in zip(titles, panels)]
    vmin, vmax = float(np.nanmin(truth)), float(np.nanmax(truth))
    errors = [f for _, f, k in panels if k == "error"]
    emax = max([float(np.nanmax(np.abs(e))) for e in errors] + [1e-300])
    (ly, lx), (y0, x0) = grid.extent, (grid.y0 - grid.dy / 2, grid.x0 - grid.dx / 2)
    extent = (x0, x0 + lx, y0, y0 + ly)
    fig = _figure(
        figsize=(panel_size * len(panels), panel_size * 1.5), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    import matplotlib

    for ax, (title, field, kind) in zip(axes, panels):
        cm = matplotlib.colormaps[cmap if kind == "field" else error_cmap]
        cm = cm.with_extremes(bad="0.85")
        lo, hi = (vmin, vmax) if kind == "field" else (-emax, emax)
        image = ax.imshow(
            np.ma.masked_invalid(field), origin="lower", extent=extent, cmap=cm,
            vmin=lo, vmax=hi, interpolation="nearest",
        )  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel(f"x ({grid.units})")
        # one colour bar under each panel: the interleaved field and error panels
        # cannot share two bars without overlapping them
        bar = fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, aspect=20)
        bar.set_label(label if kind == "field" and label else kind)
    axes[0].set_ylabel(f"y ({grid.units})")
    return fig


def _velocity(name: str, value, shape) -> np.ndarray:
    w = np.asarray(value, dtype=float)
    if w.shape != (2, *shape):
        raise ValueError(
            f"`{name}` must be a velocity field (2, ny, nx) = {(2, *shape)}; got "
            f"{w.shape}."
        )
    return w


def plot_motion(
    truth,
    estimates,
    grid,
    *,
    arrows: int = 16,
    cmap: str = "viridis",
    error_cmap: str = "magma",
    units: str = "",
    panel_size: float = 3.2,
):
    r"""Maps of motion fields: the speed with arrows, and the end-point error.

    Top row: the true velocity and each estimate, as the speed $|\mathbf w|$ in
    colour with arrows of $\mathbf w$ on a regular subset of the cells (about
    `arrows` per side), all on the truth's speed scale and arrow scale. Bottom row,
    under each estimate: its end-point error $|\hat{\mathbf w} - \mathbf w|$ per cell
    (one shared colour scale; its mean is `jaxda.metrics.endpoint_error`).

    **Arguments:**

    - `truth`: the velocity `(2, ny, nx)` (u along x, v along y).
    - `estimates`: a velocity `(2, ny, nx)`, or a mapping from names (e.g.
      `"4DVar"`, `"Horn-Schunck"`) to velocities.
    - `grid`: the `jaxda.grid.Grid` (axis extents and units).
    - `arrows`: arrows per side (the larger side); `cmap`, `error_cmap`: colour maps;
      `units`: the velocity unit for the colour-bar labels (e.g. `"m/s"`);
      `panel_size`: inches per panel.

    **Returns:** a `matplotlib.figure.Figure`.
    """
    from .grid import Grid

    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    if not isinstance(arrows, int) or isinstance(arrows, bool) or arrows < 1:
        raise ValueError(f"`arrows` must be an int >= 1; got {arrows!r}.")
    truth = _velocity("truth", truth, grid.shape)
    if not isinstance(estimates, Mapping):
        estimates = {"estimate": estimates}
    if not estimates:
        raise ValueError("`estimates` must name at least one velocity field.")
    ests = {
        n: _velocity(f"estimates[{n!r}]", w, grid.shape) for n, w in estimates.items()
    }
    fields = {"truth": truth, **ests}
    speed_max = max(float(np.max(np.hypot(*truth))), 1e-300)
    errors = {n: np.hypot(*(w - truth)) for n, w in ests.items()}
    error_max = max([float(np.max(e)) for e in errors.values()] + [1e-300])
    (ly, lx), (y0, x0) = grid.extent, (grid.y0 - grid.dy / 2, grid.x0 - grid.dx / 2)
    extent = (x0, x0 + lx, y0, y0 + ly)
    X, Y = (np.asarray(a) for a in grid.meshgrid()[::-1])
    step = max(1, -(-max(grid.shape) // arrows))
    pick = (slice(step // 2, None, step), slice(step // 2, None, step))
    # one arrow scale for all panels: the truth's largest speed spans ~1.5 arrow cells
    scale = speed_max / (1.5 * step * min(grid.dx, grid.dy))
    unit = f" ({units})" if units else ""
    n = len(fields)
    fig = _figure(figsize=(panel_size * n, panel_size * 2.3), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, sharex=True, sharey=True)).reshape(2, n)
    for ax, (name, w) in zip(axes[0], fields.items()):
        image = ax.imshow(
            np.hypot(*w), origin="lower", extent=extent, cmap=cmap, vmin=0.0,
            vmax=speed_max, interpolation="nearest",
        )  # fmt: skip
        ax.quiver(
            X[pick], Y[pick], w[0][pick], w[1][pick], angles="xy",
            scale_units="xy", scale=scale, color="w", width=0.006,
        )  # fmt: skip
        ax.set_title(name)
        fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, aspect=20).set_label(
            f"speed{unit}"
        )
    axes[1, 0].set_axis_off()
    for ax, (name, e) in zip(axes[1, 1:], errors.items()):
        image = ax.imshow(
            e, origin="lower", extent=extent, cmap=error_cmap, vmin=0.0,
            vmax=error_max, interpolation="nearest",
        )  # fmt: skip
        ax.set_title(f"end-point error ({name})\nmean {e.mean():.3g}{unit}")
        ax.set_xlabel(f"x ({grid.units})")
        fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, aspect=20).set_label(
            f"|error|{unit}"
        )
    axes[0, 0].set_ylabel(f"y ({grid.units})")
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:  # long coordinates (metres) need few ticks
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
    return fig


def plot_psd_score(
    scores: Mapping[str, object],
    *,
    level: float = 0.5,
    units: str = "",
    show_spectra: bool = True,
    title: str | None = None,
):
    r"""PSD-score curves $1 - \mathrm{PSD}_e / \mathrm{PSD}_x$ against wavelength, with
    the effective resolution of each reconstruction.

    **Arguments:**

    - `scores`: a mapping from names to `jaxda.metrics.SpectralScore`s (from
      `psd_score` or `psd_score_time`).
    - `level`: the level line drawn (default 0.5); `units`: the wavelength unit for
      the axis label (e.g. `"km"`, `"days"`).
    - `show_spectra`: add a panel with the truth's and the errors' spectra (log-log).
    - `title`: an optional figure title.

    **Returns:** a `matplotlib.figure.Figure`; each curve's label carries its resolved
    wavelength.
    """
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("`scores` must be a non-empty mapping name -> SpectralScore.")
    n = 2 if show_spectra else 1
    fig = _figure(figsize=(5.5 * n, 4))
    axes = np.atleast_1d(fig.subplots(1, n))
    unit = f" ({units})" if units else ""
    truth_drawn = False
    for name, s in scores.items():
        k = np.asarray(s.wavenumber, float)
        lam = float(np.asarray(s.resolved_wavelength))
        (line,) = axes[0].plot(
            1 / k, np.asarray(s.score), marker=".", label=f"{name}: {lam:.3g}{unit}"
        )
        if np.isfinite(lam):
            axes[0].axvline(lam, color=line.get_color(), ls=":", lw=1)
        if show_spectra:
            if not truth_drawn:
                axes[1].plot(1 / k, np.asarray(s.psd_truth), "k", lw=2, label="truth")
                truth_drawn = True
            axes[1].plot(1 / k, np.asarray(s.psd_error), color=line.get_color(),
                         label=f"error ({name})")  # fmt: skip
    axes[0].axhline(level, color="0.4", lw=1)
    axes[0].set_xscale("log")
    # scores far below 0 (no skill at the small scales) would hide the crossing
    lowest = min(float(np.nanmin(np.asarray(s.score))) for s in scores.values())
    axes[0].set_ylim(max(min(lowest, 0.0), -1.0) - 0.05, 1.05)
    axes[0].set_xlabel(f"wavelength{unit}")
    axes[0].set_ylabel("PSD score")
    axes[0].legend(fontsize=8)
    if show_spectra:
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        axes[1].set_xlabel(f"wavelength{unit}")
        axes[1].set_ylabel("PSD")
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.invert_xaxis()  # large scales on the left
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = [
    "energy_pathways",
    "plot_maps",
    "plot_motion",
    "plot_psd_score",
    "save_figure",
    "trajectories",
]
