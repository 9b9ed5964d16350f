"""The iEnKS: on a linear-Gaussian model it is the Kalman filter / RTS smoother (mean
and covariance to round-off), Gauss-Newton converges in one step, MDA composes to the
exact update, the finite-size variant reaches the EnKF-N stationary point; vmap,
divergence reporting and the argument checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LinearDynamics

from jaxda import RESULTS
from jaxda.ensemble import IEnKS, ienks_cycle
from jaxda.models import Lorenz63, flow_map, rollout
from jaxda.obs import Observations


DT, DKO, N_MEMBERS = 0.1, 2, 6  # Euler step, model steps per cycle, members
F = np.array([[-0.1, 1.0, 0.2], [-1.0, 0.05, 0.0], [0.3, 0.0, -0.2]])
M = np.eye(3) + DT * F  # the Euler flow map
MU0 = np.array([1.0, -0.5, 2.0])
P0 = np.array([[1.0, 0.3, 0.1], [0.3, 0.8, -0.2], [0.1, -0.2, 0.5]])
R = 0.3


def _linear_problem(n_cycles, seed=0):
    """Truth, observations (components 0 and 2 at the cycle ends, component 1 at step
    0 and the odd model steps) and an ensemble with exactly the prior mean and
    covariance."""
    rng = np.random.default_rng(seed)
    n_steps = n_cycles * DKO
    x = [MU0 + np.linalg.cholesky(P0) @ rng.standard_normal(3)]
    for _ in range(n_steps):
        x.append(M @ x[-1])
    truth = np.array(x)
    mask = np.zeros((n_steps + 1, 3), bool)
    mask[DKO::DKO, 0] = mask[DKO::DKO, 2] = True
    mask[1::2, 1] = mask[0, 1] = True
    values = truth + np.sqrt(R) * rng.standard_normal(truth.shape)
    # Anomalies sqrt(N-1) V L^T, V orthonormal and orthogonal to the ones vector.
    basis, _ = np.linalg.qr(
        np.concatenate(
            [np.ones((N_MEMBERS, 1)), rng.standard_normal((N_MEMBERS, 3))], 1
        )
    )
    anomalies = np.sqrt(N_MEMBERS - 1) * basis[:, 1:] @ np.linalg.cholesky(P0).T
    ensemble0 = MU0 + anomalies
    return Observations(jnp.asarray(values), jnp.asarray(mask)), ensemble0


def _kalman_smoother(values, mask, last, inflation=1.0):
    """Dense NumPy Kalman filter + RTS smoother over model steps 0..last, the filter
    covariance inflated by `inflation`^2 after each cycle end: the smoothed (means,
    covariances) at every step."""
    m, P = MU0.copy(), P0.copy()
    filt, carried, pred = [], [], [None]
    for t in range(last + 1):
        if t > 0:
            m, P = M @ m, M @ P @ M.T
            pred.append((m, P))
        idx = np.flatnonzero(mask[t])
        if idx.size:
            H = np.eye(3)[idx]
            K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R * np.eye(idx.size))
            m, P = m + K @ (values[t, idx] - H @ m), (np.eye(3) - K @ H) @ P
        filt.append((m, P))
        if t > 0 and t % DKO == 0:
            P = inflation**2 * P
        carried.append((m, P))
    means, covs = [filt[-1][0]], [filt[-1][1]]
    for t in range(last - 1, -1, -1):
        (mf, Pf), (mp, Pp) = carried[t], pred[t + 1]
        G = Pf @ M.T @ np.linalg.inv(Pp)
        means.insert(0, mf + G @ (means[0] - mp))
        covs.insert(0, Pf + G @ (covs[0] - Pp) @ G.T)
    return np.array(means), np.array(covs)


def _window_end(cycle, lag, shift):
    """The last cycle of the window whose analysis covers `cycle` (1-based)."""
    if cycle <= lag:
        return lag
    return -(-(cycle - lag) // shift) * shift + lag


# The iterative EnKF after one iteration, inflated and rotated.
IENKF = dict(lag=1, shift=1, max_iterations=1, tol=0.0, inflation=1.1, rotate=True)


def _run(settings, flow, obs, ensemble0, **kwargs):
    return ienks_cycle(
        IEnKS(**settings), flow, obs, ensemble0, obs_var=R, steps_per_cycle=DKO,
        key=jax.random.key(3), save_members=True, **kwargs,
    )  # fmt: skip


def _check_kalman(res, settings, obs, n_cycles):
    """The analyses (mean, covariance, std) and the smoothed means of one run equal
    the NumPy Kalman / RTS smoother given the observations up to each window's end."""
    lag, shift = settings["lag"], settings["shift"]
    n_windows = (n_cycles - lag) // shift + 1
    assert res.analysis.shape == (lag - shift + n_windows * shift, 3)
    values, mask = np.asarray(obs.values), np.asarray(obs.mask)
    inflation = settings.get("inflation", 1.0)
    for a, step in enumerate(np.asarray(res.analysis_steps)):
        last = _window_end(step // DKO, lag, shift) * DKO
        means, covs = _kalman_smoother(values, mask, last, inflation)
        members = np.asarray(res.members[a])
        np.testing.assert_allclose(res.analysis[a], means[step], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.cov(members.T), covs[step], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(res.std[a], np.sqrt(np.diag(covs[step])), rtol=1e-9)
    for k in range(n_windows):
        last = (k * shift + lag) * DKO
        means, _ = _kalman_smoother(values, mask, last, inflation)
        np.testing.assert_allclose(
            res.smoothed[k], means[k * shift * DKO], rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize(
    "settings, vmapped",
    [
        (IENKF, False),
        # A lag-2 smoother, vmapped over two runs; tol 1e-20: the second Gauss-Newton
        # step is round-off.
        (dict(lag=2, shift=1, max_iterations=5, tol=1e-20), True),
        # Windows that do not overlap, annealed in three steps (MDA).
        (dict(lag=3, shift=3, max_iterations=3, mda=True), False),
    ],
    ids=["ienkf-inflated-rotated", "lag2-shift1-vmap", "lag3-shift3-mda"],
)
def test_linear_gaussian_is_the_kalman_smoother(settings, vmapped):
    n_cycles = 7
    flow = flow_map(LinearDynamics(jnp.asarray(F)), DT, "euler")
    problems = [
        _linear_problem(n_cycles, seed) for seed in ((0, 1) if vmapped else (0,))
    ]
    if vmapped:

        def run(values, mask, ensemble0):
            return _run(settings, flow, Observations(values, mask), ensemble0)

        stacked = zip(*[(o.values, o.mask, jnp.asarray(e)) for o, e in problems])
        batched = jax.jit(jax.vmap(run))(*map(jnp.stack, stacked))
        results = [jax.tree_util.tree_map(lambda x: x[i], batched) for i in (0, 1)]
    else:
        obs, ensemble0 = problems[0]
        results = [_run(settings, flow, obs, jnp.asarray(ensemble0))]
    for res, (obs, _) in zip(results, problems):
        assert res.result == RESULTS.successful
        _check_kalman(res, settings, obs, n_cycles)
        if not settings.get("mda") and settings["max_iterations"] > 1:
            # Linear model: the first step lands on the minimum, the second is ~0.
            np.testing.assert_array_equal(res.n_iterations, 2)


def test_finite_size_reaches_the_enkf_n_stationary_point():
    """iEnKS-N on a linear model, one window: the Gauss-Newton fixed point is a
    stationary point of the primal EnKF-N cost, J(w) = |dy - w Y|^2 / 2 +
    (N - 1) c_L log(e_N + |w|^2) / 2 [B11], whose gradient term is zeta(w) w."""
    n = 3  # members: N - 1 = 2 anomaly directions, recoverable from the mean
    rng = np.random.default_rng(1)
    ensemble0 = MU0 + rng.standard_normal((n, 3))
    mask = np.zeros((DKO + 1, 3), bool)
    mask[DKO] = True
    values = np.zeros((DKO + 1, 3))
    values[DKO] = M @ M @ MU0 + np.array([1.5, -2.0, 1.0])
    obs = Observations(jnp.asarray(values), jnp.asarray(mask))
    flow = flow_map(LinearDynamics(jnp.asarray(F)), DT, "euler")
    # DAPPER's Hessian ignores the derivative of zeta: the fixed-point iteration
    # converges linearly (|gradient| ~ 1e-5 after 50 iterations, 5e-15 after 200).
    method = IEnKS(max_iterations=300, tol=0.0, finite_size=2.0)
    res = ienks_cycle(
        method, flow, obs, jnp.asarray(ensemble0), obs_var=R, steps_per_cycle=DKO
    )
    assert res.result == RESULTS.successful
    x0 = ensemble0.mean(0)
    X0 = ensemble0 - x0
    w = np.linalg.lstsq(X0.T, np.asarray(res.smoothed[0]) - x0, rcond=None)[0]
    A = M @ M
    Y = X0 @ A.T / np.sqrt(R)  # (N, p) normalised observation anomalies
    dy = (values[DKO] - A @ x0) / np.sqrt(R)
    # [DAPPER]'s mode-corrected hyperprior coefficients, boosted by x_N = 2.
    n1 = n - 1
    e_n, c_l = (n + 1) / n, n / n1
    eigenvalues = np.clip(np.linalg.eigvalsh(Y @ Y.T), 0.0, None)
    correction = np.sqrt((e_n / c_l) ** (np.mean(1 / (eigenvalues + n1)) * n1))
    e_n, c_l = 2.0 * e_n / correction, 2.0 * c_l * correction
    gradient = -Y @ (dy - w @ Y) + n1 * c_l * w / (e_n + w @ w)
    np.testing.assert_allclose(gradient, 0.0, atol=1e-9)
    assert np.linalg.norm(w) > 0.1  # the observation moved the mean


def test_divergence_is_reported_not_silent_nan():
    # x -> (1 + 1e199) x per step: the forecast overflows within the first cycle. The
    # same configuration (and compilation) as the "ienkf-inflated-rotated" case.
    flow = flow_map(LinearDynamics(1e200 * jnp.eye(3)), DT, "euler")
    obs, ensemble0 = _linear_problem(7)
    res = _run(IENKF, flow, obs, jnp.asarray(ensemble0), throw=False)
    assert res.result == RESULTS.nonfinite
    assert np.all(res.window_result == RESULTS.nonfinite)  # persistence, again
    assert np.all(np.isfinite(res.analysis)) and np.all(np.isfinite(res.std))
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        _run(IENKF, flow, obs, jnp.asarray(ensemble0))


def test_bad_input_is_refused_with_clear_errors():
    flow = flow_map(Lorenz63(), 0.01)
    obs = Observations(jnp.zeros((11, 3)), jnp.ones((11, 3), bool))
    ens = jnp.ones((4, 3)) + jnp.arange(4.0)[:, None]

    def call(method=IEnKS(), obs=obs, ens=ens, **kw):
        kw = dict(obs_var=1.0, steps_per_cycle=5) | kw
        return ienks_cycle(method, flow, obs, ens, **kw)

    with pytest.raises(ValueError, match="at least 2 members"):
        call(ens=ens[:1])
    with pytest.raises(ValueError, match="`inflation` must be a finite float >= 1"):
        IEnKS(inflation=0.9)
    with pytest.raises(ValueError, match="`lag` must be >= 1"):
        IEnKS(lag=0)
    with pytest.raises(ValueError, match="`shift` must be between 1 and `lag`"):
        IEnKS(lag=2, shift=3)
    with pytest.raises(ValueError, match="`shift` must be >= 1"):
        IEnKS(shift=0)
    with pytest.raises(ValueError, match="`max_iterations` must be >= 1"):
        IEnKS(max_iterations=0)
    with pytest.raises(ValueError, match="`tol` must be finite and >= 0"):
        IEnKS(tol=-1.0)
    with pytest.raises(ValueError, match="`finite_size` must be finite and > 0"):
        IEnKS(finite_size=0.0)
    with pytest.raises(ValueError, match=r"`ensemble0` must have shape \(\*, 3\)"):
        call(ens=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="`obs` must have shape"):
        call(obs=Observations(jnp.zeros((11, 2)), jnp.ones((11, 2), bool)))
    with pytest.raises(ValueError, match="at least 1 \\+ lag \\* steps_per_cycle"):
        call(IEnKS(lag=3))
    with pytest.raises(ValueError, match="`obs_var` must be a scalar or have"):
        call(obs_var=jnp.ones(2))
    with pytest.raises(ValueError, match="`obs_var` must be finite and > 0"):
        call(obs_var=-1.0)
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        call(IEnKS(rotate=True))
    with pytest.raises(ValueError, match="`steps_per_cycle` must be >= 1"):
        call(steps_per_cycle=0)
    with pytest.raises(TypeError, match="`method` must be a jaxda IEnKS"):
        call(method="ienks")


@pytest.mark.slow
def test_cycled_lorenz63_beats_the_observation_noise():
    """DAPPER's Lorenz-63 setting (obs of all components every 25 steps, R = 2 I,
    N = 10), 300 cycles: the iterated smoother's analysis error is well below the
    observation error sqrt(2) and below the single-iteration (EnKF) run's."""
    flow = flow_map(Lorenz63(), 0.01)
    n_steps = 300 * 25
    truth = rollout(flow, jnp.array([1.509, -1.531, 25.46]), n_steps)
    noise = jnp.sqrt(2.0) * jax.random.normal(jax.random.key(0), truth.shape)
    mask = jnp.broadcast_to((jnp.arange(n_steps + 1) % 25 == 0)[:, None], truth.shape)
    obs = Observations(truth + noise, mask)
    ens = truth[0] + jnp.sqrt(2.0) * jax.random.normal(jax.random.key(1), (10, 3))
    errors = []
    for max_iterations in (1, 10):
        tol = 0.0 if max_iterations == 1 else 1e-5
        method = IEnKS(
            max_iterations=max_iterations, tol=tol, inflation=1.02, rotate=True
        )
        res = ienks_cycle(
            method, flow, obs, ens, obs_var=2.0, steps_per_cycle=25,
            key=jax.random.key(2), throw=False,
        )  # fmt: skip
        err = res.analysis - truth[res.analysis_steps]
        errors.append(float(jnp.mean(jnp.sqrt(jnp.mean(err[50:] ** 2, axis=1)))))
    assert errors[1] < 0.45 < errors[0]
