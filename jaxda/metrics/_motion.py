r"""Scores of motion (velocity) fields: end-point and angular errors, and the norms of
the velocity gradient and divergence ([FBC23], [BFB94]).

A velocity field is an array `(*lead, 2, ny, nx)`: channel 0 is $u$ (along x, the
last axis), channel 1 is $v$ (along y). With $\mathbf w = (u, v)$ the truth and
$\hat{\mathbf w} = (\hat u, \hat v)$ the estimate, over the selected pixels $S$:

- **end-point error** $\mathrm{EPE} = \frac{1}{|S|}\sum_{p \in S}
  \sqrt{(u_p - \hat u_p)^2 + (v_p - \hat v_p)^2}$, in velocity units;
- **planar angular error** ([FBC23]'s, their code's `Angular_error`)
  $\mathrm{AE} = \frac{1}{|S'|}\sum_{p \in S'} \arccos\Big(\mathrm{clip}\Big(
  \frac{\langle \mathbf w_p, \hat{\mathbf w}_p\rangle}{|\mathbf w_p|\,
  |\hat{\mathbf w}_p|}, -1, 1\Big)\Big)$, where $S' \subseteq S$ leaves out the pixels
  whose ratio is not finite (a zero vector, in the truth or the estimate);
  independent of the velocity units;
- **space-time angular error** ([BFB94]'s) the angle between the vectors
  $(u, v, 1)$ and $(\hat u, \hat v, 1)$,
  $\arccos\big((u\hat u + v\hat v + 1) / \sqrt{(u^2 + v^2 + 1)(\hat u^2 + \hat v^2 +
  1)}\big)$, defined everywhere. It depends on the velocity units: the "1" is one
  frame per pixel, so the velocities must be in pixels (grid cells) per frame (the
  optical-flow convention); multiply velocities in length per time by
  $\Delta t / \Delta x$ first.

Leading axes (samples, times) are pooled: the mean is over every selected pixel of
every leading index; `jax.vmap` over a leading axis gives per-sample scores. An
optional boolean `mask` `(*lead, ny, nx)` (or any shape ending in `(ny, nx)` that
broadcasts to it) selects the pixels; an empty selection gives NaN, as in the rest of
`jaxda.metrics`.

**Gradient and divergence norms** ([FBC23]'s `norm_gradw`, `norm_divw`):
$$\|\nabla \mathbf w\| = \Big(\sum_{j,i} (D^+_x u)_{ji}^2 + (D^+_y u)_{ji}^2 +
(D^+_x v)_{ji}^2 + (D^+_y v)_{ji}^2\Big)^{1/2},\qquad
\|\nabla\cdot\mathbf w\| = \Big(\sum_{j,i} \big((D^+_x u)_{ji} +
(D^+_y v)_{ji}\big)^2\Big)^{1/2},$$
with the forward differences $(D^+_x f)_{ji} = (f_{j,i+1} - f_{ji})/\Delta x$,
$(D^+_y f)_{ji} = (f_{j+1,i} - f_{ji})/\Delta y$ (`jaxda.grid.diff_forward`) taken
only at the interior cells $1 \le j \le n_y - 2$, $1 \le i \le n_x - 2$: the stencil
of the authors' code, which leaves out the wall rows and columns (the first
difference it takes is $f_2 - f_1$, the last $f_{n-1} - f_{n-2}$), whatever the grid's
boundary. These are sums, not means (they grow with the grid), and leading axes are
pooled into the one sum. Without a grid the spacing is 1 (grid units, the authors'
convention: [FBC23]'s truth has $\|\nabla \mathbf w\| = 1.67$ for velocities in m/s on
their 64 x 64 basin); with a `jaxda.grid.Grid` its `dx`, `dy` give physical units.
`gradient_error` and `divergence_error` are the norms of the difference
$\hat{\mathbf w} - \mathbf w$.

Everything is `jnp` code on static shapes (each score is compiled once per shape):
`jax.jit` and `jax.vmap` apply.
"""

