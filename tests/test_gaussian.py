"""Gaussian MAP: Kalman-smoother exactness, covariance == precision == dense."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_grad
from hypothesis import given, settings, strategies as st

from jaxda import RESULTS
from jaxda.gaussian import (
    GaussianMAP,
    PosteriorVariance,
    map_covariance,
    map_dense,
    map_precision,
    posterior_variance,
)
from jaxda.linalg import BlockTridiagonal, SymmetricBandMatrix


OK = RESULTS.successful


def lgssm(rng, t, n):
    """A random stable linear-Gaussian model and its trajectory precision."""
    m = rng.normal(size=(n, n))
    m = 0.9 * m / np.max(np.abs(np.linalg.eigvals(m)))
    a = rng.normal(size=(n, n))
    qw = 0.1 * (a @ a.T) + 0.05 * np.eye(n)
    m0 = rng.normal(size=n)
    p0 = np.eye(n) + 0.2 * np.ones((n, n))
    qi, p0i = np.linalg.inv(qw), np.linalg.inv(p0)
    diag = np.stack([qi + m.T @ qi @ m] * t)
    diag[0] = p0i + m.T @ qi @ m
    diag[-1] = qi if t > 1 else p0i
    lower = np.array([-qi @ m] * (t - 1)).reshape(t - 1, n, n)
    mu = np.stack([np.linalg.matrix_power(m, s) @ m0 for s in range(t)])
    return m, qw, m0, p0, BlockTridiagonal(diag, lower), mu


def kalman_rts(m, qw, m0, p0, y, mask, r):
    """Kalman filter + Rauch-Tung-Striebel smoother (numpy), partial observations."""
    t, n = y.shape
    means, covs, pred_m, pred_p = [], [], [], []
    xm, pm = m0, p0
    for s in range(t):
        if s > 0:
            xm, pm = m @ means[-1], m @ covs[-1] @ m.T + qw
        pred_m.append(xm)
        pred_p.append(pm)
        h = np.eye(n)[mask[s]]
        if h.shape[0]:
            s_mat = h @ pm @ h.T + np.diag(r[s][mask[s]])
            k = pm @ h.T @ np.linalg.inv(s_mat)
            xm = xm + k @ (y[s][mask[s]] - h @ xm)
            pm = pm - k @ h @ pm
        means.append(xm)
        covs.append(pm)
    sm, sp = [means[-1]], [covs[-1]]
    for s in range(t - 2, -1, -1):
        g = covs[s] @ m.T @ np.linalg.inv(pred_p[s + 1])
        sm.insert(0, means[s] + g @ (sm[0] - pred_m[s + 1]))
        sp.insert(0, covs[s] + g @ (sp[0] - pred_p[s + 1]) @ g.T)
    return np.stack(sm), np.stack([np.diag(p) for p in sp])


@pytest.mark.parametrize("t,n", [(1, 2), (12, 3)])
def test_precision_map_equals_kalman_smoother(t, n):
    rng = np.random.default_rng(t)
    m, qw, m0, p0, prec, mu = lgssm(rng, t, n)
    y = rng.normal(size=(t, n))
    mask = rng.uniform(size=(t, n)) < 0.4
    r = rng.uniform(0.1, 0.5, size=(t, n))
    smooth_mean, smooth_var = kalman_rts(m, qw, m0, p0, y, mask, r)
    res = map_precision(mu, prec, y, mask, r)
    assert isinstance(res, GaussianMAP) and res.result == OK
    np.testing.assert_allclose(res.mean, smooth_mean, rtol=1e-9, atol=1e-9)
    var = posterior_variance(prec, mask, r)
    assert isinstance(var, PosteriorVariance) and var.result == OK
    np.testing.assert_allclose(var.variance, smooth_var, rtol=1e-9)
    # same answer from the banded layout, the covariance form and the dense reference
    band = prec.to_band()
    flat = map_precision(
        mu.reshape(-1), band, y.reshape(-1), mask.reshape(-1), r.reshape(-1)
    )
    np.testing.assert_allclose(flat.mean.reshape(t, n), smooth_mean, atol=1e-9)
    cov = np.linalg.inv(np.asarray(prec.to_dense()))
    res_cov = map_covariance(mu, cov, y, mask, r)
    np.testing.assert_allclose(res_cov.mean, smooth_mean, atol=1e-9)
    np.testing.assert_allclose(
        map_dense(mu, y, r, mask=mask, cov=cov).mean, smooth_mean, atol=1e-9
    )


def random_band(rng, d, b):
    lower = sum(
        np.diag(
            rng.uniform(0.5, 1.5, d - k) if k == 0 else rng.normal(0, 0.4, d - k), -k
        )
        for k in range(min(b, d - 1) + 1)
    )
    dense = lower @ lower.T
    band = np.stack(
        [
            np.concatenate([np.diag(dense, -k), np.zeros(min(k, d))])
            for k in range(b + 1)
        ]
    )
    return SymmetricBandMatrix(band), dense


def numpy_map_cov(mu, p, y, mask, r):
    h = np.eye(mu.size)[mask]
    s = h @ p @ h.T + np.diag(r[mask])
    return mu + p @ h.T @ np.linalg.solve(s, y[mask] - mu[mask])


_COVARIANCE_PRECISION_DENSE_AGREE_CASES = dict(
    d=st.sampled_from([1, 4, 15]),
    b=st.sampled_from([0, 2]),
    seed=st.integers(0, 2**31 - 1),
)


def _covariance_precision_dense_agree(d, b, seed):
    rng = np.random.default_rng(seed)
    mat, dense = random_band(rng, d, b)
    mu, y = rng.normal(size=d), rng.normal(size=d)
    mask = rng.uniform(size=d) < rng.uniform()
    r = rng.uniform(0.1, 1.0, size=d)
    # banded covariance P = dense
    expected = numpy_map_cov(mu, dense, y, mask, r)
    np.testing.assert_allclose(
        map_covariance(mu, mat, y, mask, r).mean, expected, atol=1e-9
    )
    np.testing.assert_allclose(
        map_covariance(mu, dense, y, mask, r).mean, expected, atol=1e-9
    )
    np.testing.assert_allclose(
        map_dense(mu, y, r, mask=mask, cov=dense).mean, expected, atol=1e-9
    )
    # observation space: only the observed block is factorised (buffer of d slots)
    for prior in (mat, dense):
        res = map_covariance(mu, prior, y, mask, r, max_obs=d)
        assert res.result == OK
        np.testing.assert_allclose(res.mean, expected, atol=1e-9)
    h = np.eye(d)[mask]
    np.testing.assert_allclose(
        map_dense(mu, y[mask], r[mask], H=h, cov=dense).mean, expected, atol=1e-9
    )
    # banded precision Q = dense: compare with the covariance form of P = Q^{-1}
    expected_q = numpy_map_cov(mu, np.linalg.inv(dense), y, mask, r)
    res = map_precision(mu, mat, y, mask, r)
    assert res.result == OK
    np.testing.assert_allclose(res.mean, expected_q, atol=1e-8)
    np.testing.assert_allclose(
        map_dense(mu, y[mask], r[mask], H=h, precision=dense).mean,
        expected_q,
        atol=1e-8,
    )


@settings(max_examples=5, deadline=None)
@given(**_COVARIANCE_PRECISION_DENSE_AGREE_CASES)
def test_covariance_precision_dense_agree(d, b, seed):
    _covariance_precision_dense_agree(d, b, seed)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(**_COVARIANCE_PRECISION_DENSE_AGREE_CASES)
def test_covariance_precision_dense_agree_many_cases(d, b, seed):
    _covariance_precision_dense_agree(d, b, seed)


def test_no_and_full_observations():
    rng = np.random.default_rng(0)
    mat, dense = random_band(rng, 7, 2)
    mu, y = rng.normal(size=(7,)), rng.normal(size=(7,))
    none = np.zeros(7, bool)
    for fn in (map_precision, map_covariance):
        np.testing.assert_array_equal(fn(mu, mat, y, none, 0.3).mean, mu)
    # all observed with tiny noise: the MAP is close to y
    full = np.ones(7, bool)
    for fn in (map_precision, map_covariance):
        np.testing.assert_allclose(fn(mu, mat, y, full, 1e-10).mean, y, atol=1e-6)


def test_vmap_over_samples_and_masks():
    rng = np.random.default_rng(1)
    mat, dense = random_band(rng, 10, 3)
    mus, ys = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    masks = rng.uniform(size=(5, 10)) < 0.5
    out = jax.vmap(lambda mu, y, mk: map_covariance(mu, mat, y, mk, 0.2).mean)(
        mus, ys, masks
    )
    for i in range(5):
        expected = numpy_map_cov(mus[i], dense, ys[i], masks[i], np.full(10, 0.2))
        np.testing.assert_allclose(out[i], expected, atol=1e-9)
    res = jax.jit(jax.vmap(lambda mk: map_precision(mus[0], mat, ys[0], mk, 0.2)))(
        masks
    )
    assert res.mean.shape == (5, 10) and bool(jnp.all(res.result == OK))


def test_gradients_against_dense_and_finite_differences():
    rng = np.random.default_rng(2)
    d = 8
    mat, dense = random_band(rng, d, 2)
    mu, y = jnp.asarray(rng.normal(size=d)), jnp.asarray(rng.normal(size=d))
    mask = jnp.asarray(rng.uniform(size=d) < 0.5)
    r = jnp.asarray(rng.uniform(0.2, 1.0, size=d))
    w = jnp.asarray(rng.normal(size=d))

    obs_space = functools.partial(map_covariance, max_obs=d)
    forms = [(map_precision, "precision"), (map_covariance, "cov"), (obs_space, "cov")]
    for form, dense_kw in forms:

        @jax.jit
        def loss(band, mu, y, r, form=form):
            x = form(mu, SymmetricBandMatrix(band), y, mask, r).mean
            return jnp.sum(w * x) + jnp.sum(x**2)

        @jax.jit
        def loss_dense(band, mu, y, r, dense_kw=dense_kw):
            a = SymmetricBandMatrix(band).to_dense()
            x = map_dense(mu, y, r, mask=mask, **{dense_kw: a}).mean
            return jnp.sum(w * x) + jnp.sum(x**2)

        args = (mat.band, mu, y, r)
        g = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
        gd = jax.grad(loss_dense, argnums=(0, 1, 2, 3))(*args)
        for a, b in zip(g, gd):
            np.testing.assert_allclose(a, b, atol=1e-9)
        fd = finite_difference_grad(lambda v: loss(v, mu, y, r), mat.band)
        np.testing.assert_allclose(g[0], fd, atol=1e-6)
        fd = finite_difference_grad(lambda v: loss(mat.band, mu, y, v), r)
        np.testing.assert_allclose(g[3], fd, atol=1e-6)
        tangents = tuple(jnp.asarray(rng.normal(size=jnp.shape(a))) for a in args)
        np.testing.assert_allclose(
            jax.jvp(loss, args, tangents)[1],
            jax.jvp(loss_dense, args, tangents)[1],
            rtol=1e-9,
        )


def test_observation_space_block_tridiagonal_and_buffer_overflow():
    rng = np.random.default_rng(5)
    *_, cov, mu = lgssm(rng, 6, 3)  # an SPD block-tridiagonal matrix, as a covariance
    y = rng.normal(size=mu.shape)
    mask = rng.uniform(size=mu.shape) < 0.3
    count = int(mask.sum())
    expected = numpy_map_cov(
        mu.ravel(),
        np.asarray(cov.to_dense()),
        y.ravel(),
        mask.ravel(),
        np.full(18, 0.4),
    ).reshape(mu.shape)
    for max_obs in (count, count + 3):
        res = map_covariance(mu, cov, y, mask, 0.4, max_obs=max_obs)
        assert res.result == OK
        np.testing.assert_allclose(res.mean, expected, atol=1e-9)
    np.testing.assert_allclose(map_covariance(mu, cov, y, mask, 0.4).mean, expected)
    # more observations than the buffer: an error at the boundary, a result inside jit
    with pytest.raises(ValueError, match=f"holds {count} observations but `max_obs`"):
        map_covariance(mu, cov, y, mask, 0.4, max_obs=count - 1)

    def overflow(mk, throw):
        return map_covariance(mu, cov, y, mk, 0.4, max_obs=count - 1, throw=throw)

    res = jax.jit(functools.partial(overflow, throw=False))(mask)
    assert res.result == RESULTS.invalid_input and bool(jnp.all(jnp.isnan(res.mean)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="value check"):
        eqx.filter_jit(overflow)(mask, True)
    with pytest.raises(ValueError, match="max_obs"):
        map_covariance(mu, cov, y, mask, 0.4, max_obs=0)


def test_float32_and_flag():
    rng = np.random.default_rng(3)
    mat, dense = random_band(rng, 12, 2)
    mat32 = SymmetricBandMatrix(mat.band.astype(jnp.float32))
    mu = rng.normal(size=12).astype(np.float32)
    y = rng.normal(size=12).astype(np.float32)
    mask = rng.uniform(size=12) < 0.5
    res = map_precision(mu, mat32, y, mask, np.float32(0.5))
    assert res.mean.dtype == jnp.float32
    expected = numpy_map_cov(mu, np.linalg.inv(dense), y, mask, np.full(12, 0.5))
    np.testing.assert_allclose(res.mean, expected, rtol=1e-4, atol=1e-4)
    bad = SymmetricBandMatrix(-mat.band)
    res = jax.jit(functools.partial(map_precision, throw=False))(
        mu, bad, y, np.zeros(12, bool), 0.5
    )
    assert res.result == RESULTS.not_positive_definite


def test_validation_errors():
    mat, _ = random_band(np.random.default_rng(4), 6, 1)
    z = np.zeros(6)
    mask = np.ones(6, bool)
    with pytest.raises(ValueError, match="`mu` and `y` must have the same shape"):
        map_precision(z, mat, np.zeros(5), mask, 1.0)
    with pytest.raises(TypeError, match="`mask` must be a boolean"):
        map_precision(z, mat, z, np.ones(6), 1.0)
    with pytest.raises(ValueError, match="obs_var"):
        map_precision(z, mat, z, mask, 0.0)
    with pytest.raises(ValueError, match="has size 6 but `mu` has 7"):
        map_covariance(np.zeros(7), mat, np.zeros(7), np.ones(7, bool), 1.0)
    with pytest.raises(TypeError, match="prior matrix must be"):
        map_precision(z, np.eye(6), z, mask, 1.0)
    with pytest.raises(ValueError, match="exactly one of `cov` and `precision`"):
        map_dense(z, z, 1.0, mask=mask)
    with pytest.raises(ValueError, match="`method` must be one of"):
        map_precision(z, mat, z, mask, 1.0, method="magic")


def _forms(max_obs=None):
    """The MAP entry points as `f(mu, prior, y, mask, r, throw)`."""
    return {
        "precision": lambda *a, throw=True: map_precision(*a, throw=throw),
        "covariance": lambda *a, throw=True: map_covariance(
            *a, max_obs=max_obs, throw=throw
        ),
    }


def test_nonfinite_y_or_mu_rejected():
    """Defect 4: NaN in observed `y` or in `mu` was ok=True with a NaN mean."""
    mat = SymmetricBandMatrix(jnp.stack([jnp.full(6, 4.0), jnp.ones(6)]))
    mask = jnp.arange(6) % 2 == 0
    zeros, ones = jnp.zeros(6), jnp.ones(6)
    bad_y, bad_mu = ones.at[0].set(jnp.nan), zeros.at[3].set(jnp.inf)
    for max_obs in (None, 3):
        for name, fn in _forms(max_obs).items():
            with pytest.raises(ValueError, match=r"`y \(where mask is True\)` must"):
                fn(zeros, mat, bad_y, mask, 1.0)
            with pytest.raises(ValueError, match="`mu` must be finite"):
                fn(bad_mu, mat, ones, mask, 1.0)
            jitted = jax.jit(functools.partial(fn, throw=False))
            assert jitted(zeros, mat, bad_y, mask, 1.0).result == RESULTS.invalid_input
            assert jitted(bad_mu, mat, ones, mask, 1.0).result == RESULTS.invalid_input
            with pytest.raises(eqx.EquinoxRuntimeError, match="value check"):
                eqx.filter_jit(fn)(zeros, mat, bad_y, mask, 1.0)
            # NaN where unobserved is ignored (zero-filled): an exact, finite MAP
            y = ones.at[1].set(jnp.nan)
            expected = map_dense(zeros, ones, 1.0, mask=mask, precision=mat.to_dense())
            if name == "covariance":
                expected = map_dense(zeros, ones, 1.0, mask=mask, cov=mat.to_dense())
            res = jax.jit(fn)(zeros, mat, y, mask, 1.0)
            assert res.result == OK
            np.testing.assert_allclose(res.mean, expected.mean, atol=1e-12)
    with pytest.raises(ValueError, match="`y` must be finite"):
        map_dense(zeros, bad_y[:3], 1.0, H=jnp.eye(6)[:3], cov=mat.to_dense())


def test_value_checks_under_jit():
    """`obs_var=-1` under jit was ok=True with a wrong mean; now `invalid_input`."""
    mat, _ = random_band(np.random.default_rng(6), 6, 1)
    z, mask = np.zeros(6), np.ones(6, bool)
    for max_obs in (None, 6):
        for fn in _forms(max_obs).values():
            with pytest.raises(ValueError, match="obs_var"):
                fn(z, mat, z, mask, -1.0)
            res = jax.jit(lambda r, fn=fn: fn(z, mat, z, mask, r, throw=False))(-1.0)
            assert res.result == RESULTS.invalid_input
    res = jax.jit(lambda r: posterior_variance(mat, mask, r, throw=False))(-1.0)
    assert res.result == RESULTS.invalid_input
    with pytest.raises(ValueError, match="obs_var"):
        map_dense(z, z[:2], -1.0, H=np.eye(6)[:2], cov=np.eye(6))


def test_indefinite_prior_covariance_flagged():
    """Defect 6: an indefinite banded P gave ok=True and a finite "MAP"."""
    P = SymmetricBandMatrix(jnp.stack([jnp.ones(6), jnp.full(6, 2.0)]))
    assert np.min(np.linalg.eigvalsh(np.asarray(P.to_dense()))) < -2.5
    mu, y, mask = jnp.zeros(6), jnp.ones(6), jnp.arange(6) % 2 == 0
    # the observed system S = M P M + R~ alone is SPD here: checking it is not enough
    m = mask.astype(float)
    S = P.diag_congruence(m).add_diagonal(jnp.ones(6))
    assert S.cholesky().result == OK
    priors = {"band": P, "dense": P.to_dense(), "blocks": P.to_block_tridiagonal(2)}
    for name, prior in priors.items():
        res = map_covariance(mu, prior, y, mask, 1.0, throw=False)
        assert res.result == RESULTS.not_positive_definite, name
        res = jax.jit(functools.partial(map_covariance, throw=False))(
            mu, prior, y, mask, 1.0
        )
        assert res.result == RESULTS.not_positive_definite, name
        with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
            map_covariance(mu, prior, y, mask, 1.0)
    res = map_dense(mu, y, 1.0, mask=mask, cov=P.to_dense(), throw=False)
    assert res.result == RESULTS.not_positive_definite
    # observation space checks the observed block H P H^T: indefinite for mask {0, 1}
    # ([[1, 2], [2, 1]]) although H P H^T + R = [[3, 2], [2, 3]] is SPD
    two = jnp.arange(6) < 2
    res = map_covariance(mu, P, y, two, 2.0, max_obs=2, throw=False)
    assert res.result == RESULTS.not_positive_definite
    # ... but not P outside the observed rows (documented): here H P H^T = I
    assert map_covariance(mu, P, y, mask, 1.0, max_obs=3).result == OK
    # an indefinite precision with an SPD posterior precision Q + D is flagged too
    Q = SymmetricBandMatrix(jnp.stack([jnp.full(6, 1.0), jnp.full(6, 0.9)]))
    full = jnp.ones(6, bool)
    post = Q.add_diagonal(jnp.full(6, 10.0))
    assert post.cholesky().result == OK
    res = map_precision(mu, Q, y, full, 0.1, throw=False)
    assert res.result == RESULTS.not_positive_definite
    var = posterior_variance(Q, full, 0.1, throw=False)
    assert var.result == RESULTS.not_positive_definite


def test_semidefinite_priors_accepted():
    """Singular but semi-definite priors are valid: empirical covariances of fewer
    samples than d, intrinsic (random-walk) precisions with a null space."""
    rng = np.random.default_rng(8)
    d, n = 12, 5
    x = rng.normal(size=(n, d))
    c = x - x.mean(0)
    cov = c.T @ c / n  # rank n - 1 < d
    mu, y = x.mean(0), rng.normal(size=d)
    mask = rng.uniform(size=d) < 0.5
    r = np.full(d, 0.3)
    for max_obs in (None, d):
        res = map_covariance(mu, cov, y, mask, r, max_obs=max_obs)
        assert res.result == OK
        np.testing.assert_allclose(
            res.mean, numpy_map_cov(mu, cov, y, mask, r), atol=1e-10
        )
    # random-walk precision D^T D: null space = constants; one observation fixes it
    diff = np.eye(d)[1:] - np.eye(d)[:-1]
    prec = diff.T @ diff
    Q = SymmetricBandMatrix.from_dense(prec, 1)
    one = np.arange(d) == 4
    res = map_precision(mu, Q, y, one, 0.5)
    assert res.result == OK
    expected = mu + np.linalg.solve(prec + np.diag(one / 0.5), one / 0.5 * (y - mu))
    np.testing.assert_allclose(res.mean, expected, atol=1e-10)
    post_var = posterior_variance(Q, one, 0.5).variance
    np.testing.assert_allclose(
        post_var, np.diag(np.linalg.inv(prec + np.diag(one / 0.5))), rtol=1e-10
    )
    # with no observation the posterior is improper: the system check fires
    res = map_precision(mu, Q, y, np.zeros(d, bool), 0.5, throw=False)
    assert res.result == RESULTS.not_positive_definite


def test_posterior_variance_not_spd_raises():
    """Defect 12: `posterior_variance` returned NaN silently for a non-SPD Q."""
    mat, _ = random_band(np.random.default_rng(9), 6, 1)
    bad = SymmetricBandMatrix(-mat.band)
    mask = np.zeros(6, bool)
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        posterior_variance(bad, mask, 1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        eqx.filter_jit(posterior_variance)(bad, mask, 1.0)
    res = jax.jit(functools.partial(posterior_variance, throw=False))(bad, mask, 1.0)
    assert res.result == RESULTS.not_positive_definite
    assert not np.all(np.isfinite(res.variance))
    with pytest.raises(ValueError, match="`Q` must be finite"):
        posterior_variance(SymmetricBandMatrix(mat.band.at[0, 0].set(np.nan)), mask, 1)


def test_parallel_method_equals_sequential_and_dense():
    rng = np.random.default_rng(3)
    *_, prec, mu = lgssm(rng, 9, 2)
    y, mask = rng.normal(size=(9, 2)), rng.uniform(size=(9, 2)) < 0.5
    dense = map_dense(mu, y, 0.3, mask=mask, precision=prec.to_dense()).mean

    def loss(diag, method):
        Q = BlockTridiagonal(diag, prec.lower)
        return jnp.sum(map_precision(mu, Q, y, mask, 0.3, method=method).mean ** 2)

    par = map_precision(mu, prec, y, mask, 0.3, method="parallel")
    assert par.result == OK
    np.testing.assert_allclose(par.mean, dense, atol=1e-12)
    np.testing.assert_allclose(
        eqx.filter_jit(jax.grad(loss))(prec.diagonal, "parallel"),
        eqx.filter_jit(jax.grad(loss))(prec.diagonal, "sequential"),
        atol=1e-10,
    )
