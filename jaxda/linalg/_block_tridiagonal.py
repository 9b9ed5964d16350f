r"""Symmetric block-tridiagonal matrices and their sequential block Cholesky factor."""

import jax
import jax.numpy as jnp
from jax import lax

from .._custom_types import Array, ArrayLike, Float, Int
from .._results import RESULTS, raise_if_failed
from .._validation import check_choice, check_int
from . import _blocktri_kernels as TK, _implicit
from ._base import METHODS, AbstractCholesky, AbstractSPDMatrix, factor_result


class BlockTridiagonal(AbstractSPDMatrix):
    r"""A symmetric block-tridiagonal matrix with $T \times T$ blocks of size $n$.

    $A_{t,t}$ = `diagonal[t]` (symmetric, `(T, n, n)`) and $A_{t+1,t}$ = `lower[t]`
    (`(T-1, n, n)`), $A_{t,t+1} = A_{t+1,t}^\top$. Vectors have shape `(T, n)`
    (time-major; flattened in C order this is the interleaved layout $i = t n + j$).
    This is the structure of a Gauss-Markov (Kalman smoother) precision and of the
    Gauss-Newton normal matrix of weak-constraint 4DVar.

    The diagonal blocks must be symmetric: `matvec` uses them as given while the
    Cholesky factorisation reads their symmetric part. `solve`, `logdet`, `sample` and
    `sample_cov` take `throw=True` (see `AbstractSPDMatrix`): a matrix that is not SPD
    raises, eagerly and under `jit` alike.

    **Arguments:**

    - `diagonal`: `(T, n, n)`.
    - `lower`: `(T - 1, n, n)`.
    """

    diagonal: Float[Array, "T n n"]
    lower: Float[Array, "Tm1 n n"]

    def __init__(
        self, diagonal: Float[ArrayLike, "T n n"], lower: Float[ArrayLike, "Tm1 n n"]
    ):
        diagonal = jnp.asarray(diagonal)
        lower = jnp.asarray(lower)
        if diagonal.ndim != 3 or diagonal.shape[1] != diagonal.shape[2]:
            raise ValueError(
                f"`diagonal` must have shape (T, n, n); got {diagonal.shape}."
            )
        t, n, _ = diagonal.shape
        if t < 1 or n < 1:
            raise ValueError(
                f"`diagonal` must have T >= 1, n >= 1; got {diagonal.shape}."
            )
        if lower.shape != (t - 1, n, n):
            raise ValueError(
                f"`lower` must have shape {(t - 1, n, n)} (T - 1 blocks of n x n, "
                f"lower[t] = A[t+1, t]); got {lower.shape}."
            )
        dtype = jnp.result_type(diagonal.dtype, lower.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
        self.diagonal = diagonal.astype(dtype)
        self.lower = lower.astype(dtype)

    @property
    def num_blocks(self) -> int:
        """$T$."""
        return self.diagonal.shape[0]

    @property
    def block_size(self) -> int:
        """$n$."""
        return self.diagonal.shape[1]

    @property
    def size(self) -> int:
        """$d = T n$."""
        return self.num_blocks * self.block_size

    @property
    def vector_shape(self) -> tuple[int, ...]:
        """`(T, n)`."""
        return (self.num_blocks, self.block_size)

    def matvec(self, x: Float[ArrayLike, "T n"]) -> Float[Array, "T n"]:
        r"""$A x$ for `x` of shape `(T, n)` or `(T, n, m)`."""
        x = jnp.asarray(x)
        y = TK.blocktri_matvec(self.diagonal, self.lower, x.reshape(*x.shape[:2], -1))
        return y.reshape(x.shape)

    def entries(
        self, rows: Int[ArrayLike, "*shape"], cols: Int[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""The entries $A_{r_k, c_k}$ for flat indices $i = t n + j$ (`rows` and
        `cols` broadcast together): read from the blocks, zero outside them; one
        gather per block kind, differentiable with respect to the blocks."""
        rows, cols = jnp.broadcast_arrays(jnp.asarray(rows), jnp.asarray(cols))
        n, t_max = self.block_size, self.num_blocks - 1
        tr, a = jnp.divmod(rows, n)
        tc, b = jnp.divmod(cols, n)
        diag = self.diagonal[tr, a, b]
        if t_max == 0:
            return jnp.where(tr == tc, diag, 0.0)
        lo = jnp.clip(jnp.minimum(tr, tc), 0, t_max - 1)
        below = self.lower[lo, a, b]  # A[t+1, t] block, row block tr = tc + 1
        above = self.lower[lo, b, a]  # its transpose, row block tr = tc - 1
        return jnp.where(
            tr == tc,
            diag,
            jnp.where(tr == tc + 1, below, jnp.where(tc == tr + 1, above, 0.0)),
        )

    def to_dense(self) -> Float[Array, "d d"]:
        """Dense `(T n, T n)` matrix (tests and small problems only)."""
        return TK.blocktri_to_dense(self.diagonal, self.lower)

    def add_diagonal(self, v: Float[ArrayLike, "T n"]) -> "BlockTridiagonal":
        r"""$A + \mathrm{diag}(v)$, `v` of shape `(T, n)` (or anything of size $Tn$)."""
        v = jnp.reshape(jnp.asarray(v), (self.num_blocks, self.block_size))
        idx = jnp.arange(self.block_size)
        return BlockTridiagonal(self.diagonal.at[:, idx, idx].add(v), self.lower)

    def diag_congruence(self, s: Float[ArrayLike, "T n"]) -> "BlockTridiagonal":
        r"""$S A S$ with $S = \mathrm{diag}(s)$."""
        s = jnp.reshape(jnp.asarray(s, self.diagonal.dtype), (self.num_blocks, -1))
        diag = s[:, :, None] * self.diagonal * s[:, None, :]
        lower = s[1:, :, None] * self.lower * s[:-1, None, :]
        return BlockTridiagonal(diag, lower)

    def cholesky(self, method: str = "sequential"):
        r"""Cholesky factorisation, computed without gradient.

        `method="sequential"`: $A = L L^\top$ by a scan over $T$ ($O(T n^3)$, the CPU
        default). `method="parallel"`: block cyclic reduction, $O(\log T)$ depth
        (`CyclicReductionCholesky`; same results up to rounding, for accelerators and
        long windows). `result` is `RESULTS.not_positive_definite` when a pivot is not
        positive and finite, `RESULTS.nonfinite_input` when a block holds NaN or inf.
        """
        check_choice("method", method, METHODS)
        if method == "parallel":
            from ._parallel import cyclic_reduction_cholesky

            return cyclic_reduction_cholesky(self)
        diag, lower = lax.stop_gradient((self.diagonal, self.lower))
        chol, off = TK.blocktri_cholesky(diag, lower)
        result = factor_result((diag, lower), TK.blocktri_pivots_ok(chol))
        return BlockTridiagonalCholesky(self, chol, off, result)

    def _sample(self, key, shape, precision):
        shape = tuple(check_int("shape", s, minimum=0) for s in shape)
        chol, off = TK.blocktri_cholesky(self.diagonal, self.lower)
        m = 1
        for s in shape:
            m *= s
        t, n = self.num_blocks, self.block_size
        z = jax.random.normal(key, (t, n, m), chol.dtype)
        if precision:
            x = TK.blocktri_backward(chol, off, z)
        else:
            x = chol @ z
            if t > 1:
                x = x.at[1:].add(off @ z[:-1])
        spd = TK.blocktri_pivots_ok(lax.stop_gradient(chol))
        result = factor_result((self.diagonal, self.lower), spd)
        return jnp.moveaxis(x, -1, 0).reshape(*shape, t, n), result

    def to_band(self):
        r"""The same matrix as a `SymmetricBandMatrix` of bandwidth $2n - 1$
        (interleaved layout $i = t n + j$)."""
        from ._conversion import block_tridiagonal_to_band

        return block_tridiagonal_to_band(self)


class BlockTridiagonalCholesky(AbstractCholesky):
    r"""Sequential block Cholesky $A = L L^\top$ of a `BlockTridiagonal`.

    $L$ is block lower-bidiagonal: `chol[t]` $= L_{t,t}$ (lower triangular) and
    `off[t]` $= L_{t+1,t}$, with $L_{0,0} = \mathrm{chol}(A_{00})$,
    $L_{t,t-1} = A_{t,t-1} L_{t-1,t-1}^{-\top}$,
    $L_{t,t} = \mathrm{chol}(A_{tt} - L_{t,t-1} L_{t,t-1}^\top)$.

    **Fields:** `matrix` (kept for the implicit rules), `chol`, `off` (computed without
    gradient), `result` (a `jaxda.RESULTS` item: `successful`,
    `not_positive_definite` or `nonfinite_input`; `solve`, `logdet` and
    `inverse_diagonal` raise on failure with `throw=True`, their default).
    """

    matrix: BlockTridiagonal
    chol: Float[Array, "T n n"]
    off: Float[Array, "Tm1 n n"]
    result: RESULTS

    def logdet_with_rule(self) -> Float[Array, ""]:
        """Log-determinant with the JVP rule (no SPD check)."""
        return _implicit.blocktri_logdet(self.matrix, TK.blocktri_logdet(self.chol))

    def solve_factor(self, rhs: Float[ArrayLike, "T n"]) -> Float[Array, "T n"]:
        """$A^{-1}$ `rhs` from the factor, without implicit derivative rules."""
        rhs = jnp.asarray(rhs)
        x = TK.blocktri_cholesky_solve(
            self.chol, self.off, rhs.reshape(*rhs.shape[:2], -1)
        )
        return x.reshape(rhs.shape)

    def inverse_blocks(self, *, throw: bool = True) -> BlockTridiagonal:
        r"""The blocks of $A^{-1}$ on the block-tridiagonal pattern (selected inversion;
        the RTS smoother covariances and lag-one cross-covariances).

        Not differentiable. `throw` as in `solve` (with `throw=False`, NaN when
        `result` is not successful)."""
        sd, sl = TK.blocktri_selected_inverse(self.chol, self.off)
        return raise_if_failed(BlockTridiagonal(sd, sl), self.result, throw)

    def _inverse_diagonal(self) -> Float[Array, "T n"]:
        sd, _ = TK.blocktri_selected_inverse(self.chol, self.off)
        return jnp.diagonal(sd, axis1=-2, axis2=-1)