import math

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Bool, Float
from .._validation import check_choice, check_same_shape
from ..grid._differences import diff_forward
from ..grid._grid import Grid, grid_or_unit
from ._pointwise import _masked_mean


ANGULAR_KINDS = ("planar", "spatiotemporal")


def _as_velocity(name: str, w) -> Array:
    """`w` as an array `(*lead, 2, ny, nx)`; clear errors otherwise."""
    try:
        w = jnp.asarray(w)
    except TypeError:
        raise TypeError(
            f"`{name}` must be an array (a velocity field); got {type(w).__name__}."
        ) from None
    if not jnp.issubdtype(w.dtype, jnp.floating):
        if w.dtype == jnp.bool_ or not jnp.issubdtype(w.dtype, jnp.integer):
            raise TypeError(
                f"`{name}` must be a real velocity field; got dtype {w.dtype}."
            )
        w = w.astype(jnp.result_type(float))
    if w.ndim < 3 or w.shape[-3] != 2:
        raise ValueError(
            f"`{name}` must be a velocity field of shape (*lead, 2, ny, nx) (channel "
            f"0 = u along x, 1 = v along y); got shape {tuple(w.shape)}."
        )
    return w


def _pair(estimate, truth, mask):
    """Checked `(estimate, truth, mask)`: the mask broadcast to `(*lead, ny, nx)`."""
    estimate = _as_velocity("estimate", estimate)
    truth = _as_velocity("truth", truth)
    check_same_shape("estimate", estimate, "truth", truth)
    pixels = truth.shape[:-3] + truth.shape[-2:]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
        try:
            ok = jnp.broadcast_shapes(mask.shape, pixels) == pixels
        except ValueError:
            ok = False
        if not ok or mask.shape[-2:] != pixels[-2:]:
            raise ValueError(
                f"`mask` must have the shape (*lead, ny, nx) = {pixels} of the "
                f"velocity fields without their channel axis (or a shape ending in "
                f"(ny, nx) that broadcasts to it); got {tuple(mask.shape)}."
            )
        mask = jnp.broadcast_to(mask, pixels)
    dtype = jnp.result_type(estimate, truth)
    return estimate.astype(dtype), truth.astype(dtype), mask


def endpoint_error(
    estimate: Float[ArrayLike, "*lead 2 ny nx"],
    truth: Float[ArrayLike, "*lead 2 ny nx"],
    mask: Bool[ArrayLike, "*lead ny nx"] | None = None,
) -> Float[Array, ""]:
    r"""The mean end-point error $\frac{1}{|S|}\sum_{p\in S}|\hat{\mathbf w}_p -
    \mathbf w_p|$ ([FBC23]'s `EPE`).

    **Arguments:**

    - `estimate`, `truth`: velocity fields `(*lead, 2, ny, nx)` of the same shape.
    - `mask`: optional boolean `(*lead, ny, nx)`, the pixels $S$ scored (default
      all).

    **Returns:** a scalar in velocity units, pooled over the leading axes (NaN when
    `mask` selects nothing).
    """
    return _endpoint_error(*_pair(estimate, truth, mask))


@eqx.filter_jit
def _endpoint_error(estimate, truth, mask):
    d = estimate - truth
    norm = jnp.sqrt(d[..., 0, :, :] ** 2 + d[..., 1, :, :] ** 2)
    return _masked_mean(norm, mask)


