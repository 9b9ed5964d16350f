r"""Point observations of gridded fields: `GridPoints` and `BilinearInterpolation`.

An observation at a point $(y, x)$ between the cell centres of a `jaxda.grid.Grid`
is the bilinear interpolant of the field there. With the fractional indices
$\eta = (y - y_0)/\Delta y$, $\xi = (x - x_0)/\Delta x$, the cell
$j = \lfloor \eta \rfloor$, $i = \lfloor \xi \rfloor$ and the offsets
$a = \eta - j$, $b = \xi - i$ in $[0, 1]$,

$$h(f)(y, x) = (1-a)(1-b) f_{j,i} + (1-a) b f_{j,i+1} + a (1-b) f_{j+1,i}
+ a b f_{j+1,i+1}.$$

It is exact on fields of the form $\alpha + \beta x + \gamma y + \delta x y$, equals
the node value at a node, and is linear in $f$: each observation is a row of $H$
with four non-zero weights summing to one. On a periodic grid the indices wrap (the
cell between the last and the first centre is interpolated across the edge); on a
closed grid a point in the half-cell band between the outermost centres and the wall
takes the value of constant extrapolation in the normal direction (the indices are
clamped), and points beyond the walls are refused.

The transpose $H^\top y$ scatters (adds) each observation back onto its four nodes
with the same weights: the exact adjoint of the gather, $O(m)$ per application. The
dense $H$ is formed only by `matrix()`.
"""

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float, Int
from .._validation import check_int, is_concrete


if TYPE_CHECKING:  # imported lazily: jaxda.grid may import jaxda.obs
    from ..grid._grid import Grid
from ._operators import AbstractLinearObservationOperator


def check_grid(grid, name: str = "grid") -> None:
    """Raise `TypeError` unless `grid` is a `jaxda.grid.Grid`."""
    from ..grid._grid import Grid

    if not isinstance(grid, Grid):
        raise TypeError(
            f"`{name}` must be a jaxda.grid.Grid; got {type(grid).__name__}."
        )


def _float_array(name: str, value) -> Array:
    arr = jnp.asarray(value)
    if jnp.issubdtype(arr.dtype, jnp.integer):
        arr = arr.astype(jnp.result_type(float))
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a real (floating) array; got {arr.dtype}.")
    return arr


