"""The F21-L96 4DVar baseline harness (`benchmarks/_l96_baseline.py`,
`benchmarks/reproduce_l96_4dvar.py`): its record fields by hand, and a tiny end-to-end
run (slow: it simulates the preset and compiles the EnKS and Gauss-Newton)."""

import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import _l96_baseline  # noqa: E402


def test_summary_by_hand():
    mse = np.array([0.5, 1.0, 1.5, 4.0])
    s = _l96_baseline.summary(mse, far_threshold=1.0)
    assert s["mse"] == pytest.approx(7.0 / 4)
    assert s["rmse"] == pytest.approx(math.sqrt(7.0 / 4))
    assert s["mse_median"] == pytest.approx(1.25)
    assert s["fraction_far"] == pytest.approx(0.5)  # strictly above the threshold
    assert s["n_windows"] == 4


def test_window_mse_and_climatology_draws():
    truth = jnp.zeros((3, 5, 2))
    x = truth.at[1].set(2.0).at[2, 0, 0].set(10.0)
    np.testing.assert_allclose(
        _l96_baseline.window_mse(x, truth), [0.0, 4.0, 100.0 / 10]
    )
    states = jnp.arange(12.0)[:, None] * jnp.ones((1, 2))
    e0 = _l96_baseline.climatology_ensembles(jax.random.PRNGKey(0), states, 4, 6)
    assert e0.shape == (4, 6, 2)
    for members in np.asarray(e0):  # distinct rows of `states` (no replacement)
        assert len(set(members[:, 0])) == 6
        assert set(members[:, 0]) <= set(range(12))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reproduce_l96_4dvar_smoke(tmp_path):
    import reproduce_l96_4dvar

    argv = ["--n-train", "4", "--n-test", "2", "--n-times", "40", "--members", "10",
            "--lag", "8", "--max-steps", "3", "--model-var", "0.1",
            "--out", str(tmp_path)]  # fmt: skip
    recs = reproduce_l96_4dvar.main(argv)
    by_method = {r["method"]: r for r in recs}
    assert set(by_method) == {"enks", "4dvar-enks-first-guess-q0.1"}
    for rec in recs:
        saved = json.loads((tmp_path / f"T40-{rec['method'].replace('.', 'p')}.json")
                           .read_text())  # fmt: skip
        assert saved["problem"] == "F21-L96" and saved["n_windows"] == 2
        assert saved["rmse"] ** 2 == pytest.approx(saved["mse"])
        assert 0.0 <= saved["fraction_far"] <= 1.0
    gn = by_method["4dvar-enks-first-guess-q0.1"]
    assert 1 <= gn["iterations_mean"] <= 3
    # Gauss-Newton from the smoother's guess moves towards the truth
    assert gn["mse"] < by_method["enks"]["mse"]
