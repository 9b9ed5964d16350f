r"""Observation patterns on a `jaxda.grid.Grid`: random points, satellite tracks and
swaths, cloud gaps.

Every pattern here is an `AbstractPattern`: `pattern(key, T, state_shape)` is a
boolean mask `(T, ny, nx)` or `(T, C, ny, nx)` (the observed `channels` set, default
all), usable by `jaxda.data.make_dataset` and `jaxda.data.make_osse`. The point
patterns (`RandomPointsPattern`, `SatelliteTracks`) also give the exact positions of
their observations, `pattern.points(key, T)` (a `GridPoints`, `(T, M)` slots with a
validity mask), from which `pattern.operator(...)` builds the interpolating
`BilinearInterpolation`; their mask is the nearest-node mask of the same points (the
cells that hold at least one observation), for the gridded (binned) formulation that
4DVarNet uses.

The idealised satellite geometry is described in `SatelliteTracks`.
"""

import abc
import math
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Key
from .._validation import check_int, check_key
from ._interpolation import BilinearInterpolation, GridPoints, check_grid
from ._patterns import AbstractPattern


if TYPE_CHECKING:  # imported lazily: jaxda.grid may import jaxda.obs
    from ..grid._grid import Grid


def _real(name, value, *, minimum=None, strict=False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"`{name}` must be a real number; got {value!r}.")
    value = float(value)
    bad = not math.isfinite(value)
    if minimum is not None:
        bad = bad or (value <= minimum if strict else value < minimum)
    if bad:
        rel = ">" if strict else ">="
        want = "finite" if minimum is None else f"finite and {rel} {minimum}"
        raise ValueError(f"`{name}` must be {want}; got {value}.")
    return value


def _channels(channels) -> tuple[int, ...] | None:
    if channels is None:
        return None
    if isinstance(channels, int | np.integer):
        channels = (channels,)
    out = tuple(check_int("channels", c, minimum=0) for c in channels)
    if not out:
        raise ValueError("`channels` must be None (all) or a non-empty tuple of ints.")
    return out


# ------------------------------------------------------------------------------
# The gridded-pattern protocol
# ------------------------------------------------------------------------------


class AbstractGridPattern(AbstractPattern):
    r"""A pattern on a grid: a field mask `(T, ny, nx)` broadcast to the observed
    channels of a `(C, ny, nx)` state.

    **Fields:** `grid` (a `jaxda.grid.Grid`); `channels` (observed channels of a
    multi-field state, `None` for all).
    """

    grid: eqx.AbstractVar["Grid"]
    channels: eqx.AbstractVar[tuple[int, ...] | None]

    @abc.abstractmethod
    def field_mask(self, key: Key | None, n_times: int) -> Bool[Array, "T ny nx"]:
        """The mask of one window on one field."""

    def __call__(self, key, n_times, state_shape):
        n_times = check_int("n_times", n_times, minimum=1)
        shape = tuple(int(s) for s in np.atleast_1d(state_shape))
        g = self.grid
        if len(shape) not in (2, 3) or shape[-2:] != g.shape:
            raise ValueError(
                f"`state_shape` must be ({g.ny}, {g.nx}) or (C, {g.ny}, {g.nx}) for "
                f"this pattern's grid; got {shape}."
            )
        mask = _field_mask(self, key, n_times)
        if len(shape) == 2:
            return mask
        n_channels = shape[0]
        chans = range(n_channels) if self.channels is None else self.channels
        if max(chans) >= n_channels:
            raise ValueError(
                f"`channels` {self.channels} must be < C = {n_channels} for states of "
                f"shape {shape}."
            )
        on = np.zeros(n_channels, bool)
        on[list(chans)] = True
        return mask[:, None] & jnp.asarray(on)[None, :, None, None]


class AbstractPointPattern(AbstractGridPattern):
    """A grid pattern made of point observations at exact positions."""

    @abc.abstractmethod
    def points(self, key: Key | None, n_times: int) -> GridPoints:
        """The positions of one window: a `GridPoints` of `(T, M)` slots."""

    def field_mask(self, key, n_times):
        return self.points(key, n_times).nearest_mask(self.grid)

    def operator(
        self,
        key: Key | None,
        n_times: int,
        state_shape: tuple[int, ...] | None = None,
        channel: int = 0,
    ) -> BilinearInterpolation:
        """The `BilinearInterpolation` of `points(key, n_times)` (the same key gives
        the same points as the mask) on states of `state_shape`, observing
        `channel`."""
        points = _points(self, key, n_times)
        return BilinearInterpolation(self.grid, points, state_shape, channel)


@eqx.filter_jit
def _field_mask(pattern, key, n_times):
    # One compiled program per pattern and window length (eager calls would
    # otherwise dispatch, and compile, op by op).
    return pattern.field_mask(key, n_times)