class GridPoints(eqx.Module):
    r"""Positions of point observations, padded to a fixed count per time.

    Observations whose positions change with time (satellite tracks, drifting
    points) are stored as `(T, M)` arrays: `M` slots per time, of which those with
    `valid` set are real observations (the rest is padding, so that `lax.scan` and
    `jax.vmap` see static shapes). Positions shared by every time are `(M,)`.

    **Arguments:**

    - `y`, `x`: coordinates (in the grid's units), shape `(M,)` or `(T, M)`.
    - `valid`: boolean, same shape (default all `True`).
    - `time`: optional exact observation times, same shape (in the model's time
      unit; the window index `t` of a slot is its row).

    Padding slots are set to `(y, x) = (0, 0)` and never used.
    """

    y: Float[Array, "*T M"]
    x: Float[Array, "*T M"]
    valid: Bool[Array, "*T M"]
    time: Float[Array, "*T M"] | None

    def __init__(
        self,
        y: Float[ArrayLike, "*T M"],
        x: Float[ArrayLike, "*T M"],
        valid: Bool[ArrayLike, "*T M"] | None = None,
        time: Float[ArrayLike, "*T M"] | None = None,
    ):
        y = _float_array("y", y)
        x = _float_array("x", x)
        if y.shape != x.shape or y.ndim not in (1, 2):
            raise ValueError(
                "`y` and `x` must have the same shape, (M,) or (T, M); got "
                f"{y.shape} and {x.shape}."
            )
        valid = jnp.ones(y.shape, bool) if valid is None else jnp.asarray(valid)
        if valid.dtype != jnp.bool_:
            raise TypeError(f"`valid` must be a boolean array; got {valid.dtype}.")
        if valid.shape != y.shape:
            raise ValueError(
                f"`valid` must have the shape of `y` {y.shape}; got {valid.shape}."
            )
        if time is not None:
            time = _float_array("time", time)
            if time.shape != y.shape:
                raise ValueError(
                    f"`time` must have the shape of `y` {y.shape}; got {time.shape}."
                )
        if is_concrete(y) and is_concrete(x) and is_concrete(valid):
            v = np.asarray(valid)
            bad = v & ~(np.isfinite(np.asarray(y)) & np.isfinite(np.asarray(x)))
            if bad.any():
                raise ValueError(
                    f"`y` and `x` must be finite where `valid`; got {int(bad.sum())} "
                    "non-finite valid positions."
                )
        zero = jnp.zeros((), y.dtype)
        self.y = jnp.where(valid, y, zero)
        self.x = jnp.where(valid, x.astype(y.dtype), zero)
        self.valid = valid
        self.time = time

    @property
    def n_times(self) -> int | None:
        """`T` for per-time positions `(T, M)`, `None` for shared ones `(M,)`."""
        return self.y.shape[0] if self.y.ndim == 2 else None

    @property
    def max_count(self) -> int:
        """`M`, the number of slots per time."""
        return self.y.shape[-1]

    @property
    def count(self) -> Int[Array, "*T"]:
        """Number of valid points (per time)."""
        return jnp.sum(self.valid, axis=-1)

    def compact(self) -> "GridPoints":
        """The same points with valid slots first and `M` cut to the largest count
        (concrete arrays only: the new `M` is data-dependent)."""
        if not (is_concrete(self.valid) and is_concrete(self.y)):
            raise ValueError("`GridPoints.compact` needs concrete (not traced) arrays.")
        valid = np.atleast_2d(np.asarray(self.valid))
        order = np.argsort(~valid, axis=-1, kind="stable")
        m = max(int(valid.sum(axis=-1).max(initial=0)), 1)

        def take(a):
            a = np.atleast_2d(np.asarray(a))
            out = np.take_along_axis(a, order, axis=-1)[..., :m]
            return out if self.y.ndim == 2 else out[0]

        time = None if self.time is None else take(self.time)
        return GridPoints(take(self.y), take(self.x), take(self.valid), time)

    def rows(
        self, times: Float[ArrayLike, " T"]
    ) -> tuple[Float[Array, "TM 3"], Bool[Array, " TM"]]:
        """The points as `(t, y, x)` rows, `(T * M, 3)` in row-major (time, slot)
        order, with `t = times[row]` (the model times of the window), and their
        validity `(T * M,)`: the input of the space-time OI
        (`jaxda.gaussian.map_kernel`); observation values `(T, M)` flatten in the
        same order."""
        if self.n_times is None:
            raise ValueError("`rows` needs per-time points (T, M).")
        times = jnp.asarray(times)
        if times.shape != (self.n_times,):
            raise ValueError(
                f"`times` must have shape ({self.n_times},); got {times.shape}."
            )
        t = jnp.broadcast_to(times[:, None].astype(self.y.dtype), self.y.shape)
        out = jnp.stack([t, self.y, self.x], -1).reshape(-1, 3)
        return out, self.valid.reshape(-1)

    def nearest_nodes(
        self, grid: "Grid"
    ) -> tuple[Int[Array, "*T M"], Int[Array, "*T M"]]:
        """`(j, i)`: the row and column of the cell containing each point (the
        nearest cell centre), wrapped on a periodic grid, clamped on a closed one."""
        j = jnp.round((self.y - grid.y0) / grid.dy).astype(int)
        i = jnp.round((self.x - grid.x0) / grid.dx).astype(int)
        if grid.periodic:
            return j % grid.ny, i % grid.nx
        return jnp.clip(j, 0, grid.ny - 1), jnp.clip(i, 0, grid.nx - 1)

    def nearest_mask(self, grid: "Grid") -> Bool[Array, "*T ny nx"]:
        """The gridded mask: `True` at the cells that hold at least one valid point,
        shape `(T, ny, nx)` (or `(ny, nx)` for shared points)."""
        j, i = self.nearest_nodes(grid)
        flat = j * grid.nx + i

        def one(flat_t, valid_t):
            hits = jnp.zeros(grid.size, int).at[flat_t].add(valid_t.astype(int))
            return (hits > 0).reshape(grid.shape)

        if self.y.ndim == 1:
            return one(flat, self.valid)
        return jax.vmap(one)(flat, self.valid)


