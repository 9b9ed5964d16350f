r"""Finite differences on a `Grid`: the linear operators models, covariances and
penalties share.

Every operator acts on the last two axes of its input, `(..., ny, nx)` (leading axes
are batch, channel or time axes), and is a linear map written in plain `jax.numpy`, so
`jax.jvp`, `jax.vjp` and `jax.linear_transpose` apply. Axis `"x"` is the last axis
(index `i`), axis `"y"` the one before it (index `j`).

**Staggering.** A *centre* field lives at the cell centres $x_i$. A *face* field along
`x` lives at the east faces $x_{i+1/2}$: entry `i` is the face between cell `i` and
cell `i + 1` (the layout of the normal velocity on an Arakawa C-grid). On a
`"periodic"` grid face `n - 1` lies between cell `n - 1` and cell 0. On a `"closed"`
grid face `n - 1` is the east wall, where the normal flux vanishes: operators that
produce face fields write 0 there and operators that read face fields ignore it (the
west wall face, not stored, is 0 too). The same holds along `y` with north faces.

With $h$ the spacing along the axis, the operators are

- `diff_forward` (centres to faces): $(D^+ f)_{i+1/2} = (f_{i+1} - f_i)/h$, 0 at a wall;
- `diff_backward` (faces to centres): $(D^- g)_i = (g_{i+1/2} - g_{i-1/2})/h$, wall
  faces taken as 0;
- `diff_centred` (centres to centres): $(f_{i+1} - f_{i-1})/(2h)$; at a wall the
  one-sided second-order stencil $\mp(3 f_0 - 4 f_1 + f_2)/(2h)$;
- `centres_to_faces`: $(f_i + f_{i+1})/2$, 0 at a wall; `faces_to_centres`:
  $(g_{i-1/2} + g_{i+1/2})/2$, wall faces taken as 0;
- `gradient`, `divergence`, `laplacian` (5-point), `weighted_laplacian`
  ($\nabla\cdot(\kappa\nabla f)$ with $\kappa$ on the faces).

**Adjoint relations** (exact, for the Euclidean inner product of the stored arrays,
both boundary types): $D^- = -(D^+)^\top$,
`faces_to_centres` = `centres_to_faces`$^\top$,
`divergence` $= -$`gradient`$^\top$ for the forward / backward pair, and
`laplacian` $= D^-_x D^+_x + D^-_y D^+_y = -(D^+)^\top D^+$ is symmetric negative
semi-definite, with zero-flux (Neumann) walls on a closed grid; `weighted_laplacian`
$= -(D^+)^\top \mathrm{diag}(\kappa) D^+$ likewise for $\kappa \ge 0$. Summed over the
cells, $D^- g$ vanishes (a flux divergence conserves mass exactly). On a periodic grid
`diff_centred` is antisymmetric ($= -$ its transpose); at closed walls its one-sided
stencils break the antisymmetry (use the forward / backward pair where an exact
adjoint matters).

**Accuracy.** `diff_centred` is second order everywhere for smooth fields. The
forward and backward differences are second order at the faces (resp. centres) they
produce; `laplacian` is second order for smooth periodic fields and for fields with
zero normal derivative at closed walls.
"""

import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_choice
from ._grid import Grid


AXES = ("x", "y")


def _check(grid, f, name: str, *, vector: bool = False) -> None:
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    shape = tuple(jnp.shape(f))
    want = (2, *grid.shape) if vector else grid.shape
    if len(shape) < len(want) or shape[-len(want) :] != want:
        dims = ", ".join(map(str, want))
        raise ValueError(
            f"`{name}` must have shape (..., {dims}) on this {grid.ny} x {grid.nx} "
            f"grid; got {shape}."
        )


def _axis(grid: Grid, axis: str) -> tuple[int, float]:
    check_choice("axis", axis, AXES)
    return (-1, grid.dx) if axis == "x" else (-2, grid.dy)


def _take(f, ax: int, start: int, stop: int | None):
    index = [slice(None)] * f.ndim
    index[ax] = slice(start, stop)
    return f[tuple(index)]


def _next(f, ax: int, periodic: bool):
    """`f[i + 1]`; beyond a wall the edge value (a zero-gradient ghost cell)."""
    if periodic:
        return jnp.roll(f, -1, axis=ax)
    return jnp.concatenate([_take(f, ax, 1, None), _take(f, ax, -1, None)], axis=ax)


def _prev(f, ax: int, periodic: bool):
    """`f[i - 1]`; beyond a wall the edge value (a zero-gradient ghost cell)."""
    if periodic:
        return jnp.roll(f, 1, axis=ax)
    return jnp.concatenate([_take(f, ax, 0, 1), _take(f, ax, 0, -1)], axis=ax)


def _zero_wall(g, ax: int):
    """The face field `g` with its wall face (the last entry) set to 0."""
    last = _take(g, ax, -1, None)
    return jnp.concatenate([_take(g, ax, 0, -1), jnp.zeros_like(last)], axis=ax)