@eqx.filter_jit
def _points(pattern, key, n_times):
    return pattern.points(key, n_times)


# ------------------------------------------------------------------------------
# Random points
# ------------------------------------------------------------------------------


class RandomPointsPattern(AbstractPointPattern):
    r"""Random point observations, sparse in time.

    At each observed time, `n_points` (or `round(fraction * ny * nx)`) points:

    - `on_nodes=True` (default): distinct cell centres drawn uniformly without
      replacement (the mask has exactly that many cells per observed time);
    - `on_nodes=False`: positions uniform in the domain (between nodes; the mask
      holds the cells they fall in).

    `fixed=True` draws one set and keeps it at every observed time (a fixed network
    of stations). Observed times: $t = \text{offset} + j k$ (`every` = $k$), or,
    with `n_random_times`, that many distinct times drawn uniformly.

    **Arguments:** `grid`; exactly one of `n_points` (int >= 0) and `fraction` (in
    [0, 1]); `every` >= 1; `offset` >= 0; `n_random_times` (int or None); `fixed`;
    `on_nodes`; `channels`.
    """

    grid: "Grid"
    n_points: int = eqx.field(static=True, default=None)
    fraction: float | None = eqx.field(static=True, default=None)
    every: int = eqx.field(static=True, default=1)
    offset: int = eqx.field(static=True, default=0)
    n_random_times: int | None = eqx.field(static=True, default=None)
    fixed: bool = eqx.field(static=True, default=False)
    on_nodes: bool = eqx.field(static=True, default=True)
    channels: tuple[int, ...] | None = eqx.field(
        static=True, default=None, converter=_channels
    )

    def __post_init__(self):
        check_grid(self.grid)
        if (self.n_points is None) == (self.fraction is None):
            raise ValueError(
                "Give exactly one of `n_points` and `fraction`; got "
                f"n_points={self.n_points!r}, fraction={self.fraction!r}."
            )
        if self.fraction is not None:
            f = _real("fraction", self.fraction, minimum=0.0)
            if f > 1:
                raise ValueError(f"`fraction` must be in [0, 1]; got {f}.")
            self.n_points = int(round(f * self.grid.size))
        self.n_points = check_int("n_points", self.n_points, minimum=0)
        if self.on_nodes and self.n_points > self.grid.size:
            raise ValueError(
                f"`n_points` must be <= the {self.grid.size} cells of the grid when "
                f"`on_nodes`; got {self.n_points}."
            )
        check_int("every", self.every, minimum=1)
        check_int("offset", self.offset, minimum=0)
        if self.n_random_times is not None:
            check_int("n_random_times", self.n_random_times, minimum=0)

    def _times(self, key, n_times):
        t = jnp.arange(n_times)
        if self.n_random_times is None:
            return (t >= self.offset) & ((t - self.offset) % self.every == 0)
        if self.n_random_times > n_times:
            raise ValueError(
                f"`n_random_times` must be <= n_times ({n_times}); got "
                f"{self.n_random_times}."
            )
        ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (n_times,))))
        return ranks < self.n_random_times

    def points(self, key, n_times):
        n_times = check_int("n_times", n_times, minimum=1)
        check_key("key", key)
        g, k = self.grid, self.n_points
        k_time, k_pos = jax.random.split(key)
        rows = 1 if self.fixed else n_times
        if self.on_nodes:
            u = jax.random.uniform(k_pos, (rows, g.size))
            cells = jnp.argsort(u, axis=1)[:, :k]
            y = g.y0 + g.dy * (cells // g.nx)
            x = g.x0 + g.dx * (cells % g.nx)
        else:
            u = jax.random.uniform(k_pos, (2, rows, k))
            (ly, lx) = g.extent
            y = g.y0 - g.dy / 2 + ly * u[0]
            x = g.x0 - g.dx / 2 + lx * u[1]
        y = jnp.broadcast_to(y, (n_times, k))
        x = jnp.broadcast_to(x, (n_times, k))
        valid = jnp.broadcast_to(self._times(k_time, n_times)[:, None], (n_times, k))
        return GridPoints(y, x, valid)

    def max_count(self, n_times, state_shape):
        if self.on_nodes:
            return super().max_count(n_times, state_shape)
        n_times = check_int("n_times", n_times, minimum=1)
        n_t = len(range(self.offset, n_times, self.every))
        if self.n_random_times is not None:
            n_t = min(self.n_random_times, n_times)
        n_c = (
            1 if len(state_shape) == 2 else len(self.channels or range(state_shape[0]))
        )
        return self.n_points * n_t * n_c


# ------------------------------------------------------------------------------
# Cloud gaps
# ------------------------------------------------------------------------------


class CloudPattern(AbstractGridPattern):
    r"""Cloud-like gaps in images (SST, ocean colour): smooth random fields
    thresholded to an exact cloud fraction, moving and changing in time.

    A Gaussian random field $g_t$ with squared-exponential correlation
    $\exp(-r^2 / 2\ell^2)$ is made by FFT filtering of white noise (amplitude
    $\exp(-|k|^2 \ell^2 / 4)$; on a closed grid the field is drawn on a periodic grid
    twice as large and cropped, so that no correlation wraps around). In time it is
    an AR(1) process advected by `velocity`:
    $\hat g_{t+1} = \rho\, e^{-i k \cdot v} \hat g_t + \sqrt{1 - \rho^2}\, \hat
    w_{t+1}$, $\rho = e^{-1/\tau}$ (`correlation_steps` $\tau$; `inf` gives frozen
    clouds that only drift). At each imaged time ($t = \text{offset} + jk$, `every`
    $= k$) the `round(cloud_fraction * ny * nx)` cells where $g_t$ is largest are
    cloudy (unobserved); the others are observed; other times are unobserved.

    **Arguments:** `grid`; `cloud_fraction` in [0, 1]; `length_scale` $\ell$ > 0
    (grid units); `correlation_steps` $\tau$ > 0 (steps, default inf);
    `velocity` $(v_y, v_x)$ (grid units per step, default (0, 0)); `every` >= 1;
    `offset` >= 0; `channels`.
    """

    grid: "Grid"
    cloud_fraction: float = eqx.field(static=True)
    length_scale: float = eqx.field(static=True)
    correlation_steps: float = eqx.field(static=True, default=math.inf)
    velocity: tuple[float, float] = eqx.field(static=True, default=(0.0, 0.0))
    every: int = eqx.field(static=True, default=1)
    offset: int = eqx.field(static=True, default=0)
    channels: tuple[int, ...] | None = eqx.field(
        static=True, default=None, converter=_channels
    )

    def __post_init__(self):
        check_grid(self.grid)
        f = _real("cloud_fraction", self.cloud_fraction, minimum=0)
        if f > 1:
            raise ValueError(f"`cloud_fraction` must be in [0, 1]; got {f}.")
        self.cloud_fraction = f
        self.length_scale = _real(
            "length_scale", self.length_scale, minimum=0, strict=True
        )
        tau = self.correlation_steps
        if not (isinstance(tau, int | float) and tau > 0 and not math.isnan(tau)):
            raise ValueError(f"`correlation_steps` must be > 0 (or inf); got {tau!r}.")
        self.correlation_steps = float(tau)
        v = tuple(self.velocity)
        if len(v) != 2:
            raise ValueError(f"`velocity` must be a pair (v_y, v_x); got {v!r}.")
        self.velocity = (_real("velocity", v[0]), _real("velocity", v[1]))
        check_int("every", self.every, minimum=1)
        check_int("offset", self.offset, minimum=0)

    def fields(self, key: Key, n_times: int) -> Float[Array, "T ny nx"]:
        """The smooth random fields $g_t$ (unit marginal variance) of one window."""
        n_times = check_int("n_times", n_times, minimum=1)
        check_key("key", key)
        g = self.grid
        pad = 1 if g.periodic else 2
        shape = (pad * g.ny, pad * g.nx)
        ky = 2 * jnp.pi * jnp.fft.fftfreq(shape[0], g.dy)
        kx = 2 * jnp.pi * jnp.fft.fftfreq(shape[1], g.dx)
        k2 = ky[:, None] ** 2 + kx[None, :] ** 2
        amp = jnp.exp(-k2 * self.length_scale**2 / 4)
        amp = amp / jnp.sqrt(jnp.mean(amp**2))
        phase = jnp.exp(
            -1j * (ky[:, None] * self.velocity[0] + kx[None, :] * self.velocity[1])
        )
        rho = math.exp(-1.0 / self.correlation_steps)
        noise = jax.random.normal(key, (n_times,) + shape)
        w_hat = amp * jnp.fft.fft2(noise)

        def body(h, w):
            h = rho * phase * h + math.sqrt(1 - rho**2) * w
            return h, h

        _, hs = jax.lax.scan(body, w_hat[0], w_hat[1:])
        hs = jnp.concatenate([w_hat[:1], hs], 0)
        return jnp.real(jnp.fft.ifft2(hs))[:, : g.ny, : g.nx]

    def field_mask(self, key, n_times):
        g = self.grid
        fields = self.fields(key, n_times).reshape(n_times, -1)
        n_cloudy = int(round(self.cloud_fraction * g.size))
        ranks = jnp.argsort(jnp.argsort(fields, axis=1), axis=1)
        clear = (ranks < g.size - n_cloudy).reshape((n_times,) + g.shape)
        t = jnp.arange(n_times)
        imaged = (t >= self.offset) & ((t - self.offset) % self.every == 0)
        return clear & imaged[:, None, None]


__all__ = [
    "AbstractGridPattern",
    "AbstractPointPattern",
    "CloudPattern",
    "RandomPointsPattern",
]
