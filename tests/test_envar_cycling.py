"""Cycled hybrid EnVar: one analysis on a linear-Gaussian problem equals the ETKF's
mean (beta = 0, no localisation), the static-B optimal interpolation (beta = 1) and
the Gaussian posterior with the hybrid B in between (NumPy references); recentring
keeps the filter's anomalies; the cycling driver runs it; failures are reported."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics

from jaxda import RESULTS, cycling, ensemble as ens, var
from jaxda.models import flow_map
from jaxda.obs import MatrixOperator, Observations


N_STATE, N_OBS, N_MEMBERS, R = 8, 5, 6, 0.3


def _one_analysis_problem():
    """A forecast ensemble, a dense linear H (5 x 8), one observation time (row 0:
    no forecast before the analysis), a static B and a localisation taper."""
    rng = np.random.default_rng(3)
    members = rng.standard_normal((N_MEMBERS, N_STATE)).cumsum(1) * 0.4 + 1.0
    H = rng.standard_normal((N_OBS, N_STATE)) / np.sqrt(N_STATE)
    y = rng.standard_normal(N_OBS)
    i = np.arange(N_STATE)
    dist = np.minimum(abs(i[:, None] - i), N_STATE - abs(i[:, None] - i))
    kernel = np.exp(-0.5 * (dist / 1.0) ** 2)  # symmetric, not always PSD
    static = 0.3 * kernel @ kernel + 1e-3 * np.eye(N_STATE)  # PSD
    taper = np.asarray(ens.gaspari_cohn_matrix(ens.LocalisationGrid(N_STATE), 2.0))
    flow = flow_map(LinearDynamics(jnp.zeros((N_STATE, N_STATE))), 0.1, "euler")
    obs = Observations(jnp.asarray(y[None]), jnp.ones((1, N_OBS), bool))
    return flow, obs, members, H, y, static, taper


def _posterior_mean(x_b, B, H, y):
    gain = B @ H.T @ np.linalg.inv(H @ B @ H.T + R * np.eye(len(y)))
    return x_b + gain @ (y - H @ x_b)


def test_one_analysis_is_the_gaussian_posterior_with_the_hybrid_b(getkey):
    flow, obs, members, H, y, static, taper = _one_analysis_problem()
    operator = MatrixOperator(jnp.asarray(H))
    x_b = members.mean(0)
    p_e = np.cov(members, rowvar=False)
    key = getkey()
    etkf = ens.ETKF()
    kw = dict(key=key, obs_var=R, operator=operator, save_members=True)
    ref = ens.assimilate(etkf, flow, obs, jnp.asarray(members), **kw)

    def run(weight, localisation=None, solver=var.DenseGaussNewton()):
        method = ens.HybridEnVar(
            etkf, ens.TaperCovariance(static), weight, localisation, solver
        )
        return ens.assimilate_envar(method, flow, obs, jnp.asarray(members), **kw)

    # beta = 0, no localisation: the ETKF's mean (the ensemble Kalman gain)
    out = run(0.0)
    np.testing.assert_allclose(out.analysis[0], ref.analysis[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        out.analysis[0], _posterior_mean(x_b, p_e, H, y), rtol=0, atol=1e-10
    )
    np.testing.assert_allclose(out.filter_analysis[0], ref.analysis[0], atol=1e-12)
    # beta = 1: optimal interpolation with the static B (the weight is traced:
    # the same compilation)
    out = run(1.0)
    np.testing.assert_allclose(
        out.analysis[0], _posterior_mean(x_b, static, H, y), rtol=0, atol=1e-10
    )
    # in between, localised, by the matrix-free default solver
    cg = var.GaussNewtonCG(rtol=1e-12, cg_rtol=1e-12)
    out = run(0.4, ens.TaperCovariance(taper), cg)
    expected = _posterior_mean(x_b, 0.4 * static + 0.6 * taper * p_e, H, y)
    np.testing.assert_allclose(out.analysis[0], expected, rtol=0, atol=1e-8)
    assert out.result == RESULTS.successful and int(out.var_steps[0]) >= 1
    # recentring keeps the filter's anomalies, on the variational mean
    anomalies = out.ensemble.members[0] - out.analysis[0]
    ref_anomalies = ref.members[0] - ref.analysis[0]
    np.testing.assert_allclose(anomalies, ref_anomalies, rtol=0, atol=1e-10)
    assert np.max(np.abs(out.analysis[0] - ref.analysis[0])) > 1e-2


DT, EVERY, T = 0.1, 2, 13
F = jnp.array([[-0.1, 1.0, 0.2], [-1.0, 0.05, 0.0], [0.3, 0.0, -0.2]])


def _cycled_problem():
    flow = flow_map(LinearDynamics(F), DT, "euler")
    rng = np.random.default_rng(0)
    x = [np.array([1.0, -0.5, 2.0])]
    for _ in range(T - 1):
        x.append(np.asarray(flow(jnp.asarray(x[-1]), 0.0)))
    truth = np.array(x)
    mask = np.zeros((T, 3), bool)
    mask[EVERY::EVERY] = True
    mask[EVERY :: 2 * EVERY, 1] = False  # some times see two components only
    values = np.where(mask, truth + 0.5 * rng.standard_normal(truth.shape), 0.0)
    obs = Observations(jnp.asarray(values), jnp.asarray(mask))
    ensemble0 = jnp.asarray(truth[0] + rng.standard_normal((5, 3)))
    return flow, obs, truth, ensemble0


def test_cycled_through_the_driver_and_failures_reported():
    flow, obs, truth, ensemble0 = _cycled_problem()
    key = jax.random.key(4)
    etkf = ens.ETKF(inflation=1.05)
    static = ens.TaperCovariance(0.5 * np.eye(3) + 0.1)
    method = ens.HybridEnVar(etkf, static, 0.0, solver=var.DenseGaussNewton())
    out = cycling.assimilate(method, flow, obs, ensemble0, obs_var=0.25, key=key)
    # beta = 0 without localisation: the whole cycle is the ETKF's
    ref = cycling.assimilate(etkf, flow, obs, ensemble0, obs_var=0.25, key=key)
    np.testing.assert_allclose(out.analysis, ref.analysis, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.std, ref.std, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(out.analysed, ref.analysed)
    assert isinstance(out.native, ens.EnVarResult)
    assert out.result == RESULTS.successful
    # a hybrid B changes the analyses; the score is NumPy's
    hybrid = eqx.tree_at(lambda m: m.weight, method, jnp.asarray(0.5))
    out = cycling.assimilate(hybrid, flow, obs, ensemble0, obs_var=0.25, key=key)
    assert np.max(np.abs(np.asarray(out.analysis - ref.analysis))) > 1e-3
    rmse, spread = out.score(truth, burn_in=4)
    keep = np.asarray(out.analysed) & (np.arange(T) >= 4)
    err = np.sqrt(np.mean((np.asarray(out.analysis) - truth) ** 2, axis=1))
    np.testing.assert_allclose(rmse, err[keep].mean(), rtol=1e-12)
    np.testing.assert_allclose(spread, np.asarray(out.spread)[keep].mean(), 1e-12)
    # a variational solve stopped by max_steps keeps the filter's mean, reported
    capped = ens.HybridEnVar(etkf, static, 0.5, solver=var.DenseGaussNewton(),
                             max_steps=1)  # fmt: skip
    res = ens.assimilate_envar(
        capped, flow, obs, ensemble0, obs_var=0.25, key=key, throw=False
    )
    analysed = np.asarray(res.ensemble.analysed)
    assert res.result == RESULTS.max_steps_reached
    assert np.all(np.asarray(res.var_result == RESULTS.max_steps_reached)[analysed])
    np.testing.assert_allclose(res.analysis, res.filter_analysis, atol=1e-12)
    np.testing.assert_allclose(res.analysis, ref.analysis, rtol=0, atol=1e-10)
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver steps"):
        ens.assimilate_envar(capped, flow, obs, ensemble0, obs_var=0.25, key=key)


def test_bad_input():
    flow, obs, truth, ensemble0 = _cycled_problem()
    static = ens.TaperCovariance(np.eye(3))
    with pytest.raises(TypeError, match="`filter` must be"):
        ens.HybridEnVar(ens.IEnKS(), static, 0.5)
    with pytest.raises(TypeError, match="`static` must be"):
        ens.HybridEnVar(ens.ETKF(), np.eye(3), 0.5)
    with pytest.raises(ValueError, match="`weight` must be in"):
        ens.HybridEnVar(ens.ETKF(), static, 1.5)
    with pytest.raises(ValueError, match="`localisation.field_shape`"):
        ens.HybridEnVar(ens.ETKF(), static, 0.5, ens.TaperCovariance(np.eye(4)))
    with pytest.raises(TypeError, match="`solver` must be"):
        ens.HybridEnVar(ens.ETKF(), static, 0.5, solver="cg")
    with pytest.raises(ValueError, match="`max_steps`"):
        ens.HybridEnVar(ens.ETKF(), static, 0.5, max_steps=0)
    wrong = ens.HybridEnVar(ens.ETKF(), ens.TaperCovariance(np.eye(4)), 0.5)
    with pytest.raises(ValueError, match="`method.static.field_shape`"):
        ens.assimilate_envar(
            wrong, flow, obs, ensemble0, obs_var=0.25, key=jax.random.key(0)
        )
    method = ens.HybridEnVar(ens.ETKF(), static, 0.5)
    with pytest.raises(ValueError, match="N >= 2"):
        cycling.assimilate(
            method, flow, obs, ensemble0[:1], obs_var=0.25, key=jax.random.key(0)
        )
    with pytest.raises(TypeError, match="`key` must be"):
        cycling.assimilate(method, flow, obs, ensemble0, obs_var=0.25)
    with pytest.raises(ValueError, match="`obs_var` must be"):
        ens.assimilate_envar(
            method, flow, obs, ensemble0, obs_var=-1.0, key=jax.random.key(0)
        )
