r"""`Grid`: the metadata of a regular 2-D grid, shared by models, operators and I/O.

A field on the grid is an array of shape `(ny, nx)` (a state with channels
`(C, ny, nx)`, a trajectory `(T, C, ny, nx)`), indexed `[j, i]` with $y_j = y_0 + j
\Delta y$ and $x_i = x_0 + i \Delta x$ the coordinates of the cell centres. The domain
is $[y_0 - \Delta y/2,\, y_0 + (n_y - \tfrac12)\Delta y] \times
[x_0 - \Delta x/2,\, x_0 + (n_x - \tfrac12)\Delta x]$, of extent
$L_y = n_y \Delta y$, $L_x = n_x \Delta x$.

`boundary` says what lies beyond the edges: `"periodic"` (doubly periodic: index $n_x$
is index 0) or `"closed"` (solid walls: no flux through the edges). Staggered variables
of an Arakawa C-grid (normal velocities on the cell faces) are the business of the model
that uses them; `Grid` describes the cell centres, and gives the coordinates of the
east and north faces (`x_faces`, `y_faces`: $x_{i+1/2}$, $y_{j+1/2}$) they live on.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from .._validation import check_choice, check_finite, check_int


BOUNDARIES = ("periodic", "closed")


def _real_float(name: str, value, *, positive: bool = False) -> float:
    """`value` as a Python float; `TypeError` unless a real number, `ValueError` unless
    finite (and > 0 when `positive`)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(
            f"`{name}` must be a real number (a Python float); got "
            f"{type(value).__name__} ({value!r})."
        )
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        want = "finite and > 0" if positive else "finite"
        raise ValueError(f"`{name}` must be {want}; got {value}.")
    return value


