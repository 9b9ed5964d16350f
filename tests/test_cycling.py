"""`jaxda.cycling.assimilate`: one call for every cycled method, each equal to its own
driver, with one output layout and one score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics

from jaxda import RESULTS, cycling, ensemble as ens, var
from jaxda.models import flow_map
from jaxda.obs import Observations


DT, EVERY, T = 0.1, 2, 13
F = jnp.array([[-0.1, 1.0, 0.2], [-1.0, 0.05, 0.0], [0.3, 0.0, -0.2]])


def _problem():
    flow = flow_map(LinearDynamics(F), DT, "euler")
    rng = np.random.default_rng(0)
    x = [np.array([1.0, -0.5, 2.0])]
    for _ in range(T - 1):
        x.append(np.asarray(flow(jnp.asarray(x[-1]), 0.0)))
    truth = np.array(x)
    mask = np.zeros((T, 3), bool)
    mask[EVERY::EVERY] = True
    values = np.where(mask, truth + 0.5 * rng.standard_normal(truth.shape), 0.0)
    obs = Observations(jnp.asarray(values), jnp.asarray(mask))
    ensemble0 = jnp.asarray(truth[0] + rng.standard_normal((6, 3)))
    return flow, obs, truth, ensemble0


def _numpy_score(analysis, steps, analysed, truth, burn_in):
    err = np.sqrt(np.mean((np.asarray(analysis) - truth[np.asarray(steps)]) ** 2, 1))
    keep = np.asarray(analysed) & (np.asarray(steps) >= burn_in)
    return err[keep].mean()


def test_each_method_equals_its_own_driver_and_scores_alike():
    flow, obs, truth, ensemble0 = _problem()
    key = jax.random.key(1)
    # an ensemble filter: every row, `analysed` at the observed rows
    etkf = ens.ETKF(inflation=1.05)
    out = cycling.assimilate(etkf, flow, obs, ensemble0, obs_var=0.25, key=key)
    ref = ens.assimilate(etkf, flow, obs, ensemble0, key=key, obs_var=0.25)
    np.testing.assert_array_equal(out.analysis, ref.analysis)
    np.testing.assert_array_equal(out.std, ref.std)
    np.testing.assert_array_equal(out.steps, np.arange(T))
    np.testing.assert_array_equal(out.analysed, np.asarray(obs.mask).any(1))
    assert out.result == RESULTS.successful and out.native is not None
    rmse, spread = out.score(truth, burn_in=4)
    np.testing.assert_allclose(
        rmse, _numpy_score(out.analysis, out.steps, out.analysed, truth, 4), 1e-12
    )
    keep = np.asarray(out.analysed) & (np.arange(T) >= 4)
    np.testing.assert_allclose(spread, np.asarray(ref.spread)[keep].mean(), 1e-12)
    # the iEnKS: the cycle ends, steps_per_cycle read off the observed rows
    ienks = ens.IEnKS(lag=2, shift=1)
    out = cycling.assimilate(ienks, flow, obs, ensemble0, obs_var=0.25)
    ref = ens.ienks_cycle(ienks, flow, obs, ensemble0, obs_var=0.25, steps_per_cycle=2)
    np.testing.assert_array_equal(out.analysis, ref.analysis)
    np.testing.assert_array_equal(out.steps, ref.analysis_steps)
    assert bool(jnp.all(out.analysed)) and out.spread.shape == out.steps.shape
    np.testing.assert_allclose(
        out.score(truth)[0],
        _numpy_score(out.analysis, out.steps, out.analysed, truth, 0),
        1e-12,
    )
    # sliding-window 4DVar: the ensemble's mean as the first background, no spread
    settings = cycling.Cycled4DVar(5, 2, var.DenseGaussNewton(), background_var=1.0)
    out = cycling.assimilate(settings, flow, obs, ensemble0, obs_var=0.25)
    ref = var.cycle(
        flow, obs, obs_var=0.25, window=5, shift=2, x_b=jnp.mean(ensemble0, 0),
        background_var=1.0, solver=var.DenseGaussNewton(),
    )  # fmt: skip
    np.testing.assert_array_equal(out.analysis, ref.analysis)
    assert out.std is None and out.spread is None and out.members is None
    rmse, spread = out.score(truth)
    assert spread is None
    np.testing.assert_allclose(
        rmse, _numpy_score(out.analysis, out.steps, out.analysed, truth, 0), 1e-12
    )


def test_bad_input():
    flow, obs, truth, ensemble0 = _problem()
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="`method` must be"):
        cycling.assimilate("etkf", flow, obs, ensemble0, obs_var=1.0, key=key)
    with pytest.raises(ValueError, match="`first_guess` must be an ensemble"):
        cycling.assimilate(ens.ETKF(), flow, obs, ensemble0[0], obs_var=1.0, key=key)
    with pytest.raises(TypeError, match="`key`"):
        cycling.assimilate(ens.ETKF(), flow, obs, ensemble0, obs_var=1.0)
    irregular = Observations(obs.values, obs.mask.at[3].set(True))
    with pytest.raises(ValueError, match="steps_per_cycle"):
        cycling.assimilate(ens.IEnKS(), flow, irregular, ensemble0, obs_var=1.0)
    with pytest.raises(ValueError, match="`shift` must be <= `window`"):
        cycling.Cycled4DVar(3, 4, var.DenseGaussNewton(), 1.0)
    with pytest.raises(TypeError, match="`solver`"):
        cycling.Cycled4DVar(3, 1, "gn", 1.0)
    with pytest.raises(ValueError, match="background_var"):
        cycling.Cycled4DVar(3, 1, var.DenseGaussNewton(), -1.0)
    settings = cycling.Cycled4DVar(5, 2, var.DenseGaussNewton(), 1.0)
    with pytest.raises(TypeError, match="no further options"):
        cycling.assimilate(settings, flow, obs, ensemble0, obs_var=1.0, min_spread=0)
    out = cycling.assimilate(ens.ETKF(), flow, obs, ensemble0, obs_var=1.0, key=key)
    with pytest.raises(ValueError, match="`truth` must have shape"):
        out.score(truth[:, :2])
    with pytest.raises(ValueError, match="must cover the analysis times"):
        out.score(truth[:5])
