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


EARTH_RADIUS_KM = 6371.0
_KM = {"m": 1000.0, "km": 1.0}


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
# Satellite tracks and swaths
# ------------------------------------------------------------------------------


_PRESETS = {
    # name: (inclination deg, repeat days, revolutions, nodal days, swath km, gap km)
    "jason": (66.04, 9.9156, 127, 10, 0.0, 0.0),
    "sentinel-3": (98.65, 27.0, 385, 27, 0.0, 0.0),
    "saral": (98.55, 35.0, 501, 35, 0.0, 0.0),
    "swot": (77.6, 20.86, 292, 21, 50.0, 20.0),
}


class Satellite(eqx.Module):
    r"""One altimeter's orbit and sampling, in the idealisation described in
    `SatelliteTracks`. Every field is static.

    **Arguments:**

    - `inclination`: degrees in (0, 180); the ascending heading makes this angle
      with the x axis.
    - `repeat_days` $R$ > 0; `revolutions` $N$ >= 1 per cycle; `nodal_days` $D$
      (default `round(R)`, >= 1, coprime with $N$).
    - `along_track_spacing` > 0 (grid units).
    - `swath_width` >= 0 and `nadir_gap` >= 0 (grid units; 0: a nadir altimeter),
      `cross_track_spacing` > 0 (default `along_track_spacing`), `nadir` (whether
      the nadir point is measured too; default True).
    - `x_node`, `t_node`: where and when revolution 0 crosses the reference line
      (grid units, days), the satellite's phase in the constellation.
    - `name`: a label.
    """

    inclination: float = eqx.field(static=True)
    repeat_days: float = eqx.field(static=True)
    revolutions: int = eqx.field(static=True)
    along_track_spacing: float = eqx.field(static=True)
    nodal_days: int | None = eqx.field(static=True, default=None)
    swath_width: float = eqx.field(static=True, default=0.0)
    nadir_gap: float = eqx.field(static=True, default=0.0)
    cross_track_spacing: float | None = eqx.field(static=True, default=None)
    nadir: bool = eqx.field(static=True, default=True)
    x_node: float = eqx.field(static=True, default=0.0)
    t_node: float = eqx.field(static=True, default=0.0)
    name: str = eqx.field(static=True, default="")

    def __post_init__(self):
        self.inclination = _real(
            "inclination", self.inclination, minimum=0, strict=True
        )
        if self.inclination >= 180:
            raise ValueError(
                f"`inclination` must be in (0, 180); got {self.inclination}."
            )
        self.repeat_days = _real(
            "repeat_days", self.repeat_days, minimum=0, strict=True
        )
        self.revolutions = check_int("revolutions", self.revolutions, minimum=1)
        if self.nodal_days is None:
            self.nodal_days = max(int(round(self.repeat_days)), 1)
        self.nodal_days = check_int("nodal_days", self.nodal_days, minimum=1)
        if math.gcd(self.revolutions, self.nodal_days) != 1:
            raise ValueError(
                f"`revolutions` ({self.revolutions}) and `nodal_days` "
                f"({self.nodal_days}) must be coprime, or the cycle repeats early."
            )
        self.along_track_spacing = _real(
            "along_track_spacing", self.along_track_spacing, minimum=0, strict=True
        )
        self.swath_width = _real("swath_width", self.swath_width, minimum=0)
        self.nadir_gap = _real("nadir_gap", self.nadir_gap, minimum=0)
        if self.cross_track_spacing is None:
            self.cross_track_spacing = self.along_track_spacing
        self.cross_track_spacing = _real(
            "cross_track_spacing", self.cross_track_spacing, minimum=0, strict=True
        )
        if not self.nadir and self.swath_width == 0:
            raise ValueError("a satellite with `nadir=False` needs `swath_width` > 0.")
        self.x_node = _real("x_node", self.x_node)
        self.t_node = _real("t_node", self.t_node)

    @classmethod
    def preset(
        cls, name: str, units: str = "km", *, along_track_km: float = 7.0, **kwargs
    ) -> "Satellite":
        """Nominal orbits: `"jason"` (66.04 deg, 9.9156 days, 127 revolutions),
        `"sentinel-3"` (98.65, 27, 385), `"saral"` (98.55, 35, 501) nadir altimeters
        and `"swot"` (77.6, 20.86, 292; two 50 km swaths beside a 20 km nadir gap,
        2 km pixels, and a nadir altimeter). Lengths in `units` ("m" or "km");
        `kwargs` override fields (e.g. `x_node`, `t_node`)."""
        if name not in _PRESETS:
            raise ValueError(
                f"`name` must be one of {', '.join(map(repr, _PRESETS))}; got {name!r}."
            )
        if units not in _KM:
            raise ValueError(f"`units` must be 'm' or 'km'; got {units!r}.")
        km = _KM[units]
        inc, rep, rev, nod, swath, gap = _PRESETS[name]
        fields = dict(
            inclination=inc,
            repeat_days=rep,
            revolutions=rev,
            nodal_days=nod,
            along_track_spacing=along_track_km * km,
            swath_width=swath * km,
            nadir_gap=gap * km,
            cross_track_spacing=(2.0 if swath else along_track_km) * km,
            name=name,
        )
        fields.update(kwargs)
        return cls(**fields)

    def cross_track_offsets(self) -> np.ndarray:
        """Signed distances of the measured points from the ground track."""
        offsets = [0.0] if self.nadir else []
        if self.swath_width > 0:
            n = max(int(round(self.swath_width / self.cross_track_spacing)), 1)
            side = self.nadir_gap / 2 + (np.arange(n) + 0.5) * self.swath_width / n
            offsets = offsets + list(side) + list(-side)
        return np.asarray(offsets, float)


