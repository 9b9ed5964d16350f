r"""The discretised spatial operator of the SPDE and the sparse linear algebra on it.

On a `jaxda.grid.Grid` (cell centres, spacing $\Delta x$, $\Delta y$; periodic, or
closed with zero-flux walls) the operator

$$\mathcal A x = \kappa^2 x + \mathbf m\cdot\nabla x - \nabla\cdot(\mathbf H \nabla x)$$

is discretised with a 9-point stencil:

- $-\partial_x(H_{xx}\partial_x x) - \partial_y(H_{yy}\partial_y x)$ in flux form
  with $H_{xx}$, $H_{yy}$ averaged to the faces (the stencil of
  `jaxda.grid.weighted_laplacian`: symmetric positive semi-definite, zero flux through
  closed walls);
- the cross terms $-\partial_x(H_{xy}\partial_y x) - \partial_y(H_{xy}\partial_x x)$
  and the advection $m_x \partial_x x + m_y \partial_y x$ with centred differences
  $(f_{i+1} - f_{i-1})/(2h)$, a wall's ghost cell equal to the edge cell (zero normal
  derivative), so the stencil stays within one cell.

$\mathcal A$ is not symmetric (advection, varying $H_{xy}$), and needs not be: the
precision is built from Gram products $X^\top D X$, SPD whenever $X$ is invertible.
In the C-order flattening $i = j\,n_x + i_x$ of a field, the stencil reaches
$\pm(n_x + 1)$: a closed grid's $X^\top X$ is a band of width $2(n_x + 1)$, which
`band_gram` assembles from $4 n_x + 5$ products of $X$ with comb vectors (probing:
no dense matrix) for `jaxda.linalg.SymmetricBandMatrix`; $X$ itself is a band of
half-width $n_x + 1$, which `operator_band` assembles from $2 n_x + 3$ products for
the banded LU of the sampler (`jaxda.linalg._band_kernels.band_lu`).
"""

import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from ..grid._grid import Grid


def _pad(f, grid: Grid):
    """`f` with one ghost cell on each side of its last two axes: wrapped on a
    periodic grid, equal to the edge cell on a closed one (zero normal derivative)."""
    mode = "wrap" if grid.periodic else "edge"
    width = [(0, 0)] * (f.ndim - 2) + [(1, 1), (1, 1)]
    return jnp.pad(f, width, mode=mode)


def _centred(fp, grid: Grid):
    """Centred differences `(d/dx, d/dy)` at the centres from a padded field."""
    ddx = (fp[..., 1:-1, 2:] - fp[..., 1:-1, :-2]) / (2 * grid.dx)
    ddy = (fp[..., 2:, 1:-1] - fp[..., :-2, 1:-1]) / (2 * grid.dy)
    return ddx, ddy


def centred_difference(f, grid: Grid, axis: str):
    r"""$(f_{i+1} - f_{i-1}) / (2h)$ along `axis`, edge cells with a ghost equal to
    themselves on a closed grid (one cell of stencil, first order at the wall)."""
    ddx, ddy = _centred(_pad(f, grid), grid)
    return ddx if axis == "x" else ddy


def spatial_operator(
    x: Float[Array, "*lead ny nx"],
    grid: Grid,
    kappa,
    advection,
    diffusion,
    *,
    include_advection: bool = True,
) -> Float[Array, "*lead ny nx"]:
    r"""$\mathcal A x = \kappa^2 x + \mathbf m\cdot\nabla x - \nabla\cdot(\mathbf H
    \nabla x)$ for fields `x` `(..., ny, nx)` (the module docstring gives the stencil).

    `kappa` `(1|ny, 1|nx)`, `advection` `(2, 1|ny, 1|nx)`, `diffusion`
    `(3, 1|ny, 1|nx)` ($H_{xx}, H_{xy}, H_{yy}$): the fields at one time.
    `include_advection=False` drops $\mathbf m\cdot\nabla$ (the initial state's
    spatial operator).
    """
    xp = _pad(x, grid)
    centre = xp[..., 1:-1, 1:-1]
    hxx = _pad(jnp.broadcast_to(diffusion[0], grid.shape), grid)
    hyy = _pad(jnp.broadcast_to(diffusion[2], grid.shape), grid)
    # flux form with face-averaged H: a wall's ghost difference is 0 (no flux)
    east = (hxx[1:-1, 1:-1] + hxx[1:-1, 2:]) / 2 * (xp[..., 1:-1, 2:] - centre)
    west = (hxx[1:-1, 1:-1] + hxx[1:-1, :-2]) / 2 * (centre - xp[..., 1:-1, :-2])
    north = (hyy[1:-1, 1:-1] + hyy[2:, 1:-1]) / 2 * (xp[..., 2:, 1:-1] - centre)
    south = (hyy[1:-1, 1:-1] + hyy[:-2, 1:-1]) / 2 * (centre - xp[..., :-2, 1:-1])
    out = kappa**2 * x - (east - west) / grid.dx**2 - (north - south) / grid.dy**2
    ddx, ddy = _centred(xp, grid)
    hxy = diffusion[1]
    cross_x, _ = _centred(_pad(hxy * ddy, grid), grid)
    _, cross_y = _centred(_pad(hxy * ddx, grid), grid)
    out = out - cross_x - cross_y
    if include_advection:
        out = out + advection[0] * ddx + advection[1] * ddy
    return out


