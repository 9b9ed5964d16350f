r"""Probabilistic scores of an ensemble against the truth: the CRPS, the spread-skill
ratio and the coverage of central intervals.

An ensemble is an array `(N, *field)` with the member axis first; the truth is
`(*field)`; an optional boolean `mask` `(*field)` selects the points scored. Every
score is computed per point and averaged over the selected points; the code is pure
`jnp` on static shapes (`jax.jit`, `jax.vmap` apply).

**CRPS.** The continuous ranked probability score of a predictive distribution $F$
at the outcome $y$ [GR07],
$$\mathrm{CRPS}(F, y) = \int (F(z) - \mathbf 1\{y \le z\})^2\,dz
= \mathbb E|X - y| - \tfrac12\,\mathbb E|X - X'|,$$
$X, X' \sim F$ independent, is a proper score in the units of the field (the mean
absolute error for a point mass). For an ensemble $x_1, \dots, x_N$ the two
estimators are

- `"nrg"` (energy form): $F$ the empirical distribution of the members,
  $\frac1N\sum_i|x_i - y| - \frac{1}{2N^2}\sum_{i,j}|x_i - x_j|$;
- `"fair"` [F14]: $\frac1N\sum_i|x_i - y| - \frac{1}{2N(N-1)}\sum_{i,j}|x_i - x_j|$,
  whose expectation over ensembles of $N$ members drawn from $F$ is the CRPS of $F$
  itself (an unbiased estimate of the score of the distribution the members sample);
  `"pwm"` (the probability-weighted-moment form) is the same number computed from the
  sorted members, and is the name `scoringrules` gives it.

The CRPS is computed by the `scoringrules` package (its JAX backend): its
sorted-member forms cost $O(N \log N)$ per point (its `"pwm"` for `"fair"` / `"pwm"`
and its quantile decomposition `"qd"` for `"nrg"`, both equal to the pairwise sums
above), while its literal pairwise forms hold an $N \times N$ array per point.

**Spread-skill ratio.** For an ensemble whose members and truth are exchangeable
(drawn from one distribution of variance $\sigma^2$ at each point), the unbiased
member variance $s^2$ has mean $\sigma^2$ and the error of the ensemble mean
$\bar x - y$ has variance $\sigma^2 (1 + 1/N)$ [F14b]: the raw ratio
$\sqrt{\overline{s^2}} / \mathrm{RMSE}(\bar x)$ tends to $\sqrt{N/(N+1)}$, not 1.
`spread_skill_ratio` multiplies by $\sqrt{(N+1)/N}$ (by default) so that a calibrated
ensemble scores 1; below 1 the ensemble is under-dispersed (over-confident).

**Interval coverage.** The fraction of selected points where the truth lies in the
central `level` interval of the members. The empirical interval is bounded by the
member order statistics at the (1-based, interpolated) positions $p(N+1)$,
$p = (1 \mp \text{level})/2$ (the Weibull plotting position): for an exchangeable
truth the rank of $y$ among the members is uniform on $\{1, \dots, N+1\}$, so the
expected coverage is exactly `level` when both positions are integers (for 90 %:
$N = 19, 39, 199, \dots$) and close to it between; positions outside $[1, N]$ are
clamped to the extreme members, so an ensemble with fewer than $2/(1-\text{level})
- 1$ members covers less than `level` (for 90 %: $N < 19$). The Gaussian variant
uses the predictive interval $\bar x \pm t_{N-1}\,s\sqrt{1 + 1/N}$ ($t_{N-1}$ the
Student quantile at $(1 + \text{level})/2$), whose coverage is exactly `level` for
Gaussian members and truth.
"""

from typing import Literal

import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float
from .._validation import check_choice
from ._pointwise import _masked_mean


