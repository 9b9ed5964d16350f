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

from . import _band_kernels as BK, _blocktri_kernels as TK


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


def factor_solve(chol, rhs):
    """Differentiable $A^{-1}$ `rhs` from an `AbstractCholesky` (no failure check)."""
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


def band_logdet(matrix, factor):
    """$\\log\\det$ of a band matrix with the selected-inversion JVP rule."""
    return _band_logdet(matrix.masked_band(), lax.stop_gradient(factor))


def blocktri_logdet(matrix, value):
    """$\\log\\det$ of a block-tridiagonal matrix, JVP rule (`value`: primal)."""
    return _blocktri_logdet(matrix.diagonal, matrix.lower, lax.stop_gradient(value))
