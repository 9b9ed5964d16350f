r"""Scores of gridded reconstructions: RMSE score, gradient RMSE, PSD score and the
effective resolution of the ocean-mapping data challenges.

The PSD score, its conventions and the effective resolution are described in
`jaxda.metrics` (the package docstring).
"""

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float
from .._validation import check_choice, check_positive, check_same_shape
from ..grid._differences import diff_centred
from ..grid._grid import Grid
from ._pointwise import _masked_mean, _prep


_WINDOWS = ("auto", "hann", None)
_DETRENDS = ("constant", "linear", None)


class Spectrum(NamedTuple):
    """A power spectral density at positive wavenumbers (or frequencies).

    **Fields:** `wavenumber` (cycles per unit length, or per time unit), `psd` (the
    density, in field units squared per cycle per unit length).
    """

    wavenumber: Float[Array, " K"]
    psd: Float[Array, " K"]


class SpectralScore(NamedTuple):
    r"""The PSD score $1 - \mathrm{PSD}_e / \mathrm{PSD}_x$ and its 0.5 crossing.

    **Fields:**

    - `wavenumber`: positive wavenumbers (cycles per unit length) or frequencies
      (cycles per time unit), increasing; the wavelengths / periods are `1 /
      wavenumber`.
    - `score`: $1 - \mathrm{PSD}_e(k) / \mathrm{PSD}_x(k)$ at each of them.
    - `psd_truth`, `psd_error`: the two spectra.
    - `resolved_wavelength`: the effective resolution, the wavelength (or period) where
      `score` first falls below the level (see `crossing_wavelength`).
    """

    wavenumber: Float[Array, " K"]
    score: Float[Array, " K"]
    psd_truth: Float[Array, " K"]
    psd_error: Float[Array, " K"]
    resolved_wavelength: Float[Array, ""]


# ----------------------------------------------------------------------------------
# Point scores
# ----------------------------------------------------------------------------------


def _check_pair(estimate, truth, mask):
    return _prep(estimate, truth, mask, None)


def rmse_score(
    estimate: Float[ArrayLike, "*shape"],
    truth: Float[ArrayLike, "*shape"],
    mask: Bool[ArrayLike, "*shape"] | None = None,
) -> Float[Array, ""]:
    r"""The normalised RMSE score of the data challenges, $1 - \mathrm{RMSE} /
    \mathrm{RMS}(x)$.

    $1 - \sqrt{\sum_S (\hat x_i - x_i)^2 / \sum_S x_i^2}$ over every entry, or over
    the entries where `mask` is `True`: 1 for a perfect reconstruction, 0 for
    $\hat x = 0$. For the time series of the score, `jax.vmap` over the time axis.

    **Arguments:** `estimate`, `truth` of the same shape; optional boolean `mask`.

    **Returns:** a scalar (NaN when `mask` selects nothing).
    """
    estimate, truth, mask = _check_pair(estimate, truth, mask)
    return 1 - jnp.sqrt(
        _masked_mean((estimate - truth) ** 2, mask) / _masked_mean(truth**2, mask)
    )


def gradient_rmse(
    estimate: Float[ArrayLike, "*lead ny nx"],
    truth: Float[ArrayLike, "*lead ny nx"],
    grid: Grid,
    mask: Bool[ArrayLike, "*lead ny nx"] | None = None,
    *,
    of: str = "norm",
) -> Float[Array, ""]:
    r"""RMSE of the spatial gradient of a gridded reconstruction.

    With $\nabla x$ by centred differences (`jaxda.grid.diff_centred`: second order,
    one-sided second-order stencils at closed walls):

    - `of="norm"` (the 4DVarNet papers' "RMSE of the gradient"): RMSE of the gradient
      magnitude, $\sqrt{\overline{(|\nabla \hat x| - |\nabla x|)^2}}$;
    - `of="vector"`: $\sqrt{\overline{|\nabla \hat x - \nabla x|^2}}$.

    Means over every cell, or over the cells where `mask` is `True`.

    **Arguments:** `estimate`, `truth` of shape `(*lead, ny, nx)`; `grid`; optional
    boolean `mask` of that shape; `of`.

    **Returns:** a scalar, in field units per unit length.
    """
    check_choice("of", of, ("norm", "vector"))
    estimate, truth, mask = _check_pair(estimate, truth, mask)
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    grid.check_field("estimate", estimate, leading=max(estimate.ndim - 2, 0))
    gx_e, gy_e = (diff_centred(estimate, grid, a) for a in ("x", "y"))
    gx_t, gy_t = (diff_centred(truth, grid, a) for a in ("x", "y"))
    if of == "norm":
        sq = (jnp.hypot(gy_e, gx_e) - jnp.hypot(gy_t, gx_t)) ** 2
    else:
        sq = (gy_e - gy_t) ** 2 + (gx_e - gx_t) ** 2
    return jnp.sqrt(_masked_mean(sq, mask))


