r"""Parallel-in-time block-tridiagonal factorisation by block cyclic reduction.

At each level the odd-indexed blocks are eliminated in parallel: with
$L_i = \mathrm{chol}(A_{2i+1,2i+1})$, $M_i = L_i^{-1} A_{2i+1,2i}$ and
$P_i = L_i^{-1} A_{2i+1,2i+2}$, the even blocks form a block-tridiagonal Schur
complement

$$A'_{ii} = A_{2i,2i} - M_i^\top M_i - P_{i-1}^\top P_{i-1}, \qquad
A'_{i+1,i} = -P_i^\top M_i,$$

which is reduced again, $\lceil \log_2 T \rceil$ levels in all (a level with an odd
number of blocks is padded with one identity block). This is the Cholesky factorisation
of the odd-even permuted matrix, so its pivots detect a matrix that is not SPD and
$\log\det A = 2 \sum \log \mathrm{diag}(L)$ over all levels. Each level is a batch of
independent $n \times n$ operations: $O(T n^3)$ work, $O(\log T)$ depth.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .._custom_types import Array, ArrayLike, Float
from .._results import RESULTS
from . import _blocktri_kernels as TK, _implicit
from ._base import AbstractCholesky, factor_result


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def _pad_blocks(diag, lower):
    t, n, _ = diag.shape
    if t % 2:
        diag = jnp.concatenate([diag, jnp.eye(n, dtype=diag.dtype)[None]])
        lower = jnp.concatenate([lower, jnp.zeros((1, n, n), diag.dtype)])
    return diag, lower


def _shift_down(x):
    """`y[0] = 0`, `y[i] = x[i - 1]`."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])


def level_sizes(t: int) -> tuple[int, ...]:
    """Number of blocks at each reduction level (before padding)."""
    sizes = []
    while t > 1:
        sizes.append(t)
        t = (t + 1) // 2
    return tuple(sizes)


@jax.jit
def cr_factor(diag, lower):
    """Cyclic-reduction factor: `(levels, last_chol, logdet, ok)`."""
    levels = []
    logdet = jnp.zeros((), diag.dtype)
    ok = jnp.ones((), bool)
    while diag.shape[0] > 1:
        diag, lower = _pad_blocks(diag, lower)
        n = diag.shape[1]
        lowp = jnp.concatenate([lower, jnp.zeros((1, n, n), diag.dtype)])
        chol = jnp.linalg.cholesky(diag[1::2])
        m = solve_triangular(chol, lowp[0::2], lower=True)
        p = solve_triangular(chol, _mT(lowp[1::2]), lower=True)
        logdet = logdet + TK.blocktri_logdet(chol)
        ok = ok & TK.blocktri_pivots_ok(chol)
        levels.append((chol, m, p))
        ptp = _mT(p) @ p
        diag = diag[0::2] - _mT(m) @ m - _shift_down(ptp)
        lower = (-_mT(p) @ m)[:-1]
    last = jnp.linalg.cholesky(diag[0])
    logdet = logdet + TK.blocktri_logdet(last)
    ok = ok & TK.blocktri_pivots_ok(last)
    return tuple(levels), last, logdet, ok


@functools.partial(jax.jit, static_argnums=2)
def cr_solve(levels, last, sizes, r):
    """Solve with a cyclic-reduction factor; `r` of shape `(T, n, k)`."""
    ws = []
    for (chol, m, p), size in zip(levels, sizes):
        if size % 2:
            r = jnp.concatenate([r, jnp.zeros_like(r[:1])])
        w = solve_triangular(chol, r[1::2], lower=True)
        ws.append(w)
        r = r[0::2] - _mT(m) @ w - _shift_down(_mT(p) @ w)
    x = solve_triangular(last, r[0], lower=True)
    x = solve_triangular(last, x, lower=True, trans="T")[None]
    for (chol, m, p), w, size in zip(levels[::-1], ws[::-1], sizes[::-1]):
        x_next = jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])
        x_odd = solve_triangular(chol, w - m @ x - p @ x_next, lower=True, trans="T")
        x = jnp.stack([x, x_odd], axis=1).reshape(-1, *x.shape[1:])[:size]
    return x


def cyclic_reduction_cholesky(matrix):
    diag, lower = jax.lax.stop_gradient((matrix.diagonal, matrix.lower))
    levels, last, logdet, ok = cr_factor(diag, lower)
    sizes = level_sizes(matrix.num_blocks)
    result = factor_result((diag, lower), ok)
    return CyclicReductionCholesky(matrix, levels, last, logdet, result, sizes)


class CyclicReductionCholesky(AbstractCholesky):
    r"""Block cyclic-reduction factor of a `BlockTridiagonal` ($O(\log T)$ depth).

    Same interface as `BlockTridiagonalCholesky`: `solve` (implicit derivative rule),
    `logdet` (its derivative uses the sequential selected inversion), `result`;
    `inverse_diagonal` uses the sequential selected inversion.
    """

    matrix: "BlockTridiagonal"  # noqa: F821
    levels: tuple
    last: Float[Array, "n n"]
    logdet_value: Float[Array, ""]
    result: RESULTS
    sizes: tuple[int, ...] = eqx.field(static=True)

    def logdet_with_rule(self) -> Float[Array, ""]:
        """Log-determinant with the JVP rule (no SPD check)."""
        return _implicit.blocktri_logdet(self.matrix, self.logdet_value)

    def solve_factor(self, rhs: Float[ArrayLike, "T n"]) -> Float[Array, "T n"]:
        """$A^{-1}$ `rhs` from the factor, without implicit derivative rules."""
        rhs = jnp.asarray(rhs)
        x = cr_solve(
            self.levels, self.last, self.sizes, rhs.reshape(*rhs.shape[:2], -1)
        )
        return x.reshape(rhs.shape)

    def _inverse_diagonal(self) -> Float[Array, "T n"]:
        diag, lower = jax.lax.stop_gradient((self.matrix.diagonal, self.matrix.lower))
        chol, off = TK.blocktri_cholesky(diag, lower)
        sd, _ = TK.blocktri_selected_inverse(chol, off)
        return jnp.diagonal(sd, axis1=-2, axis2=-1)