class Grid(eqx.Module):
    r"""A regular 2-D grid of `ny` x `nx` cells.

    **Arguments:**

    - `ny`, `nx`: numbers of cells along y (rows) and x (columns), >= 2 (static).
    - `dy`, `dx`: cell sizes, > 0, in `units` (default 1).
    - `boundary`: `"periodic"` or `"closed"` (default `"periodic"`).
    - `y0`, `x0`: coordinates of the centre of cell `[0, 0]` (default `dy / 2`,
      `dx / 2`, so that the domain starts at 0).
    - `units`: the unit of the coordinates (default `"m"`), written to files.

    Every field is static: a `Grid` is metadata, hashable, and changes no compiled
    code's inputs. Use `Grid.square(n, length)` for an `n` x `n` grid of side `length`.
    """

    ny: int = eqx.field(static=True)
    nx: int = eqx.field(static=True)
    dy: float = eqx.field(static=True, default=1.0)
    dx: float = eqx.field(static=True, default=1.0)
    boundary: str = eqx.field(static=True, default="periodic")
    y0: float | None = eqx.field(static=True, default=None)
    x0: float | None = eqx.field(static=True, default=None)
    units: str = eqx.field(static=True, default="m")

    def __post_init__(self):
        self.ny = check_int("ny", self.ny, minimum=2)
        self.nx = check_int("nx", self.nx, minimum=2)
        self.dy = _real_float("dy", self.dy, positive=True)
        self.dx = _real_float("dx", self.dx, positive=True)
        check_choice("boundary", self.boundary, BOUNDARIES)
        self.y0 = self.dy / 2 if self.y0 is None else _real_float("y0", self.y0)
        self.x0 = self.dx / 2 if self.x0 is None else _real_float("x0", self.x0)
        if not isinstance(self.units, str):
            raise TypeError(
                f"`units` must be a string; got {type(self.units).__name__}."
            )

    @classmethod
    def square(
        cls, n: int, length: float = 1.0, *, boundary: str = "periodic", **kwargs
    ) -> "Grid":
        """An `n` x `n` grid covering a square of side `length`."""
        n = check_int("n", n, minimum=2)
        length = _real_float("length", length, positive=True)
        return cls(n, n, length / n, length / n, boundary, **kwargs)

    @property
    def shape(self) -> tuple[int, int]:
        """`(ny, nx)`."""
        return (self.ny, self.nx)

    @property
    def size(self) -> int:
        """Number of cells `ny * nx`."""
        return self.ny * self.nx

    @property
    def spacing(self) -> tuple[float, float]:
        """`(dy, dx)`."""
        return (self.dy, self.dx)

    @property
    def extent(self) -> tuple[float, float]:
        """`(Ly, Lx) = (ny dy, nx dx)`: the domain's side lengths."""
        return (self.ny * self.dy, self.nx * self.dx)

    @property
    def periodic(self) -> bool:
        return self.boundary == "periodic"

    @property
    def y(self) -> Float[Array, " ny"]:
        """Cell-centre coordinates along y."""
        return self.y0 + self.dy * jnp.arange(self.ny)

    @property
    def x(self) -> Float[Array, " nx"]:
        """Cell-centre coordinates along x."""
        return self.x0 + self.dx * jnp.arange(self.nx)

    @property
    def y_faces(self) -> Float[Array, " ny"]:
        r"""North-face coordinates along y, $y_{j+1/2} = y_0 + (j + \tfrac12)\Delta y$.

        Entry `j` is the face between row `j` and row `j + 1` (the C-grid layout of
        `jaxda.grid`'s face fields): on a `"closed"` grid the last one is the north
        wall, on a `"periodic"` one the face between row `ny - 1` and row 0.
        """
        return self.y0 + self.dy * (jnp.arange(self.ny) + 0.5)

    @property
    def x_faces(self) -> Float[Array, " nx"]:
        r"""East-face coordinates along x, $x_{i+1/2} = x_0 + (i + \tfrac12)\Delta x$.

        Entry `i` is the face between column `i` and column `i + 1`: on a `"closed"`
        grid the last one is the east wall, on a `"periodic"` one the face between
        column `nx - 1` and column 0.
        """
        return self.x0 + self.dx * (jnp.arange(self.nx) + 0.5)

    def meshgrid(self) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """`(Y, X)`: the coordinates of every cell centre, each of shape `(ny, nx)`."""
        return jnp.meshgrid(self.y, self.x, indexing="ij")

    @property
    def cell_area(self) -> float:
        return self.dy * self.dx

    def integral(self, field: Float[Array, "*lead ny nx"]) -> Float[Array, "*lead"]:
        r"""$\sum_{j,i} f_{ji}\, \Delta x \Delta y$ over the last two axes (mass)."""
        return jnp.sum(field, axis=(-2, -1)) * self.cell_area

    def check_field(self, name: str, field, *, leading: int | None = 0) -> None:
        """Validate a field: shape `(*leading_dims, ny, nx)` and finite.

        `leading` is the number of axes before `(ny, nx)` (channels, time, batch), or
        `None` for any number of them (`(..., ny, nx)`). Finiteness is checked on
        concrete values only (not under `jit`).
        """
        shape = tuple(jnp.shape(field))
        if leading is None:
            if len(shape) < 2 or shape[-2:] != self.shape:
                raise ValueError(
                    f"`{name}` must have shape (..., {self.ny}, {self.nx}) on this "
                    f"{self.ny} x {self.nx} grid; got {shape}."
                )
        else:
            leading = check_int("leading", leading, minimum=0)
            if len(shape) != leading + 2 or shape[leading:] != self.shape:
                lead = "*, " * leading
                raise ValueError(
                    f"`{name}` must have shape ({lead}{self.ny}, {self.nx}) on this "
                    f"{self.ny} x {self.nx} grid; got {shape}."
                )
        check_finite(name, field)


def grid_or_unit(grid: Grid | None, shape: tuple[int, int], what: str) -> Grid:
    """`grid` checked against the field shape `(ny, nx)`, or, when `None`, the closed
    grid of unit spacing of that shape (grid units). `what` names the field in the
    error message (e.g. "`velocity`'s")."""
    ny, nx = shape
    if grid is None:
        return Grid(ny, nx, boundary="closed")
    if not isinstance(grid, Grid):
        raise TypeError(
            f"`grid` must be a jaxda.grid.Grid or None; got {type(grid).__name__}."
        )
    if grid.shape != (ny, nx):
        raise ValueError(
            f"`grid` ({grid.ny} x {grid.nx}) does not match {what} {ny} x {nx} cells."
        )
    return grid
