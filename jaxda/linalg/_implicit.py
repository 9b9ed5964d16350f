r"""Differentiable solve and log-determinant with implicit rules reusing the factor.

**Solve.** $x = A^{-1} b$ is computed with `lax.custom_linear_solve`, whose `matvec` is
the structured product $v \mapsto A v$ (closing over the matrix entries) and whose
`solve` / `transpose_solve` is the gradient-free Cholesky solve. JAX then applies the
implicit rules: forward mode $\dot x = A^{-1}(\dot b - \dot A x)$; reverse mode
$\bar b = A^{-1} \bar x$ and $\bar A = -\bar b x^\top$ projected on the stored structure
(the transpose of the structured matvec: for a lower band both triangles contribute,
i.e. the symmetrised projection). No differentiation through the factorisation loop.

**Log-determinant.** $d \log\det A = \mathrm{tr}(A^{-1} dA)$ needs the entries of
$A^{-1}$ only on the sparsity pattern of $A$: the band (Takahashi selected inversion)
or the block-tridiagonal blocks (RTS-like backward recursion), $O(d b^2)$ / $O(T n^3)$.
The tangent is linear in $dA$, so reverse mode follows by transposition.
"""

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import is_concrete
from . import _band_kernels as BK, _blocktri_kernels as TK


def _raise_if_not_spd(is_spd, what: str) -> None:
    if is_concrete(is_spd) and not bool(is_spd):
        raise ValueError(
            f"{what}: the matrix is not symmetric positive definite (a Cholesky pivot "
            "was not positive and finite). Inside `jit`, check the `is_spd` flag of "
            "`A.cholesky()` instead."
        )


def _prepare_rhs(matrix, rhs, expected_lead: tuple[int, ...]):
    rhs = jnp.asarray(rhs)
    if tuple(rhs.shape[: len(expected_lead)]) != expected_lead:
        raise ValueError(
            f"`rhs` must have leading shape {expected_lead}; got {tuple(rhs.shape)}."
        )
    dtype = jnp.result_type(rhs.dtype, matrix_dtype(matrix))
    return rhs.astype(dtype)


def matrix_dtype(matrix):
    leaf = jax.tree_util.tree_leaves(matrix)[0]
    return leaf.dtype


def factor_solve(chol, rhs, *, check: bool = True):
    """Differentiable $A^{-1}$ `rhs` from a factor object (band, block or parallel).

    With `check`, a concrete non-SPD flag raises `ValueError`.
    """
    if check:
        _raise_if_not_spd(chol.is_spd, "solve")
    matrix = chol.matrix
    rhs = _prepare_rhs(matrix, rhs, chol.rhs_lead_shape())
    frozen = lax.stop_gradient(chol)

    def solve_fn(_matvec, r):
        return frozen.solve_factor(r)

    return lax.custom_linear_solve(matrix.matvec, rhs, solve_fn, symmetric=True)


# --- log-determinant, band --------------------------------------------------------


@jax.custom_jvp
def _band_logdet(band, factor):
    del band
    return 2.0 * jnp.sum(jnp.log(factor[0]))


@_band_logdet.defjvp
def _band_logdet_jvp(primals, tangents):
    band, factor = primals
    dband, _ = tangents
    sigma = BK.selected_inverse(factor)
    b1, d = band.shape
    weight = jnp.where(jnp.arange(b1)[:, None] == 0, 1.0, 2.0).astype(band.dtype)
    weight = jnp.where(BK.valid_band_mask(b1 - 1, d), weight, 0.0)
    return _band_logdet(band, factor), jnp.sum(sigma * weight * dband)


# --- log-determinant, block-tridiagonal ----------------------------------------------


@jax.custom_jvp
def _blocktri_logdet(diag, lower, value):
    del diag, lower
    return value


@_blocktri_logdet.defjvp
def _blocktri_logdet_jvp(primals, tangents):
    diag, lower, value = primals
    ddiag, dlower, _ = tangents
    chol, off = TK.blocktri_cholesky(diag, lower)
    sd, sl = TK.blocktri_selected_inverse(chol, off)
    tangent = jnp.sum(sd * ddiag) + 2.0 * jnp.sum(sl * dlower)
    return value, tangent


def factor_logdet(chol):
    """Differentiable $\\log\\det A$ from a factor object."""
    _raise_if_not_spd(chol.is_spd, "logdet")
    return chol.logdet_with_rule()


def band_logdet(matrix, factor):
    """$\\log\\det$ of a band matrix with the selected-inversion JVP rule."""
    return _band_logdet(matrix.masked_band(), lax.stop_gradient(factor))


def blocktri_logdet(matrix, value):
    """$\\log\\det$ of a block-tridiagonal matrix, JVP rule (`value`: primal)."""
    return _blocktri_logdet(matrix.diagonal, matrix.lower, lax.stop_gradient(value))


# --- module-level entry points -------------------------------------------------------


def solve(A, rhs, *, method: str = "sequential"):
    r"""Solve $A x = b$ for a structured SPD matrix, differentiably.

    $A$ is a `SymmetricBandMatrix` (`rhs` of shape `(d,)` or `(d, m)`) or a
    `BlockTridiagonal` (`rhs` of shape `(T, n)` or `(T, n, m)`; `method` is
    `"sequential"` or `"parallel"`). Derivatives with respect to the entries of $A$ and
    `rhs`, in forward and reverse mode, come from the implicit rules
    $\dot x = A^{-1}(\dot b - \dot A x)$, $\bar b = A^{-1}\bar x$,
    $\bar A = -\mathrm{P}(\bar b x^\top)$ ($\mathrm{P}$ = projection on the stored
    structure) and reuse the factorisation.

    Outside `jit`, a matrix that is not SPD raises `ValueError`; inside `jit` the result
    is NaN and `A.cholesky().is_spd` is `False` -- check that flag (the `jaxda.gaussian`
    results carry it).

    **Returns:** $x$, with the shape of `rhs`.
    """
    return _cholesky(A, method).solve(rhs)


def logdet(A, *, method: str = "sequential"):
    r"""$\log\det A$ for a structured SPD matrix, differentiable in both modes.

    $d \log\det A = \mathrm{tr}(A^{-1} dA)$ with the entries of $A^{-1}$ on the
    structure of $A$ from selected inversion. Not SPD: `ValueError` outside `jit`, NaN
    (with `A.cholesky().is_spd == False`) inside.
    """
    return _cholesky(A, method).logdet()


def _cholesky(A, method):
    from ._banded import SymmetricBandMatrix
    from ._block_tridiagonal import BlockTridiagonal

    if isinstance(A, SymmetricBandMatrix):
        return A.cholesky()
    if isinstance(A, BlockTridiagonal):
        return A.cholesky(method=method)
    raise TypeError(
        "`A` must be a `SymmetricBandMatrix` or a `BlockTridiagonal`; got "
        f"{type(A).__name__}."
    )