def _prev_face(g, ax: int, periodic: bool):
    """`g[i - 1/2]` at cell `i` from east-face values: the west wall face is 0."""
    if periodic:
        return jnp.roll(g, 1, axis=ax)
    first = _take(g, ax, 0, 1)
    return jnp.concatenate([jnp.zeros_like(first), _take(g, ax, 0, -1)], axis=ax)


def diff_forward(
    f: Float[Array, "*lead ny nx"], grid: Grid, axis: str = "x"
) -> Float[Array, "*lead ny nx"]:
    r"""Forward difference $(f_{i+1} - f_i)/h$ along `axis`: centres to faces.

    **Arguments:** `f` a centre field `(..., ny, nx)`; `grid`; `axis` `"x"` or `"y"`.

    **Returns:** the face field $D^+ f$ (0 at the wall face of a closed grid).
    """
    _check(grid, f, "f")
    ax, h = _axis(grid, axis)
    return (_next(f, ax, grid.periodic) - f) / h


def diff_backward(
    g: Float[Array, "*lead ny nx"], grid: Grid, axis: str = "x"
) -> Float[Array, "*lead ny nx"]:
    r"""Backward difference $(g_{i+1/2} - g_{i-1/2})/h$ along `axis`: faces to centres.

    `g` is a face field (entry `i` at face $i + 1/2$); on a closed grid the wall
    faces count as 0 (the stored last entry is ignored). $D^- = -(D^+)^\top$ exactly,
    and $\sum_i (D^- g)_i = 0$ (a flux divergence conserves the total).

    **Arguments:** `g` `(..., ny, nx)`; `grid`; `axis` `"x"` or `"y"`.

    **Returns:** the centre field $D^- g$.
    """
    _check(grid, g, "g")
    ax, h = _axis(grid, axis)
    if not grid.periodic:
        g = _zero_wall(g, ax)
    return (g - _prev_face(g, ax, grid.periodic)) / h


def diff_centred(
    f: Float[Array, "*lead ny nx"], grid: Grid, axis: str = "x"
) -> Float[Array, "*lead ny nx"]:
    r"""Centred difference $(f_{i+1} - f_{i-1}) / (2h)$ along `axis` (centres).

    Second order. On a closed grid the two edge cells use the one-sided second-order
    stencils $(-3 f_0 + 4 f_1 - f_2)/(2h)$ and $(3 f_{n-1} - 4 f_{n-2} + f_{n-3})/(2h)$
    (so a closed axis needs at least 3 cells). Antisymmetric on a periodic grid.

    **Arguments:** `f` `(..., ny, nx)`; `grid`; `axis` `"x"` or `"y"`.

    **Returns:** the centre field of the derivative.
    """
    _check(grid, f, "f")
    ax, h = _axis(grid, axis)
    if grid.periodic:
        return (jnp.roll(f, -1, axis=ax) - jnp.roll(f, 1, axis=ax)) / (2 * h)
    n = f.shape[ax]
    if n < 3:
        raise ValueError(
            f"`diff_centred` along {axis!r} on a closed grid needs at least 3 cells; "
            f"got {n}."
        )
    f0, f1, f2 = (_take(f, ax, k, k + 1) for k in range(3))
    g0, g1, g2 = (_take(f, ax, n - 1 - k, n - k) for k in range(3))
    first = -3 * f0 + 4 * f1 - f2
    inner = _take(f, ax, 2, None) - _take(f, ax, 0, -2)
    last = 3 * g0 - 4 * g1 + g2
    return jnp.concatenate([first, inner, last], axis=ax) / (2 * h)


def centres_to_faces(
    f: Float[Array, "*lead ny nx"], grid: Grid, axis: str = "x"
) -> Float[Array, "*lead ny nx"]:
    r"""Average to the faces, $(f_i + f_{i+1})/2$ along `axis` (0 at a wall face).

    The transpose of `faces_to_centres`. Used for face velocities and face depths.
    """
    _check(grid, f, "f")
    ax, _ = _axis(grid, axis)
    out = (f + _next(f, ax, grid.periodic)) / 2
    return out if grid.periodic else _zero_wall(out, ax)


def faces_to_centres(
    g: Float[Array, "*lead ny nx"], grid: Grid, axis: str = "x"
) -> Float[Array, "*lead ny nx"]:
    r"""Average to the centres, $(g_{i-1/2} + g_{i+1/2})/2$ along `axis`.

    Wall faces count as 0 (the stored last entry is ignored on a closed grid). The
    transpose of `centres_to_faces`.
    """
    _check(grid, g, "g")
    ax, _ = _axis(grid, axis)
    if not grid.periodic:
        g = _zero_wall(g, ax)
    return (g + _prev_face(g, ax, grid.periodic)) / 2


GRADIENT_SCHEMES = ("forward", "centred")
DIVERGENCE_SCHEMES = ("backward", "centred")