# ----------------------------------------------------------------------------------
# Spectra
# ----------------------------------------------------------------------------------


def _hann(n: int, dtype) -> Array:
    """The periodic ("DFT-even") Hann window $\\tfrac12 - \\tfrac12\\cos(2\\pi j/n)$."""
    return (0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(n) / n)).astype(dtype)


def _detrend_space(f, kind):
    if kind is None:
        return f
    f = f - jnp.mean(f, axis=(-2, -1), keepdims=True)
    if kind == "linear":
        # centred coordinates are orthogonal to each other and to the constant on a
        # full regular grid, so the least-squares plane is three projections
        ny, nx = f.shape[-2:]
        y = (jnp.arange(ny) - (ny - 1) / 2).astype(f.dtype)[:, None]
        x = (jnp.arange(nx) - (nx - 1) / 2).astype(f.dtype)[None, :]
        for c in (jnp.broadcast_to(y, (ny, nx)), jnp.broadcast_to(x, (ny, nx))):
            coef = jnp.sum(f * c, axis=(-2, -1), keepdims=True) / jnp.sum(c * c)
            f = f - coef * c
    return f


def _detrend_time(f, kind):
    if kind is None:
        return f
    f = f - jnp.mean(f, axis=0, keepdims=True)
    if kind == "linear":
        n = f.shape[0]
        t = (jnp.arange(n) - (n - 1) / 2).astype(f.dtype)
        t = t.reshape((n,) + (1,) * (f.ndim - 1))
        f = f - jnp.sum(f * t, axis=0, keepdims=True) / jnp.sum(t * t) * t
    return f


def _check_options(window, detrend, windows):
    check_choice("window", window, windows)
    check_choice("detrend", detrend, _DETRENDS)


