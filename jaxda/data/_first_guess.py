r"""First guesses built from the observations alone.

- `interpolate_observations`: per-component linear interpolation in time, constant at
  the ends ([F21]'s initialisation of 4DVarNet and of the 4DVar baseline).
- `gaussian_first_guess`: the Gaussian MAP under empirical moments of a training set
  ([B24]'s first guess $z_0 = x_{\mathrm{MAP}}(y; \hat\mu, \hat P)$), with
  `empirical_moments`.
"""

import jax
import jax.numpy as jnp

from .. import gaussian
from .._custom_types import Array, ArrayLike, Float
from .._validation import check_positive
from ..obs import Observations


def interpolate_observations(
    obs: Observations, fill: Float[ArrayLike, "*state"] | float = 0.0
) -> Float[Array, " T *state"]:
    r"""Linear interpolation in time of each component's observations.

    For component $i$ with observed times $s_1 < \dots < s_K$:
    $\hat x_t = y_{s_j} + \frac{t - s_j}{s_{j+1} - s_j}(y_{s_{j+1}} - y_{s_j})$ for
    $s_j \le t \le s_{j+1}$, $\hat x_t = y_{s_1}$ before $s_1$, $\hat x_t = y_{s_K}$
    after $s_K$ (constant extrapolation), and $\hat x_t = $ `fill` if the component is
    never observed (0 by default; pass a climatological mean per component).

    Cumulative max/min over time find the neighbouring observations, so there is no loop
    over time: the function jits and vmaps (over windows).

    **Arguments:** `obs` of one window `(T, *state)`; `fill`, a scalar or a state-shaped
    array.

    **Returns:** the interpolated trajectory `(T, *state)`, equal to `obs.values` where
    observed.
    """
    Observations.check(obs, name="obs")
    y, m = obs.values, obs.mask
    n_t = y.shape[0]
    t = jnp.arange(n_t).reshape((n_t,) + (1,) * (y.ndim - 1))
    t = jnp.broadcast_to(t, y.shape)
    prev = jax.lax.cummax(jnp.where(m, t, -1), axis=0)
    nxt = jax.lax.cummin(jnp.where(m, t, n_t), axis=0, reverse=True)
    has_prev, has_next = prev >= 0, nxt < n_t
    y_prev = jnp.take_along_axis(y, jnp.clip(prev, 0, n_t - 1), axis=0)
    y_next = jnp.take_along_axis(y, jnp.clip(nxt, 0, n_t - 1), axis=0)
    gap = jnp.maximum(nxt - prev, 1).astype(y.dtype)
    w = ((t - prev).astype(y.dtype) / gap).astype(y.dtype)
    inner = y_prev + w * (y_next - y_prev)
    fill = jnp.broadcast_to(jnp.asarray(fill, y.dtype), y.shape[1:])
    out = jnp.where(
        has_prev & has_next,
        inner,
        jnp.where(has_prev, y_prev, jnp.where(has_next, y_next, fill)),
    )
    return jnp.where(m, y, out)


def empirical_moments(
    truth: Float[ArrayLike, " N T *state"],
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    r"""Empirical mean $\hat\mu$ and covariance $\hat P$ of flattened training windows.

    $\hat\mu = \frac1N \sum_i x^{(i)}$, $\hat P = \frac1N \sum_i (x^{(i)} -
    \hat\mu)(x^{(i)} - \hat\mu)^\top$ with $x^{(i)} \in \mathbb R^{d}$, $d = T \cdot
    \mathrm{size}(\text{state})$ (C order: time-major, components interleaved, as seed
    003).
    """
    x = jnp.asarray(truth)
    if x.ndim < 3:
        raise ValueError(f"`truth` must have shape (N, T, *state); got {x.shape}.")
    flat = x.reshape(x.shape[0], -1)
    mu = jnp.mean(flat, axis=0)
    c = flat - mu
    return mu, c.T @ c / flat.shape[0]


def gaussian_first_guess(
    obs: Observations,
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    noise_var: float | Float[ArrayLike, ""],
    *,
    max_obs: int | None = None,
) -> Float[Array, " T *state"]:
    r"""Gaussian MAP of one window under the prior $\mathcal N(\mu, P)$ and noise
    $\mathcal N(0, r I)$.

    $x = \mu + P H^\top (H P H^\top + r I)^{-1}(y - H\mu)$ with $H$ selecting the
    observed entries (`jaxda.gaussian.map_covariance` with a dense $P$). By default
    it is computed with fixed shapes as $x = \mu + P D\,(D P D + \tilde R)^{-1} D (y -
    \mu)$, $D = \mathrm{diag}(m)$, which equals the formula above (unobserved rows
    decouple): a dense $O(d^3)$ solve, meant for small windows such as [B24]'s ($d =
    96$). With `max_obs` (a bound on the observations per window, e.g.
    `pattern.max_count(T, state_shape)`) only the $m \times m$ observed block is
    factorised, $O(m^3 + d m)$. Both vmap over windows with different masks.

    **Arguments:** `obs` of one window; `mean` `(d,)` and `cov` `(d, d)` from
    `empirical_moments`; `noise_var` $r > 0$; `max_obs` (optional static int).

    **Returns:** the first guess `(T, *state)`.
    """
    Observations.check(obs, name="obs")
    check_positive("noise_var", noise_var)
    y = obs.values.reshape(-1)
    d = y.shape[0]
    mean = jnp.asarray(mean, y.dtype)
    cov = jnp.asarray(cov, y.dtype)
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ValueError(
            f"`mean` and `cov` must have shapes ({d},) and ({d}, {d}) for "
            "observations of "
            f"shape {obs.shape}; got {mean.shape} and {cov.shape}."
        )
    out = gaussian.map_covariance(
        mean.reshape(obs.shape),
        cov,
        obs.values,
        obs.mask,
        jnp.asarray(noise_var, y.dtype),
        max_obs=max_obs,
    )
    return out.mean
