"""B24-L63 and B24-pendulum ([B24]): every method of `benchmarks/reproduce_b24.py`.

    python benchmarks/run.py --only incremental --suite quick

Runs the experiment (data, training of the neural prior and of the cold-diffusion
ablation, evaluation on test windows whose observation phases are unseen in training)
and turns its table into records: MSE / RMSE in normalised units, median window MSE,
time per window vmapped over the test set (`batch` = test windows) and on one window
(`latency_s`, batch 1), compile times, Gauss-Newton iterations. The quick suite is the
harness's defaults on B24-L63 (400 Adam steps per model, 1800 / 200 windows); the
full suite trains 10x longer on 10x more L63 windows, and adds B24-pendulum (the
preset's 400 / 100 windows).
"""

import tempfile

import reproduce_b24
from _common import record


_ARGS = {
    "quick": [],
    "full": ["--steps", "4000", "--train-windows", "18000", "--batch-size", "128"],
}


def records(suite: str):
    presets = ("B24-L63",) if suite == "quick" else ("B24-L63", "B24-pendulum")
    for preset in presets:
        yield from _preset_records(preset, suite)


def _preset_records(preset: str, suite: str):
    args = list(_ARGS[suite])
    if preset != "B24-L63":
        args = args[:2]  # the pendulum keeps its preset's (smaller) training set
    with tempfile.TemporaryDirectory() as out:
        argv = args + ["--preset", preset, "--latency", "--no-plot", "--no-progress"]
        res = reproduce_b24.main(argv + ["--out", out])
    n_test = res["n_test"]
    for name, row in res["rows"].items():
        yield record(
            preset,
            name,
            batch=n_test,
            mse=row["mse"],
            rmse=row["rmse"],
            mse_median=row["median_window_mse"],
            time_per_window_s=row["run_s"] / n_test,
            compile_s=row["compile_s"],
            latency_s=row["latency_s"],
            latency_compile_s=row["latency_compile_s"],
            iterations=row.get("gn_iterations"),
            converged_fraction=row.get("gn_converged"),
            n_train=res["n_train"],
            train_steps=int(res["args"]["steps"]),
            train_seconds=res["train_seconds"].get(
                "cold diffusion" if name == "cold diffusion" else "neural"
            ),
            units="normalised" if preset == "B24-L63" else "original",
            model_var_4dvar=res["model_var"],
            b24_table1=res["paper_table1"].get(name),
        )