def step_operator(x, grid: Grid, dt, kappa, advection, diffusion):
    r"""$B x = (I + \Delta t\,\mathcal A)\,x$, the implicit-Euler step matrix
    ($x_k = B^{-1}(x_{k-1} + \tau\sqrt{\Delta t}\, z_k)$)."""
    return x + dt * spatial_operator(x, grid, kappa, advection, diffusion)


OFFSETS = tuple((dj, di) for dj in (-1, 0, 1) for di in (-1, 0, 1))
"""The 9 stencil offsets `(dy, dx)` in cells, in the order of `stencil`'s axis 0."""


def stencil(
    grid: Grid, kappa, advection, diffusion, *, dt=None, include_advection=True
) -> Float[Array, "9 ny nx"]:
    r"""The coefficients of $\mathcal A$ (or of $B = I + \Delta t\,\mathcal A$ when
    `dt` is given) on the 9 neighbours of each cell (`OFFSETS`), acting on the field
    padded with ghost cells (`apply_stencil`): the same operator as
    `spatial_operator`, in a form that compiles to 9 products.

    With $h_e = (H_{xx,C} + H_{xx,E})/2$ etc. on the faces and $s = 4\Delta x
    \Delta y$: $c_C = \kappa^2 + (h_e + h_w)/\Delta x^2 + (h_n + h_s)/\Delta y^2$,
    $c_{E,W} = -h_{e,w}/\Delta x^2 \pm m_x/(2\Delta x)$,
    $c_{N,S} = -h_{n,s}/\Delta y^2 \pm m_y/(2\Delta y)$,
    $c_{NE} = -(H_{xy,E} + H_{xy,N})/s$, $c_{SE} = (H_{xy,E} + H_{xy,S})/s$,
    $c_{NW} = (H_{xy,W} + H_{xy,N})/s$, $c_{SW} = -(H_{xy,W} + H_{xy,S})/s$. A closed
    wall's ghost equals the edge cell, so the flux through it vanishes.
    """
    ny, nx = grid.shape
    dx, dy = grid.dx, grid.dy

    def padded(a):
        return _pad(jnp.broadcast_to(a, grid.shape), grid)

    def at(a, dj, di):
        return a[1 + dj : 1 + dj + ny, 1 + di : 1 + di + nx]

    hxx, hxy, hyy = padded(diffusion[0]), padded(diffusion[1]), padded(diffusion[2])
    he = (at(hxx, 0, 0) + at(hxx, 0, 1)) / 2
    hw = (at(hxx, 0, 0) + at(hxx, 0, -1)) / 2
    hn = (at(hyy, 0, 0) + at(hyy, 1, 0)) / 2
    hs = (at(hyy, 0, 0) + at(hyy, -1, 0)) / 2
    if include_advection:
        mx = jnp.broadcast_to(advection[0], grid.shape) / (2 * dx)
        my = jnp.broadcast_to(advection[1], grid.shape) / (2 * dy)
    else:
        mx = my = jnp.zeros(grid.shape, hxx.dtype)
    s = 4 * dx * dy
    c = {
        (0, 0): jnp.broadcast_to(kappa**2, grid.shape)
        + (he + hw) / dx**2
        + (hn + hs) / dy**2,
        (0, 1): -he / dx**2 + mx,
        (0, -1): -hw / dx**2 - mx,
        (1, 0): -hn / dy**2 + my,
        (-1, 0): -hs / dy**2 - my,
        (1, 1): -(at(hxy, 0, 1) + at(hxy, 1, 0)) / s,
        (-1, 1): (at(hxy, 0, 1) + at(hxy, -1, 0)) / s,
        (1, -1): (at(hxy, 0, -1) + at(hxy, 1, 0)) / s,
        (-1, -1): -(at(hxy, 0, -1) + at(hxy, -1, 0)) / s,
    }
    coefficients = jnp.stack([c[o] for o in OFFSETS])
    if dt is not None:
        coefficients = dt * coefficients
        coefficients = coefficients.at[OFFSETS.index((0, 0))].add(1.0)
    return coefficients


def apply_stencil(
    coefficients: Float[Array, "9 ny nx"], x: Float[Array, "*lead ny nx"], grid: Grid
) -> Float[Array, "*lead ny nx"]:
    """$X x$ for the 9-point operator of `coefficients` (see `stencil`)."""
    ny, nx = grid.shape
    xp = _pad(x, grid)
    out = 0.0
    for o, (dj, di) in enumerate(OFFSETS):
        out = (
            out + coefficients[o] * xp[..., 1 + dj : 1 + dj + ny, 1 + di : 1 + di + nx]
        )
    return out