def gradient(
    f: Float[Array, "*lead ny nx"], grid: Grid, scheme: str = "forward"
) -> Float[Array, "*lead 2 ny nx"]:
    r"""$\nabla f = (\partial_x f, \partial_y f)$, stacked on a new axis `-3`.

    **Arguments:**

    - `f`: a centre field `(..., ny, nx)`.
    - `grid`: the `Grid`.
    - `scheme`: `"forward"` (default): $(D^+_x f, D^+_y f)$ on the east / north faces
      (the C-grid layout, 0 at closed walls); `"centred"`: `diff_centred` at the
      centres.

    **Returns:** `(..., 2, ny, nx)`, component 0 along x, 1 along y. With
    `scheme="forward"`, $\|\nabla f\|^2 = -\langle f, \Delta f\rangle$ (`laplacian`) and
    `gradient` $= -$`divergence`$^\top$.
    """
    _check(grid, f, "f")
    check_choice("scheme", scheme, GRADIENT_SCHEMES)
    diff = diff_forward if scheme == "forward" else diff_centred
    return jnp.stack([diff(f, grid, "x"), diff(f, grid, "y")], axis=-3)


def divergence(
    w: Float[Array, "*lead 2 ny nx"], grid: Grid, scheme: str = "backward"
) -> Float[Array, "*lead ny nx"]:
    r"""The divergence $\nabla\cdot w = \partial_x w_0 + \partial_y w_1$ of `w`.

    **Arguments:**

    - `w`: components `w[..., 0, :, :]` along x and `w[..., 1, :, :]` along y.
    - `grid`: the `Grid`.
    - `scheme`: `"backward"` (default): `w` on the east / north faces (C-grid layout),
      $D^-_x w_0 + D^-_y w_1$ at the centres, the exact negative transpose of
      `gradient(scheme="forward")`, summing to zero over the domain; `"centred"`: `w`
      at the centres, `diff_centred` of each component.

    **Returns:** the centre field `(..., ny, nx)`.
    """
    _check(grid, w, "w", vector=True)
    check_choice("scheme", scheme, DIVERGENCE_SCHEMES)
    diff = diff_backward if scheme == "backward" else diff_centred
    return diff(w[..., 0, :, :], grid, "x") + diff(w[..., 1, :, :], grid, "y")


def laplacian(
    f: Float[Array, "*lead ny nx"], grid: Grid
) -> Float[Array, "*lead ny nx"]:
    r"""The 5-point Laplacian $\Delta f = D^-_x D^+_x f + D^-_y D^+_y f$.

    $$(\Delta f)_{ji} = \frac{f_{j,i+1} - 2 f_{ji} + f_{j,i-1}}{\Delta x^2}
    + \frac{f_{j+1,i} - 2 f_{ji} + f_{j-1,i}}{\Delta y^2},$$

    with wrap-around on a periodic grid and zero-flux (Neumann) walls on a closed one
    (a ghost cell equal to the edge cell). Symmetric negative semi-definite,
    $\Delta = -(D^+)^\top D^+$; its null space is the constant fields.
    """
    _check(grid, f, "f")
    out = 0.0
    for axis in AXES:
        ax, h = _axis(grid, axis)
        nxt, prv = _next(f, ax, grid.periodic), _prev(f, ax, grid.periodic)
        out = out + (nxt - 2 * f + prv) / h**2
    return out


def weighted_laplacian(
    f: Float[Array, "*lead ny nx"],
    grid: Grid,
    kappa: Float[Array, "*#lead 2 ny nx"] | float,
) -> Float[Array, "*lead ny nx"]:
    r"""The flux-form diffusion operator $\nabla\cdot(\kappa \nabla f)$, 5-point.

    $$D^-_x(\kappa_x D^+_x f) + D^-_y(\kappa_y D^+_y f)
    = -(D^+)^\top \mathrm{diag}(\kappa)\, D^+ f,$$

    symmetric, and negative semi-definite when $\kappa \ge 0$; zero-flux walls on a
    closed grid. `kappa = 1` gives `laplacian`.

    **Arguments:** `f` a centre field `(..., ny, nx)`; `grid`; `kappa` a scalar, or
    face fields `(..., 2, ny, nx)`: `kappa[..., 0]` on the east faces, `kappa[..., 1]`
    on the north faces (a diagonal diffusion tensor; spatially varying length scales).

    **Returns:** the centre field `(..., ny, nx)`.
    """
    _check(grid, f, "f")
    if jnp.ndim(kappa) == 0:
        kappa = jnp.stack([jnp.asarray(kappa)] * 2)[:, None, None]
    else:
        _check(grid, kappa, "kappa", vector=True)
    flux_x = kappa[..., 0, :, :] * diff_forward(f, grid, "x")
    flux_y = kappa[..., 1, :, :] * diff_forward(f, grid, "y")
    return diff_backward(flux_x, grid, "x") + diff_backward(flux_y, grid, "y")
