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
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name",
    [
        "lorenz63_incremental",
        "fourdvarnet_lorenz",
        "ssh_mapping",
        "motion_shallow_water",
        "ssh_spde_ensembles",
    ],
)
def test_example_is_short(name):
    """Examples are readable scripts of the public API, not harnesses."""
    source = (EXAMPLES / f"{name}.py").read_text()
    assert len(source.splitlines()) <= 200
    assert "benchmarks" not in source.split('"""', 2)[2]  # no harness imports


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
    assert results["n_train"] == 32 and results["n_test"] == 4
    for row in results["rows"].values():
        assert np.isfinite(row["mse"]) and row["mse"] > 0
        assert math.isclose(row["rmse"] ** 2, row["mse"], rel_tol=1e-9)
        assert row["run_s"] > 0
    for name in ("4DVar", "neural + 4DVar"):
        assert 1 <= results["rows"][name]["gn_iterations"] <= 3
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    model = jio.load_model(out / "model.eqx")
    assert model.conditional and model.width == 8 and model.depth == 1
    ablation = jio.load_model(out / "ablation.eqx")
    assert not ablation.conditional and ablation.width == 8
    if results["figure"] is not None:
        assert (out / "trajectories.png").stat().st_size > 0


# The README example runs in the default suite; the 4DVarNet one with -m slow.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fourdvarnet_lorenz_runs(tmp_path):
    example = _load("fourdvarnet_lorenz")
    out = tmp_path / "out"
    argv = [
        "--system", "l63", "--n-train", "8", "--n-test", "4", "--steps", "2",
        "--batch", "4", "--curriculum", "2", "--gn-steps", "3", "--out", str(out),
    ]  # fmt: skip
    res = example.main(argv)
    names = ["interpolation", "4DVar (Gauss-Newton)", "4DVarNet (K=2)"]
    assert list(res["rows"]) == names
    assert res["n_train"] == 8 and res["n_test"] == 4 and res["train_steps"] == 2
    for row in res["rows"].values():
        assert np.isfinite(row["mse"]) and row["mse"] > 0
        assert row["run_s"] > 0
    assert 1 <= res["rows"]["4DVar (Gauss-Newton)"]["iterations"] <= 3
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]
    model = jio.load_model(out / "model.eqx")
    assert model.n_iter == 2 and model.train_prior


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ssh_mapping_runs(tmp_path):
    example = _load("ssh_mapping")
    out = tmp_path / "out"
    res = example.main(["--n", "32", "--days", "3", "--outer", "2", "--out", str(out)])
    assert list(res["rows"]) == ["OI", "4DVar"] and res["n_obs"] > 0
    for row in res["rows"].values():
        assert 0 < row["rmse_cm"] < 100 and row["rmse_score"] <= 1
        assert row["resolved_km"] > 0 and row["time_s"] > 0
    assert (out / "maps.png").stat().st_size > 0
    assert (out / "psd_score.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ssh_spde_ensembles_runs(tmp_path):
    example = _load("ssh_spde_ensembles")
    out = tmp_path / "out"
    argv = ["--n", "16", "--members", "8", "--fit-steps", "20", "--history-days", "30"]
    res = example.main([*argv, "--out", str(out)])
    assert list(res["rows"]) == ["SPDE OI", "kernel OI"] and res["n_obs"] > 0
    for row in res["rows"].values():
        assert 0 < row["rmse_cm"] < 100 and row["time_s"] > 0
    ens = res["ensemble"]
    assert ens["crps_cm"] > 0 and ens["spread_skill"] > 0
    assert 0 <= ens["coverage_90"] <= 1
    assert (out / "maps.png").stat().st_size > 0
    assert (out / "ensemble.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_motion_shallow_water_runs(tmp_path):
    example = _load("motion_shallow_water")
    out = tmp_path / "out"
    argv = [
        "--train", "8", "--val", "2", "--test", "2", "--steps", "5",
        "--iterations", "20", "--hybrid-iterations", "5", "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    results = example.main(argv)
    assert results["n_test"] == 2 and 1 <= results["unpenalised_iterations"] <= 50
    assert len(results["rows"]) == 5
    for row in results["rows"].values():
        assert np.isfinite(row["epe"]) and row["epe"] > 0
        assert 0 <= row["ae_deg"] <= 180 and row["time_per_window_s"] > 0
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    if (out / "motion.png").exists():
        assert (out / "motion.png").stat().st_size > 0
