"""Sequential kernels on symmetric block-tridiagonal matrices.

`diag[t] = A[t, t]` (`(T, n, n)`), `lower[t] = A[t+1, t]` (`(T-1, n, n)`). The
factorisation is $A = L L^\top$ with $L$ block lower-bidiagonal: diagonal blocks
`chol[t]` (lower triangular) and sub-diagonal blocks `off[t] = L[t+1, t]`. All are
`lax.scan`s over `T` with `n x n` Cholesky / triangular solves: $O(T n^3)$ time.
Right-hand sides have shape `(T, n, m)`.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


@jax.jit
def blocktri_matvec(diag, lower, x):
    """`A x` for `x` of shape `(T, n, m)`."""
    y = diag @ x
    if diag.shape[0] > 1:
        y = y.at[1:].add(lower @ x[:-1])
        y = y.at[:-1].add(_mT(lower) @ x[1:])
    return y


@jax.jit
def blocktri_cholesky(diag, lower):
    """Block Cholesky: returns `(chol (T,n,n), off (T-1,n,n))` (NaN if not SPD).

    `L_0 = chol(A_00)`; `C_t = A[t, t-1] L_{t-1}^{-T}`; `L_t = chol(A_tt - C_t C_t^T)`.
    """
    l0 = jnp.linalg.cholesky(diag[0])

    def step(lprev, inp):
        d, b = inp
        c = _mT(solve_triangular(lprev, _mT(b), lower=True))
        lt = jnp.linalg.cholesky(d - c @ _mT(c))
        return lt, (lt, c)

    _, (ls, cs) = lax.scan(step, l0, (diag[1:], lower))
    return jnp.concatenate([l0[None], ls]), cs


def blocktri_pivots_ok(chol):
    """Whether every pivot (diagonal of every Cholesky block) is positive and finite."""
    piv = jnp.diagonal(chol, axis1=-2, axis2=-1)
    return jnp.all((piv > 0) & jnp.isfinite(piv))


def blocktri_logdet(chol):
    """`log det A = 2 sum_t sum_i log L_t[i, i]`."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)))


@jax.jit
def blocktri_forward(chol, off, r):
    """Solve `L z = r`: `z_t = L_t^{-1} (r_t - C_t z_{t-1})`."""
    z0 = solve_triangular(chol[0], r[0], lower=True)

    def step(zprev, inp):
        lt, c, rt = inp
        zt = solve_triangular(lt, rt - c @ zprev, lower=True)
        return zt, zt

    _, zs = lax.scan(step, z0, (chol[1:], off, r[1:]))
    return jnp.concatenate([z0[None], zs])


@jax.jit
def blocktri_backward(chol, off, z):
    """Solve `L^T x = z`: `x_t = L_t^{-T} (z_t - C_{t+1}^T x_{t+1})`."""
    xl = solve_triangular(chol[-1], z[-1], lower=True, trans="T")

    def step(xnext, inp):
        lt, c, zt = inp
        xt = solve_triangular(lt, zt - _mT(c) @ xnext, lower=True, trans="T")
        return xt, xt

    _, xs = lax.scan(step, xl, (chol[:-1], off, z[:-1]), reverse=True)
    return jnp.concatenate([xs, xl[None]])


@jax.jit
def blocktri_cholesky_solve(chol, off, r):
    """Solve `A x = r` from the block factor."""
    return blocktri_backward(chol, off, blocktri_forward(chol, off, r))


@jax.jit
def blocktri_selected_inverse(chol, off):
    """Blocks of `S = A^{-1}` on the block-tridiagonal pattern (RTS-like recursion).

    From `L^T S = L^{-1}`: with `G_t = L_t^{-T} C_{t+1}^T`,
    `S[t, t+1] = -G_t S[t+1, t+1]` and
    `S[t, t] = L_t^{-T} L_t^{-1} + G_t S[t+1, t+1] G_t^T`.
    Returns `(S_diag (T,n,n), S_lower (T-1,n,n))` with `S_lower[t] = S[t+1, t]`.
    """
    n = chol.shape[-1]
    eye = jnp.eye(n, dtype=chol.dtype)

    def inv_gram(lt):
        li = solve_triangular(lt, eye, lower=True)
        return _mT(li) @ li

    s_last = inv_gram(chol[-1])

    def step(s_next, inp):
        lt, c = inp
        g = solve_triangular(lt, _mT(c), lower=True, trans="T")
        gs = g @ s_next
        st = inv_gram(lt) + gs @ _mT(g)
        st = 0.5 * (st + _mT(st))
        return st, (st, -_mT(gs))

    _, (sd, sl) = lax.scan(step, s_last, (chol[:-1], off), reverse=True)
    return jnp.concatenate([sd, s_last[None]]), sl


@jax.jit
def blocktri_to_dense(diag, lower):
    """Dense `(T n, T n)` matrix (tests and small problems only)."""
    t, n, _ = diag.shape
    a = jnp.zeros((t, n, t, n), diag.dtype)
    idx = jnp.arange(t)
    a = a.at[idx, :, idx, :].set(diag)
    if t > 1:
        a = a.at[idx[1:], :, idx[:-1], :].set(lower)
        a = a.at[idx[:-1], :, idx[1:], :].set(_mT(lower))
    return a.reshape(t * n, t * n)
