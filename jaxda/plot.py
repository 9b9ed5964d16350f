"""Figures of reconstructions and solver pathways (needs matplotlib: the `plot` extra).

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


__all__ = ["energy_pathways", "save_figure", "trajectories"]
