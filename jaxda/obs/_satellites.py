r"""Satellite altimetry patterns on a `jaxda.grid.Grid`: nadir tracks and SWOT-like
swaths of a constellation (`Satellite`, `SatelliteTracks`), with the idealised
ground-track geometry described in `SatelliteTracks`.
"""

import math
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import numpy as np

from .._validation import check_int, check_key
from ._grid_patterns import AbstractPointPattern, _channels, _real
from ._interpolation import GridPoints, check_grid


if TYPE_CHECKING:  # imported lazily: jaxda.grid may import jaxda.obs
    from ..grid._grid import Grid


EARTH_RADIUS_KM = 6371.0
_KM = {"m": 1000.0, "km": 1.0}


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
