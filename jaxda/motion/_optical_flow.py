r"""Optical-flow baselines: Horn-Schunck [HS81] and Lucas-Kanade [LK81].

Both estimate one stationary velocity $\mathbf w = (u, v)$ from a sequence of images
$I_0, \dots, I_{T-1}$ observed at times $t_0 < \dots < t_{T-1}$, through the
linearised brightness-constancy constraint of each consecutive pair $(k, k+1)$,
$$I_x u + I_y v + I_t = 0, \qquad I_x = \partial_x \bar I_k,\ I_y = \partial_y
\bar I_k,\ I_t = \frac{I_{k+1} - I_k}{t_{k+1} - t_k},\ \bar I_k = \tfrac12(I_k +
I_{k+1}),$$
with $\partial_x, \partial_y$ the centred differences of `jaxda.grid.diff_centred`
(one-sided second-order stencils at closed walls). A pair's constraint is used at a
pixel only where both frames are observed at the pixel and at every other pixel of
its derivative stencils (the $\Omega_k$ below). Velocities are in grid units per time
unit without a grid (spacing 1, closed walls), and in the grid's length units per
time unit with a `jaxda.grid.Grid`.

**Horn-Schunck** minimises the quadratic energy
$$E(\mathbf w) = \sum_k \sum_{p \in \Omega_k} (I_x u + I_y v + I_t)_p^2 +
\alpha \big(\|D^+ u\|^2 + \|D^+ v\|^2\big),$$
with $D^+$ the forward-difference gradient of `jaxda.grid.gradient` on the grid's
boundary (so $\|D^+u\|^2 = -\langle u, \Delta u\rangle$, `jaxda.grid.laplacian`).
Its normal equations
$$\Big(\sum_k m_k \nabla \bar I_k \nabla \bar I_k^\top\Big)_p \mathbf w_p - \alpha
(\Delta \mathbf w)_p = -\Big(\sum_k m_k I_{t,k} \nabla \bar I_k\Big)_p$$
($m_k$ the indicator of $\Omega_k$) are symmetric positive semi-definite (definite
unless every observed image gradient is parallel): they are solved matrix-free by
conjugate gradients (`lineax.CG`) preconditioned by the inverse of each pixel's 2 x 2
diagonal block, to a tolerance, rather than by the Jacobi-type sweep of the 1981
paper (which converges to the same minimiser, slowly).

**Warping** (`warps > 1`): the linearisation holds for displacements of a fraction of
a pixel per frame (for the pattern's shortest wavelengths). Each further pass warps
both frames of every pair half-way by the current estimate $\mathbf w^0$,
$\tilde I_k(\mathbf x) = I_k(\mathbf x - \tfrac12\mathbf w^0 \Delta t_k)$ and
$\tilde I_{k+1}(\mathbf x) = I_{k+1}(\mathbf x + \tfrac12\mathbf w^0 \Delta t_k)$
(bilinear interpolation, `jax.scipy.ndimage.map_coordinates`; periodic wrap, or
unobserved beyond a closed wall), and solves the same energy for $\mathbf w$ with the
constraint linearised around $\mathbf w^0$: $I_t = (\tilde I_{k+1} - \tilde
I_k)/\Delta t_k - \nabla \bar I_k \cdot \mathbf w^0$, the derivatives taken on the
mean of the two warped frames (a Gauss-Newton step on the warped data term). The two
opposite half-displacements have the same fractional parts, so bilinear
interpolation smooths both frames alike and its error cancels in $I_t$; warping the
later frame alone leaves that smoothing in $I_t$, a bias larger than the one the
warps remove for sub-pixel motions.

**Lucas-Kanade** solves at every pixel the Gaussian-weighted least-squares problem of
the same constraints, $\min_{\mathbf w} \sum_k \sum_q G_\sigma(p - q)\, m_{k,q}
(I_x u + I_y v + I_t)_q^2$: $\mathbf w_p = -J_p^{-1} b_p$ with the structure tensor
$J_p = \sum_k G_\sigma * (m_k \nabla\bar I_k\nabla\bar I_k^\top)$ and $b_p = \sum_k
G_\sigma * (m_k I_{t,k}\nabla\bar I_k)$. Where the smaller eigenvalue of $J_p$ is below
`min_eigenvalue` (a flat patch, an edge: the aperture problem) the pixel is
unreliable: its velocity is set to 0 and `reliable` is `False` there.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.scipy.ndimage import map_coordinates

from .._custom_types import Array, ArrayLike, Bool, Float, Int
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import check_int, check_positive, check_real, is_concrete
from ..grid._differences import diff_centred, laplacian
from ..grid._grid import Grid, grid_or_unit


class OpticalFlow(eqx.Module):
    """A velocity field estimated from an image sequence.

    **Fields:**

    - `velocity`: `(2, ny, nx)`, channel 0 = u along x, 1 = v along y (grid units per
      time unit, or physical units with a grid).
    - `result`: a `jaxda.RESULTS` item (`max_steps_reached` when Horn-Schunck's
      conjugate gradients stopped before the tolerance).
    - `steps`: conjugate-gradient iterations, over every warp (0 for Lucas-Kanade).
    - `reliable`: Lucas-Kanade's boolean `(ny, nx)` mask of the pixels whose structure
      tensor is well conditioned (velocity 0 elsewhere); None for Horn-Schunck.
    """

    velocity: Float[Array, "2 ny nx"]
    result: RESULTS
    steps: Int[Array, ""]
    reliable: Bool[Array, "ny nx"] | None = None


# ----------------------------------------------------------------------------------
# Input checks and the data term
# ----------------------------------------------------------------------------------


def _as_array(name: str, value) -> Array:
    try:
        return jnp.asarray(value)
    except TypeError:
        raise TypeError(
            f"`{name}` must be an array of real numbers; got {type(value).__name__}."
        ) from None


def _check_inputs(images, times, mask, grid):
    """Checked `(images, times, mask, grid)` with defaults filled in."""
    images = _as_array("images", images)
    if images.dtype == jnp.bool_ or not (
        jnp.issubdtype(images.dtype, jnp.floating)
        or jnp.issubdtype(images.dtype, jnp.integer)
    ):
        raise TypeError(f"`images` must be real numbers; got dtype {images.dtype}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.result_type(float))
    if images.ndim != 3 or images.shape[0] < 2:
        raise ValueError(
            "`images` must be a sequence of frames of shape (T, ny, nx) with T >= 2; "
            f"got shape {tuple(images.shape)}."
        )
    n_times, ny, nx = images.shape
    if ny < 3 or nx < 3:
        raise ValueError(
            f"`images` must have at least 3 x 3 pixels (centred differences); got "
            f"{ny} x {nx}."
        )
    grid = grid_or_unit(grid, (ny, nx), "the frames of `images`:")
    dtype = images.dtype
    if times is None:
        times = jnp.arange(n_times, dtype=dtype)
    else:
        times = _as_array("times", times)
        check_real("times", times)
        if times.shape != (n_times,):
            raise ValueError(
                f"`times` must have shape (T,) = ({n_times},), one time per frame; "
                f"got {tuple(times.shape)}."
            )
        if is_concrete(times) and not np.all(np.diff(np.asarray(times)) > 0):
            raise ValueError(f"`times` must be strictly increasing; got {times}.")
        times = times.astype(dtype)
    if mask is None:
        mask = jnp.ones(images.shape, dtype=bool)
    else:
        mask = _as_array("mask", mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
        if mask.shape != images.shape:
            raise ValueError(
                f"`mask` must have the shape {tuple(images.shape)} of `images` "
                f"(True where a pixel is observed); got {tuple(mask.shape)}."
            )
    if is_concrete(images) and is_concrete(mask):
        observed = np.asarray(images)[np.asarray(mask)]
        n_bad = int(np.sum(~np.isfinite(observed)))
        if n_bad:
            raise ValueError(
                f"`images` must be finite where `mask` is True; got {n_bad} "
                "non-finite observed pixels."
            )
        m = np.asarray(mask)
        if not np.any(_pair_mask(m[:-1], m[1:], grid, np)):
            raise ValueError(
                "`mask` leaves no pixel observed in two consecutive frames together "
                "with its derivative stencil: there is no data to estimate from."
            )
    return images, times, mask, grid


def _input_ok(images, times, mask, grid) -> Bool[Array, ""]:
    """The value checks of `_check_inputs`, on traced values (for `jit`)."""
    observed = jnp.where(mask, images, jnp.zeros((), images.dtype))
    pairs = _pair_mask(mask[:-1], mask[1:], grid)
    increasing = jnp.all(jnp.diff(times) > 0) & all_finite(times)
    return all_finite(observed) & increasing & jnp.any(pairs)


def _stencil_observed(m, axis: str, periodic: bool, xp=jnp):
    """`m` and both other pixels of `diff_centred`'s stencil along `axis` observed
    (`xp`: `jax.numpy`, or `numpy` for the eager check of a concrete mask)."""
    ax = -1 if axis == "x" else -2
    n = m.shape[ax]
    if periodic:
        nxt, prv = xp.roll(m, -1, axis=ax), xp.roll(m, 1, axis=ax)
    else:  # the one-sided wall stencils use cells (0, 1, 2) and (n-3, n-2, n-1)
        nxt = xp.take(m, xp.array([*range(1, n), n - 3]), axis=ax)
        prv = xp.take(m, xp.array([2, *range(n - 1)]), axis=ax)
    return m & nxt & prv


def _pair_mask(m_first, m_later, grid: Grid, xp=jnp):
    """$\\Omega_k$: pixels observed in both frames, with their derivative stencils."""
    both = m_first & m_later
    x = _stencil_observed(both, "x", grid.periodic, xp)
    return x & _stencil_observed(both, "y", grid.periodic, xp)


def _warp(frame, frame_mask, displacement, grid: Grid):
    """`frame` sampled at `x + displacement` (bilinear), and where that is observed."""
    ny, nx = grid.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(ny, dtype=frame.dtype),
        jnp.arange(nx, dtype=frame.dtype),
        indexing="ij",
    )
    coords = [rows + displacement[1] / grid.dy, cols + displacement[0] / grid.dx]
    mode = "wrap" if grid.periodic else "nearest"
    warped = map_coordinates(frame, coords, order=1, mode=mode)
    weight = map_coordinates(
        frame_mask.astype(frame.dtype),
        coords,
        order=1,
        mode="wrap" if grid.periodic else "constant",
    )  # 1 where every corner with a positive weight is observed (and in the domain)
    return warped, weight >= 1 - 100 * jnp.finfo(frame.dtype).eps


def _data_term(images, times, mask, grid: Grid, w0=None):
    """Per pair, linearised around `w0` (None: 0, no warp): `(I_x, I_y, I_t,
    Omega_k)`, each `(T-1, ny, nx)`."""
    images = jnp.where(mask, images, jnp.zeros((), images.dtype))
    half_dt = jnp.diff(times)[:, None, None] / 2
    first, m_first, later, m_later = images[:-1], mask[:-1], images[1:], mask[1:]
    if w0 is not None:  # both frames warped half-way: their interpolation errors match
        half = half_dt[..., None] * w0[None]
        warp = jax.vmap(_warp, (0, 0, 0, None))
        first, m_first = warp(first, m_first, -half, grid)
        later, m_later = warp(later, m_later, half, grid)
    valid = _pair_mask(m_first, m_later, grid)
    mean = (first + later) / 2
    ix, iy = diff_centred(mean, grid, "x"), diff_centred(mean, grid, "y")
    it = (later - first) / (2 * half_dt)
    if w0 is not None:
        it = it - (ix * w0[0] + iy * w0[1])
    zero = jnp.zeros((), images.dtype)
    ix, iy, it = (jnp.where(valid, d, zero) for d in (ix, iy, it))
    return ix, iy, it, valid


def _normal_blocks(ix, iy, it):
    """The per-pixel 2 x 2 data blocks `(a11, a12, a22)` and the right-hand side."""
    a11, a12, a22 = (jnp.sum(p, axis=0) for p in (ix * ix, ix * iy, iy * iy))
    rhs = -jnp.stack([jnp.sum(ix * it, axis=0), jnp.sum(iy * it, axis=0)])
    return a11, a12, a22, rhs


def _minus_laplacian_diagonal(grid: Grid, dtype):
    """The diagonal of $-\\Delta$ (`laplacian`): 2 / h^2 per axis, 1 / h^2 at walls."""

    def per_axis(n, h):
        c = jnp.full((n,), 2.0, dtype)
        if not grid.periodic:
            c = c.at[0].set(1.0).at[-1].set(1.0)
        return c / h**2

    return per_axis(grid.ny, grid.dy)[:, None] + per_axis(grid.nx, grid.dx)[None, :]


# ----------------------------------------------------------------------------------
# Horn-Schunck
# ----------------------------------------------------------------------------------


def horn_schunck(
    images: Float[ArrayLike, "T ny nx"],
    *,
    smoothness: float,
    times: Float[ArrayLike, " T"] | None = None,
    mask: Bool[ArrayLike, "T ny nx"] | None = None,
    grid: Grid | None = None,
    warps: int = 1,
    rtol: float | None = None,
    max_steps: int = 2000,
    throw: bool = True,
) -> OpticalFlow:
    r"""Horn-Schunck optical flow [HS81]: the minimiser of the quadratic energy $E$ of
    the module docstring, by preconditioned conjugate gradients.

    **Arguments:**

    - `images`: the frames `(T, ny, nx)`, $T \ge 2$ (anything, NaN included, where
      `mask` is False: unobserved pixels are never read).
    - `smoothness`: $\alpha > 0$, the weight of $\|D^+u\|^2 + \|D^+v\|^2$. It
      scales with the squared image gradient (images multiplied by $c$ need
      $c^2\alpha$ for the same velocity); there is no unique minimiser for
      $\alpha = 0$ (the aperture problem).
    - `times`: `(T,)` strictly increasing times of the frames (default `0, 1, ...`).
    - `mask`: boolean `(T, ny, nx)`, `True` where a pixel is observed (default all).
    - `grid`: a `jaxda.grid.Grid` of the frames' shape (its spacing and boundary), or
      None for unit spacing with closed walls.
    - `warps`: the number of linearisations (1: the classical method; more for
      displacements of more than a fraction of a pixel per frame), each warm-started
      from the previous estimate.
    - `rtol`: the conjugate-gradient tolerance on the residual, relative to the
      largest entry of the right-hand side (default 1e-5 in float32, 1e-10 in
      float64).
    - `max_steps`: the iteration cap of each solve.
    - `throw`: raise when the result is not a success (the library's convention).

    **Returns:** an `OpticalFlow` (`reliable` None); `result` is `max_steps_reached`
    when a solve hit `max_steps` (the last iterate is returned, not as converged),
    `nonfinite` for a non-finite solution, `invalid_input` for values that could only
    be checked under `jit` (non-finite observed pixels, times not increasing).
    """
    images, times, mask, grid = _check_inputs(images, times, mask, grid)
    check_real("smoothness", smoothness)
    check_positive("smoothness", smoothness)
    warps = check_int("warps", warps, minimum=1)
    max_steps = check_int("max_steps", max_steps, minimum=1)
    if rtol is None:
        rtol = 1e-5 if jnp.finfo(images.dtype).bits <= 32 else 1e-10
    check_positive("rtol", rtol)
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {type(throw).__name__}.")
    dtype = images.dtype
    flow = _horn_schunck(
        images,
        times,
        mask,
        grid,
        jnp.asarray(smoothness, dtype),
        jnp.asarray(rtol, dtype),
        jnp.asarray(max_steps),
        warps,
    )
    return raise_if_failed(flow, flow.result, throw)


@eqx.filter_jit
def _horn_schunck(images, times, mask, grid, smoothness, rtol, max_steps, warps):
    dtype = images.dtype
    struct = jax.ShapeDtypeStruct((2, *grid.shape), dtype)
    lap_diag = _minus_laplacian_diagonal(grid, dtype)

    def solve(w0, warped: bool):
        data = _data_term(images, times, mask, grid, w0 if warped else None)
        a11, a12, a22, rhs = _normal_blocks(*data[:3])

        def normal(w):
            data = jnp.stack([a11 * w[0] + a12 * w[1], a12 * w[0] + a22 * w[1]])
            return data - smoothness * laplacian(w, grid)

        p, q, s = a11 + smoothness * lap_diag, a12, a22 + smoothness * lap_diag
        det = p * s - q * q

        def block_jacobi(r):
            return jnp.stack([s * r[0] - q * r[1], p * r[1] - q * r[0]]) / det

        tag = lx.positive_semidefinite_tag
        options = {
            "preconditioner": lx.FunctionLinearOperator(block_jacobi, struct, tag),
            "y0": w0,
        }
        atol = rtol * jnp.max(jnp.abs(rhs)) + jnp.finfo(dtype).tiny
        cg = lx.CG(rtol=rtol, atol=atol, max_steps=max_steps)
        operator = lx.FunctionLinearOperator(normal, struct, tag)
        sol = lx.linear_solve(operator, rhs, cg, options=options, throw=False)
        steps = sol.stats["num_steps"].astype(jnp.int32)
        return sol.value, RESULTS.promote(sol.result), steps

    w, cg_result, steps = solve(jnp.zeros(struct.shape, dtype), warped=False)
    if warps > 1:

        def one_warp(carry, _):
            w, result, steps = carry
            w, new, more = solve(w, warped=True)
            result = RESULTS.where(result == RESULTS.successful, new, result)
            return (w, result, steps + more), None

        init = (w, cg_result, steps)
        (w, cg_result, steps), _ = jax.lax.scan(one_warp, init, None, warps - 1)
    input_ok = _input_ok(images, times, mask, grid)
    result = first_failure(
        (~input_ok, RESULTS.invalid_input), (~all_finite(w), RESULTS.nonfinite)
    )
    result = RESULTS.where(result == RESULTS.successful, cg_result, result)
    return OpticalFlow(w, result, steps)


# ----------------------------------------------------------------------------------
# Lucas-Kanade
# ----------------------------------------------------------------------------------


def _gaussian_window(n: int, h: float, std, periodic: bool, dtype):
    """The `(n, n)` matrix of Gaussian weights $G_\\sigma(x_i - x_j)$, normalised to
    sum to 1 on an unbounded lattice (nearest periodic image on a periodic axis)."""
    index = jnp.arange(n)
    d = (index[:, None] - index[None, :]).astype(dtype)
    if periodic:
        d = jnp.mod(d + n / 2, n) - n / 2
    s = std / h  # in cells
    lattice = jnp.arange(-(4 * n), 4 * n + 1, dtype=dtype)
    norm = jnp.sum(jnp.exp(-(lattice**2) / (2 * s**2)))
    return jnp.exp(-(d**2) / (2 * s**2)) / norm


def lucas_kanade(
    images: Float[ArrayLike, "T ny nx"],
    *,
    window_std: float,
    times: Float[ArrayLike, " T"] | None = None,
    mask: Bool[ArrayLike, "T ny nx"] | None = None,
    grid: Grid | None = None,
    min_eigenvalue: float | None = None,
    throw: bool = True,
) -> OpticalFlow:
    r"""Lucas-Kanade optical flow [LK81]: Gaussian-weighted local least squares of the
    brightness-constancy constraints (module docstring), pixel by pixel.

    **Arguments:**

    - `images`, `times`, `mask`, `grid`: as `horn_schunck`.
    - `window_std`: $\sigma > 0$ of the Gaussian window, in the grid's length units
      (cells without a grid). Closed walls truncate the window; a periodic axis wraps
      it (nearest periodic image).
    - `min_eigenvalue`: the threshold on the smaller eigenvalue of the structure
      tensor $J_p$ below which a pixel is unreliable; None (default) for $10^{-3}$
      times the largest eigenvalue of $J$ over the image (scale-free). $J$ has the
      units of $|\nabla I|^2$ (summed over the pairs, the window weights summing to 1).
    - `throw`: raise when the result is not a success.

    **Returns:** an `OpticalFlow` with `reliable` `(ny, nx)`: velocity 0 where not
    reliable (never NaN); `steps` 0; `result` `invalid_input` for values that could
    only be checked under `jit`, `nonfinite` for a non-finite solution.
    """
    images, times, mask, grid = _check_inputs(images, times, mask, grid)
    check_real("window_std", window_std)
    check_positive("window_std", window_std)
    if min_eigenvalue is not None:
        check_real("min_eigenvalue", min_eigenvalue)
        check_positive("min_eigenvalue", min_eigenvalue)
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {type(throw).__name__}.")
    dtype = images.dtype
    threshold = None if min_eigenvalue is None else jnp.asarray(min_eigenvalue, dtype)
    flow = _lucas_kanade(
        images, times, mask, grid, jnp.asarray(window_std, dtype), threshold
    )
    return raise_if_failed(flow, flow.result, throw)


@eqx.filter_jit
def _lucas_kanade(images, times, mask, grid, window_std, threshold):
    dtype = images.dtype
    a11, a12, a22, rhs = _normal_blocks(*_data_term(images, times, mask, grid)[:3])
    gy = _gaussian_window(grid.ny, grid.dy, window_std, grid.periodic, dtype)
    gx = _gaussian_window(grid.nx, grid.dx, window_std, grid.periodic, dtype)

    def window(f):
        return gy @ f @ gx.T

    j11, j12, j22, b1, b2 = (window(f) for f in (a11, a12, a22, rhs[0], rhs[1]))
    half_trace = (j11 + j22) / 2
    radius = jnp.sqrt(((j11 - j22) / 2) ** 2 + j12**2)
    smaller, larger = half_trace - radius, half_trace + radius
    if threshold is None:
        threshold = 1e-3 * jnp.max(larger)
    reliable = (smaller >= threshold) & (smaller > 0)
    det = jnp.where(reliable, j11 * j22 - j12**2, jnp.ones((), dtype))
    u = (j22 * b1 - j12 * b2) / det
    v = (j11 * b2 - j12 * b1) / det
    zero = jnp.zeros((), dtype)
    w = jnp.stack([jnp.where(reliable, u, zero), jnp.where(reliable, v, zero)])
    result = first_failure(
        (~_input_ok(images, times, mask, grid), RESULTS.invalid_input),
        (~all_finite(w), RESULTS.nonfinite),
    )
    return OpticalFlow(w, result, jnp.array(0, jnp.int32), reliable)


__all__ = ["OpticalFlow", "horn_schunck", "lucas_kanade"]