def angular_error(
    estimate: Float[ArrayLike, "*lead 2 ny nx"],
    truth: Float[ArrayLike, "*lead 2 ny nx"],
    mask: Bool[ArrayLike, "*lead ny nx"] | None = None,
    *,
    kind: str = "planar",
    degrees: bool = True,
) -> Float[Array, ""]:
    r"""The mean angular error between an estimated and a true velocity field.

    - `kind="planar"` ([FBC23]'s `Angular_error`): the angle between the 2-D vectors
      $\hat{\mathbf w}_p$ and $\mathbf w_p$, $\arccos(\mathrm{clip}(\langle
      \hat{\mathbf w}, \mathbf w\rangle / (|\hat{\mathbf w}|\,|\mathbf w|), -1, 1))$,
      averaged over the selected pixels where that ratio is finite (pixels where
      either vector is zero are left out of the mean). Independent of the units.
    - `kind="spatiotemporal"` ([BFB94]): the angle between $(\hat u, \hat v, 1)$ and
      $(u, v, 1)$, averaged over every selected pixel. **Unit-dependent**: the
      velocities must be in grid cells per frame (the third component is one frame
      per cell); convert physical velocities by $\Delta t/\Delta x$ first.

    **Arguments:**

    - `estimate`, `truth`: velocity fields `(*lead, 2, ny, nx)` of the same shape.
    - `mask`: optional boolean `(*lead, ny, nx)` of the pixels scored.
    - `kind`: `"planar"` (default) or `"spatiotemporal"`.
    - `degrees`: degrees (default) or radians.

    **Returns:** a scalar, pooled over the leading axes (NaN when no pixel is left).
    """
    check_choice("kind", kind, ANGULAR_KINDS)
    if not isinstance(degrees, bool):
        raise TypeError(f"`degrees` must be a bool; got {type(degrees).__name__}.")
    return _angular_error(*_pair(estimate, truth, mask), kind, degrees)


@eqx.filter_jit
def _angular_error(estimate, truth, mask, kind, degrees):
    u, v = truth[..., 0, :, :], truth[..., 1, :, :]
    uh, vh = estimate[..., 0, :, :], estimate[..., 1, :, :]
    dot = u * uh + v * vh
    if kind == "planar":
        denom = jnp.sqrt(u**2 + v**2) * jnp.sqrt(uh**2 + vh**2)
    else:
        dot = dot + 1
        denom = jnp.sqrt((u**2 + v**2 + 1) * (uh**2 + vh**2 + 1))
    positive = denom > 0
    ratio = dot / jnp.where(positive, denom, jnp.ones_like(denom))
    valid = positive & jnp.isfinite(ratio)
    if mask is not None:
        valid = valid & mask
    ratio = jnp.where(valid, ratio, jnp.ones_like(ratio))
    angle = jnp.arccos(jnp.clip(ratio, -1, 1))
    if degrees:
        angle = angle * (180 / math.pi)
    return _masked_mean(angle, valid)


def _checked_grid(velocity, grid: Grid | None, name: str):
    """`velocity` checked, and its grid (unit spacing, closed, when None)."""
    velocity = _as_velocity(name, velocity)
    ny, nx = velocity.shape[-2:]
    if ny < 3 or nx < 3:
        raise ValueError(
            f"`{name}` needs at least 3 x 3 cells (the norms use the interior cells "
            f"only); got {ny} x {nx}."
        )
    grid = grid_or_unit(grid, (ny, nx), f"`{name}`'s")
    return velocity, grid


def _interior_differences(velocity, grid: Grid):
    """`(D+_x u, D+_y u, D+_x v, D+_y v)` at the interior cells `[1:-1, 1:-1]`."""
    u, v = velocity[..., 0, :, :], velocity[..., 1, :, :]
    diffs = [diff_forward(f, grid, axis) for f in (u, v) for axis in ("x", "y")]
    return [d[..., 1:-1, 1:-1] for d in diffs]


@eqx.filter_jit
def _gradient_norm(velocity, grid: Grid):
    diffs = _interior_differences(velocity, grid)
    return jnp.sqrt(sum(jnp.sum(d**2) for d in diffs))


@eqx.filter_jit
def _divergence_norm(velocity, grid: Grid):
    dux, _, _, dvy = _interior_differences(velocity, grid)
    return jnp.sqrt(jnp.sum((dux + dvy) ** 2))


