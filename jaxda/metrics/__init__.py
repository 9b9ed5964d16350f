r"""Reconstruction metrics: MSE / RMSE (split observed / unobserved, in any units),
[F21]'s scores, the scores of gridded maps (RMSE score, gradient RMSE, PSD score
and effective resolution), of motion fields (end-point and angular errors) and of
ensembles (CRPS, spread-skill ratio, interval coverage).

All metrics take ONE window (any shape, typically `(T, *state)`) and reduce over every
axis; they are pure `jnp` code without Python branching on values, so `jax.vmap` gives
per-window scores and `jax.jit` compiles them. Average per-window scores yourself, or
pass the whole batch at once for the pooled score (for unmasked MSE the two agree).

Units: pass `transform=stats.apply` to score data given in original units in normalised
units, or `transform=stats.invert` to score normalised data in original units (`stats` a
`jaxda.data.Normalisation`). [F21]'s "R-score" is `mse` in original units over the
whole state.

Gridded fields `(*lead, ny, nx)` on a `jaxda.grid.Grid`: `rmse_score` ($1 -
\mathrm{RMSE}/\mathrm{RMS}$), `gradient_rmse`, the spectra `isotropic_psd` and
`temporal_psd`, and the PSD scores `psd_score` / `psd_score_time` with the effective
resolution (`crossing_wavelength`).

Motion fields `(*lead, 2, ny, nx)`: `endpoint_error`, `angular_error` ([FBC23]'s
planar angle, or [BFB94]'s space-time angle of `(u, v, 1)` in cells per frame),
`velocity_gradient_norm` / `velocity_divergence_norm` ([FBC23]'s interior forward
differences) and their error forms `gradient_error` / `divergence_error`.

Ensembles `(N, *field)` (members first): `crps_ensemble` (the fair or energy-form CRPS
[GR07; F14], computed by the `scoringrules` package's JAX backend),
`spread_skill_ratio` (with the (N+1)/N finite-ensemble correction [F14b]) and
`interval_coverage` (the fraction of the truth inside the central interval).

**PSD score.** With $e = \hat x - x$ the error of a reconstruction $\hat x$ of the
truth $x$, the score at wavenumber $k$ is
$$s(k) = 1 - \frac{\mathrm{PSD}_e(k)}{\mathrm{PSD}_x(k)},$$
1 where the error has no power, 0 where it has the truth's, negative where it has more.
The *effective resolution* is the wavelength $\lambda = 1/k$ at which $s$ first falls
below 0.5, coming from the large scales: the scales longer than $\lambda$ are
reconstructed with an error of less than half the signal's power.

Conventions (what the SSH-mapping data challenges do, and where we depart):

- wavenumbers in cycles per unit of the grid (`1 / grid.units`; the data challenges use
  cycles per km), wavelengths $1/k$; frequencies in cycles per time unit of `dt`;
- each field is **detrended** before its transform (`detrend="constant"`: the mean is
  removed, as the data challenges do; `"linear"`: a least-squares plane in space, or a
  line in time; `None`);
- **windowing**: the data challenges multiply by a Hann window because their regional
  fields are not periodic. On a periodic grid a window only blurs the spectrum, so the
  spatial default `window="auto"` applies the (periodic) Hann window on a closed grid
  and none on a periodic one; the time default is Hann (a time series is not periodic).
  The PSD is divided by the window's mean square, so white noise keeps its level;
- the spatial spectrum is **isotropic**: the 2-D periodogram summed over rings
  $|k| \in [(n - \tfrac12)\Delta k, (n + \tfrac12)\Delta k)$, $\Delta k =
  \max(1/L_x, 1/L_y)$, up to the smaller Nyquist wavenumber (the corners of the 2-D
  spectrum are left out), and divided by $\Delta k$: a density in $|k|$, with
  $\sum_n \mathrm{PSD}(k_n)\,\Delta k$ the variance of the field (Parseval) for a
  field without power in the corners;
- leading axes (time, samples) are **averaged** before the ratio is taken (the data
  challenges average the spectra over latitude before taking it);
- the 0.5 crossing is interpolated linearly in wavelength between the two spectral
  points around it, as the along-track data challenge interpolates the wavelength as a
  function of the score (`crossing_wavelength`).

Everything is `jnp` code on static shapes: `jax.jit` and `jax.vmap` apply.

An empty selection (a mask with no `True` entry) has no mean: the result is NaN, on
purpose.
"""

from ._motion import (
    angular_error as angular_error,
    divergence_error as divergence_error,
    endpoint_error as endpoint_error,
    gradient_error as gradient_error,
    velocity_divergence_norm as velocity_divergence_norm,
    velocity_gradient_norm as velocity_gradient_norm,
)
from ._pointwise import (
    ErrorSplit as ErrorSplit,
    fourdvar_score as fourdvar_score,
    mse as mse,
    mse_split as mse_split,
    one_step_score as one_step_score,
    rmse as rmse,
    rmse_split as rmse_split,
)
from ._probabilistic import (
    crps_ensemble as crps_ensemble,
    interval_coverage as interval_coverage,
    spread_skill_ratio as spread_skill_ratio,
)
from ._spectral import (
    SpectralScore as SpectralScore,
    Spectrum as Spectrum,
    crossing_wavelength as crossing_wavelength,
    gradient_rmse as gradient_rmse,
    isotropic_psd as isotropic_psd,
    psd_score as psd_score,
    psd_score_time as psd_score_time,
    rmse_score as rmse_score,
    temporal_psd as temporal_psd,
)


__all__ = [
    "ErrorSplit",
    "SpectralScore",
    "Spectrum",
    "angular_error",
    "crossing_wavelength",
    "crps_ensemble",
    "divergence_error",
    "endpoint_error",
    "fourdvar_score",
    "gradient_error",
    "gradient_rmse",
    "interval_coverage",
    "isotropic_psd",
    "mse",
    "mse_split",
    "one_step_score",
    "psd_score",
    "psd_score_time",
    "rmse",
    "rmse_score",
    "rmse_split",
    "spread_skill_ratio",
    "temporal_psd",
    "velocity_divergence_norm",
    "velocity_gradient_norm",
]
