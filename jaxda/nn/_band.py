r"""Small helpers on symmetric band storage `band[k, i] = A[i + k, i]` (LAPACK lower).

Not a solver: only the product $L L^\top$ of a banded lower-triangular factor, its dense
form (for tests and small problems) and masking of the unused corner of the storage.
"""

import jax.numpy as jnp

from .._custom_types import Array, Float


def band_valid_mask(bandwidth: int, size: int) -> Array:
    """Boolean `(b + 1, d)`: `True` where `band[k, i]` is inside the matrix (`i + k <
    d`)."""
    k = jnp.arange(bandwidth + 1)[:, None]
    i = jnp.arange(size)[None, :]
    return i + k < size


def lower_band_gram(factor: Float[Array, "b1 d"]) -> Float[Array, "b1 d"]:
    r"""Band storage of $A = L L^\top$ for a lower-triangular $L$ of bandwidth $b$.

    With `factor[k, i]` $= L_{i+k, i}$ (zero outside the matrix), $A_{i+k, i} =
    \sum_{m=0}^{b-k} L_{i+k, i-m} L_{i, i-m}$, so $A$ has bandwidth $b$ and costs $O(d
    b^2)$. $A$ is symmetric positive definite whenever $L$ has a positive diagonal.

    **Returns:** `band` of shape `(b + 1, d)` with `band[k, i]` $= A_{i+k, i}$.
    """
    b1, d = factor.shape
    out = jnp.zeros_like(factor)
    for m in range(b1):
        # shifted[r, i] = factor[r, i - m] (zero for i < m): column i - m of L.
        shifted = jnp.pad(factor, ((0, 0), (m, 0)))[:, :d]
        out = out.at[: b1 - m].add(shifted[m:] * shifted[m][None, :])
    return out


def band_to_dense(band: Float[Array, "b1 d"]) -> Float[Array, "d d"]:
    """Dense symmetric matrix from symmetric band storage (for tests and small
    problems)."""
    b1, d = band.shape
    a = jnp.zeros((d, d), band.dtype)
    idx = jnp.arange(d)
    for k in range(min(b1, d)):
        a = a.at[idx[k:], idx[: d - k]].set(band[k, : d - k])
        if k:
            a = a.at[idx[: d - k], idx[k:]].set(band[k, : d - k])
    return a


def lower_band_to_dense(factor: Float[Array, "b1 d"]) -> Float[Array, "d d"]:
    """Dense lower-triangular matrix $L$ from its band storage `factor[k, i] = L[i+k,
    i]`."""
    b1, d = factor.shape
    a = jnp.zeros((d, d), factor.dtype)
    idx = jnp.arange(d)
    for k in range(min(b1, d)):
        a = a.at[idx[k:], idx[: d - k]].set(factor[k, : d - k])
    return a


def band_gaussian_map(mean, band, form, obs, obs_var):
    r"""MAP under $\mathcal N(\mu, A^{-1})$ (`form="precision"`) or $\mathcal N(\mu, A)$
    (`form="covariance"`), $A$ given by `band`, with the banded solvers of
    `jaxda.gaussian` ($O(d b^2)$, implicit derivatives).

    **Returns:** `(mean, ok)`, `ok` whether the banded Cholesky succeeded."""
    from .. import gaussian
    from ..linalg import SymmetricBandMatrix

    mat = SymmetricBandMatrix(band)
    fn = gaussian.map_precision if form == "precision" else gaussian.map_covariance
    out = fn(mean, mat, obs.values, obs.mask, obs_var)
    return out.mean, out.ok
