"""Smoke tests of the example scripts at tiny sizes (they run end to end)."""

import importlib.util
import json
import math
import pathlib
import sys

import numpy as np
import pytest

import jaxda.io as jio


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_lorenz63_incremental_runs(tmp_path):
    example = _load("lorenz63_incremental")
    out = tmp_path / "out"
    argv = [
        "--train-windows", "32", "--test-windows", "4", "--steps", "2",
        "--batch-size", "8", "--levels", "1", "--width", "8", "--depth", "1",
        "--fourdvar-steps", "3", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    results = example.main(argv)

    names = [
        "first guess", "4DVar", "cold diffusion", "neural incremental",
        "neural + 4DVar",
    ]  # fmt: skip
    assert list(results["rows"]) == names
    for row in results["rows"].values():
        assert np.isfinite(row["mse"]) and row["mse"] > 0
        assert math.isclose(row["rmse"] ** 2, row["mse"], rel_tol=1e-9)
        assert row["run_s"] > 0
    for name in ("4DVar", "neural + 4DVar"):
        assert 1 <= results["rows"][name]["gn_iterations"] <= 3
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    model = jio.load_model(out / "model.eqx")
    assert model.conditional and model.width == 8
    assert not jio.load_model(out / "ablation.eqx").conditional
    if results["figure"] is not None:
        assert (out / "trajectories.png").stat().st_size > 0


@pytest.mark.timeout(300)
def test_fourdvarnet_lorenz_runs(tmp_path):
    example = _load("fourdvarnet_lorenz")
    out = tmp_path / "out"
    argv = [
        "--system", "l63", "--n-train", "8", "--n-test", "4", "--steps", "2",
        "--batch", "4", "--curriculum", "2", "--gd-steps", "3",
        "--configs", "supervised-genn-cnn", "--out", str(out),
    ]  # fmt: skip
    (res,) = example.main(argv)
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
    # evaluate the saved model again, both methods in chunks of 3 windows (4 = 3 + 1)
    argv2 = argv[:-1] + [str(tmp_path / "again"), "--init-from", str(out)]
    argv2[argv2.index("--steps") + 1] = "0"
    (again,) = example.main(argv2 + ["--chunk", "3"])
    assert again["training"]["supervised-genn-cnn"]["train_steps"] == 0
    assert "earlier run, loaded from" in (tmp_path / "again/table_l63.md").read_text()
    for row, first in zip(again["rows"], res["rows"]):
        np.testing.assert_allclose(row["r_score"], first["r_score"], rtol=1e-5)
