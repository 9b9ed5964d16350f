"""Smoke tests of the benchmark harnesses (`benchmarks/`) at tiny sizes.

The end-to-end runs of the paper-reproduction harnesses train models and are marked
`slow`, as are the latency benchmark and the iterate recording (they compile many
entry points); the default suite checks the harnesses' building blocks.
"""

import json
import math
import pathlib
import sys

import jax
import numpy as np
import pytest

import jaxda.io as jio


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import _b24  # noqa: E402
import _f21  # noqa: E402
import bench_latency  # noqa: E402
import reproduce_b24  # noqa: E402
import reproduce_f21  # noqa: E402


LATENCY_FIELDS = (
    "problem", "method", "device", "batch", "time_per_call_s", "compiled_s",
    "overhead_s", "overhead_fraction",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_latency_records():
    recs = list(bench_latency.records("tiny", only="interpolate_observations"))
    recs += list(bench_latency.records("tiny", only="linalg.solve"))
    assert [r["method"] for r in recs] == [
        "data.interpolate_observations",
        "linalg.solve",
    ]
    for rec in recs:
        assert set(LATENCY_FIELDS) <= set(rec)
        assert rec["batch"] == 1
        assert rec["time_per_call_s"] > 0 and rec["compiled_s"] > 0
        assert math.isclose(
            rec["overhead_s"], rec["time_per_call_s"] - rec["compiled_s"]
        )
        assert math.isclose(
            rec["overhead_fraction"], rec["overhead_s"] / rec["compiled_s"]
        )


def test_latency_compiled_work_matches_public_call():
    import jaxda.data as jd

    preset = jd.get_preset("F21-L63", n_times=32)
    _, test = jd.make_preset_splits(preset, 0, n_train=2, n_test=1)
    obs = jax.tree_util.tree_map(lambda a: a[0], test.obs)
    compiled, dynamic = bench_latency.compile_public(jd.interpolate_observations, obs)
    np.testing.assert_allclose(
        compiled(dynamic), jd.interpolate_observations(obs), rtol=1e-6
    )


def test_variance_to_original():
    import jaxda.data as jd

    norm = jd.Normalisation(np.array([1.0, -2.0]), np.array([2.0, 4.0]))
    np.testing.assert_allclose(_b24.variance_to_original(norm, 0.5), [1.0, 4.0])
    # the inverse of Normalisation.scale_std, squared
    np.testing.assert_allclose(
        norm.scale_std(np.sqrt(_b24.variance_to_original(norm, 0.5))), [0.5, 0.5]
    )


def test_b24_table_has_the_papers_numbers():
    row = {"mse": 0.25, "rmse": 0.5, "median_window_mse": 0.2, "compile_s": 1.0}
    names = ["first guess", "4DVar", "cold diffusion", "neural incremental"]
    rows = {name: dict(row, run_s=0.1 * (i + 1)) for i, name in enumerate(names)}
    rows["4DVar"].update(gn_iterations=3.0, latency_s=0.002)
    table = _b24.b24_table(rows, 10, _b24.B24_PAPER["B24-L63"]).splitlines()
    assert table[0].startswith("method") and "[B24]" in table[0]
    line = {t.split("  ")[0]: t for t in table[2:]}
    assert line["4DVar"].rstrip().endswith("0.9,  10")
    assert "2.000" in line["4DVar"]  # ms batch 1
    assert line["neural incremental"].rstrip().endswith("0.5,   2")
    assert " 1.0 " in line["cold diffusion"]  # relative time of the reference


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_f21_iterates_records_the_path():
    s = _f21.setup("l63", 0, 2, 2)
    x0 = _f21.first_guess(s)
    record = np.array([1, 2, 4])
    solver = _f21.var.GradientDescent(1e-3, rtol=0.0, atol=0.0)
    x, path = _f21.iterates(solver, s.preset, s.test.obs, x0, 2.0, 0.01, record, 1)
    assert path.shape == (4, *x0.shape)
    np.testing.assert_allclose(path[0], x0, rtol=1e-6)
    np.testing.assert_allclose(path[-1], x, rtol=1e-6)  # fixed steps: x is the last
    assert np.all(np.isfinite(path))
    gn = _f21.gauss_newton(s.preset, 2.0, 0.01, 3, chunk_size=1)
    x_gn, steps = gn(s.test.obs.values, s.test.obs.mask, x0)
    assert x_gn.shape == x0.shape and np.all((1 <= steps) & (steps <= 3))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reproduce_b24_runs(tmp_path):
    out = tmp_path / "out"
    argv = [
        "--train-windows", "32", "--test-windows", "4", "--steps", "2",
        "--batch-size", "8", "--levels", "1", "--width", "8", "--depth", "1",
        "--fourdvar-steps", "3", "--out", str(out), "--no-progress", "--latency",
        "--no-plot",
    ]  # fmt: skip
    res = reproduce_b24.main(argv)
    names = [
        "first guess", "4DVar", "cold diffusion", "neural incremental",
        "neural + 4DVar",
    ]  # fmt: skip
    assert list(res["rows"]) == names
    for row in res["rows"].values():
        assert np.isfinite(row["mse"]) and row["mse"] > 0
        assert math.isclose(row["rmse"] ** 2, row["mse"], rel_tol=1e-9)
        assert row["run_s"] > 0 and row["latency_s"] > 0
    for name in ("4DVar", "neural + 4DVar"):
        assert 1 <= res["rows"][name]["gn_iterations"] <= 3
    assert res["paper_table1"]["4DVar"] == {"error": 0.9, "time": 10}
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]
    model = jio.load_model(out / "model.eqx")
    assert model.conditional and model.width == 8
    assert not jio.load_model(out / "ablation.eqx").conditional


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reproduce_f21_runs(tmp_path):
    out = tmp_path / "out"
    argv = [
        "--system", "l63", "--n-train", "8", "--n-test", "4", "--steps", "2",
        "--batch", "4", "--curriculum", "2", "--gd-steps", "3",
        "--configs", "supervised-genn-cnn", "--out", str(out),
    ]  # fmt: skip
    (res,) = reproduce_f21.main(argv)
    rows = {(r["mode"], r["prior"], r["solver"]): r for r in res["rows"]}
    assert list(rows) == [
        ("none", "ode", "fsgd"), ("none", "ode", "4dvar"),
        ("supervised", "genn", "cnn"),
    ]  # fmt: skip
    for row in rows.values():
        assert np.isfinite(row["r_score"]) and row["r_score"] > 0
        assert np.isfinite(row["fourdvar_score"]) and row["fourdvar_score"] > 0
    assert rows[("none", "ode", "4dvar")]["ode_score"] < 1e-6  # the true RK4 prior
    assert res["pathways"]["FSGD"]["iter"] == [0, 1, 2, 3]
    assert len(res["pathways"]["Gauss-Newton"]["cost"]) == 9
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][0]["rows"] == res["rows"]
    model = jio.load_model(out / "model_l63_supervised-genn-cnn.eqx")
    assert model.n_iter == 2
    assert (out / "pathways_l63.png").stat().st_size > 0
    table = (out / "table_l63.md").read_text().splitlines()
    assert table[2].startswith("| scheme | prior | solver |") and len(table) == 4 + 3
    assert "| supervised | genn | cnn | K=2 |" in table[-1]
    assert "| none | ode | fsgd | 3 it |" in table[4] and "| 3.55 |" in table[4]
    # evaluate the saved model again, both methods in chunks of 3 windows (4 = 3 + 1)
    argv2 = argv[:-1] + [str(tmp_path / "again"), "--init-from", str(out)]
    argv2[argv2.index("--steps") + 1] = "0"
    (again,) = reproduce_f21.main(argv2 + ["--chunk", "3"])
    assert again["training"]["supervised-genn-cnn"]["train_steps"] == 0
    assert "earlier run, loaded from" in (tmp_path / "again/table_l63.md").read_text()
    for row, first in zip(again["rows"], res["rows"]):
        np.testing.assert_allclose(row["r_score"], first["r_score"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_incremental_records(monkeypatch):
    import bench_incremental

    tiny = [
        "--train-windows", "32", "--test-windows", "4", "--steps", "2",
        "--batch-size", "8", "--levels", "1", "--width", "8", "--depth", "1",
        "--fourdvar-steps", "3",
    ]  # fmt: skip
    monkeypatch.setitem(bench_incremental._ARGS, "tiny", tiny)
    recs = list(bench_incremental._preset_records("B24-L63", "tiny"))
    assert [r["method"] for r in recs][1] == "4DVar" and len(recs) == 5
    for rec in recs:
        assert rec["problem"] == "B24-L63" and rec["batch"] == 4
        assert rec["mse"] > 0 and rec["latency_s"] > 0 and rec["train_steps"] == 2
    assert recs[1]["b24_table1"] == {"error": 0.9, "time": 10}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_fourdvarnet_records(monkeypatch):
    import bench_fourdvarnet

    tiny = {
        "systems": ("l63",),
        "configs": {"l63": ("supervised-genn-cnn",)},
        "n_train": 8,
        "batch": 4,
        "steps": 3,
    }
    monkeypatch.setitem(bench_fourdvarnet._SIZES, "tiny", tiny)
    recs = list(bench_fourdvarnet.records("tiny"))
    assert [r["method"] for r in recs] == [
        "4dvarnet-supervised-genn-cnn",
        "gauss_newton",
    ]
    for rec in recs:
        assert rec["problem"] == "F21-L63" and rec["batch"] == 4
        assert np.isfinite(rec["mse"]) and rec["mse"] > 0
        assert rec["time_per_window_s"] > 0
    assert 1 <= recs[1]["mean_iterations"] <= 20
