"""jaxda.ensemble: EnKF, ETKF, EnKF-N, LETKF and EnKS against exact Gaussian references.

On a linear model with linear (masked) observations, the Kalman filter and the
fixed-lag smoother are the Gaussian conditionals of the states given the
observations up to a time. The references below compute them from the dense joint
Gaussian of the initial state (the dynamics are deterministic: x_t = M^t x_0), in
covariance form (a rank-deficient prior is allowed), independently of the sequential
recursions under test.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import LinearDynamics

from jaxda import RESULTS, ensemble as ens
from jaxda.grid import Grid
from jaxda.models import flow_map
from jaxda.obs import MatrixOperator, Observations


DT = 0.2
T = 9


def _masks(n):
    """Observed entries change from time to time (and time 1 has none)."""
    mask = np.zeros((T, n), bool)
    mask[0, 0] = True
    mask[3, [0, n - 1]] = True
    mask[5, :] = True
    mask[8, 1] = True
    return mask


def _problem(n, rank, seed=0):
    rng = np.random.default_rng(seed)
    f = 0.6 * rng.standard_normal((n, n)) - 0.1 * np.eye(n)
    model = LinearDynamics(jnp.asarray(f))
    m = np.eye(n) + DT * f  # the Euler flow map
    m0 = rng.standard_normal(n)
    chol = rng.standard_normal((n, rank)) / np.sqrt(rank)
    x = m0 + chol @ rng.standard_normal(rank)
    truth = np.stack([np.linalg.matrix_power(m, t) @ x for t in range(T)])
    var = 0.2 + rng.uniform(size=n)
    mask = _masks(n)
    values = truth + np.sqrt(var) * rng.standard_normal((T, n))
    obs = Observations(jnp.asarray(values), jnp.asarray(mask))
    return model, m, m0, chol, var, obs


def _exact_ensemble(m0, chol, n_members, seed=1):
    """Members with exactly the mean m0 and covariance chol chol^T."""
    rng = np.random.default_rng(seed)
    k = chol.shape[1]
    z = rng.standard_normal((n_members, k + 1))
    z[:, 0] = 1.0
    q, _ = np.linalg.qr(z)  # q[:, 0] is parallel to the ones vector
    return jnp.asarray(m0 + np.sqrt(n_members - 1.0) * q[:, 1:] @ chol.T)


def _conditional(m, m0, p0, obs, var, s, last, h=None):
    """Mean and covariance of x_s given the observations y_t = h x_t + e_t at times
    0..last (h = None: the identity, through the mask)."""
    mask = np.asarray(obs.mask)
    values = np.asarray(obs.values)
    n = m0.size
    h = np.eye(n) if h is None else h
    rows, z, r = [], [], []
    for t in range(last + 1):
        mt = np.linalg.matrix_power(m, t)
        for j in np.flatnonzero(mask[t]):
            rows.append(h[j] @ mt)
            z.append(values[t, j])
            r.append(var[j])
    ms = np.linalg.matrix_power(m, s)
    if not rows:
        return ms @ m0, ms @ p0 @ ms.T
    g = np.array(rows)
    gain = p0 @ g.T @ np.linalg.inv(g @ p0 @ g.T + np.diag(r))
    mean0 = m0 + gain @ (np.array(z) - g @ m0)
    cov0 = (np.eye(n) - gain @ g) @ p0
    return ms @ mean0, ms @ cov0 @ ms.T


def _kalman_filter(m, m0, p0, obs, var, h=None):
    stats = [_conditional(m, m0, p0, obs, var, s, s, h) for s in range(T)]
    return np.stack([a for a, _ in stats]), np.stack([b for _, b in stats])


def _member_cov(members):
    a = members - members.mean(axis=-2, keepdims=True)
    return np.einsum("tki,tkj->tij", a, a) / (members.shape[-2] - 1)


# ----------------------------------------------------------------------------------
# Analyses against the Kalman filter
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, rank", [(3, 3), (6, 3)])
def test_etkf_with_an_exact_ensemble_is_the_kalman_filter(n, rank):
    # N = 4 members represent the rank-3 prior exactly, and a linear model keeps
    # them exact: the ETKF analyses are Kalman's to round-off. (3, 3): N > p, the
    # observation-space form; (6, 3): N <= p, the N x N eigendecomposition.
    model, m, m0, chol, var, obs = _problem(n, rank)
    e0 = _exact_ensemble(m0, chol, 4)
    res = ens.assimilate(
        ens.ETKF(), flow_map(model, DT, "euler"), obs, e0,
        key=jax.random.key(0), obs_var=jnp.asarray(var), save_members=True,
    )  # fmt: skip
    kf_mean, kf_cov = _kalman_filter(m, m0, chol @ chol.T, obs, var)
    assert res.analysis.dtype == jnp.float64
    np.testing.assert_allclose(res.analysis, kf_mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(_member_cov(np.asarray(res.members)), kf_cov, atol=1e-10)
    np.testing.assert_allclose(res.std**2, np.diagonal(kf_cov, 0, 1, 2), atol=1e-10)
    np.testing.assert_array_equal(res.analysed, np.asarray(obs.mask).any(axis=1))
    assert res.result == RESULTS.successful


@pytest.mark.parametrize("n_members, p", [(5, 8), (8, 5)])
def test_etkf_transform_is_the_symmetric_square_root(n_members, p):
    # X = 1 w^T + T - I with T = sqrt(N - 1) (S S^T + (N - 1) I)^(-1/2), the
    # symmetric root (scipy's sqrtm of the inverse, not an eigendecomposition);
    # (5, 8): N <= p, (8, 5): N > p. One observation unobserved (weight 0).
    rng = np.random.default_rng(10)
    e = rng.standard_normal((n_members, p))
    y = rng.standard_normal(p)
    weight = np.full(p, 2.0)
    weight[1] = 0.0
    x = jax.jit(lambda *a: ens.ETKF().transform(None, *a, state_shape=(p,)))(
        jnp.asarray(e), jnp.asarray(y), jnp.asarray(weight)
    )
    x = np.asarray(x.left if x.right is None else x.left @ x.right.T)
    n1 = n_members - 1.0
    s = (e - e.mean(0)) * np.sqrt(weight)
    d = (y - e.mean(0)) * np.sqrt(weight)
    g = s @ s.T + n1 * np.eye(n_members)
    t = np.sqrt(n1) * np.real(scipy.linalg.sqrtm(np.linalg.inv(g)))
    w = np.linalg.solve(g, s @ d)
    np.testing.assert_allclose(
        x, np.outer(np.ones(n_members), w) + t - np.eye(n_members), atol=1e-12
    )
    np.testing.assert_allclose(t @ np.ones(n_members), np.ones(n_members), atol=1e-12)


def test_etkf_with_a_linear_observation_operator_is_the_kalman_filter():
    # Two linear combinations of the three components (jaxda.obs.MatrixOperator),
    # their availability changing in time: the same exactness as with the mask.
    model, m, m0, chol, _, _ = _problem(3, 3)
    h = np.array([[1.0, 1.0, 0.0], [0.0, 0.5, -1.0]])
    rng = np.random.default_rng(9)
    mask = _masks(2)
    var = np.array([0.3, 0.7])
    obs = Observations(jnp.asarray(rng.standard_normal((T, 2))), jnp.asarray(mask))
    res = ens.assimilate(
        ens.ETKF(), flow_map(model, DT, "euler"), obs, _exact_ensemble(m0, chol, 4),
        key=jax.random.key(0), obs_var=jnp.asarray(var),
        operator=MatrixOperator(jnp.asarray(h)),
    )  # fmt: skip
    kf_mean, kf_cov = _kalman_filter(m, m0, chol @ chol.T, obs, var, h)
    np.testing.assert_allclose(res.analysis, kf_mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.std**2, np.diagonal(kf_cov, 0, 1, 2), atol=1e-10)


def test_stochastic_enkf_converges_to_the_kalman_filter():
    # N = 20000 members with an exact initial ensemble: the only randomness is the
    # perturbed observations. The perturbations are centred, so the first analysis
    # mean is Kalman's exactly. Afterwards each variance carries a relative sampling
    # error of standard deviation sqrt(2 / N) = 1%, each mean one of 1 / sqrt(N) =
    # 0.7% of its standard deviation (through the sampled gains). Tolerances: 5 and
    # 4 of those for every one of the 27 entries (8 keys gave at most 2.5% and 0.9%).
    n, n_members = 3, 20000
    model, m, m0, chol, var, obs = _problem(n, n)
    e0 = _exact_ensemble(m0, chol, n_members)
    res = ens.assimilate(
        ens.EnKF(), flow_map(model, DT, "euler"), obs, e0,
        key=jax.random.key(1), obs_var=jnp.asarray(var),
    )  # fmt: skip
    kf_mean, kf_cov = _kalman_filter(m, m0, chol @ chol.T, obs, var)
    np.testing.assert_allclose(res.analysis[0], kf_mean[0], atol=1e-10)
    kf_var = np.diagonal(kf_cov, 0, 1, 2)
    assert np.all(np.abs(res.analysis - kf_mean) <= 4 * np.sqrt(kf_var / n_members))
    assert np.all(np.abs(res.std**2 / kf_var - 1) <= 5 * np.sqrt(2 / n_members))


def _enkf_reference(e, y, var, weight, eps):
    """The textbook perturbed-observation update, dense and in physical units:
    E^a_i = E_i + K (y - eps_i - H E_i), K = P H^T (H P H^T + R)^-1, P the ensemble
    covariance, H the selection of the observed entries (weight > 0)."""
    obs = np.flatnonzero(weight > 0)
    h = np.eye(e.shape[1])[obs]
    p = np.cov(e, rowvar=False)
    gain = p @ h.T @ np.linalg.inv(h @ p @ h.T + np.diag(var[obs]))
    return e + (y[obs] - eps[:, obs] - e @ h.T) @ gain.T


@pytest.mark.parametrize("n_members, p", [(5, 8), (8, 5)])
@pytest.mark.parametrize("perturbations", ["centred", "rescaled", "uncentred"])
def test_enkf_analysis_is_the_perturbed_observation_update(n_members, p, perturbations):
    # One analysis against the dense NumPy update with the same perturbations
    # (N <= p: the N x N form; N > p: the observation-space form); two entries
    # unobserved. The perturbations are z - mean(z) (times sqrt(N / N1) for
    # "rescaled", DAPPER's), or z, with z the standard normal draws of the key.
    rng = np.random.default_rng(11)
    e = 2.0 * rng.standard_normal((n_members, p)) + 1.0
    y = rng.standard_normal(p)
    var = 0.5 + rng.uniform(size=p)
    weight = 1.0 / var
    weight[[1, 3]] = 0.0
    key = jax.random.key(4)
    enkf = ens.EnKF(perturbations=perturbations)
    z = np.array(jax.random.normal(key, (n_members, p), jnp.float64))
    if perturbations != "uncentred":
        z = z - z.mean(axis=0)
    if perturbations == "rescaled":
        z = z * np.sqrt(n_members / (n_members - 1.0))
    z[:, [1, 3]] = 0.0
    zs = enkf.observation_perturbations(key, jnp.asarray(weight), n_members)
    np.testing.assert_allclose(zs, z, rtol=0, atol=1e-14)
    transform = jax.jit(lambda *a: enkf.transform(key, *a, state_shape=(p,)))(
        jnp.asarray(e), jnp.asarray(y), jnp.asarray(weight)
    )
    expected = _enkf_reference(e, y, var, weight, np.sqrt(var) * z)
    np.testing.assert_allclose(transform(jnp.asarray(e)), expected, atol=1e-12)


@pytest.mark.parametrize("perturbations", ["centred", "rescaled", "uncentred"])
def test_enkf_expected_analysis_covariance(perturbations):
    # Given the forecast ensemble (N = 5, its covariance P, gain K), the analysis
    # covariance averaged over 4000 perturbation draws: (I - K H) P for centred and
    # uncentred perturbations (their sample covariance is R on average), plus
    # K R K^T / N1 for the rescaled ones (sample covariance N / N1 R; an extra
    # inflation of the observation-error part, 25% of K R K^T here). Tolerance: 5
    # Monte Carlo standard errors of every entry, and the other formula must lie
    # beyond 10 of them. Centred and rescaled: the mean is Kalman's in every draw.
    rng = np.random.default_rng(12)
    n_members, n, n_draws = 5, 3, 4000
    e = rng.standard_normal((n_members, n)) @ np.array(
        [[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.8]]
    )
    y = rng.standard_normal(n)
    var = np.array([0.4, 0.7, 1.0])
    weight = 1.0 / var
    enkf = ens.EnKF(perturbations=perturbations)

    @jax.jit
    @jax.vmap
    def analyse(key):
        t = enkf.transform(
            key, jnp.asarray(e), jnp.asarray(y), jnp.asarray(weight), state_shape=(n,)
        )
        return t(jnp.asarray(e))

    ea = np.asarray(analyse(jax.random.split(jax.random.key(5), n_draws)))
    p = np.cov(e, rowvar=False)
    gain = p @ np.linalg.inv(p + np.diag(var))
    kalman = (np.eye(n) - gain) @ p
    extra = gain @ np.diag(var) @ gain.T / (n_members - 1.0)
    covs = np.stack([np.cov(x, rowvar=False) for x in ea])
    se = covs.std(axis=0, ddof=1) / np.sqrt(n_draws)
    expected, other = (
        (kalman + extra, kalman)
        if perturbations == "rescaled"
        else (kalman, kalman + extra)
    )
    assert np.all(np.abs(covs.mean(axis=0) - expected) <= 5 * se)
    assert np.max(np.abs(covs.mean(axis=0) - other) / se) > 10
    kalman_mean = e.mean(0) + gain @ (y - e.mean(0))
    means = ea.mean(axis=1)
    if perturbations == "uncentred":
        assert np.abs(means - kalman_mean).max() > 0.1
    else:
        np.testing.assert_allclose(
            means, np.broadcast_to(kalman_mean, means.shape), atol=1e-12
        )


def test_letkf_with_an_infinite_radius_is_the_etkf():
    model, _, m0, chol, var, obs = _problem(6, 3)
    e0 = _exact_ensemble(m0, chol, 4)
    run = dict(key=jax.random.key(0), obs_var=jnp.asarray(var), save_members=True)
    flow = flow_map(model, DT, "euler")
    etkf = ens.assimilate(ens.ETKF(inflation=1.1), flow, obs, e0, **run)
    letkf = ens.assimilate(ens.LETKF(jnp.inf, inflation=1.1), flow, obs, e0, **run)
    np.testing.assert_allclose(letkf.members, etkf.members, rtol=0, atol=1e-10)


def test_letkf_with_a_point_radius_analyses_each_entry_with_its_own_observation():
    # Half width 0.5: the Gaspari-Cohn taper vanishes from 2c = 1 grid step on, so
    # entry j sees observation j only: a scalar ETKF, whose symmetric square root
    # is explicit: T = I - (1 - sqrt(N1 / (N1 + |s|^2))) s s^T / |s|^2.
    rng = np.random.default_rng(3)
    n, n_members = 5, 4  # N <= p: the N x N eigendecompositions
    e = jnp.asarray(rng.standard_normal((n_members, n)))
    y = jnp.asarray(rng.standard_normal(n))
    var = 0.5
    one = Observations(y[None], jnp.ones((1, n), bool))
    model = LinearDynamics(jnp.zeros((n, n)))
    res = ens.assimilate(
        ens.LETKF(0.5), flow_map(model, DT, "euler"), one, e,
        key=jax.random.key(0), obs_var=var, save_members=True,
    )  # fmt: skip
    e = np.asarray(e)
    n1 = n_members - 1.0
    expected = np.empty_like(e)
    for j in range(n):
        a = e[:, j] - e[:, j].mean()
        s = a / np.sqrt(var)
        d = (float(y[j]) - e[:, j].mean()) / np.sqrt(var)
        w = s * d / (s @ s + n1)  # Omega^-1 s d, Omega = s s^T + N1 I
        t = np.eye(n_members) - (1 - np.sqrt(n1 / (n1 + s @ s))) * np.outer(s, s) / (
            s @ s
        )
        expected[:, j] = e[:, j].mean() + a @ w + t @ a
    np.testing.assert_allclose(res.members[0], expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------
# The smoother
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "analysis, lag", [(ens.ETKF(), 3), (ens.ETKF(), T), (ens.LETKF(jnp.inf), 3)]
)
def test_enks_is_the_fixed_lag_kalman_smoother(analysis, lag):
    # lag = T: every analysis updates all earlier times, the RTS (fixed-interval)
    # smoother; lag = 3: time s is conditioned on the observations up to s + 3. The
    # LETKF (its n local transforms applied to the lagged ensembles) with an
    # infinite radius is the ETKF.
    model, m, m0, chol, var, obs = _problem(6, 3)
    e0 = _exact_ensemble(m0, chol, 4)
    res = ens.assimilate(
        ens.EnKS(analysis, lag), flow_map(model, DT, "euler"), obs, e0,
        key=jax.random.key(0), obs_var=jnp.asarray(var),
    )  # fmt: skip
    p0 = chol @ chol.T
    ref = [_conditional(m, m0, p0, obs, var, s, min(s + lag, T - 1)) for s in range(T)]
    np.testing.assert_allclose(res.smoothed, [a for a, _ in ref], rtol=0, atol=1e-10)
    sd = [np.sqrt(np.diag(b)) for _, b in ref]
    np.testing.assert_allclose(res.smoothed_std, sd, rtol=0, atol=1e-9)
    kf_mean, _ = _kalman_filter(m, m0, p0, obs, var)
    np.testing.assert_allclose(res.analysis, kf_mean, rtol=0, atol=1e-10)
    # the first-guess helper is this smoother's mean and spread
    guess = ens.smoother_first_guess(
        flow_map(model, DT, "euler"), obs, e0, key=jax.random.key(0),
        obs_var=jnp.asarray(var), lag=lag, filter=analysis,
    )  # fmt: skip
    np.testing.assert_array_equal(guess.mean, res.smoothed)
    np.testing.assert_array_equal(guess.std, res.smoothed_std)
    assert guess.result == RESULTS.successful


def test_climatology_ensemble_draws_distinct_archived_states():
    archive = jnp.arange(30.0).reshape(10, 3)
    e = ens.climatology_ensemble(jax.random.key(3), archive, 6)
    rows = {tuple(r) for r in np.asarray(e)}
    assert e.shape == (6, 3) and len(rows) == 6
    assert rows <= {tuple(r) for r in np.asarray(archive)}
    with pytest.raises(ValueError, match="`n_members` must be <="):
        ens.climatology_ensemble(jax.random.key(3), archive, 11)
    with pytest.raises(ValueError, match="`states` must be an archive"):
        ens.climatology_ensemble(jax.random.key(3), archive[0], 2)


# ----------------------------------------------------------------------------------
# Inflation, rotations, EnKF-N
# ----------------------------------------------------------------------------------


def test_inflation_and_rotation_keep_the_mean_and_scale_the_covariance():
    rng = np.random.default_rng(4)
    e = jnp.asarray(rng.standard_normal((7, 2, 3)))
    mean = e.mean(axis=0)
    cov = np.cov(np.asarray(e).reshape(7, -1), rowvar=False)
    inflated = ens.inflate(e, 1.3)
    np.testing.assert_allclose(inflated.mean(axis=0), mean, atol=1e-14)
    np.testing.assert_allclose(
        np.cov(np.asarray(inflated).reshape(7, -1), rowvar=False),
        1.69 * cov,
        atol=1e-12,
    )
    rotated = ens.rotate(jax.random.key(5), e)
    np.testing.assert_allclose(rotated.mean(axis=0), mean, atol=1e-14)
    np.testing.assert_allclose(
        np.cov(np.asarray(rotated).reshape(7, -1), rowvar=False), cov, atol=1e-12
    )
    assert np.abs(np.asarray(rotated - e)).max() > 0.1  # the members did change
    q = ens.mean_preserving_rotation(jax.random.key(6), 7)
    np.testing.assert_allclose(q @ q.T, np.eye(7), atol=1e-13)
    np.testing.assert_allclose(q @ np.ones(7), np.ones(7), atol=1e-13)


def test_post_analysis_inflation_and_rotation_in_the_cycle():
    # Same analysis mean at the first analysis (t = 0) and std times the inflation.
    model, _, m0, chol, var, obs = _problem(3, 3)
    e0 = _exact_ensemble(m0, chol, 4)
    flow = flow_map(model, DT, "euler")
    # (The configuration of the first test: its compilation is reused.)
    run = dict(key=jax.random.key(0), obs_var=jnp.asarray(var), save_members=True)
    plain = ens.assimilate(ens.ETKF(), flow, obs, e0, **run)
    post = ens.assimilate(ens.ETKF(inflation=1.2, rotate=True), flow, obs, e0, **run)
    np.testing.assert_allclose(post.analysis[0], plain.analysis[0], atol=1e-12)
    np.testing.assert_allclose(post.std[0], 1.2 * plain.std[0], atol=1e-12)


def test_enkf_n_inflation_minimises_the_dual_cost():
    # [B11, BRR15]'s dual cost, evaluated here from the SVD of S (not the
    # eigendecomposition the implementation uses), minimised on a fine grid.
    rng = np.random.default_rng(7)
    n_members, p = 8, 12
    s = rng.standard_normal((n_members, p))
    s -= s.mean(axis=0)
    d = 3.0 * rng.standard_normal(p)  # innovations larger than the spread
    l1 = float(ens.EnKFN().inflation_factor(jnp.asarray(s), jnp.asarray(d)))
    n1 = n_members - 1
    _, sig, ut = np.linalg.svd(s, full_matrices=False)
    du = ut @ d
    sig2 = np.concatenate([sig**2, np.zeros(n_members - sig.size)])
    e_n, c_l = (n_members + 1) / n_members, n_members / n1
    mc = np.sqrt((e_n / c_l) ** np.mean(n1 / (sig2 + n1)))
    e_n, c_l = e_n / mc, c_l * mc

    grid = np.linspace(0.5, 10.0, 190001)
    fit = np.sum(du**2 / (grid[:, None] ** 2 * sig**2 + n1), axis=1)
    dual = fit + e_n / grid**2 + c_l * np.log(grid**2)
    best = grid[np.argmin(dual)]
    assert l1 > 1.05  # large innovations ask for inflation
    assert abs(l1 - best) < 1e-3


# ----------------------------------------------------------------------------------
# Localisation
# ----------------------------------------------------------------------------------


def test_gaspari_cohn_taper():
    r = jnp.array([0.0, 0.5, 1.0 - 1e-12, 1.0, 1.0 + 1e-12, 2.0, 2.5, jnp.inf])
    rho = np.asarray(ens.gaspari_cohn(r, 1.0))
    assert rho[0] == 1.0 and rho[-1] == 0.0 and rho[-2] == 0.0
    np.testing.assert_allclose(rho[2:5], 5.0 / 24.0, atol=1e-10)  # continuous at c
    assert abs(rho[5]) < 1e-12  # and at 2c
    assert 5 / 24 < rho[1] < 1
    # A correlation function on the line: the taper matrix is positive semi-definite.
    line = ens.LocalisationGrid((30,), spacing=0.7, periodic=False)
    eig = np.linalg.eigvalsh(np.asarray(ens.gaspari_cohn_matrix(line, 2.0)))
    assert eig.min() > -1e-12
    ring = ens.LocalisationGrid(10)
    dist = ring.distances(ring.coordinates(), ring.coordinates())
    assert float(dist[0, 9]) == 1.0 and float(dist[0, 5]) == 5.0  # periodic
    grid2 = ens.LocalisationGrid((4, 5), spacing=(1.0, 2.0))
    xy = grid2.coordinates()
    assert float(grid2.distances(xy[:1], xy[4:5])[0, 0]) == 2.0  # (0,0)-(0,4) wraps
    # a 2-D jaxda.grid.Grid: the same geometry, distances in its units
    field_grid = Grid(4, 5, dy=1.0, dx=2.0)
    assert ens.LocalisationGrid.from_grid(field_grid) == grid2
    taper = ens.LETKF(3.0, grid=field_grid).taper((4, 5))
    np.testing.assert_array_equal(taper, ens.LETKF(3.0, grid=grid2).taper((4, 5)))
    closed = ens.LocalisationGrid.from_grid(Grid(4, 5, boundary="closed"))
    assert not closed.periodic and closed.spacings == (1.0, 1.0)
    with pytest.raises(TypeError, match="LocalisationGrid, a jaxda.grid.Grid"):
        ens.LETKF(3.0, grid=(4, 5))


def test_localised_covariance_is_the_schur_product():
    rng = np.random.default_rng(8)
    e = rng.standard_normal((6, 10))
    taper = ens.gaspari_cohn_matrix(ens.LocalisationGrid(10), 2.0)
    out = ens.localised_covariance(jnp.asarray(e), taper)
    np.testing.assert_allclose(
        out, np.asarray(taper) * np.cov(e, rowvar=False), atol=1e-13
    )


# ----------------------------------------------------------------------------------
# JAX properties: vmap, float32, compilation, failures
# ----------------------------------------------------------------------------------


def test_vmap_over_independent_runs_and_inflations():
    # Random rotations (keys) and inflations differ between the runs. (The single
    # runs reuse the compilation of the rotation test's configuration.)
    model, _, m0, chol, var, obs = _problem(3, 3)
    e0 = _exact_ensemble(m0, chol, 4)
    flow = flow_map(model, DT, "euler")
    keys = jax.random.split(jax.random.key(2), 3)
    infl = jnp.array([1.0, 1.0, 1.3])

    def run(key, inflation):
        res = ens.assimilate(
            ens.ETKF(inflation=inflation, rotate=True), flow, obs, e0,
            key=key, obs_var=jnp.asarray(var), save_members=True, throw=False,
        )  # fmt: skip
        return res.members, res.result

    members, results = jax.vmap(run)(keys, infl)
    for i in range(3):
        single, _ = run(keys[i], float(infl[i]))
        np.testing.assert_allclose(members[i], single, rtol=0, atol=1e-12)
    assert np.all(results == RESULTS.successful)
    assert np.abs(np.asarray(members[0] - members[1])).max() > 1e-3  # other keys
    assert np.abs(np.asarray(members[0] - members[2])).max() > 1e-3


def test_float32_follows_float64():
    model, _, m0, chol, var, obs = _problem(3, 3)
    e0 = _exact_ensemble(m0, chol, 4)
    flow = flow_map(model, DT, "euler")
    kw = dict(key=jax.random.key(0), obs_var=jnp.asarray(var))
    res64 = ens.assimilate(ens.ETKF(), flow, obs, e0, **kw)
    kw["obs_var"] = kw["obs_var"].astype(jnp.float32)
    res32 = ens.assimilate(
        ens.ETKF(), flow, obs.astype(jnp.float32), e0.astype(jnp.float32), **kw
    )
    assert res32.analysis.dtype == jnp.float32 and res32.std.dtype == jnp.float32
    np.testing.assert_allclose(res32.analysis, res64.analysis, rtol=0, atol=1e-4)


class _Counter:
    """Hashable by identity (a static field); counts the traces of a function."""

    def __init__(self):
        self.n = 0


class _CountingDynamics(LinearDynamics):
    traces: _Counter = eqx.field(static=True, default_factory=_Counter)

    def vector_field(self, t, x):
        self.traces.n += 1  # runs once per trace, not per call
        return self.F @ x


def test_compiles_once_per_configuration():
    model, _, m0, chol, var, obs = _problem(3, 3)
    counting = _CountingDynamics(model.F)
    flow = flow_map(counting, DT, "euler")
    e0 = _exact_ensemble(m0, chol, 4)
    kw = dict(obs_var=jnp.asarray(var))
    ens.assimilate(ens.LETKF(3.0), flow, obs, e0, key=jax.random.key(0), **kw)
    n_traces = counting.traces.n
    assert n_traces >= 1
    obs2 = Observations(obs.values + 1.0, obs.mask)
    ens.assimilate(
        ens.LETKF(5.0, inflation=1.2), flow, obs2, e0 + 0.5, key=jax.random.key(1), **kw
    )
    assert counting.traces.n == n_traces  # new data and hyperparameters: no retrace


def test_divergence_is_reported_not_silent():
    n = 2
    model = LinearDynamics(1e200 * jnp.eye(n))  # overflows after two steps
    flow = flow_map(model, 1.0, "euler")
    obs = Observations(jnp.zeros((5, n)), jnp.ones((5, n), bool))
    e0 = jnp.asarray(np.random.default_rng(0).standard_normal((4, n)))
    kw = dict(key=jax.random.key(0), obs_var=1.0)
    res = ens.assimilate(ens.ETKF(), flow, obs, e0, throw=False, **kw)
    assert res.result == RESULTS.nonfinite
    assert np.all(np.isfinite(res.analysis)) and np.all(np.isfinite(res.std))
    assert res.converged[0] and not res.converged[1]
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        ens.assimilate(ens.ETKF(), flow, obs, e0, **kw)
    # A collapsed ensemble (observations far more precise than the spread).
    still = flow_map(LinearDynamics(jnp.zeros((n, n))), 1.0, "euler")
    res = ens.assimilate(
        ens.ETKF(), still, obs, e0, throw=False, key=jax.random.key(0), obs_var=1e-40
    )
    assert res.result == RESULTS.collapsed
    assert np.all(np.isfinite(res.analysis))


def test_bad_input_names_the_argument():
    model, _, m0, chol, var, obs = _problem(3, 3)
    flow = flow_map(model, DT, "euler")
    e0 = _exact_ensemble(m0, chol, 4)
    kw = dict(key=jax.random.key(0), obs_var=1.0)
    with pytest.raises(ValueError, match="`ensemble0` must have N >= 2"):
        ens.assimilate(ens.ETKF(), flow, obs, e0[:1], **kw)
    with pytest.raises(ValueError, match="`ensemble0` must have shape"):
        ens.assimilate(ens.ETKF(), flow, obs, e0[:, :2], **kw)
    with pytest.raises(ValueError, match="positive spread"):
        ens.assimilate(ens.ETKF(), flow, obs, jnp.ones((4, 3)), **kw)
    with pytest.raises(ValueError, match="`obs` must have shape"):
        ens.assimilate(ens.ETKF(), flow, obs[:, :2], e0, **kw)
    with pytest.raises(ValueError, match="`inflation` must be"):
        ens.ETKF(inflation=0.9)
    with pytest.raises(ValueError, match="`perturbations` must be one of"):
        ens.EnKF(perturbations="centered")
    with pytest.raises(ValueError, match="`inflation` must be"):
        ens.EnKF(inflation=0.9, perturbations="rescaled")
    with pytest.raises(ValueError, match="`radius` must be"):
        ens.LETKF(0.0)
    with pytest.raises(ValueError, match="`radius` must be"):
        ens.LETKF(-2.0)
    with pytest.raises(ValueError, match="`lag` must be"):
        ens.EnKS(ens.ETKF(), -1)
    with pytest.raises(TypeError, match="`filter` must be"):
        ens.EnKS("etkf", 2)
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        ens.assimilate(ens.ETKF(), flow, obs, e0, key=0, obs_var=1.0)
    with pytest.raises(ValueError, match="`obs_var` must be finite and > 0"):
        ens.assimilate(ens.ETKF(), flow, obs, e0, key=jax.random.key(0), obs_var=-1.0)
    with pytest.raises(ValueError, match="`obs_var` must be a scalar or broadcastable"):
        ens.assimilate(
            ens.ETKF(), flow, obs, e0, key=jax.random.key(0), obs_var=jnp.ones(4)
        )
    with pytest.raises(TypeError, match="`method` must be"):
        ens.assimilate("etkf", flow, obs, e0, **kw)
    with pytest.raises(ValueError, match="`grid` must have the state shape"):
        ens.assimilate(
            ens.LETKF(2.0, grid=ens.LocalisationGrid(5)), flow, obs, e0, **kw
        )
    with pytest.raises(ValueError, match="LETKF localises observations"):
        ens.assimilate(
            ens.LETKF(2.0), flow, obs, e0, operator=MatrixOperator(jnp.eye(3)), **kw
        )
    with pytest.raises(ValueError, match="`obs` must have shape"):
        op = MatrixOperator(jnp.ones((2, 3)))
        ens.assimilate(ens.ETKF(), flow, obs, e0, operator=op, **kw)


# ----------------------------------------------------------------------------------
# Cycled Lorenz-96 (slow)
# ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, n_members, published",
    [
        (ens.ETKF(inflation=1.04, rotate=True), 20, 0.20),
        (ens.EnKFN(xN=2.0), 20, 0.19),
        (ens.LETKF(1.82 * 4, inflation=1.04, rotate=True), 7, 0.22),
        (ens.EnKF(inflation=1.06), 40, 0.22),
    ],
)
def test_cycled_lorenz96_reaches_the_published_rmse(method, n_members, published):
    # [DAPPER]'s sakov2008 set-up (Lorenz-96, n = 40, F = 8, dt = 0.05, RK4, every
    # component observed at every step, R = I) and its documented tunings and
    # time-averaged analysis RMSE; 1500 cycles, the first 300 excluded.
    from jaxda.models import Lorenz96, rollout

    model = Lorenz96()
    flow = flow_map(model, 0.05, "rk4")
    x0 = rollout(flow, model.reference_state, 2000)[-1]
    truth = rollout(flow, x0, 1500)
    obs = Observations(
        truth + jax.random.normal(jax.random.key(42), truth.shape),
        jnp.ones(truth.shape, bool),
    )
    e0 = truth[0] + jax.random.normal(jax.random.key(1), (n_members, 40))
    res = ens.assimilate(method, flow, obs, e0, key=jax.random.key(0), obs_var=1.0)
    rmse = jnp.sqrt(jnp.mean((res.analysis - truth) ** 2, axis=1))[301:].mean()
    assert rmse < published + 0.03
