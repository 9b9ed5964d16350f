r"""Abstract bases: `AbstractSPDMatrix` and `AbstractCholesky`, and the result rule.

The equinox abstract/final pattern: the bases declare the abstract fields and methods
and implement the public entry points once (`solve`, `logdet`, `sample`, `sample_cov`,
`inverse_diagonal`, each with `throw=`); the concrete classes (`SymmetricBandMatrix`,
`BlockTridiagonal`; `BandCholesky`, `BlockTridiagonalCholesky`,
`CyclicReductionCholesky`) are final and implement only the structure-specific kernels.

**Result convention.** A factorisation carries `result` (a `jaxda.RESULTS` item):
`nonfinite_input` when an entry of the matrix is NaN or infinite,
`not_positive_definite` when a Cholesky pivot is not positive and finite, `successful`
otherwise. The functions that return a plain array (`solve`, `logdet`, `sample`,
`sample_cov`, `inverse_diagonal`, `inverse_band`, `inverse_blocks`) take `throw=True`:
a failed factorisation (and, for `solve`, a non-finite right-hand side,
`nonfinite_input`) raises an `equinox.EquinoxRuntimeError` carrying the result's
message, eagerly and under `jit` alike (`equinox.error_if`); under `vmap` it raises
when any member failed. With `throw=False` the array is returned as computed (NaN
where the factorisation failed): callers who branch on failure factorise once,
`chol = A.cholesky()`, read `chol.result`, and call `chol.solve(rhs, throw=False)`.
"""

import abc

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Bool, Float, Int, Key
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from . import _implicit


METHODS = ("sequential", "parallel")


def factor_result(matrix: "AbstractSPDMatrix", spd: Bool[Array, ""]) -> RESULTS:
    """`nonfinite_input` if `matrix` has a non-finite entry, else
    `not_positive_definite` unless `spd`, else `successful`."""
    return first_failure(
        (~all_finite(matrix), RESULTS.nonfinite_input),
        (~spd, RESULTS.not_positive_definite),
    )