def _prep(ensemble, truth, mask):
    """Validated `(ensemble, truth, mask)` as arrays; `ValueError` naming the
    argument for a wrong shape or fewer than 2 members, `TypeError` for a mask that is
    not boolean."""
    ensemble = jnp.asarray(ensemble)
    truth = jnp.asarray(truth)
    if ensemble.ndim < 1 or tuple(ensemble.shape[1:]) != tuple(truth.shape):
        raise ValueError(
            "`ensemble` must have shape (N, *truth.shape) = (N, "
            f"{', '.join(map(str, truth.shape))}); got {tuple(ensemble.shape)}."
        )
    if ensemble.shape[0] < 2:
        raise ValueError(
            "`ensemble` must have at least 2 members (axis 0); got "
            f"{ensemble.shape[0]}."
        )
    for name, a in (("ensemble", ensemble), ("truth", truth)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be floating-point; got dtype {a.dtype}.")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
        if tuple(mask.shape) != tuple(truth.shape):
            raise ValueError(
                f"`mask` must have the shape of `truth` {tuple(truth.shape)}; got "
                f"{tuple(mask.shape)}."
            )
    dtype = jnp.result_type(ensemble, truth)
    return ensemble.astype(dtype), truth.astype(dtype), mask


_SCORINGRULES_ESTIMATOR = {"fair": "pwm", "pwm": "pwm", "nrg": "qd"}


def crps_ensemble(
    ensemble: Float[ArrayLike, "N *field"],
    truth: Float[ArrayLike, "*field"],
    mask: Bool[ArrayLike, "*field"] | None = None,
    *,
    estimator: Literal["fair", "nrg", "pwm"] = "fair",
) -> Float[Array, ""]:
    r"""The CRPS of an ensemble at the truth, per point, averaged (module docstring).

    **Arguments:**

    - `ensemble`: `(N, *field)`, $N \ge 2$ members.
    - `truth`: `(*field)`.
    - `mask`: optional boolean `(*field)`: the points scored (default: all).
    - `estimator`: `"fair"` (default; unbiased for the distribution the members
      sample [F14]), `"pwm"` (the same number) or `"nrg"` (the CRPS of the
      empirical distribution of the members).

    **Returns:** the mean CRPS over the selected points, in the units of the field
    (NaN when `mask` selects nothing).
    """
    check_choice("estimator", estimator, tuple(_SCORINGRULES_ESTIMATOR))
    ensemble, truth, mask = _prep(ensemble, truth, mask)
    import scoringrules

    per_point = scoringrules.crps_ensemble(
        truth,
        ensemble,
        m_axis=0,
        estimator=_SCORINGRULES_ESTIMATOR[estimator],
        backend="jax",
    )
    return _masked_mean(jnp.asarray(per_point, ensemble.dtype), mask)


def spread_skill_ratio(
    ensemble: Float[ArrayLike, "N *field"],
    truth: Float[ArrayLike, "*field"],
    mask: Bool[ArrayLike, "*field"] | None = None,
    *,
    finite_ensemble_correction: bool = True,
) -> Float[Array, ""]:
    r"""The spread-skill ratio $\sqrt{\tfrac{N+1}{N}}\,\sqrt{\overline{s^2}} /
    \mathrm{RMSE}(\bar x)$ (module docstring).

    $s^2$ is the unbiased variance of the members at each point ($N - 1$ in the
    denominator), $\bar x$ the ensemble mean, and both averages run over the selected
    points: the mean variance and the mean squared error are averaged first, then the
    square roots are taken [F14b].

    **Arguments:** `ensemble` `(N, *field)` ($N \ge 2$), `truth` `(*field)`, optional
    boolean `mask` `(*field)`; `finite_ensemble_correction` (default `True`): the
    factor $\sqrt{(N+1)/N}$ that makes a calibrated ensemble of $N$ members score 1
    (`False`: the raw ratio, $\sqrt{N/(N+1)}$ for a calibrated ensemble).

    **Returns:** a scalar: 1 for a calibrated ensemble, < 1 under-dispersed, > 1
    over-dispersed.
    """
    if not isinstance(finite_ensemble_correction, bool):
        raise TypeError(
            "`finite_ensemble_correction` must be a bool; got "
            f"{type(finite_ensemble_correction).__name__}."
        )
    ensemble, truth, mask = _prep(ensemble, truth, mask)
    n = ensemble.shape[0]
    variance = jnp.var(ensemble, axis=0, ddof=1)
    error = jnp.mean(ensemble, axis=0) - truth
    ratio = jnp.sqrt(_masked_mean(variance, mask) / _masked_mean(error**2, mask))
    return ratio * float(np.sqrt((n + 1) / n)) if finite_ensemble_correction else ratio


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float | np.floating):
        raise TypeError(
            f"`level` must be a Python float in (0, 1); got {type(level).__name__}."
        )
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"`level` must be in (0, 1); got {level}.")
    return float(level)


def _order_statistic(sorted_members, position):
    """The sorted members linearly interpolated at the 1-based `position` (a Python
    float), clamped to [1, N]."""
    n = sorted_members.shape[0]
    h = min(max(position, 1.0), float(n)) - 1.0
    lo = int(np.floor(h))
    hi = min(lo + 1, n - 1)
    frac = h - lo
    return (1.0 - frac) * sorted_members[lo] + frac * sorted_members[hi]


def interval_coverage(
    ensemble: Float[ArrayLike, "N *field"],
    truth: Float[ArrayLike, "*field"],
    level: float = 0.9,
    mask: Bool[ArrayLike, "*field"] | None = None,
    *,
    method: Literal["empirical", "gaussian"] = "empirical",
) -> Float[Array, ""]:
    r"""The fraction of points where the truth lies in the central `level` interval of
    the ensemble (module docstring).

    **Arguments:**

    - `ensemble`: `(N, *field)`, $N \ge 2$; `truth`: `(*field)`.
    - `level`: the interval's nominal probability, a Python float in (0, 1)
      (default 0.9).
    - `mask`: optional boolean `(*field)`: the points counted.
    - `method`: `"empirical"` (default): between the member order statistics at
      positions $p(N+1)$, $p = (1 \mp \text{level})/2$; `"gaussian"`: the Gaussian
      predictive interval $\bar x \pm t_{N-1}\,s\sqrt{1 + 1/N}$.

    **Returns:** the covered fraction (a scalar in [0, 1]; NaN when `mask` selects
    nothing). A calibrated ensemble scores `level` (exactly, in expectation, under the
    conditions in the module docstring).
    """
    level = _check_level(level)
    check_choice("method", method, ("empirical", "gaussian"))
    ensemble, truth, mask = _prep(ensemble, truth, mask)
    n = ensemble.shape[0]
    if method == "empirical":
        members = jnp.sort(ensemble, axis=0)
        lower = _order_statistic(members, (1.0 - level) / 2 * (n + 1))
        upper = _order_statistic(members, (1.0 + level) / 2 * (n + 1))
    else:
        from scipy.stats import t as student_t

        half = float(student_t.ppf((1.0 + level) / 2, n - 1) * np.sqrt(1.0 + 1.0 / n))
        mean = jnp.mean(ensemble, axis=0)
        std = jnp.std(ensemble, axis=0, ddof=1)
        lower, upper = mean - half * std, mean + half * std
    inside = (truth >= lower) & (truth <= upper)
    return _masked_mean(inside.astype(ensemble.dtype), mask)


__all__ = ["crps_ensemble", "interval_coverage", "spread_skill_ratio"]
