"""Kernels on banded matrices.

Symmetric matrices are in LAPACK lower storage: `band[k, i] = A[i + k, i]` for `k =
0..b`; entries with `i + k >= d` are ignored. General (non-symmetric) ones, for
`band_lu`, are `(2b + 1, d)` arrays with `band[b + k, j] = A[j + k, j]` and `band[b -
k, j] = A[j, j + k]` (`k = 0..b`): `band[b:]` is the lower storage of $A$ and
`band[b::-1]` that of $A^\top$, both from the diagonal `band[b]`. All kernels are O(d
b^2) time and O(d b) memory; the sequential recursions are `lax.scan`s over columns
with a rolling window of the last `b` columns (the inner band operations are
elementwise products and reductions, no per-column matmul).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def valid_band_mask(b: int, d: int):
    """Boolean `(b+1, d)` mask of the stored entries that lie inside the matrix."""
    return (jnp.arange(b + 1)[:, None] + jnp.arange(d)[None, :]) < d


def masked(band):
    """`band` with the entries past the end of the matrix set to zero."""
    b1, d = band.shape
    return jnp.where(valid_band_mask(b1 - 1, d), band, jnp.zeros((), band.dtype))


@jax.jit
def band_matvec(band, v):
    """`A v` for symmetric banded `A` (masked band) and `v` of shape `(d, m)`."""
    b1, d = band.shape
    y = band[0][:, None] * v
    for k in range(1, min(b1, d)):
        bk = band[k, : d - k][:, None]
        y = y.at[: d - k].add(bk * v[k:])
        y = y.at[k:].add(bk * v[: d - k])
    return y


@jax.jit
def lower_matvec(lband, v):
    """`L v` for lower-banded `L` (same storage) and `v` of shape `(d, m)`."""
    b1, d = lband.shape
    y = lband[0][:, None] * v
    for k in range(1, min(b1, d)):
        y = y.at[k:].add(lband[k, : d - k][:, None] * v[: d - k])
    return y


def lower_t_matvec(lband, v):
    """`L^T v` for lower-banded `L` and `v` of shape `(d, m)`."""
    b1, d = lband.shape
    y = lband[0][:, None] * v
    for k in range(1, min(b1, d)):
        y = y.at[: d - k].add(lband[k, : d - k][:, None] * v[k:])
    return y


@jax.jit
def band_cholesky(band):
    """Banded Cholesky `A = L L^T` of a masked band: returns `(L band, sqrt(pivots))`.

    Column `j` is `c = A[j:j+b+1, j] - sum_m L[j:j+b+1, j-m] L[j, j-m]`, `L[j, j] =
    sqrt(c_0)`, `L[j+k, j] = c_k / L[j, j]`. The carry `W[m-1, k] = L[j+k, j-m]` holds
    the last `b` columns aligned on the current row. A pivot `c_0 <= 0` (not SPD) gives
    NaN (or a zero `L[j, j]`); the caller turns `L[j, j] > 0` into the factor's
    `result`.
    """
    b1, d = band.shape
    b = b1 - 1
    if b == 0:
        return jnp.sqrt(band[0])[None], band[0]
    zero_col = jnp.zeros((b, 1), band.dtype)
    first = jnp.arange(b1) == 0

    def step(w, a):
        c = a - jnp.sum(w * w[:, :1], axis=0)
        # one broadcast op for the whole column (much faster than scalar sqrt/div)
        col = jnp.where(first, jnp.sqrt(c[:1]), c * lax.rsqrt(c[:1]))
        w = jnp.concatenate([col[None, 1:], w[:-1, 1:]], axis=0)
        w = jnp.concatenate([w, zero_col], axis=1)
        return w, col

    _, cols = lax.scan(step, jnp.zeros((b, b1), band.dtype), band.T)
    # col[0] = sqrt(pivot): NaN for a negative pivot, 0 for a zero one
    return cols.T, cols[:, 0]


@jax.jit
def forward_substitution(lband, r):
    """Solve `L z = r` (`r` of shape `(d, m)`) by a column-oriented scan."""
    b1, d = lband.shape
    b = b1 - 1
    if b == 0:
        return r / lband[0][:, None]
    m = r.shape[1]
    zero_row = jnp.zeros((1, m), r.dtype)

    def step(acc, inp):
        col, rj = inp
        zj = (rj - acc[0]) / col[0]
        acc = jnp.concatenate([acc[1:], zero_row]) + col[1:, None] * zj[None]
        return acc, zj

    _, z = lax.scan(step, jnp.zeros((b, m), r.dtype), (lband.T, r))
    return z


@jax.jit
def backward_substitution(lband, z):
    """Solve `L^T x = z` (`z` of shape `(d, m)`) by a reverse scan."""
    b1, d = lband.shape
    b = b1 - 1
    if b == 0:
        return z / lband[0][:, None]
    m = z.shape[1]

    def step(xw, inp):
        col, zj = inp
        xj = (zj - jnp.sum(col[1:, None] * xw, axis=0)) / col[0]
        xw = jnp.concatenate([xj[None], xw[:-1]])
        return xw, xj

    _, x = lax.scan(step, jnp.zeros((b, m), z.dtype), (lband.T, z), reverse=True)
    return x


@jax.jit
def cholesky_solve(lband, r):
    """Solve `L L^T x = r` for `r` of shape `(d, m)`."""
    return backward_substitution(lband, forward_substitution(lband, r))


@jax.jit
def selected_inverse(lband):
    """Entries of `A^{-1}` inside the band, from `A = L L^T` (Takahashi recursion).

    With `S = A^{-1}`, `L^T S = L^{-1}` is lower triangular, so going backwards in `j`:
    `S[j+k, j] = -(1/L_jj) sum_m L[j+m, j] S[j+k, j+m]` and
    `S[j, j] = 1/L_jj^2 - (1/L_jj) sum_m L[j+m, j] S[j+m, j]`, which only needs the
    `b x b` window `S[j+1:j+b+1, j+1:j+b+1]`. Returns the band of `S`, shape `(b+1, d)`.
    """
    b1, d = lband.shape
    b = b1 - 1
    if b == 0:
        return (1.0 / lband[0] ** 2)[None]

    def step(s_win, col):
        v = col[1:]
        l0 = col[0]
        s = -jnp.sum(s_win * v[None, :], axis=1) / l0
        sjj = 1.0 / l0**2 - jnp.sum(v * s) / l0
        top = jnp.concatenate([sjj[None], s[:-1]])
        rest = jnp.concatenate([s[:-1, None], s_win[:-1, :-1]], axis=1)
        s_win = jnp.concatenate([top[None], rest], axis=0)
        return s_win, jnp.concatenate([sjj[None], s])

    _, cols = lax.scan(step, jnp.zeros((b, b), lband.dtype), lband.T, reverse=True)
    return cols.T


@jax.jit
def band_to_dense(band):
    """Dense symmetric matrix from a masked band (tests and small problems only)."""
    b1, d = band.shape
    a = jnp.diag(band[0])
    for k in range(1, min(b1, d)):
        off = jnp.diag(band[k, : d - k], -k)
        a = a + off + off.T
    return a


@jax.jit
def lower_band_to_dense(lband):
    """Dense lower-triangular matrix from a lower band."""
    b1, d = lband.shape
    a = jnp.diag(lband[0])
    for k in range(1, min(b1, d)):
        a = a + jnp.diag(lband[k, : d - k], -k)
    return a


@jax.jit
def lower_band_gram(lband):
    r"""Band of $A = L L^\top$ for a lower band $L$ (bandwidth $b$, entries past the end
    of the matrix zero): $A_{i+k, i} = \sum_{m=0}^{b-k} L_{i+k, i-m} L_{i, i-m}$, so $A$
    has bandwidth $b$ and costs $O(d b^2)$."""
    b1, d = lband.shape
    out = jnp.zeros_like(lband)
    for m in range(b1):
        # shifted[r, i] = lband[r, i - m] (zero for i < m): column i - m of L.
        shifted = jnp.pad(lband, ((0, 0), (m, 0)))[:, :d]
        out = out.at[: b1 - m].add(shifted[m:] * shifted[m][None, :])
    return out


@functools.partial(jax.jit, static_argnums=1)
def dense_to_band(a, b: int):
    """Lower band storage `band[k, i] = a[i + k, i]` (`k = 0..b`) of a square matrix,
    zero past the end."""
    d = a.shape[0]
    rows = [jnp.pad(jnp.diagonal(a, offset=-k), (0, min(k, d))) for k in range(b + 1)]
    return jnp.stack(rows)


@jax.jit
def band_lu(band):
    r"""Banded LU factorisation $A = L U$ **without pivoting** of a general band
    matrix (`(2b + 1, d)` storage, module docstring): returns `(factor, pivots)`, the
    factor in the same storage ($U_{j, j+k}$ in `factor[b - k, j]`, the unit lower
    $L_{j+k, j}$ in `factor[b + k, j]`, $k \ge 1$) and the pivots $U_{jj}$.

    Right-looking elimination with the Schur-complement corrections $C$ of the next
    $(b + 1)^2$ window as the carry: at column $j$, $c = A_{j:j+b+1, j} - C_{:, 0}$,
    $r = A_{j, j:j+b+1} - C_{0, :}$, $U_{j, j:j+b+1} = r$, $L_{j+1:j+b+1, j} =
    c_{1:} / c_0$, and $C \leftarrow C_{1:, 1:} + L_{j+1:, j} U_{j, j+1:}$ (the
    fill of $L$ and $U$ stays in the band). O(d b^2) time, O(d b) memory.

    Without row exchanges the factorisation exists and is backward stable when
    every leading principal submatrix is well conditioned, e.g. for matrices whose
    symmetric part is positive definite or that are diagonally dominant (M-matrices)
    -- the operators of `jaxda.spde.SPDEPrior`. Nothing is hidden when it is not: a
    zero pivot gives an infinite or NaN factor, which the caller reports
    (`jnp.isfinite(factor)` and `pivots != 0`).
    """
    b2, d = band.shape
    b = (b2 - 1) // 2
    if b == 0:
        return band, band[0]
    inside = valid_band_mask(b, d)
    lower = jnp.where(inside, band[b:], 0.0)  # A[j + k, j]
    upper = jnp.where(inside, band[b::-1], 0.0)  # A[j, j + k]

    def step(corrections, inputs):
        a_column, a_row = inputs
        column = a_column - corrections[:, 0]
        row = a_row - corrections[0, :]
        multipliers = column[1:] / column[0]
        corrections = corrections[1:, 1:] + multipliers[:, None] * row[None, 1:]
        corrections = jnp.pad(corrections, ((0, 1), (0, 1)))
        return corrections, (multipliers, row)

    zero = jnp.zeros((b + 1, b + 1), band.dtype)
    _, (multipliers, rows) = lax.scan(step, zero, (lower.T, upper.T))
    factor = jnp.concatenate([rows.T[::-1], multipliers.T])
    return factor, rows[:, 0]


@jax.jit
def lu_solve(factor, r):
    """Solve `L U x = r` (`r` of shape `(d, m)`) from `band_lu`'s factor: forward
    substitution with the unit lower band, backward with $U$ (whose transpose is
    stored as a lower band)."""
    b = (factor.shape[0] - 1) // 2
    unit_lower = factor[b:].at[0].set(1.0)
    return backward_substitution(factor[b::-1], forward_substitution(unit_lower, r))


@jax.jit
def general_band_to_dense(band):
    """Dense matrix from a general `(2b + 1, d)` band (tests and small problems)."""
    b2, d = band.shape
    b = (b2 - 1) // 2
    a = jnp.diag(band[b])
    for k in range(1, min(b + 1, d)):
        a = a + jnp.diag(band[b + k, : d - k], -k) + jnp.diag(band[b - k, : d - k], k)
    return a


@functools.partial(jax.jit, static_argnums=1)
def dense_to_general_band(a, b: int):
    """The general `(2b + 1, d)` band storage of a square matrix, zero past the
    end."""
    lower, upper = dense_to_band(a, b), dense_to_band(a.T, b)
    return jnp.concatenate([upper[::-1], lower[1:]])
