"""Figures from benchmark results (JSON lists of records written by `run.py`).

    python benchmarks/plot.py RESULTS.json [MORE.json ...] --out-dir benchmarks/results

Writes PNG files (each atomically: a temporary file, then a rename):

- `accuracy_vs_time.png`: accuracy (`mse`) against `time_per_window_s`, one panel per
  problem, one marker per method (records with both fields; several files, e.g. CPU
  and GPU runs, are told apart by their `device`);
- `solver_scaling.png`: `time_per_element_s` against `d` for the linear-algebra
  records (one panel per problem, one line per method);
- `throughput.png`: windows per second against batch size (records with
  `n_devices == 1`), and against `n_devices` (sharded records), one line per method.

- `summary.md`: one Markdown table per problem and device (every method with an
  accuracy field: MSE, time per window at the recorded batch and at batch 1 where
  measured, iterations, converged fraction, compile time, fraction of windows far
  from the truth), the
  tables shown in the README and the docs.

A figure with no matching records is skipped (and reported). Uses matplotlib's Agg
backend (no display needed).
"""

import argparse
import json
import math
import os
import pathlib
from collections import defaultdict

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxda.io import atomic_path  # noqa: E402


def load_records(paths) -> list[dict]:
    """Concatenate the record lists of several JSON files (each tagged `source`)."""
    out = []
    for path in paths:
        with open(path) as f:
            recs = json.load(f)
        if not isinstance(recs, list):
            raise ValueError(f"{path}: expected a JSON list of records.")
        for rec in recs:
            if isinstance(rec, dict):
                out.append({**rec, "source": os.path.basename(str(path))})
    return out


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def save_atomic(fig, path: pathlib.Path) -> None:
    """Save `fig` as PNG to `path` atomically, then close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _grid(n_panels: int, width: float = 4.2, height: float = 3.4, max_cols: int = 3):
    cols = min(n_panels, max_cols)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _label(rec: dict, devices: set) -> str:
    return rec["method"] + (f" [{rec.get('device')}]" if len(devices) > 1 else "")


def plot_accuracy(records, out_dir: pathlib.Path, metric: str = "mse"):
    """Accuracy against time per window, one panel per problem."""
    recs = [
        r
        for r in records
        if _number(r.get(metric))
        and _number(r.get("time_per_window_s"))
        and r["time_per_window_s"] > 0
        and not str(r.get("method", "")).startswith("ratio:")
    ]
    if not recs:
        return None
    devices = {r.get("device") for r in recs}
    by_problem = defaultdict(list)
    for r in recs:
        by_problem[r["problem"]].append(r)
    fig, axes = _grid(len(by_problem), width=6.4, max_cols=2)
    markers = "os^vD<>pP*Xh"
    for ax, (problem, rows) in zip(axes, sorted(by_problem.items())):
        labels = sorted({_label(r, devices) for r in rows})
        for i, label in enumerate(labels):
            pts = [r for r in rows if _label(r, devices) == label]
            ax.scatter(
                [r["time_per_window_s"] for r in pts],
                [r[metric] for r in pts],
                marker=markers[i % len(markers)],
                color=plt.cm.tab20(i % 20),
                label=label,
            )
        ax.set_xscale("log")
        if all(r[metric] > 0 for r in rows):
            ax.set_yscale("log")
        ax.set_title(problem)
        ax.set_xlabel("time per window [s]")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Accuracy ({metric}) against time per window")
    path = out_dir / "accuracy_vs_time.png"
    save_atomic(fig, path)
    return path


def plot_scaling(records, out_dir: pathlib.Path):
    """Time per element against problem size for the linear-algebra records."""
    recs = [
        r
        for r in records
        if _number(r.get("d")) and _number(r.get("time_per_element_s"))
    ]
    if not recs:
        return None
    by_problem = defaultdict(list)
    for r in recs:
        by_problem[r["problem"]].append(r)
    devices = {r.get("device") for r in recs}
    fig, axes = _grid(len(by_problem))
    for ax, (problem, rows) in zip(axes, sorted(by_problem.items())):
        for label in sorted({_label(r, devices) for r in rows}):
            pts = sorted(
                (r["d"], r["time_per_element_s"])
                for r in rows
                if _label(r, devices) == label
            )
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(problem)
        ax.set_xlabel("d (unknowns)")
        ax.set_ylabel("time per element [s]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Structured solvers: time per element against size")
    path = out_dir / "solver_scaling.png"
    save_atomic(fig, path)
    return path


def _throughput(r) -> float | None:
    if _number(r.get("windows_per_s")):
        return r["windows_per_s"]
    t = r.get("time_per_window_s")
    return 1.0 / t if _number(t) and t > 0 else None


def plot_throughput(records, out_dir: pathlib.Path):
    """Windows per second against batch size and against the device count."""
    with_n = [r for r in records if _number(r.get("n_devices"))]
    batch = [
        r
        for r in with_n
        if r["n_devices"] == 1
        and not str(r["method"]).startswith("sharded-")
        and _number(r.get("batch"))
        and _throughput(r)
    ]
    dev = [
        r for r in with_n if str(r["method"]).startswith("sharded-") and _throughput(r)
    ]
    if not batch and not dev:
        return None
    devices = {r.get("device") for r in with_n}
    panels = [p for p in (("batch", batch), ("n_devices", dev)) if p[1]]
    fig, axes = _grid(len(panels), width=5.0)
    for ax, (key, rows) in zip(axes, panels):
        for label in sorted({f"{r['problem']}: {_label(r, devices)}" for r in rows}):
            pts = sorted(
                (r[key], _throughput(r))
                for r in rows
                if f"{r['problem']}: {_label(r, devices)}" == label
            )
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size" if key == "batch" else "devices")
        ax.set_ylabel("windows per second")
        title = "against batch size (one device)"
        if key == "n_devices":
            simulated = any(r.get("simulated_devices") for r in rows)
            title = "against device count" + (" (simulated CPU)" if simulated else "")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Batch throughput")
    path = out_dir / "throughput.png"
    save_atomic(fig, path)
    return path


def _fmt(x, scale: float = 1.0, digits: int = 3) -> str:
    return f"{scale * x:.{digits}g}" if _number(x) else ""


def write_summary(records, out_dir: pathlib.Path, metric: str = "mse"):
    """Markdown tables (one per problem and device) of the accuracy records."""
    recs = [
        r
        for r in records
        if _number(r.get(metric)) and not str(r.get("method", "")).startswith("ratio:")
    ]
    if not recs:
        return None
    groups = defaultdict(list)
    for r in recs:
        fields = ("device", "suite", "dtype")
        groups[(r["problem"], *(r.get(k, "") for k in fields))].append(r)
    lines = []
    for (problem, device, suite, dtype), rows in sorted(groups.items()):
        lines += [
            f"**{problem}** ({device}, {suite or '?'} suite, {dtype})",
            "",
            f"| method | {metric} | batch | ms / window | ms, batch 1 | iterations "
            "| converged | compile s | far from truth |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(rows, key=lambda r: r[metric]):
            lines.append(
                f"| {r['method']} | {_fmt(r[metric])} | {r.get('batch', '')} "
                f"| {_fmt(r.get('time_per_window_s'), 1e3)} "
                f"| {_fmt(r.get('latency_s'), 1e3)} "
                f"| {_fmt(r.get('iterations'), digits=2)} "
                f"| {_fmt(r.get('converged_fraction'), digits=2)} "
                f"| {_fmt(r.get('compile_s'), digits=2)} "
                f"| {_fmt(r.get('far_fraction'), digits=2)} |"
            )
        lines.append("")
    path = out_dir / "summary.md"
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=pathlib.Path)
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("."))
    parser.add_argument("--metric", default="mse", help="accuracy field (default mse)")
    args = parser.parse_args(argv)
    records = load_records(args.results)
    made = {
        "accuracy": plot_accuracy(records, args.out_dir, args.metric),
        "scaling": plot_scaling(records, args.out_dir),
        "throughput": plot_throughput(records, args.out_dir),
        "summary": write_summary(records, args.out_dir, args.metric),
    }
    for name, path in made.items():
        print(f"{name}: {path if path else 'no matching records, skipped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