def _floating(name, x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _ring_index(grid: Grid):
    """Ring of each 2-D mode (NumPy, static), the ring width and the number of rings."""
    ky = np.fft.fftfreq(grid.ny, grid.dy)
    kx = np.fft.fftfreq(grid.nx, grid.dx)
    kr = np.hypot(ky[:, None], kx[None, :])
    dk = max(1 / (grid.nx * grid.dx), 1 / (grid.ny * grid.dy))
    k_max = min(1 / (2 * grid.dx), 1 / (2 * grid.dy))
    n_rings = int(math.floor(k_max / dk * (1 + 1e-12)))
    ring = np.floor(kr / dk + 0.5).astype(np.int64)
    ring = np.where(ring > n_rings, n_rings + 1, ring)  # the corners: dropped
    return ring, dk, n_rings


def isotropic_psd(
    field: Float[ArrayLike, "*lead ny nx"],
    grid: Grid,
    *,
    window: str | None = "auto",
    detrend: str | None = "constant",
) -> Spectrum:
    r"""The isotropic (radially summed) power spectral density of a gridded field.

    The field $f$ (detrended, multiplied by the window $w$) has the 2-D periodogram
    $P(k_y, k_x) = |\hat f(k_y, k_x)|^2 \Delta x \Delta y / (n_x n_y \overline{w^2})$,
    $\hat f$ the discrete Fourier transform; the isotropic PSD is
    $\mathrm{PSD}(k_n) = \sum_{\text{ring } n} P\, \Delta k_x \Delta k_y / \Delta k$,
    $k_n = n \Delta k$, $n = 1 \dots \lfloor k_{\mathrm{Nyq}} / \Delta k \rfloor$
    (see the conventions of `jaxda.metrics`), averaged over the leading axes.

    **Arguments:**

    - `field`: shape `(*lead, ny, nx)` on `grid`; the leading axes (times, samples)
      are averaged.
    - `grid`: the `Grid` (spacing, boundary).
    - `window`: `"auto"` (Hann on a closed grid, none on a periodic one), `"hann"` or
      `None`.
    - `detrend`: `"constant"` (default), `"linear"` or `None`.

    **Returns:** a `Spectrum(wavenumber, psd)` with wavenumbers $k_n$ in cycles per unit
    length.
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    _check_options(window, detrend, _WINDOWS)
    field = _floating("field", field)
    if field.ndim < 2:
        raise ValueError(f"`field` must have shape (*, ny, nx); got {field.shape}.")
    grid.check_field("field", field, leading=field.ndim - 2)
    if window == "auto":
        window = None if grid.periodic else "hann"
    f = _detrend_space(field, detrend)
    mean_w2 = 1.0
    if window == "hann":
        w = _hann(grid.ny, f.dtype)[:, None] * _hann(grid.nx, f.dtype)[None, :]
        f = f * w
        mean_w2 = jnp.mean(w**2)
    power = jnp.abs(jnp.fft.fft2(f)) ** 2
    power = jnp.mean(power.reshape((-1,) + grid.shape), axis=0)
    ring, dk, n_rings = _ring_index(grid)
    # P dkx dky / dk with dkx dky = 1 / (nx dx ny dy): |F|^2 dx dy / (N mean_w2) dkx dky
    scale = 1.0 / (grid.size**2 * mean_w2 * dk)
    psd = jnp.bincount(
        jnp.asarray(ring.reshape(-1)), power.reshape(-1), length=n_rings + 2
    )
    wavenumber = dk * jnp.arange(1, n_rings + 1, dtype=psd.dtype)
    return Spectrum(wavenumber, (psd[1 : n_rings + 1] * scale).astype(psd.dtype))


def temporal_psd(
    series: Float[ArrayLike, " T *space"],
    dt: float,
    *,
    window: str | None = "hann",
    detrend: str | None = "constant",
) -> Spectrum:
    r"""The one-sided power spectral density along time (axis 0), averaged over the
    other axes.

    $\mathrm{PSD}(f_m) = c_m\, |\hat s(f_m)|^2 \Delta t / (T\, \overline{w^2})$ at
    $f_m = m / (T \Delta t)$, $m = 1 \dots \lfloor T/2 \rfloor$, with $c_m = 2$ (both
    signs of $f$) except $c_{T/2} = 1$ at the Nyquist frequency of an even $T$; then
    $\sum_m \mathrm{PSD}(f_m) / (T \Delta t)$ is the variance of the detrended series
    (without window).

    **Arguments:** `series` of shape `(T, *space)`, `T >= 4`; `dt` the time step;
    `window` `"hann"` (default) or `None`; `detrend` `"constant"`, `"linear"` or `None`.

    **Returns:** a `Spectrum(wavenumber, psd)` whose wavenumbers are frequencies, in
    cycles per time unit of `dt`.
    """
    _check_options(window, detrend, ("hann", None))
    check_positive("dt", dt)
    series = _floating("series", series)
    if series.ndim < 1 or series.shape[0] < 4:
        raise ValueError(
            f"`series` must have shape (T, *space) with T >= 4; got {series.shape}."
        )
    n = series.shape[0]
    f = _detrend_time(series, detrend)
    mean_w2 = 1.0
    if window == "hann":
        w = _hann(n, f.dtype).reshape((n,) + (1,) * (f.ndim - 1))
        f = f * w
        mean_w2 = jnp.mean(w**2)
    power = jnp.abs(jnp.fft.rfft(f, axis=0)) ** 2
    power = jnp.mean(power.reshape(power.shape[0], -1), axis=1)[1:]
    m = np.arange(1, n // 2 + 1)
    weight = np.where(2 * m == n, 1.0, 2.0)
    psd = power * jnp.asarray(weight, power.dtype) * dt / (n * mean_w2)
    return Spectrum(jnp.asarray(m / (n * dt), psd.dtype), psd)


# ----------------------------------------------------------------------------------
# PSD scores and the effective resolution
# ----------------------------------------------------------------------------------


def crossing_wavelength(
    wavenumber: Float[ArrayLike, " K"],
    score: Float[ArrayLike, " K"],
    level: float = 0.5,
) -> Float[Array, ""]:
    r"""The wavelength where a score first falls below `level`, from the large scales.

    With $k_1 < k_2 < \dots$ and $i$ the first index with $s_i < $ `level`, the result
    interpolates linearly in wavelength $\lambda = 1/k$ between $(s_{i-1},
    \lambda_{i-1})$ and $(s_i, \lambda_i)$:
    $\lambda^* = \lambda_{i-1} + (\ell - s_{i-1})(\lambda_i - \lambda_{i-1})/(s_i -
    s_{i-1})$.
    If the score never falls below `level`, every scale is resolved and the result is
    the shortest wavelength $1/k_K$; if it is below `level` already at $k_1$, no scale
    is resolved and the result is `inf`.

    **Arguments:** `wavenumber` (positive, increasing), `score` of the same shape
    `(K,)`, `level` (default 0.5).

    **Returns:** a scalar wavelength, in the units of `1 / wavenumber`.
    """
    k = _floating("wavenumber", wavenumber)
    s = _floating("score", score)
    check_same_shape("wavenumber", k, "score", s)
    if k.ndim != 1 or k.shape[0] < 1:
        raise ValueError(f"`wavenumber` must have shape (K,), K >= 1; got {k.shape}.")
    lam = 1 / k
    below = s < level
    i = jnp.argmax(below)
    j = jnp.maximum(i - 1, 0)
    ds = s[i] - s[j]
    safe = jnp.where(ds == 0, -1.0, ds)
    crossing = lam[j] + (level - s[j]) * (lam[i] - lam[j]) / safe
    return jnp.where(
        ~jnp.any(below), lam[-1], jnp.where(i == 0, jnp.inf, crossing)
    ).astype(lam.dtype)


def _score(truth_spectrum, error_spectrum, level):
    score = 1 - error_spectrum.psd / truth_spectrum.psd
    return SpectralScore(
        truth_spectrum.wavenumber,
        score,
        truth_spectrum.psd,
        error_spectrum.psd,
        crossing_wavelength(truth_spectrum.wavenumber, score, level),
    )


def psd_score(
    estimate: Float[ArrayLike, "*lead ny nx"],
    truth: Float[ArrayLike, "*lead ny nx"],
    grid: Grid,
    *,
    window: str | None = "auto",
    detrend: str | None = "constant",
    level: float = 0.5,
) -> SpectralScore:
    r"""The spatial PSD score $1 - \mathrm{PSD}_{\hat x - x}(k) / \mathrm{PSD}_x(k)$
    and the effective resolution (the wavelength of its `level` crossing).

    Both spectra are `isotropic_psd` of the fields (leading axes averaged before the
    ratio, as the data challenges average over latitude) with the same `window` and
    `detrend`.

    **Arguments:** `estimate`, `truth` of shape `(*lead, ny, nx)` on `grid`; `window`,
    `detrend` as in `isotropic_psd`; `level` (default 0.5).

    **Returns:** a `SpectralScore`; `resolved_wavelength` in grid units.
    """
    estimate, truth, _ = _check_pair(estimate, truth, None)
    spec = dict(window=window, detrend=detrend)
    return _score(
        isotropic_psd(truth, grid, **spec),
        isotropic_psd(estimate - truth, grid, **spec),
        level,
    )


def psd_score_time(
    estimate: Float[ArrayLike, " T *space"],
    truth: Float[ArrayLike, " T *space"],
    dt: float,
    *,
    window: str | None = "hann",
    detrend: str | None = "constant",
    level: float = 0.5,
) -> SpectralScore:
    r"""The temporal PSD score $1 - \mathrm{PSD}_{\hat x - x}(f) / \mathrm{PSD}_x(f)$
    along the time axis (axis 0), spectra averaged over the other axes, and the
    period of its `level` crossing (the temporal effective resolution).

    **Arguments:** `estimate`, `truth` of shape `(T, *space)`; `dt` the time step;
    `window`, `detrend` as in `temporal_psd`; `level` (default 0.5).

    **Returns:** a `SpectralScore` whose `wavenumber` are frequencies and whose
    `resolved_wavelength` is a period, in the time unit of `dt`.
    """
    estimate, truth, _ = _check_pair(estimate, truth, None)
    spec = dict(window=window, detrend=detrend)
    return _score(
        temporal_psd(truth, dt, **spec),
        temporal_psd(estimate - truth, dt, **spec),
        level,
    )


__all__ = [
    "SpectralScore",
    "Spectrum",
    "crossing_wavelength",
    "gradient_rmse",
    "isotropic_psd",
    "psd_score",
    "psd_score_time",
    "rmse_score",
    "temporal_psd",
]
