"""Conversion between lower-band storage and block-tridiagonal blocks.

Interleaved time-major layout: index `i = t n + j` for block `t`, component `j`. A
block-tridiagonal matrix has bandwidth `2n - 1`; a band of bandwidth `b <= n` is
block-tridiagonal with blocks of size `n`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_int, is_concrete
from . import _band_kernels as BK


def band_to_block_tridiagonal(matrix, n: int):
    from ._block_tridiagonal import BlockTridiagonal

    n = check_int("n", n, minimum=1)
    b, d = matrix.bandwidth, matrix.size
    if d % n:
        raise ValueError(f"`n` must divide the size d = {d}; got n = {n}.")
    if b > 2 * n - 1:
        raise ValueError(
            f"a band of bandwidth {b} is not block-tridiagonal with blocks of size "
            f"{n}: need bandwidth <= 2n - 1 = {2 * n - 1}."
        )
    band = matrix.masked_band()
    if b > n and is_concrete(band):
        k = np.arange(b + 1)[:, None]
        i = np.arange(d)[None, :]
        far = ((i + k) // n - i // n) >= 2
        if np.any(np.asarray(band)[far] != 0):
            raise ValueError(
                f"the band (bandwidth {b}) couples blocks of size {n} more than one "
                "step apart: it is not block-tridiagonal with this block size."
            )
    diag, lower = _band_blocks(band, n)
    return BlockTridiagonal(diag, lower)


@functools.partial(jax.jit, static_argnums=1)
def _band_blocks(band, n):
    b, d = band.shape[0] - 1, band.shape[1]
    t = d // n
    bp = jnp.zeros((2 * n, d), band.dtype).at[: min(b + 1, 2 * n)].set(band[: 2 * n])
    r = np.arange(n)[:, None]
    c = np.arange(n)[None, :]
    tt = np.arange(t)[:, None, None] * n
    kd = np.abs(r - c)
    diag = bp[kd[None], tt + np.minimum(r, c)[None]]
    lower = bp[(n + r - c)[None], tt[:-1] + c[None]]
    return diag, lower


def block_tridiagonal_to_band(matrix):
    from ._banded import SymmetricBandMatrix

    return SymmetricBandMatrix(_blocks_band(matrix.diagonal, matrix.lower))


@jax.jit
def _blocks_band(diagonal, lower):
    t, n = diagonal.shape[:2]
    dtype = diagonal.dtype
    lower = jnp.concatenate([lower, jnp.zeros((1, n, n), dtype)])
    strip = jnp.concatenate(
        [diagonal, lower, jnp.zeros((t, n - 1, n), dtype)], axis=1
    )  # strip[t, r, c] = A[t n + r, t n + c], r < 3n - 1
    k = np.arange(2 * n)[:, None]
    c = np.arange(n)[None, :]
    band = strip[:, k + c, np.broadcast_to(c, (2 * n, n))]  # (T, 2n, n)
    band = jnp.moveaxis(band, 0, 1).reshape(2 * n, t * n)
    return BK.masked(band)
