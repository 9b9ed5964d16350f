"""BlockTridiagonal (sequential and parallel) against dense float64 references."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_grad
from hypothesis import given, settings, strategies as st

from jaxda import RESULTS
from jaxda.linalg import BlockTridiagonal, CyclicReductionCholesky, logdet, solve


def random_spd_blocktri(rng, t, n):
    """Blocks of `A = L L^T`, `L` a random block lower-bidiagonal matrix."""
    lower = np.zeros((t * n, t * n))
    for s in range(t):
        blk = np.tril(rng.normal(0, 0.4, (n, n)), -1) + np.diag(
            rng.uniform(0.7, 1.5, n)
        )
        lower[s * n : (s + 1) * n, s * n : (s + 1) * n] = blk
        if s + 1 < t:
            lower[(s + 1) * n : (s + 2) * n, s * n : (s + 1) * n] = rng.normal(
                0, 0.5, (n, n)
            )
    dense = lower @ lower.T
    blocks = dense.reshape(t, n, t, n)
    diag = np.stack([blocks[s, :, s] for s in range(t)])
    low = np.array([blocks[s + 1, :, s] for s in range(t - 1)]).reshape(t - 1, n, n)
    return diag, low, dense


_AGAINST_DENSE_CASES = dict(
    t=st.sampled_from([1, 2, 5, 8]),
    n=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**31 - 1),
)


def _against_dense(t, n, seed):
    rng = np.random.default_rng(seed)
    diag, low, dense = random_spd_blocktri(rng, t, n)
    A = BlockTridiagonal(diag, low)
    assert (A.num_blocks, A.block_size, A.size) == (t, n, t * n)
    np.testing.assert_allclose(A.to_dense(), dense, atol=1e-12)
    idx = np.arange(t * n)
    np.testing.assert_allclose(A.entries(idx[:, None], idx[None, :]), dense, atol=1e-12)
    x = rng.normal(size=(t, n, 2))
    np.testing.assert_allclose(
        A.matvec(x).reshape(t * n, 2), dense @ x.reshape(t * n, 2), atol=1e-12
    )
    chol = A.cholesky()
    assert chol.result == RESULTS.successful
    inv = np.linalg.inv(dense)
    for out in [chol.solve(x[..., 0]), A.solve(x[..., 0], method="sequential")]:
        np.testing.assert_allclose(
            out.reshape(-1), inv @ x[..., 0].reshape(-1), rtol=1e-8, atol=1e-8
        )
    np.testing.assert_allclose(
        A.solve(x).reshape(t * n, 2), inv @ x.reshape(t * n, 2), atol=1e-8
    )
    np.testing.assert_allclose(A.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    pattern = np.asarray(
        BlockTridiagonal(np.ones_like(diag), np.ones_like(low)).to_dense()
    )
    np.testing.assert_allclose(
        chol.inverse_blocks().to_dense(), np.where(pattern != 0, inv, 0), atol=1e-8
    )
    np.testing.assert_allclose(
        chol.inverse_diagonal().reshape(-1), np.diag(inv), rtol=1e-8
    )
    # dense L from the blocks
    ldense = np.zeros((t, n, t, n))
    for s in range(t):
        ldense[s, :, s] = chol.chol[s]
        if s + 1 < t:
            ldense[s + 1, :, s] = chol.off[s]
    np.testing.assert_allclose(
        ldense.reshape(t * n, t * n), np.linalg.cholesky(dense), atol=1e-10
    )
    np.testing.assert_allclose(A.to_band().to_dense(), dense, atol=1e-12)


@settings(max_examples=4, deadline=None)
@given(**_AGAINST_DENSE_CASES)
def test_against_dense(t, n, seed):
    _against_dense(t, n, seed)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(**_AGAINST_DENSE_CASES)
def test_against_dense_many_cases(t, n, seed):
    _against_dense(t, n, seed)


def test_samples_covariance():
    rng = np.random.default_rng(1)
    t, n, m = 3, 2, 40000
    diag, low, dense = random_spd_blocktri(rng, t, n)
    A = BlockTridiagonal(diag, low)
    for draw, target in [(A.sample, np.linalg.inv(dense)), (A.sample_cov, dense)]:
        x = np.asarray(draw(jax.random.key(0), (m,)))
        assert x.shape == (m, t, n)
        x = x.reshape(m, t * n)
        emp = x.T @ x / m
        se = np.sqrt((np.outer(np.diag(target), np.diag(target)) + target**2) / m)
        assert np.max(np.abs(emp - target) / se) < 5.0


def test_derivatives_both_modes():
    rng = np.random.default_rng(2)
    t, n = 4, 2
    diag, low, _ = random_spd_blocktri(rng, t, n)
    diag, low = jnp.asarray(diag), jnp.asarray(low)
    rhs = jnp.asarray(rng.normal(size=(t, n)))

    @jax.jit
    def loss(diag, low, rhs):
        A = BlockTridiagonal(diag, low)
        x = solve(A, rhs)
        return jnp.sum(x**2) + jnp.sum(x[0]) + logdet(A)

    @jax.jit
    def loss_dense(diag, low, rhs):
        a = BlockTridiagonal(diag, low).to_dense()
        x = jnp.linalg.solve(a, rhs.reshape(-1))
        return jnp.sum(x**2) + jnp.sum(x[:n]) + jnp.linalg.slogdet(a)[1]

    g = jax.grad(loss, argnums=(0, 1, 2))(diag, low, rhs)
    gd = jax.grad(loss_dense, argnums=(0, 1, 2))(diag, low, rhs)
    for a, b in zip(g, gd):
        np.testing.assert_allclose(a, b, atol=1e-10)
    np.testing.assert_allclose(
        g[1], finite_difference_grad(lambda v: loss(diag, v, rhs), low), atol=1e-6
    )
    np.testing.assert_allclose(
        g[2], finite_difference_grad(lambda v: loss(diag, low, v), rhs), atol=1e-6
    )
    # symmetric perturbations of the diagonal blocks (the matrix stays symmetric)
    sym = rng.normal(size=diag.shape)
    sym = jnp.asarray(sym + np.swapaxes(sym, 1, 2))
    fd = (loss(diag + 1e-6 * sym, low, rhs) - loss(diag - 1e-6 * sym, low, rhs)) / 2e-6
    np.testing.assert_allclose(jnp.sum(g[0] * sym), fd, rtol=1e-6)
    # forward mode
    tangents = (sym, jnp.asarray(rng.normal(size=low.shape)), jnp.ones_like(rhs))
    j1 = jax.jvp(loss, (diag, low, rhs), tangents)[1]
    j2 = jax.jvp(loss_dense, (diag, low, rhs), tangents)[1]
    np.testing.assert_allclose(j1, j2, rtol=1e-10)


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_not_spd_detected(method):
    diag = np.stack([np.eye(2), np.diag([1.0, -1.0])])
    A = BlockTridiagonal(diag, np.zeros((1, 2, 2)))
    assert A.cholesky(method).result == RESULTS.not_positive_definite
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        A.solve(np.ones((2, 2)), method=method)
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        A.logdet(method=method)
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        eqx.filter_jit(lambda A: logdet(A, method=method))(A)
    result, x = jax.jit(
        lambda A: (
            A.cholesky(method).result,
            A.cholesky(method).solve(jnp.ones((2, 2)), throw=False),
        )
    )(A)
    assert result == RESULTS.not_positive_definite and not np.all(np.isfinite(x))
    inf_diag = diag.copy()
    inf_diag[0, 1, 1] = np.inf
    B = BlockTridiagonal(inf_diag, np.zeros((1, 2, 2)))
    assert B.cholesky(method).result == RESULTS.nonfinite_input


def test_sampling_and_inverse_of_not_spd_raise():
    """Defect 12: `sample`, `sample_cov`, `inverse_diagonal` fail like `solve`."""
    A = BlockTridiagonal(
        np.stack([np.eye(2), np.diag([1.0, -1.0])]), np.zeros((1, 2, 2))
    )
    key = jax.random.key(0)
    calls = [
        lambda A, throw: A.sample(key, (3,), throw=throw),
        lambda A, throw: A.sample_cov(key, (3,), throw=throw),
        lambda A, throw: A.cholesky().inverse_diagonal(throw=throw),
        lambda A, throw: A.cholesky("parallel").inverse_diagonal(throw=throw),
        lambda A, throw: A.cholesky().inverse_blocks(throw=throw).diagonal,
    ]
    for call in calls:
        with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
            call(A, True)
        with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
            eqx.filter_jit(call)(A, True)
        assert not np.all(np.isfinite(call(A, False)))
    # SPD: the parallel factor's inverse diagonal is the dense one
    rng = np.random.default_rng(7)
    diag, low, dense = random_spd_blocktri(rng, 5, 2)
    par = BlockTridiagonal(diag, low).cholesky("parallel")
    assert isinstance(par, CyclicReductionCholesky)
    np.testing.assert_allclose(
        par.inverse_diagonal().reshape(-1), np.diag(np.linalg.inv(dense)), rtol=1e-10
    )


def test_validation_errors():
    with pytest.raises(ValueError, match="`diagonal` must have shape"):
        BlockTridiagonal(np.ones((3, 2, 3)), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="`lower` must have shape"):
        BlockTridiagonal(np.ones((3, 2, 2)), np.ones((3, 2, 2)))
    A = BlockTridiagonal(np.stack([np.eye(2)] * 3), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="`rhs` must have leading shape"):
        A.solve(np.ones(6))
    with pytest.raises(ValueError, match="`method` must be one of"):
        A.cholesky(method="fast")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "t,n", [(1, 2), (2, 1), pytest.param(5, 2, marks=pytest.mark.slow), (13, 3)]
)
def test_parallel_equals_sequential(t, n):
    rng = np.random.default_rng(t)
    diag, low, dense = random_spd_blocktri(rng, t, n)
    A = BlockTridiagonal(diag, low)
    rhs = jnp.asarray(rng.normal(size=(t, n)))
    seq, par = A.cholesky("sequential"), A.cholesky("parallel")
    assert par.result == RESULTS.successful
    x_par = jax.jit(lambda c, r: c.solve(r))(par, rhs)
    np.testing.assert_allclose(x_par, seq.solve(rhs), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        x_par.reshape(-1), np.linalg.solve(dense, rhs.reshape(-1)), atol=1e-9
    )
    np.testing.assert_allclose(par.logdet_value, seq.logdet(), rtol=1e-10)

    @functools.partial(jax.jit, static_argnums=3)
    def loss(diag, low, rhs, method):
        A = BlockTridiagonal(diag, low)
        return jnp.sum(A.solve(rhs, method=method) ** 2) + A.logdet(method=method)

    args = (jnp.asarray(diag), jnp.asarray(low), rhs)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    g_par, g_seq = grad(*args, "parallel"), grad(*args, "sequential")
    for a, b in zip(g_par, g_seq):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    tang = tuple(jnp.ones_like(a) for a in args)
    np.testing.assert_allclose(
        jax.jvp(lambda *a: loss(*a, "parallel"), args, tang)[1],
        jax.jvp(lambda *a: loss(*a, "sequential"), args, tang)[1],
        rtol=1e-8,
    )


@pytest.mark.timeout(120)
def test_parallel_not_spd_and_jit():
    diag = np.stack([np.eye(2), np.eye(2), np.diag([1.0, -1.0])])
    A = BlockTridiagonal(diag, np.zeros((2, 2, 2)))
    assert A.cholesky("parallel").result == RESULTS.not_positive_definite
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        A.solve(np.ones((3, 2)), method="parallel")
    B = BlockTridiagonal(np.stack([2.0 * np.eye(2)] * 3), 0.5 * np.ones((2, 2, 2)))
    x = jax.jit(lambda B, r: B.solve(r, method="parallel"))(B, jnp.ones((3, 2)))
    np.testing.assert_allclose(x, B.solve(jnp.ones((3, 2))), rtol=1e-12, atol=1e-14)
