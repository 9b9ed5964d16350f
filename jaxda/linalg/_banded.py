r"""Symmetric banded matrices in LAPACK lower storage and their Cholesky factor."""

import jax
import jax.numpy as jnp
from jax import lax

from .._custom_types import Array, ArrayLike, Float, Int
from .._results import RESULTS, raise_if_failed
from .._validation import check_choice, check_int
from . import _band_kernels as K, _implicit
from ._base import METHODS, AbstractCholesky, AbstractSPDMatrix, factor_result


def _pivots_ok(piv) -> Array:
    return jnp.all((piv > 0) & jnp.isfinite(piv))


class SymmetricBandMatrix(AbstractSPDMatrix):
    r"""A symmetric $d \times d$ matrix $A$ of bandwidth $b$ in lower-band storage.

    `band[k, i]` $= A_{i+k,\,i}$ for $k = 0, \dots, b$ (LAPACK lower storage); entries
    with $i + k \ge d$ lie outside the matrix and are ignored (they get zero
    derivatives). Memory is $O(d b)$; matvec is $O(d b)$; Cholesky, solve,
    log-determinant and sampling are $O(d b^2)$. Nothing builds a dense $d \times d$
    matrix except `to_dense`.

    `solve` and `logdet` are differentiable in forward and reverse mode with respect to
    `band` and the right-hand side by implicit rules that reuse the factorisation (see
    `jaxda.linalg.solve`). `solve`, `logdet`, `sample` and `sample_cov` take
    `throw=True` (see `AbstractSPDMatrix`): a matrix that is not SPD raises, eagerly and
    under `jit` alike.

    **Arguments:**

    - `band`: array of shape `(b + 1, d)`.
    """

    band: Float[Array, "b1 d"]

    def __init__(self, band: Float[ArrayLike, "b1 d"]):
        band = jnp.asarray(band)
        if band.ndim != 2 or band.shape[0] < 1 or band.shape[1] < 1:
            raise ValueError(
                f"`band` must have shape (b + 1, d) with b >= 0, d >= 1; got "
                f"{band.shape}."
            )
        if not jnp.issubdtype(band.dtype, jnp.floating):
            band = band.astype(jnp.result_type(float))
        self.band = band

    @classmethod
    def from_dense(
        cls, a: Float[ArrayLike, "d d"], bandwidth: int
    ) -> "SymmetricBandMatrix":
        r"""The band of width `bandwidth` of the symmetric matrix `a` (its lower
        triangle is read; entries further from the diagonal are dropped)."""
        a = jnp.asarray(a)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"`a` must be a square matrix; got shape {a.shape}.")
        return cls(K.dense_to_band(a, check_int("bandwidth", bandwidth, minimum=0)))

    @classmethod
    def from_lower_factor(
        cls, factor: Float[ArrayLike, "b1 d"]
    ) -> "SymmetricBandMatrix":
        r"""$A = L L^\top$ for the lower-triangular band $L$ stored as `factor[k, i]`
        $= L_{i+k, i}$ (same bandwidth, $O(d b^2)$). $A$ is SPD whenever $L$ has a
        positive diagonal."""
        factor = SymmetricBandMatrix(factor).masked_band()
        return cls(K.lower_band_gram(factor))

    @property
    def size(self) -> int:
        """The dimension $d$."""
        return self.band.shape[1]

    @property
    def vector_shape(self) -> tuple[int, ...]:
        """`(d,)`."""
        return (self.size,)

    @property
    def bandwidth(self) -> int:
        """The bandwidth $b$ (number of sub-diagonals stored)."""
        return self.band.shape[0] - 1

    def masked_band(self) -> Float[Array, "b1 d"]:
        """`band` with the entries outside the matrix set to zero."""
        return K.masked(self.band)

    def matvec(self, v: Float[ArrayLike, " d"]) -> Float[Array, " d"]:
        r"""$A v$ for `v` of shape `(d,)` or `(d, m)`."""
        v = jnp.asarray(v)
        out = K.band_matvec(self.masked_band(), v.reshape(v.shape[0], -1))
        return out.reshape(v.shape)

    def diagonal(self) -> Float[Array, " d"]:
        """The main diagonal of $A$."""
        return self.band[0]

    def entries(
        self, rows: Int[ArrayLike, "*shape"], cols: Int[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""The entries $A_{r_k, c_k}$ for index arrays `rows` and `cols` (broadcast
        together): read from the band, zero outside it; one gather, differentiable
        with respect to `band`."""
        rows, cols = jnp.broadcast_arrays(jnp.asarray(rows), jnp.asarray(cols))
        offset = jnp.abs(rows - cols)
        inside = offset <= self.bandwidth
        value = self.masked_band()[
            jnp.minimum(offset, self.bandwidth), jnp.minimum(rows, cols)
        ]
        return jnp.where(inside, value, 0.0)

    def to_dense(self) -> Float[Array, "d d"]:
        """The dense matrix (for tests and small problems: $O(d^2)$ memory)."""
        return K.band_to_dense(self.masked_band())

    def add_diagonal(self, v: Float[ArrayLike, " d"]) -> "SymmetricBandMatrix":
        r"""$A + \mathrm{diag}(v)$."""
        return SymmetricBandMatrix(self.band.at[0].add(jnp.reshape(v, (-1,))))

    def diag_congruence(self, s: Float[ArrayLike, " d"]) -> "SymmetricBandMatrix":
        r"""$S A S$ with $S = \mathrm{diag}(s)$ (same band; e.g. masking)."""
        s = jnp.reshape(jnp.asarray(s, self.band.dtype), (-1,))
        b1, d = self.band.shape
        s_shift = jnp.stack(
            [
                jnp.concatenate([s[k:], jnp.zeros((min(k, d),), s.dtype)])[:d]
                for k in range(b1)
            ]
        )
        return SymmetricBandMatrix(self.band * s[None, :] * s_shift)

    def cholesky(self, method: str = "sequential") -> "BandCholesky":
        r"""Banded Cholesky factor $A = L L^\top$ ($L$ lower, same bandwidth).

        The factor is computed from `stop_gradient(band)`: differentiate through the
        returned object's `solve` / `logdet` (implicit rules), not through its `factor`
        entries. `result` is `RESULTS.not_positive_definite` when a pivot is not
        positive or not finite (then the factor holds NaN or zeros), and
        `RESULTS.nonfinite_input` when the band holds NaN or inf. `method` is accepted
        for a uniform interface with `BlockTridiagonal` (a band has one algorithm).
        """
        check_choice("method", method, METHODS)
        band = lax.stop_gradient(self.masked_band())
        factor, piv = K.band_cholesky(band)
        return BandCholesky(self, factor, factor_result(band, _pivots_ok(piv)))

    def _sample(self, key, shape, precision):
        shape = tuple(check_int("shape", s, minimum=0) for s in shape)
        band = self.masked_band()
        factor, piv = K.band_cholesky(band)
        d = self.size
        m = 1
        for s in shape:
            m *= s
        z = jax.random.normal(key, (d, m), band.dtype)
        if precision:
            x = K.backward_substitution(factor, z)
        else:
            x = K.lower_matvec(factor, z)
        result = factor_result(band, _pivots_ok(lax.stop_gradient(piv)))
        return x.T.reshape(*shape, d), result

    def to_block_tridiagonal(self, n: int):
        r"""The same matrix as a `BlockTridiagonal` with blocks of size `n`.

        For the interleaved time-major layout `i = t n + j` ($d = T n$). Exact when
        $b \le n$. For $n < b \le 2n - 1$ the entries coupling blocks more than one step
        apart must be zero: checked when the values are concrete (`ValueError`), and
        dropped without a check under `jit`.
        """
        from ._conversion import band_to_block_tridiagonal

        return band_to_block_tridiagonal(self, n)


class BandCholesky(AbstractCholesky):
    r"""Cholesky factorisation $A = L L^\top$ of a `SymmetricBandMatrix`.

    **Fields:**

    - `matrix`: the factorised matrix (kept for the implicit derivative rules).
    - `factor`: `(b + 1, d)` lower band of $L$ (`factor[k, i]` $= L_{i+k,\,i}$),
      computed without gradient.
    - `result`: a `jaxda.RESULTS` item, `successful`, `not_positive_definite` (a pivot
      was not positive and finite) or `nonfinite_input`. `solve`, `logdet` and
      `inverse_diagonal` raise on failure with `throw=True` (their default).
    """

    matrix: SymmetricBandMatrix
    factor: Float[Array, "b1 d"]
    result: RESULTS

    def logdet_with_rule(self) -> Float[Array, ""]:
        """$\\log\\det A$ with the implicit JVP rule (no check)."""
        return _implicit.band_logdet(self.matrix, self.factor)

    def solve_factor(self, rhs: Float[ArrayLike, " d"]) -> Float[Array, " d"]:
        """$A^{-1}$ `rhs` from the factor, without implicit derivative rules."""
        rhs = jnp.asarray(rhs)
        x = K.cholesky_solve(self.factor, rhs.reshape(rhs.shape[0], -1))
        return x.reshape(rhs.shape)

    def inverse_band(self, *, throw: bool = True) -> SymmetricBandMatrix:
        r"""The entries of $A^{-1}$ inside the band (selected inversion, $O(d b^2)$).

        Not differentiable (computed from the gradient-free factor). `throw` as in
        `solve` (with `throw=False`, NaN when `result` is not successful).
        """
        inverse = SymmetricBandMatrix(K.selected_inverse(self.factor))
        return raise_if_failed(inverse, self.result, throw)

    def _inverse_diagonal(self) -> Float[Array, " d"]:
        return K.selected_inverse(self.factor)[0]

    def lower_dense(self) -> Float[Array, "d d"]:
        """Dense $L$ (tests only)."""
        return K.lower_band_to_dense(self.factor)