def bandwidth(grid: Grid, radius: int = 1) -> int:
    """The half-bandwidth $2r(n_x + 1)$ of $X^\\top X$ for an operator $X$ of stencil
    radius $r$ cells (closed grid)."""
    return 2 * radius * (grid.nx + 1)


def band_gram(
    apply, grid: Grid, dtype, radius: int = 1, weight=None
) -> Float[Array, "b1 d"]:
    r"""The lower band (LAPACK storage, `band[k, i]` $= N_{i+k, i}$) of $N = X^\top W
    X$ for an operator $X$ of stencil radius `radius` (`apply`, fields `(ny, nx)` to
    fields) on a closed grid, $W = \mathrm{diag}(w)$ (`weight` `(ny, nx)`, default
    1).

    Probing: with $w_b = 2b + 1$ colours ($b$ = `bandwidth(grid)`), the comb
    $p_c = \sum_{j \equiv c\ (w_b)} e_j$ gives $(N p_c)_i = N_{i, j}$ for the one $j
    \equiv c$ within the band of row $i$, so $w_b$ products $N p_c$ hold the whole
    band. Linear in the stencil's coefficients: derivatives flow to them.
    """
    if grid.periodic:
        raise ValueError(
            "a periodic grid's operator is not banded (wrap-around entries); use "
            "the 'fft' (constant fields) or 'dense' / 'slq' log-determinants."
        )
    b = bandwidth(grid, radius)
    d = grid.size
    w = min(2 * b + 1, d)
    idx = jnp.arange(d)
    combs = (idx[None, :] % w == jnp.arange(w)[:, None]).astype(dtype)
    combs = combs.reshape(w, *grid.shape)
    apply_t = jax.linear_transpose(apply, jnp.zeros(grid.shape, dtype))

    def gram(p):
        v = apply(p)
        if weight is not None:
            v = weight * v
        return apply_t(v)[0].reshape(-1)

    products = jax.vmap(gram)(combs)  # (w, d): products[c, r] = N[r, j_c(r)]
    k = jnp.arange(b + 1)[:, None]
    rows = jnp.minimum(idx[None, :] + k, d - 1)
    band = products[idx[None, :] % w, rows]
    return jnp.where(idx[None, :] + k < d, band, 0.0)


def operator_bandwidth(grid: Grid, radius: int = 1) -> int:
    """The half-bandwidth $r(n_x + 1)$ of an operator $X$ of stencil radius $r$
    cells (closed grid, C-order flattening)."""
    return radius * (grid.nx + 1)


def operator_band(apply, grid: Grid, dtype, radius: int = 1) -> Float[Array, "b2 d"]:
    r"""The general band of $X$ itself (`(2b + 1, d)`, `band[b + k, j]` $= X_{j+k,
    j}$, `band[b - k, j]` $= X_{j, j+k}$, $b$ = `operator_bandwidth(grid, radius)`;
    the storage of `jaxda.linalg._band_kernels.band_lu`) for an operator of stencil
    radius `radius` (`apply`, fields `(ny, nx)` to fields) on a closed grid.

    Probing as in `band_gram`, without the transpose: with $w = 2b + 1$ colours, the
    comb $p_c = \sum_{j \equiv c\ (w)} e_j$ gives $(X p_c)_i = X_{i, j}$ for the
    one $j \equiv c$ within the band of row $i$, so $w$ products hold the band.
    Linear in the stencil's coefficients: derivatives flow to them.
    """
    if grid.periodic:
        raise ValueError(
            "a periodic grid's operator is not banded (wrap-around entries); use "
            "the 'fft' or 'iterative' solvers."
        )
    b = operator_bandwidth(grid, radius)
    d = grid.size
    w = min(2 * b + 1, d)
    idx = jnp.arange(d)
    combs = (idx[None, :] % w == jnp.arange(w)[:, None]).astype(dtype)
    combs = combs.reshape(w, *grid.shape)
    products = jax.vmap(lambda p: apply(p).reshape(-1))(combs)
    # products[c, i] = X[i, j] for the j = c (mod w) in row i's band
    k = jnp.arange(b + 1)[:, None]
    below = jnp.minimum(idx[None, :] + k, d - 1)
    lower = products[idx[None, :] % w, below]  # X[j + k, j]
    upper = products[below % w, idx[None, :]]  # X[j, j + k]
    inside = idx[None, :] + k < d
    lower, upper = jnp.where(inside, lower, 0.0), jnp.where(inside, upper, 0.0)
    return jnp.concatenate([upper[::-1], lower[1:]])


def symbol(apply, grid: Grid, dtype) -> Array:
    r"""The eigenvalues of a convolution operator on a periodic grid (constant
    coefficients): the 2-D DFT of its response to a unit impulse at cell 0, so that
    $X = F^{-1} \mathrm{diag}(\hat c) F$."""
    delta = jnp.zeros(grid.shape, dtype).at[0, 0].set(1.0)
    return jnp.fft.fft2(apply(delta))


def fft_solve(hat, r):
    """$X^{-1} r$ for a periodic convolution $X$ with eigenvalues `hat`."""
    return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(r) / hat)).astype(r.dtype)