def _pass_points(grid: "Grid", sat: Satellite, circumference, t_lo, t_hi):
    """`(time, y, x)` of every measurement of `sat` in the domain with pass time in
    `[t_lo, t_hi)` (NumPy, host)."""
    big_l, n_rev, n_day = circumference, sat.revolutions, sat.nodal_days
    period = sat.repeat_days / n_rev
    shift = n_day * big_l / n_rev
    (ly, lx) = grid.extent
    ya, xa = grid.y0 - grid.dy / 2, grid.x0 - grid.dx / 2
    yc, xc = ya + ly / 2, xa + lx / 2
    inc = math.radians(sat.inclination)
    offsets = sat.cross_track_offsets()
    reach = math.hypot(lx, ly) / 2 + np.max(np.abs(offsets))
    k = np.arange(
        math.floor((t_lo - sat.t_node) / period) - 1,
        math.ceil((t_hi - sat.t_node) / period) + 1,
    )
    out = []
    for descending in (False, True):
        times = sat.t_node + k * period + (period / 2 if descending else 0.0)
        x_cross = sat.x_node - k * shift + ((big_l - shift) / 2 if descending else 0.0)
        d = np.array([math.cos(inc), -math.sin(inc) if descending else math.sin(inc)])
        normal = np.array([-d[1], d[0]])
        keep = (times >= t_lo) & (times < t_hi)
        times, x_cross = times[keep], x_cross[keep]
        # Nearest image of each track (the domain is much smaller than L), and its
        # images one turn either side, kept when the track's line comes within
        # `reach` of the domain's centre.
        base = x_cross - big_l * np.round((x_cross - xc) / big_l)
        for m in (-1, 0, 1):
            x0 = base + m * big_l
            dist = np.abs((xc - x0) * normal[0])  # distance of the centre to the line
            near = dist <= reach
            for t_pass, xk in zip(times[near], x0[near]):
                s_c = (xc - xk) * d[0]
                step = sat.along_track_spacing
                js = np.arange(
                    math.floor((s_c - reach) / step),
                    math.ceil((s_c + reach) / step) + 1,
                )
                s = js * step
                px = xk + s[:, None] * d[0] + offsets[None, :] * normal[0]
                py = yc + s[:, None] * d[1] + offsets[None, :] * normal[1]
                inside = (py >= ya) & (py < ya + ly) & (px >= xa) & (px < xa + lx)
                if inside.any():
                    out.append(
                        np.stack(
                            [np.full(inside.sum(), t_pass), py[inside], px[inside]], 1
                        )
                    )
    if not out:
        return np.zeros((0, 3))
    return np.concatenate(out, 0)