def _check_inside(grid: "Grid", points: GridPoints) -> None:
    """Refuse valid points beyond the walls of a closed grid (concrete values)."""
    if grid.periodic or not (is_concrete(points.y) and is_concrete(points.x)):
        return
    (ly, lx), eps = grid.extent, 1e-9
    y0, x0 = grid.y0 - grid.dy / 2, grid.x0 - grid.dx / 2
    y, x, v = np.asarray(points.y), np.asarray(points.x), np.asarray(points.valid)
    tol_y, tol_x = eps * ly, eps * lx
    out = v & (
        (y < y0 - tol_y)
        | (y > y0 + ly + tol_y)
        | (x < x0 - tol_x)
        | (x > x0 + lx + tol_x)
    )
    if out.any():
        k = np.argwhere(out)[0]
        raise ValueError(
            f"`points` must lie inside the closed domain y in [{y0}, {y0 + ly}], x in "
            f"[{x0}, {x0 + lx}]; got {int(out.sum())} valid points outside, e.g. "
            f"(y, x) = ({y[tuple(k)]}, {x[tuple(k)]}) at slot "
            f"{tuple(int(a) for a in k)}."
        )


def _axis_weights(coord, origin, step, n, periodic):
    """Lower node index and offset in [0, 1] along one axis."""
    s = (coord - origin) / step
    if periodic:
        lo = jnp.floor(s)
        frac = s - lo
        lo = lo.astype(int) % n
        return lo, (lo + 1) % n, frac
    s = jnp.clip(s, 0.0, n - 1.0)
    lo = jnp.minimum(jnp.floor(s), n - 2)
    frac = s - lo
    lo = lo.astype(int)
    return lo, lo + 1, frac


@eqx.filter_jit
def _stencil(grid: "Grid", points: GridPoints, offset: int):
    """Flattened state indices `(*T, M, 4)` and weights of the bilinear stencils."""
    j0, j1, a = _axis_weights(points.y, grid.y0, grid.dy, grid.ny, grid.periodic)
    i0, i1, b = _axis_weights(points.x, grid.x0, grid.dx, grid.nx, grid.periodic)
    nx = grid.nx
    idx = jnp.stack([j0 * nx + i0, j0 * nx + i1, j1 * nx + i0, j1 * nx + i1], -1)
    w = jnp.stack([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b], -1)
    w = jnp.where(points.valid[..., None], w, jnp.zeros((), w.dtype))
    return idx + offset, w


