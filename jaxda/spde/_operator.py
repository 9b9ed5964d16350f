r"""The discretised spatial operator of the SPDE and the sparse linear algebra on it.

On a `jaxda.grid.Grid` (cell centres, spacing $\Delta x$, $\Delta y$; periodic, or
closed with zero-flux walls) the operator

$$\mathcal A x = \kappa^2 x + \mathbf m\cdot\nabla x - \nabla\cdot(\mathbf H \nabla x)$$

is discretised with a 9-point stencil:

- $-\partial_x(H_{xx}\partial_x x) - \partial_y(H_{yy}\partial_y x)$ in flux form,
  `jaxda.grid.weighted_laplacian` with $H_{xx}$, $H_{yy}$ averaged to the faces
  (symmetric negative semi-definite, zero flux through closed walls);
- the cross terms $-\partial_x(H_{xy}\partial_y x) - \partial_y(H_{xy}\partial_x x)$
  and the advection $m_x \partial_x x + m_y \partial_y x$ with centred differences
  $(f_{i+1} - f_{i-1})/(2h)$, a wall's ghost cell equal to the edge cell (zero normal
  derivative), so the stencil stays within one cell.

$\mathcal A$ is not symmetric (advection, varying $H_{xy}$), and needs not be: the
precision is built from Gram products $X^\top D X$, SPD whenever $X$ is invertible.
In the C-order flattening $i = j\,n_x + i_x$ of a field, the stencil reaches
$\pm(n_x + 1)$: a closed grid's $X^\top X$ is a band of width $2(n_x + 1)$, which
`band_gram` assembles from $4 n_x + 5$ products of $X$ with comb vectors (probing:
no dense matrix) for `jaxda.linalg.SymmetricBandMatrix`.
"""

import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from ..grid._differences import centres_to_faces, weighted_laplacian
from ..grid._grid import Grid


def _neighbour(f, ax: int, step: int, periodic: bool):
    """`f` at index + `step` along `ax` (a wall's ghost cell = the edge cell)."""
    if periodic:
        return jnp.roll(f, -step, axis=ax)
    n = f.shape[ax]
    return jnp.take(f, jnp.clip(jnp.arange(n) + step, 0, n - 1), axis=ax)


def centred_difference(f, grid: Grid, axis: str):
    r"""$(f_{i+1} - f_{i-1}) / (2h)$ along `axis`, edge cells with a ghost equal to
    themselves on a closed grid (one cell of stencil, first order at the wall)."""
    ax, h = (-1, grid.dx) if axis == "x" else (-2, grid.dy)
    p = grid.periodic
    return (_neighbour(f, ax, 1, p) - _neighbour(f, ax, -1, p)) / (2 * h)


def _on_grid(a, grid: Grid):
    return jnp.broadcast_to(a, (*a.shape[:-2], *grid.shape))


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
    hxx = _on_grid(diffusion[0], grid)
    hyy = _on_grid(diffusion[2], grid)
    faces = jnp.stack(
        [centres_to_faces(hxx, grid, "x"), centres_to_faces(hyy, grid, "y")]
    )
    out = kappa**2 * x - weighted_laplacian(x, grid, faces)
    hxy = diffusion[1]
    cross = centred_difference(
        hxy * centred_difference(x, grid, "y"), grid, "x"
    ) + centred_difference(hxy * centred_difference(x, grid, "x"), grid, "y")
    out = out - cross
    if include_advection:
        out = out + advection[0] * centred_difference(x, grid, "x")
        out = out + advection[1] * centred_difference(x, grid, "y")
    return out


def step_operator(x, grid: Grid, dt, kappa, advection, diffusion):
    r"""$B x = (I + \Delta t\,\mathcal A)\,x$, the implicit-Euler step matrix
    ($x_k = B^{-1}(x_{k-1} + \tau\sqrt{\Delta t}\, z_k)$)."""
    return x + dt * spatial_operator(x, grid, kappa, advection, diffusion)


def bandwidth(grid: Grid) -> int:
    """The half-bandwidth $2(n_x + 1)$ of $X^\\top X$, $X$ 9-point (closed grid)."""
    return 2 * (grid.nx + 1)


def band_gram(apply, grid: Grid, dtype, weight=None) -> Float[Array, "b1 d"]:
    r"""The lower band (LAPACK storage, `band[k, i]` $= N_{i+k, i}$) of $N = X^\top W
    X$ for a 9-point stencil operator $X$ (`apply`, fields `(ny, nx)` to fields) on a
    closed grid, $W = \mathrm{diag}(w)$ (`weight` `(ny, nx)`, default 1).

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
    b = bandwidth(grid)
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


def symbol(apply, grid: Grid, dtype) -> Array:
    r"""The eigenvalues of a convolution operator on a periodic grid (constant
    coefficients): the 2-D DFT of its response to a unit impulse at cell 0, so that
    $X = F^{-1} \mathrm{diag}(\hat c) F$."""
    delta = jnp.zeros(grid.shape, dtype).at[0, 0].set(1.0)
    return jnp.fft.fft2(apply(delta))


def fft_solve(hat, r):
    """$X^{-1} r$ for a periodic convolution $X$ with eigenvalues `hat`."""
    return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(r) / hat)).astype(r.dtype)
