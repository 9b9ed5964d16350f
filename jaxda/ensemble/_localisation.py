r"""Distances on grids, the Gaspari-Cohn taper and localised ensemble covariances.

Localisation damps the spurious long-range correlations of a small ensemble with a
taper $\rho(d) \in [0, 1]$ of the distance $d$ between two points. The taper used here
is [GC99, eq. 4.10]'s fifth-order piecewise rational function of $r = d / c$ (half
width $c$), compactly supported on $d < 2c$:

$$\rho(r) = \begin{cases}
-\tfrac14 r^5 + \tfrac12 r^4 + \tfrac58 r^3 - \tfrac53 r^2 + 1, & 0 \le r \le 1,\\
\tfrac1{12} r^5 - \tfrac12 r^4 + \tfrac58 r^3 + \tfrac53 r^2 - 5 r + 4
- \tfrac23 r^{-1}, & 1 < r \le 2,\\
0, & r > 2.
\end{cases}$$

It is a correlation function, so the Schur (entrywise) product $\rho \circ P$ of the
taper matrix with a covariance $P$ is again a covariance [GC99]. DAPPER's `loc_rad`
$\ell$ corresponds to $c \approx 1.82\,\ell$ (its taper equals $e^{-1/2}$ at
$d = \ell$).

`LocalisationGrid` gives the coordinates of the state entries (any number of axes, each
periodic or not), so the same code localises on the Lorenz-96 ring and on 2-D fields.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from .._validation import is_concrete
from ..grid import Grid


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _spacing(spacing) -> float | tuple[float, ...]:
    if isinstance(spacing, tuple | list | np.ndarray):
        return tuple(float(h) for h in spacing)
    return float(spacing)


class LocalisationGrid(eqx.Module):
    """A regular grid of the state entries, with (optionally periodic) distances.

    The state entries, in flattened C order, sit at the integer multi-indices of
    `shape` times `spacing`; along a periodic axis of length $L$ (`shape[k] *
    spacing[k]`) the distance is $\\min(|a - b|, L - |a - b|)$, the Euclidean norm
    combines the axes.

    **Arguments:**
    - `shape`: the grid shape, equal to the state shape (e.g. `(40,)` for Lorenz-96,
      `(ny, nx)` for a 2-D field).
    - `spacing`: the grid spacing, one float or one per axis (default 1).
    - `periodic`: whether every axis wraps around (default `True`, the Lorenz-96
      ring).
    """

    shape: tuple[int, ...] = eqx.field(static=True, converter=_shape)
    spacing: float | tuple[float, ...] = eqx.field(
        static=True, default=1.0, converter=_spacing
    )
    periodic: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"`shape` must be positive sizes; got {self.shape}.")
        spacing = self.spacings
        if len(spacing) != len(self.shape) or not all(
            np.isfinite(h) and h > 0 for h in spacing
        ):
            raise ValueError(
                "`spacing` must be one positive float or one per axis of "
                f"{self.shape}; "
                f"got {self.spacing}."
            )

    @classmethod
    def from_grid(cls, grid) -> "LocalisationGrid":
        """The cell centres of a 2-D `jaxda.grid.Grid` (shape `(ny, nx)`, spacing
        `(dy, dx)`, periodic when its boundary is)."""
        if not isinstance(grid, Grid):
            raise TypeError(
                f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}."
            )
        return cls(grid.shape, (grid.dy, grid.dx), grid.periodic)

    @property
    def spacings(self) -> tuple[float, ...]:
        """The spacing of each axis."""
        if isinstance(self.spacing, tuple):
            return self.spacing
        return (self.spacing,) * len(self.shape)

    @property
    def size(self) -> int:
        """The number of grid points, `prod(shape)`."""
        return math.prod(self.shape)

    def coordinates(self) -> Float[Array, "n ndim"]:
        """The coordinates of the grid points, flattened C order, `(n, ndim)`."""
        idx = np.indices(self.shape).reshape(len(self.shape), -1).T
        return jnp.asarray(idx * np.asarray(self.spacings), dtype=float)

    def distances(
        self, a: Float[Array, "p ndim"], b: Float[Array, "q ndim"]
    ) -> Float[Array, "p q"]:
        """The matrix of distances between the points `a` and the points `b`."""
        diff = jnp.abs(a[:, None, :] - b[None, :, :])
        if self.periodic:
            length = jnp.asarray(self.shape, diff.dtype) * jnp.asarray(
                self.spacings, diff.dtype
            )
            diff = jnp.minimum(diff, length - diff)
        return jnp.sqrt(jnp.sum(diff**2, axis=-1))


def check_radius(name: str, radius) -> None:
    """`ValueError` unless a concrete `radius` is > 0 (`inf`: no localisation)."""
    if not is_concrete(radius):
        return
    try:
        value = np.asarray(radius, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a positive float; got {type(radius).__name__}."
        ) from None
    if value.shape != () or np.isnan(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a float > 0 (inf for no localisation); got {radius!r}."
        )


def gaspari_cohn(
    distance: Float[Array, "*shape"], radius: float | Float[Array, ""]
) -> Float[Array, "*shape"]:
    r"""The Gaspari-Cohn taper $\rho(d / c)$ of [GC99, eq. 4.10] (module docstring).

    **Arguments:** `distance` $d \ge 0$ (any shape); `radius` the half width $c > 0$
    (the taper vanishes beyond $2c$; `inf` gives 1 everywhere).

    **Returns:** $\rho$, shaped like `distance`.
    """
    check_radius("radius", radius)
    return _gaspari_cohn(jnp.asarray(distance), radius)


@jax.jit
def _gaspari_cohn(distance, radius):
    r = distance / radius
    inner = 1 + r**2 * (-(r**3) / 4 + r**2 / 2) + r**3 * (5 / 8) - r**2 * (5 / 3)
    safe = jnp.where(r > 1, r, 1.0)
    outer = (
        safe**2 * (safe**3 / 12 - safe**2 / 2)
        + safe**3 * (5 / 8)
        + safe**2 * (5 / 3)
        - 5 * safe
        + 4
        - (2 / 3) / safe
    )
    # Clipped at 0: near r = 2 the outer polynomial rounds to tiny negative values.
    return jnp.where(r <= 1, inner, jnp.where(r <= 2, jnp.maximum(outer, 0.0), 0.0))


def gaspari_cohn_matrix(grid: LocalisationGrid, radius: float) -> Float[Array, "n n"]:
    r"""The taper matrix $\rho_{ij} = \rho(d(i, j) / c)$ between the grid points.

    **Arguments:** `grid` a `LocalisationGrid`; `radius` the half width $c > 0$.

    **Returns:** the `(n, n)` matrix over the flattened state: symmetric, unit
    diagonal, positive semi-definite on a non-periodic grid of up to three axes
    (a correlation function there [GC99]); on a periodic grid it is so only
    approximately (distances along a ring are not Euclidean).
    """
    if not isinstance(grid, LocalisationGrid):
        raise TypeError(
            f"`grid` must be a jaxda.ensemble.LocalisationGrid; got {type(grid)}."
        )
    check_radius("radius", radius)
    return _taper_matrix(grid, radius)


@eqx.filter_jit
def _taper_matrix(grid, radius):
    x = grid.coordinates()
    return _gaspari_cohn(grid.distances(x, x), radius)


def localised_covariance(
    ensemble: Float[Array, "N *state"], taper: Float[Array, "n n"]
) -> Float[Array, "n n"]:
    r"""The localised ensemble covariance $\rho \circ P_e$, $P_e = A^\top A$.

    $A$ holds the anomalies $(E_i - \bar x)/\sqrt{N - 1}$ as rows (the flattened
    state). The Schur product with a taper matrix (e.g. `gaspari_cohn_matrix`) gives
    the ensemble part of a hybrid background covariance
    $B = \alpha B_{\text{static}} + (1 - \alpha)\,\rho \circ P_e$.

    **Arguments:** `ensemble` `(N, *state)`, $N \ge 2$; `taper` `(n, n)` with
    $n$ the state size.

    **Returns:** the `(n, n)` matrix.
    """
    ensemble = jnp.asarray(ensemble)
    n_members = ensemble.shape[0] if ensemble.ndim else 0
    if ensemble.ndim < 2 or n_members < 2:
        raise ValueError(
            "`ensemble` must have shape (N, *state) with N >= 2 members; got "
            f"{tuple(ensemble.shape)}."
        )
    flat = jnp.reshape(ensemble, (n_members, -1))
    n = flat.shape[1]
    if tuple(jnp.shape(taper)) != (n, n):
        raise ValueError(
            f"`taper` must have shape ({n}, {n}) (the flattened state size); got "
            f"{tuple(jnp.shape(taper))}."
        )
    return _localised(flat, jnp.asarray(taper))


@jax.jit
def _localised(flat, taper):
    anomalies = (flat - jnp.mean(flat, axis=0)) / jnp.sqrt(flat.shape[0] - 1.0)
    return taper * (anomalies.T @ anomalies)