class BilinearInterpolation(AbstractLinearObservationOperator):
    r"""Point observations of a gridded state by bilinear interpolation.

    With the fractional indices $\eta = (y - y_0)/\Delta y$, $\xi = (x -
    x_0)/\Delta x$ of a point, its cell $j = \lfloor \eta \rfloor$, $i = \lfloor \xi
    \rfloor$ and the offsets $a = \eta - j$, $b = \xi - i$,

    $$h(f) = (1-a)(1-b) f_{j,i} + (1-a) b f_{j,i+1} + a (1-b) f_{j+1,i} + a b
    f_{j+1,i+1}:$$

    exact on $\alpha + \beta x + \gamma y + \delta x y$, the node value at a node.
    The indices wrap on a periodic grid; on a closed grid a point between the
    outermost centres and the wall gets the constant extrapolation (clamped
    indices) and points beyond the walls are refused. Padding slots give 0.

    The state is one field `(ny, nx)` or a multi-field state `(C, ny, nx)` of which
    channel `channel` is observed. `y_t` has shape `(M,)`: the `M` slots of time `t`
    of `points` (shared or per time); read which slots hold observations from
    `valid` and use it as the `Observations` mask. The transpose is the exact
    scatter-add adjoint; nothing dense is formed except by `matrix()` (`(M, n)`) and
    `gram()` (`(n, n)`, accumulated from the 16 products of each stencil).

    **Arguments:**

    - `grid`: the `jaxda.grid.Grid` of the state.
    - `points`: a `GridPoints` (positions in the grid's units, `(M,)` or `(T, M)`).
    - `state_shape`: `(ny, nx)` (default) or `(C, ny, nx)`.
    - `channel`: the observed channel of a `(C, ny, nx)` state (default 0).

    **Raises:** `ValueError` for a state shape that does not match the grid, a
    channel out of range, or (on a closed grid, concrete positions) valid points
    outside the domain.
    """

    grid: "Grid"
    points: GridPoints
    indices: Int[Array, "*T M 4"]
    weights: Float[Array, "*T M 4"]
    channel: int = eqx.field(static=True)
    state_shape: tuple[int, ...] = eqx.field(static=True)
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: int | None = eqx.field(static=True)

    def __init__(
        self,
        grid: "Grid",
        points: GridPoints,
        state_shape: tuple[int, ...] | None = None,
        channel: int = 0,
    ):
        check_grid(grid)
        if not isinstance(points, GridPoints):
            raise TypeError(
                f"`points` must be a jaxda.obs.GridPoints; got {type(points).__name__}."
            )
        shape = (
            grid.shape if state_shape is None else tuple(int(s) for s in state_shape)
        )
        if len(shape) not in (2, 3) or shape[-2:] != grid.shape:
            raise ValueError(
                f"`state_shape` must be ({grid.ny}, {grid.nx}) or (C, {grid.ny}, "
                f"{grid.nx}) for this grid; got {shape}."
            )
        channel = check_int("channel", channel, minimum=0)
        n_channels = shape[0] if len(shape) == 3 else 1
        if channel >= n_channels:
            raise ValueError(
                f"`channel` must be in [0, {n_channels}) for states of shape {shape}; "
                f"got {channel}."
            )
        _check_inside(grid, points)
        self.grid = grid
        self.points = points
        self.indices, self.weights = _stencil(grid, points, channel * grid.size)
        self.channel = channel
        self.state_shape = shape
        self.obs_shape = (points.max_count,)
        self.n_times = points.n_times

    @property
    def valid(self) -> Bool[Array, "*T M"]:
        """Which slots hold observations: the `Observations` mask of this operator."""
        return self.points.valid

    def _stencil_at(self, t, dtype):
        t = self._time(t)
        idx, w = self.indices, self.weights
        if self.n_times is not None:
            idx, w = idx[t], w[t]
        if dtype is not None:
            w = w.astype(dtype)
        return idx, w

    def __call__(self, x_t, t=None):
        x_t = jnp.asarray(x_t)
        idx, w = self._stencil_at(t, x_t.dtype)
        return jnp.sum(w * jnp.reshape(x_t, (-1,))[idx], axis=-1)

    def transpose(self, y_t, t=None):
        y_t = jnp.asarray(y_t)
        idx, w = self._stencil_at(t, y_t.dtype)
        out = jnp.zeros(self.state_size, y_t.dtype)
        out = out.at[idx.reshape(-1)].add((w * y_t[:, None]).reshape(-1))
        return out.reshape(self.state_shape)

    def matrix(self, t=None, dtype=None):
        idx, w = self._stencil_at(t, dtype)
        m = self.obs_size
        rows = jnp.broadcast_to(jnp.arange(m)[:, None], idx.shape)
        return jnp.zeros((m, self.state_size), w.dtype).at[rows, idx].add(w)

    def gram(self, weight, t=None):
        weight = jnp.reshape(jnp.asarray(weight), (-1,))
        idx, w = self._stencil_at(t, weight.dtype)
        outer = weight[:, None, None] * w[:, :, None] * w[:, None, :]
        rows = jnp.broadcast_to(idx[:, :, None], outer.shape)
        cols = jnp.broadcast_to(idx[:, None, :], outer.shape)
        n = self.state_size
        return jnp.zeros((n, n), outer.dtype).at[rows, cols].add(outer)


__all__ = ["BilinearInterpolation", "GridPoints"]
