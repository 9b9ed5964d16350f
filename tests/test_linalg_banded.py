"""SymmetricBandMatrix against dense float64 numpy references."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_grad
from hypothesis import given, settings, strategies as st

from jaxda import RESULTS
from jaxda.linalg import (
    AbstractCholesky,
    AbstractSPDMatrix,
    BandCholesky,
    SymmetricBandMatrix,
    logdet,
    solve,
)


def random_spd_band(rng, d, b, garbage=True):
    """Band of `A = L L^T`, `L` a random lower band with positive diagonal."""
    lower = np.zeros((d, d))
    for k in range(min(b, d - 1) + 1):
        vals = rng.uniform(0.5, 1.5, d - k) if k == 0 else rng.normal(0, 0.5, d - k)
        lower += np.diag(vals, -k)
    dense = lower @ lower.T
    band = np.zeros((b + 1, d))
    for k in range(b + 1):
        band[k, : max(d - k, 0)] = np.diag(dense, -k)
        if garbage:
            band[k, max(d - k, 0) :] = rng.normal(size=min(k, d))  # ignored entries
    return band, dense


def in_band(dense, b):
    d = dense.shape[0]
    idx = np.arange(d)
    return np.where(np.abs(idx[:, None] - idx[None, :]) <= b, dense, 0.0)


_AGAINST_DENSE_CASES = dict(
    d=st.sampled_from([1, 2, 5, 13, 24]),
    b=st.sampled_from([0, 1, 3, 5]),
    seed=st.integers(0, 2**31 - 1),
)


def _against_dense(d, b, seed):
    rng = np.random.default_rng(seed)
    band, dense = random_spd_band(rng, d, b)
    A = SymmetricBandMatrix(band)
    assert A.size == d and A.bandwidth == b
    np.testing.assert_allclose(A.to_dense(), dense, atol=1e-12)
    v = rng.normal(size=(d, 2))
    np.testing.assert_allclose(A.matvec(v), dense @ v, atol=1e-12)
    np.testing.assert_allclose(A.matvec(v[:, 0]), dense @ v[:, 0], atol=1e-12)
    idx = np.arange(d)
    np.testing.assert_array_equal(A.entries(idx[:, None], idx[None, :]), dense)
    chol = A.cholesky()
    assert isinstance(A, AbstractSPDMatrix) and isinstance(chol, AbstractCholesky)
    assert chol.result == RESULTS.successful
    np.testing.assert_allclose(
        chol.lower_dense(), np.linalg.cholesky(dense), atol=1e-10
    )
    np.testing.assert_allclose(
        A.solve(v), np.linalg.solve(dense, v), rtol=1e-8, atol=1e-8
    )
    np.testing.assert_allclose(A.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    inv = np.linalg.inv(dense)
    np.testing.assert_allclose(
        chol.inverse_band().to_dense(), in_band(inv, b), atol=1e-8
    )
    np.testing.assert_allclose(chol.inverse_diagonal(), np.diag(inv), rtol=1e-8)
    # Constructors: the band of a dense matrix, and L L^T from the Cholesky band.
    np.testing.assert_allclose(
        SymmetricBandMatrix.from_dense(dense, b).band, A.masked_band(), atol=0
    )
    np.testing.assert_allclose(
        SymmetricBandMatrix.from_lower_factor(chol.factor).to_dense(), dense, atol=1e-10
    )
    # sample_cov: L z
    z_key = jax.random.key(seed % 1000)
    x = A.sample_cov(z_key, (3,))
    assert x.shape == (3, d)


@settings(max_examples=6, deadline=None)
@given(**_AGAINST_DENSE_CASES)
def test_against_dense(d, b, seed):
    _against_dense(d, b, seed)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(**_AGAINST_DENSE_CASES)
def test_against_dense_many_cases(d, b, seed):
    _against_dense(d, b, seed)


def test_samples_covariance():
    rng = np.random.default_rng(1)
    d, b, n = 6, 2, 40000
    band, dense = random_spd_band(rng, d, b)
    A = SymmetricBandMatrix(band)
    for draw, target in [(A.sample, np.linalg.inv(dense)), (A.sample_cov, dense)]:
        x = np.asarray(draw(jax.random.key(0), (n,)))
        assert x.shape == (n, d)
        emp = x.T @ x / n
        se = np.sqrt((np.outer(np.diag(target), np.diag(target)) + target**2) / n)
        assert np.max(np.abs(emp - target) / se) < 5.0
        assert np.max(np.abs(x.mean(0)) / np.sqrt(np.diag(target) / n)) < 5.0


def test_solve_derivatives_both_modes():
    rng = np.random.default_rng(2)
    d, b = 9, 3
    band, _ = random_spd_band(rng, d, b)
    band, rhs = jnp.asarray(band), jnp.asarray(rng.normal(size=d))
    w = jnp.asarray(rng.normal(size=d))

    def loss(band, rhs):
        x = SymmetricBandMatrix(band).solve(rhs)
        return jnp.sum(w * x) + jnp.sum(x**2)

    def loss_dense(band, rhs):
        x = jnp.linalg.solve(SymmetricBandMatrix(band).to_dense(), rhs)
        return jnp.sum(w * x) + jnp.sum(x**2)

    loss = jax.jit(loss)
    g = jax.grad(loss, argnums=(0, 1))(band, rhs)
    gd = jax.grad(loss_dense, argnums=(0, 1))(band, rhs)
    np.testing.assert_allclose(g[0], gd[0], atol=1e-10)
    np.testing.assert_allclose(g[1], gd[1], atol=1e-10)
    # entries outside the matrix get zero gradient
    assert np.all(np.asarray(g[0])[1, d - 1 :] == 0)
    fd_band = finite_difference_grad(lambda x: loss(x, rhs), band)
    np.testing.assert_allclose(g[0], fd_band, atol=1e-6)
    fd_rhs = finite_difference_grad(lambda x: loss(band, x), rhs)
    np.testing.assert_allclose(g[1], fd_rhs, atol=1e-6)
    # forward mode: a jvp in a random direction and a full forward Jacobian
    tb, tr = jnp.asarray(rng.normal(size=band.shape)), jnp.asarray(rng.normal(size=d))

    def sol(band, rhs):
        return SymmetricBandMatrix(band).solve(rhs)

    def sol_dense(band, rhs):
        return jnp.linalg.solve(SymmetricBandMatrix(band).to_dense(), rhs)

    _, j1 = jax.jvp(sol, (band, rhs), (tb, tr))
    _, j2 = jax.jvp(sol_dense, (band, rhs), (tb, tr))
    np.testing.assert_allclose(j1, j2, atol=1e-10)
    jf = jax.jacfwd(sol)(band, rhs)
    jr = jax.jacrev(sol)(band, rhs)
    np.testing.assert_allclose(jf, jr, atol=1e-10)
    # under jit and vmap over right-hand sides
    gj = jax.jit(jax.grad(loss))(band, rhs)
    np.testing.assert_allclose(gj, g[0], atol=1e-12)
    rhs_b = jnp.asarray(rng.normal(size=(4, d)))
    xs = jax.vmap(lambda r: solve(SymmetricBandMatrix(band), r))(rhs_b)
    np.testing.assert_allclose(
        xs, jax.vmap(lambda r: sol_dense(band, r))(rhs_b), atol=1e-10
    )


def test_logdet_derivatives_both_modes():
    rng = np.random.default_rng(3)
    d, b = 8, 2
    band, _ = random_spd_band(rng, d, b)
    band = jnp.asarray(band)

    def ld(band):
        return logdet(SymmetricBandMatrix(band))

    def ld_dense(band):
        return jnp.linalg.slogdet(SymmetricBandMatrix(band).to_dense())[1]

    ld = jax.jit(ld)
    g = jax.grad(ld)(band)
    np.testing.assert_allclose(g, jax.grad(ld_dense)(band), atol=1e-10)
    np.testing.assert_allclose(g, finite_difference_grad(ld, band), atol=1e-6)
    t = jnp.asarray(rng.normal(size=band.shape))
    np.testing.assert_allclose(
        jax.jvp(ld, (band,), (t,))[1], jax.jvp(ld_dense, (band,), (t,))[1], atol=1e-10
    )
    # a vmapped batch of matrices
    bands = jnp.stack([band, band * 1.5])
    np.testing.assert_allclose(
        jax.vmap(ld)(bands), jax.vmap(ld_dense)(bands), rtol=1e-10
    )


def test_not_spd_detected():
    band = np.array([[1.0, -1.0, 2.0], [2.0, 0.0, 0.0]])  # [[1, 2], [2, -1]] block
    A = SymmetricBandMatrix(band)
    assert A.cholesky().result == RESULTS.not_positive_definite
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        A.solve(np.ones(3))
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        A.logdet()
    # the same under jit (eqx.filter_jit keeps the message), and with throw=False
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        eqx.filter_jit(lambda A: solve(A, jnp.ones(3)))(A)

    @jax.jit
    def f(band):
        chol = SymmetricBandMatrix(band).cholesky()
        return chol.result, chol.solve(jnp.ones(3), throw=False)

    result, x = f(band)
    assert result == RESULTS.not_positive_definite and not np.all(np.isfinite(x))
    result, x = f(np.array([[2.0, 2.0, 2.0], [0.5, 0.5, 0.0]]))
    assert result == RESULTS.successful
    np.testing.assert_allclose(
        x, np.linalg.solve([[2.0, 0.5, 0], [0.5, 2.0, 0.5], [0, 0.5, 2.0]], np.ones(3))
    )
    # a non-finite right-hand side is refused with throw=True (not checked without)
    good = SymmetricBandMatrix(np.array([[2.0, 2.0, 2.0], [0.5, 0.5, 0.0]]))
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        good.solve(np.array([1.0, np.nan, 0.0]))
    x = good.solve(np.array([1.0, np.nan, 0.0]), throw=False)
    assert not np.all(np.isfinite(x))
    # non-finite entries are reported as such
    nan_band = SymmetricBandMatrix(band.copy()).band.at[0, 1].set(np.nan)
    assert SymmetricBandMatrix(nan_band).cholesky().result == RESULTS.nonfinite_input


def test_sampling_and_inverse_of_not_spd_raise():
    """Defect 12: `sample`, `sample_cov`, `inverse_diagonal` fail like `solve`."""
    A = SymmetricBandMatrix(np.array([[1.0, -1.0, 2.0], [2.0, 0.0, 0.0]]))
    key = jax.random.key(0)
    calls = {
        "sample": lambda A, throw: A.sample(key, (2,), throw=throw),
        "sample_cov": lambda A, throw: A.sample_cov(key, (2,), throw=throw),
        "inverse_diagonal": lambda A, throw: A.cholesky().inverse_diagonal(throw=throw),
        "inverse_band": lambda A, throw: A.cholesky().inverse_band(throw=throw).band,
    }
    for name, call in calls.items():
        with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
            call(A, True)
        with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
            eqx.filter_jit(call)(A, True)
        assert not np.all(np.isfinite(call(A, False))), name
    # an SPD matrix: the same calls succeed, eagerly and under jit
    B = SymmetricBandMatrix(np.array([[2.0, 2.0, 2.0], [0.5, 0.5, 0.0]]))
    inv = np.linalg.inv(np.asarray(B.to_dense()))
    np.testing.assert_allclose(
        eqx.filter_jit(calls["inverse_diagonal"])(B, True), np.diag(inv), rtol=1e-12
    )
    # x = L^{-T} z and L z for the documented draw z ~ N(0, I) of shape (d, m)
    chol = B.cholesky()
    assert isinstance(chol, BandCholesky)
    low = np.asarray(chol.lower_dense())
    z = np.asarray(jax.random.normal(key, (3, 2), jnp.float64))
    np.testing.assert_allclose(
        calls["sample"](B, True), np.linalg.solve(low.T, z).T, rtol=1e-12
    )
    np.testing.assert_allclose(
        eqx.filter_jit(calls["sample_cov"])(B, True), (low @ z).T, rtol=1e-12
    )


def test_float32():
    rng = np.random.default_rng(4)
    band, dense = random_spd_band(rng, 20, 3)
    A = SymmetricBandMatrix(band.astype(np.float32))
    r = rng.normal(size=20).astype(np.float32)
    x = A.solve(r)
    assert x.dtype == jnp.float32 and A.logdet().dtype == jnp.float32
    np.testing.assert_allclose(x, np.linalg.solve(dense, r), rtol=1e-3, atol=1e-4)


@settings(max_examples=8, deadline=None)
@given(t=st.integers(1, 5), n=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_to_block_tridiagonal(t, n, seed):
    rng = np.random.default_rng(seed)
    b = int(rng.integers(0, n + 1))
    band, dense = random_spd_band(rng, t * n, b)
    bt = SymmetricBandMatrix(band).to_block_tridiagonal(n)
    assert bt.diagonal.shape == (t, n, n) and bt.lower.shape == (t - 1, n, n)
    np.testing.assert_allclose(bt.to_dense(), dense, atol=1e-12)
    back = bt.to_band()
    assert back.bandwidth == 2 * n - 1
    np.testing.assert_allclose(back.to_dense(), dense, atol=1e-12)


def test_validation_errors():
    with pytest.raises(ValueError, match="`band` must have shape"):
        SymmetricBandMatrix(np.ones(4))
    A = SymmetricBandMatrix(np.ones((2, 6)) * np.array([[4.0], [1.0]]))
    with pytest.raises(ValueError, match="`rhs` must have leading shape"):
        A.solve(np.ones(5))
    with pytest.raises(ValueError, match="`n` must divide"):
        A.to_block_tridiagonal(4)
    wide = SymmetricBandMatrix(np.ones((4, 6)))
    with pytest.raises(ValueError, match="bandwidth <= 2n - 1"):
        wide.to_block_tridiagonal(1)
    with pytest.raises(ValueError, match="more than one"):
        wide.to_block_tridiagonal(2)
    with pytest.raises(TypeError, match="`A` must be"):
        solve(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="`method` must be one of"):
        A.cholesky(method="fast")