def _to_slots(tyx: np.ndarray, dt: float, n_steps: int):
    """Group `(time, y, x)` rows by nearest model step `round(time / dt)` in
    `[0, n_steps)` into padded `(n_steps, M)` arrays."""
    step = np.round(tyx[:, 0] / dt).astype(int)
    keep = (step >= 0) & (step < n_steps)
    tyx, step = tyx[keep], step[keep]
    order = np.argsort(step, kind="stable")
    tyx, step = tyx[order], step[order]
    counts = np.bincount(step, minlength=n_steps)
    m = max(int(counts.max(initial=0)), 1)
    slot = np.arange(step.size) - np.repeat(np.cumsum(counts) - counts, counts)
    arrays = np.zeros((3, n_steps, m))
    valid = np.zeros((n_steps, m), bool)
    arrays[:, step, slot] = tyx.T
    valid[step, slot] = True
    return arrays, valid


class SatelliteTracks(AbstractPointPattern):
    r"""Along-track (nadir) and wide-swath (SWOT-like) altimetry of a constellation
    over a regional grid.

    **The idealisation.** A regional Cartesian domain sees straight ground tracks.
    Satellite `s` has inclination $i$, a repeat cycle of $R$ days in which it makes
    $N$ revolutions while the Earth turns $D$ times under its orbital plane
    ($D$ = `nodal_days`, $\gcd(N, D) = 1$). At the domain's latitude a full turn is
    the `circumference` $L$ (grid units, $2\pi R_\oplus \cos\varphi$ by default).
    Revolution $k \in \mathbb Z$ crosses the reference line $y = y_c$ (the domain's
    centre row)

    - ascending at $x_k = x_\text{node} - k\,D L / N \pmod L$, time
      $t_k = t_\text{node} + k R / N$, heading $(\cos i, \sin i)$;
    - descending half a revolution later, $t_k + R/(2N)$, at
      $x_k + L/2 - D L/(2N)$, heading $(\cos i, -\sin i)$.

    The $N$ ascending tracks of one cycle are thus spaced $L/N$ apart along $x$,
    each pass advances by $D L/N$ across track, and revolution $k + N$ retraces
    revolution $k$ exactly $R$ days later: the repeat cycle is respected. Along a
    pass the measurements are every `along_track_spacing` (aligned on the pass, so
    they repeat too); a pass crosses a regional domain in minutes, so all its
    points carry the pass time and go to the nearest model step ($\Delta t$ = `dt`
    days). A wide-swath instrument (SWOT-like) adds two swaths of `swath_width`
    either side of the track beyond a central `nadir_gap`, sampled every
    `cross_track_spacing`. Earth's curvature, the latitude dependence of the
    heading and the orbit's drift are ignored.
    `Satellite.preset` gives the nominal orbits of Jason, Sentinel-3, SARAL and SWOT.

    Model step $n$ (time $n\,\Delta t$, `dt` in days) holds the measurements of the
    passes with times in $[(n - \frac12)\Delta t, (n + \frac12)\Delta t)$. A
    window starts at model step `start_step`, or, with `start_step=None`, at a step
    drawn uniformly by the key from the first $\lceil \max_s R_s / \Delta t
    \rceil$ (one repeat cycle of the slowest satellite), so windows of a dataset
    see different parts of the cycle. The positions are computed once per call on
    the host (they are data of the static settings), then sliced by the key.

    **Arguments:**

    - `grid`: the regional grid (its units: "m" or "km" unless `circumference` is
      given).
    - `satellites`: a tuple of `Satellite`s (or one).
    - `dt`: the model time step, days (> 0).
    - `latitude`: degrees, sets $L = 2\pi R_\oplus \cos\varphi$ (default 35).
    - `circumference`: $L$ in grid units (overrides `latitude`).
    - `start_step`: int >= 0, or None (random).
    - `channels`: observed channels of a multi-field state.
    """

    grid: "Grid"
    satellites: tuple[Satellite, ...]
    dt: float = eqx.field(static=True)
    latitude: float = eqx.field(static=True, default=35.0)
    circumference: float | None = eqx.field(static=True, default=None)
    start_step: int | None = eqx.field(static=True, default=None)
    channels: tuple[int, ...] | None = eqx.field(
        static=True, default=None, converter=_channels
    )

    def __post_init__(self):
        check_grid(self.grid)
        if isinstance(self.satellites, Satellite):
            self.satellites = (self.satellites,)
        self.satellites = tuple(self.satellites)
        if not self.satellites or not all(
            isinstance(s, Satellite) for s in self.satellites
        ):
            raise TypeError(
                "`satellites` must be a non-empty tuple of jaxda.obs.Satellite; got "
                f"{self.satellites!r}."
            )
        self.dt = _real("dt", self.dt, minimum=0, strict=True)
        lat = _real("latitude", self.latitude)
        if abs(lat) >= 90:
            raise ValueError(f"`latitude` must be in (-90, 90); got {lat}.")
        if self.circumference is None:
            if self.grid.units not in _KM:
                raise ValueError(
                    f"the grid's units are {self.grid.units!r}: give `circumference` "
                    "(the length of a latitude circle in grid units), or use a grid in "
                    "'m' or 'km'."
                )
            km = _KM[self.grid.units]
            self.circumference = (
                2 * math.pi * EARTH_RADIUS_KM * km * math.cos(math.radians(lat))
            )
        self.circumference = _real(
            "circumference", self.circumference, minimum=0, strict=True
        )
        if self.start_step is not None:
            check_int("start_step", self.start_step, minimum=0)

    @property
    def n_start_steps(self) -> int:
        """How many start steps a random window draws from."""
        if self.start_step is not None:
            return 1
        cycle = max(s.repeat_days for s in self.satellites)
        return max(int(math.ceil(cycle / self.dt)), 1)

    def table(self, n_steps: int, first_step: int = 0) -> GridPoints:
        """The measurements of model steps `first_step, ..., first_step + n_steps -
        1`: a `GridPoints` of `(n_steps, M)` slots (with `time` in days), `M` the
        largest count of one step (NumPy on the host)."""
        n_steps = check_int("n_steps", n_steps, minimum=1)
        first_step = check_int("first_step", first_step, minimum=0)
        t_lo = (first_step - 0.5) * self.dt
        t_hi = (first_step + n_steps - 0.5) * self.dt
        rows = [
            _pass_points(self.grid, s, self.circumference, t_lo, t_hi)
            for s in self.satellites
        ]
        tyx = np.concatenate(rows, 0)
        tyx[:, 0] -= first_step * self.dt
        (t, y, x), valid = _to_slots(tyx, self.dt, n_steps)
        return GridPoints(y, x, valid, t + first_step * self.dt)

    def points(self, key, n_times):
        n_times = check_int("n_times", n_times, minimum=1)
        if self.start_step is not None:
            return self.table(n_times, self.start_step)
        check_key("key", key)
        n_start = self.n_start_steps
        table = self.table(n_start + n_times - 1)
        start = jax.random.randint(key, (), 0, n_start)

        def window(a):
            return jax.lax.dynamic_slice_in_dim(a, start, n_times, axis=0)

        return GridPoints(
            window(table.y), window(table.x), window(table.valid), window(table.time)
        )

    def max_count(self, n_times, state_shape):
        """The largest count over the possible start steps."""
        n_times = check_int("n_times", n_times, minimum=1)
        first = 0 if self.start_step is None else self.start_step
        table = self.table(self.n_start_steps + n_times - 1, first)
        masks = np.asarray(table.nearest_mask(self.grid)).sum(axis=(1, 2))
        sums = np.convolve(masks, np.ones(n_times, int), mode="valid")
        n_c = (
            1 if len(state_shape) == 2 else len(self.channels or range(state_shape[0]))
        )
        return int(sums.max()) * n_c


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
    "Satellite",
    "SatelliteTracks",
]