class AbstractSPDMatrix(eqx.Module):
    r"""A structured symmetric matrix $A$ meant to be positive definite.

    Concrete classes: `SymmetricBandMatrix`, `BlockTridiagonal`. Vectors have the
    shape `vector_shape` (`(d,)` or `(T, n)`); a trailing axis of right-hand sides is
    allowed where stated.
    """

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """The dimension $d$."""

    @property
    @abc.abstractmethod
    def vector_shape(self) -> tuple[int, ...]:
        """The shape of a vector $v$ in $A v$: `(d,)` (band) or `(T, n)` (blocks)."""

    @abc.abstractmethod
    def matvec(self, v: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        r"""$A v$."""

    @abc.abstractmethod
    def entries(
        self, rows: Int[ArrayLike, "*shape"], cols: Int[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""The entries $A_{r_k, c_k}$ (flat indices), zero outside the structure."""

    @abc.abstractmethod
    def to_dense(self) -> Float[Array, "d d"]:
        """The dense matrix (tests and small problems)."""

    @abc.abstractmethod
    def add_diagonal(self, v: Float[ArrayLike, "..."]) -> "AbstractSPDMatrix":
        r"""$A + \mathrm{diag}(v)$ (same structure)."""

    @abc.abstractmethod
    def diag_congruence(self, s: Float[ArrayLike, "..."]) -> "AbstractSPDMatrix":
        r"""$S A S$ with $S = \mathrm{diag}(s)$ (same structure)."""

    @abc.abstractmethod
    def cholesky(self, method: str = "sequential") -> "AbstractCholesky":
        r"""The Cholesky factorisation $A = L L^\top$ (its `result` says whether it
        succeeded)."""

    @abc.abstractmethod
    def _sample(self, key, shape, precision: bool) -> tuple[Array, RESULTS]:
        """`(draws, result)`, differentiable through the factorisation."""

    def solve(
        self, rhs: Float[ArrayLike, "..."], method: str = "sequential", *, throw=True
    ) -> Float[Array, "..."]:
        r"""$A^{-1}$ `rhs`; see `jaxda.linalg.solve`."""
        return self.cholesky(method).solve(rhs, throw=throw)

    def logdet(self, method: str = "sequential", *, throw=True) -> Float[Array, ""]:
        r"""$\log\det A$; see `jaxda.linalg.logdet`."""
        return self.cholesky(method).logdet(throw=throw)

    def sample(
        self, key: Key, shape: tuple[int, ...] = (), *, throw: bool = True
    ) -> Float[Array, "..."]:
        r"""Draw from $\mathcal N(0, A^{-1})$: $A$ is a **precision** matrix.

        $x = L^{-\top} z$ with $z \sim \mathcal N(0, I)$, so
        $\mathrm{Cov}(x) = L^{-\top} L^{-1} = A^{-1}$. Differentiable with respect to
        the entries of $A$ by ordinary autodiff through the factorisation.

        **Arguments:** `key`; `shape`, the batch shape of the draws; `throw`: raise
        when $A$ is not SPD (else the draws hold NaN; see the module docstring).

        **Returns:** draws of shape `(*shape, *vector_shape)`.
        """
        x, result = self._sample(key, shape, precision=True)
        return raise_if_failed(x, result, throw)

    def sample_cov(
        self, key: Key, shape: tuple[int, ...] = (), *, throw: bool = True
    ) -> Float[Array, "..."]:
        r"""Draw from $\mathcal N(0, A)$: $A$ is a **covariance** matrix.

        $x = L z$, $z \sim \mathcal N(0, I)$, $\mathrm{Cov}(x) = L L^\top = A$.
        Arguments and returns as `sample`.
        """
        x, result = self._sample(key, shape, precision=False)
        return raise_if_failed(x, result, throw)


class AbstractCholesky(eqx.Module):
    r"""A Cholesky factorisation $A = L L^\top$ of an `AbstractSPDMatrix`.

    Computed without gradient; `solve` and `logdet` are differentiable with respect to
    `matrix` and the right-hand side by implicit rules that reuse the factor.

    **Fields:** `matrix` (the factorised matrix, kept for the implicit rules) and
    `result` (`RESULTS.successful`, `nonfinite_input` or `not_positive_definite`),
    plus the factor of the concrete class.
    """

    matrix: eqx.AbstractVar[AbstractSPDMatrix]
    result: eqx.AbstractVar[RESULTS]

    @abc.abstractmethod
    def solve_factor(self, rhs: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """$A^{-1}$ `rhs` from the factor, without implicit derivative rules."""

    @abc.abstractmethod
    def logdet_with_rule(self) -> Float[Array, ""]:
        """$\\log\\det A$ with the implicit JVP rule (no check)."""

    @abc.abstractmethod
    def _inverse_diagonal(self) -> Float[Array, "..."]:
        """$\\mathrm{diag}(A^{-1})$ from the factor (no check)."""

    def rhs_lead_shape(self) -> tuple[int, ...]:
        """Leading shape a right-hand side must have: `matrix.vector_shape`."""
        return self.matrix.vector_shape

    def solve(
        self, rhs: Float[ArrayLike, "..."], *, throw: bool = True
    ) -> Float[Array, "..."]:
        r"""$A^{-1}$ `rhs` (`rhs` of shape `vector_shape` or `(*vector_shape, m)`).

        Differentiable in forward and reverse mode by the implicit rules
        $\dot x = A^{-1}(\dot b - \dot A x)$, $\bar b = A^{-1}\bar x$,
        $\bar A = -\mathrm{P}(\bar b x^\top)$. With `throw`, a failed factorisation
        or a non-finite `rhs` (`RESULTS.nonfinite_input`) raises, eagerly and under
        `jit`; with `throw=False` nothing is checked: the solution holds NaN where the
        factorisation failed, and `result` says why.
        """
        x = _implicit.factor_solve(self, rhs)
        if not throw:
            return x
        result = first_failure(
            (self.result != RESULTS.successful, self.result),
            (~all_finite(rhs), RESULTS.nonfinite_input),
        )
        return raise_if_failed(x, result, throw)

    def logdet(self, *, throw: bool = True) -> Float[Array, ""]:
        r"""$\log\det A = 2 \sum_i \log L_{ii}$, differentiable: $d \log\det A =
        \mathrm{tr}(A^{-1} dA)$ from the entries of $A^{-1}$ on the structure of $A$
        (selected inversion). `throw` as in `solve`."""
        return raise_if_failed(self.logdet_with_rule(), self.result, throw)

    def inverse_diagonal(self, *, throw: bool = True) -> Float[Array, "..."]:
        r"""$\mathrm{diag}(A^{-1})$ with the shape `vector_shape`, by selected
        inversion (e.g. posterior marginal variances). Not differentiable
        (gradient-free factor). `throw` as in `solve`."""
        return raise_if_failed(self._inverse_diagonal(), self.result, throw)


def check_matrix(name: str, A) -> AbstractSPDMatrix:
    """`A`, or a `TypeError` naming `name` when it is not an `AbstractSPDMatrix`."""
    if not isinstance(A, AbstractSPDMatrix):
        raise TypeError(
            f"`{name}` must be a `SymmetricBandMatrix` or a `BlockTridiagonal`; got "
            f"{type(A).__name__}."
        )
    return A


def solve(
    A: AbstractSPDMatrix,
    rhs: Float[ArrayLike, "..."],
    *,
    method: str = "sequential",
    throw: bool = True,
) -> Float[Array, "..."]:
    r"""Solve $A x = b$ for a structured SPD matrix, differentiably.

    Derivatives with respect to the entries of $A$ and `rhs`, in forward and reverse
    mode, come from the implicit rules $\dot x = A^{-1}(\dot b - \dot A x)$,
    $\bar b = A^{-1}\bar x$, $\bar A = -\mathrm{P}(\bar b x^\top)$ ($\mathrm{P}$ =
    projection on the stored structure) and reuse the factorisation.

    **Arguments:**

    - `A`: a `SymmetricBandMatrix` (`rhs` of shape `(d,)` or `(d, m)`) or a
      `BlockTridiagonal` (`rhs` of shape `(T, n)` or `(T, n, m)`).
    - `method`: `"sequential"` or `"parallel"` (cyclic reduction; block-tridiagonal
      only, a band has one algorithm and ignores it).
    - `throw`: when $A$ is not SPD (or $A$ or `rhs` holds NaN / inf), raise an
      `equinox.EquinoxRuntimeError`, eagerly and under `jit` alike. With
      `throw=False` the solution holds NaN; to branch on the failure, factorise once
      and read `A.cholesky(method).result`.

    **Returns:** $x$, with the shape of `rhs`.
    """
    check_matrix("A", A)
    return _solve(A, jnp.asarray(rhs), method, throw)


def logdet(
    A: AbstractSPDMatrix, *, method: str = "sequential", throw: bool = True
) -> Float[Array, ""]:
    r"""$\log\det A$ for a structured SPD matrix, differentiable in both modes.

    $d \log\det A = \mathrm{tr}(A^{-1} dA)$ with the entries of $A^{-1}$ on the
    structure of $A$ from selected inversion. `method` and `throw` as in `solve`.

    **Returns:** the scalar $\log\det A$.
    """
    check_matrix("A", A)
    return _logdet(A, method, throw)


# One compiled call per shape and option: dispatching the factorisation op by op costs
# far more than the compiled work on small problems.
@eqx.filter_jit
def _solve(A, rhs, method, throw):
    return A.cholesky(method).solve(rhs, throw=throw)


@eqx.filter_jit
def _logdet(A, method, throw):
    return A.cholesky(method).logdet(throw=throw)