def velocity_gradient_norm(
    velocity: Float[ArrayLike, "*lead 2 ny nx"], grid: Grid | None = None
) -> Float[Array, ""]:
    r"""$\|\nabla\mathbf w\|$: the Euclidean norm of the forward differences of $u$
    and $v$ along both axes at the interior cells ([FBC23]'s `norm_gradw`).

    The stencil is `jaxda.grid.diff_forward` restricted to the cells $1 \le j \le
    n_y - 2$, $1 \le i \le n_x - 2$ (see the module docstring).

    **Arguments:** `velocity` `(*lead, 2, ny, nx)`; `grid`: None for grid units
    (spacing 1, the authors' convention), or a `jaxda.grid.Grid` of the same shape
    for physical units (its `dx`, `dy`).

    **Returns:** a scalar, pooled over the leading axes (one sum over all of them).
    """
    return _gradient_norm(*_checked_grid(velocity, grid, "velocity"))


def velocity_divergence_norm(
    velocity: Float[ArrayLike, "*lead 2 ny nx"], grid: Grid | None = None
) -> Float[Array, ""]:
    r"""$\|\nabla\cdot\mathbf w\| = (\sum (D^+_x u + D^+_y v)^2)^{1/2}$ over the
    interior cells ([FBC23]'s `norm_divw`).

    The forward differences are `jaxda.grid.diff_forward` at the cells $1 \le j \le
    n_y - 2$, $1 \le i \le n_x - 2$ (see the module docstring), not the C-grid
    `jaxda.grid.divergence` (backward differences of face velocities). Each
    difference is divided by its own axis's spacing (the authors' `norm_divw` passes
    its two spacings in swapped order, which matters only when $\Delta x \ne \Delta
    y$; they score in grid units, 1 and 1).

    **Arguments:** `velocity` `(*lead, 2, ny, nx)`; `grid`: None (grid units) or a
    `jaxda.grid.Grid` of the same shape (physical units).

    **Returns:** a scalar, pooled over the leading axes.
    """
    return _divergence_norm(*_checked_grid(velocity, grid, "velocity"))


def _difference(estimate, truth):
    estimate, truth, _ = _pair(estimate, truth, None)
    return estimate - truth


def gradient_error(
    estimate: Float[ArrayLike, "*lead 2 ny nx"],
    truth: Float[ArrayLike, "*lead 2 ny nx"],
    grid: Grid | None = None,
) -> Float[Array, ""]:
    r"""$\|\nabla(\hat{\mathbf w} - \mathbf w)\|$: `velocity_gradient_norm` of the
    error field (same stencil, same units).

    **Arguments:** `estimate`, `truth` `(*lead, 2, ny, nx)` of the same shape; `grid`
    None (grid units) or a `jaxda.grid.Grid`.

    **Returns:** a scalar, pooled over the leading axes.
    """
    return velocity_gradient_norm(_difference(estimate, truth), grid)


def divergence_error(
    estimate: Float[ArrayLike, "*lead 2 ny nx"],
    truth: Float[ArrayLike, "*lead 2 ny nx"],
    grid: Grid | None = None,
) -> Float[Array, ""]:
    r"""$\|\nabla\cdot(\hat{\mathbf w} - \mathbf w)\|$: `velocity_divergence_norm` of
    the error field.

    **Arguments:** `estimate`, `truth` `(*lead, 2, ny, nx)` of the same shape; `grid`
    None (grid units) or a `jaxda.grid.Grid`.

    **Returns:** a scalar, pooled over the leading axes.
    """
    return velocity_divergence_norm(_difference(estimate, truth), grid)


__all__ = [
    "angular_error",
    "divergence_error",
    "endpoint_error",
    "gradient_error",
    "velocity_divergence_norm",
    "velocity_gradient_norm",
]
