r"""Overlapping space-time patches of gridded trajectories, and their seamless
recombination.

Learned mappers (4DVarNet for SSH) train on patches of $p_t \times p_y \times p_x$
cells cut from a larger space-time domain, and reconstruct the whole domain by
running on overlapping patches and recombining them with a taper $w$ that is small
at the patch borders:

$$\hat x(t, j, i) = \frac{\sum_p w_p(t, j, i)\, \hat x_p(t, j, i)}{\sum_p
w_p(t, j, i)},$$

the sums over the patches $p$ that cover the cell. The normalisation by the summed
weights makes the recombination exact for any positive weights (a field cut into
patches and recombined is returned unchanged), including near the borders where
fewer patches overlap. Along a closed axis the starts are $0, s, 2s, \dots$ and a
last patch flush with the end, so every cell is covered; along a periodic axis
(a doubly periodic grid) the starts are $0, s, 2s, \dots < n$ and patches wrap
around the edge. Time is never periodic.

A patch of a trajectory `(T, ny, nx)` is `(p_t, p_y, p_x)`; of a multi-field one
`(T, C, ny, nx)` it is `(p_t, C, p_y, p_x)` (channels are carried whole).
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from .._validation import check_int, is_concrete
from ..grid._grid import Grid


WINDOWS = ("hann", "triangular", "uniform")


def _triple(name: str, value) -> tuple[int, int, int]:
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a triple of ints (t, y, x); got {value!r}.")
    if len(out) != 3:
        raise ValueError(f"`{name}` must be a triple of ints (t, y, x); got {value!r}.")
    return tuple(check_int(name, v, minimum=1) for v in out)


def axis_starts(n: int, size: int, stride: int, periodic: bool) -> np.ndarray:
    """The start indices of the patches along one axis of length `n`."""
    if periodic:
        return np.arange(0, n, stride)
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return np.asarray(starts)


def window_1d(size: int, kind: str) -> np.ndarray:
    r"""A positive taper of length `size`, at the cell centres $u_k = (k + \frac12)
    / \text{size}$: `"hann"` $\sin^2(\pi u)$, `"triangular"` $1 - |2u - 1|$,
    `"uniform"` 1."""
    u = (np.arange(size) + 0.5) / size
    if kind == "hann":
        return np.sin(np.pi * u) ** 2
    if kind == "triangular":
        return 1.0 - np.abs(2 * u - 1)
    if kind == "uniform":
        return np.ones(size)
    raise ValueError(
        f"`window` must be one of {', '.join(map(repr, WINDOWS))}; got {kind!r}."
    )


class PatchLayout(eqx.Module):
    r"""How a space-time domain `(T, ny, nx)` is cut into overlapping patches, and
    put back together.

    `extract` cuts a trajectory into its `P` patches; `recombine` returns
    $\hat x = \sum_p w_p \hat x_p / \sum_p w_p$ over the patches covering each cell,
    with a taper $w$ small at the patch borders (`"hann"` by default): exact for any
    positive weights (extract then recombine is the identity), borders included.
    Along a closed axis the starts are $0, s, 2s, \dots$ plus one flush with the
    end; along a periodic one $0, s, \dots < n$, wrapping around. Patches of a
    `(T, C, ny, nx)` trajectory are `(P, p_t, C, p_y, p_x)`; batch over windows
    with `jax.vmap(layout.extract)`.

    **Arguments:**

    - `shape`: the domain `(T, ny, nx)`.
    - `size`: the patch `(p_t, p_y, p_x)`, each at most the domain's.
    - `stride`: the step between patch starts `(s_t, s_y, s_x)`, >= 1 (at most the
      patch size along a periodic axis, so that every cell is covered).
    - `periodic`: whether y and x wrap around (a bool for both, or a pair).

    Use `PatchLayout.from_grid(grid, n_times, size, stride)` to take `periodic`
    from a `jaxda.grid.Grid`. **Fields:** the arguments and `starts`, the
    `(P, 3)` start indices of the patches (t-major order).
    """

    shape: tuple[int, int, int] = eqx.field(static=True)
    size: tuple[int, int, int] = eqx.field(static=True)
    stride: tuple[int, int, int] = eqx.field(static=True)
    periodic: tuple[bool, bool] = eqx.field(static=True)
    starts: tuple[tuple[int, int, int], ...] = eqx.field(static=True)

    def __init__(self, shape, size, stride, periodic=False):
        self.shape = _triple("shape", shape)
        self.size = _triple("size", size)
        self.stride = _triple("stride", stride)
        if isinstance(periodic, bool | np.bool_):
            periodic = (bool(periodic), bool(periodic))
        periodic = tuple(periodic)
        if len(periodic) != 2 or not all(isinstance(p, bool) for p in periodic):
            raise TypeError(
                f"`periodic` must be a bool or a pair of bools; got {periodic!r}."
            )
        self.periodic = periodic
        for axis, n, p, s in zip("tyx", self.shape, self.size, self.stride):
            if p > n:
                raise ValueError(
                    f"`size` along {axis} ({p}) must be <= the domain's {n} (shape "
                    f"{self.shape})."
                )
        for axis, p, s, per in zip("yx", self.size[1:], self.stride[1:], periodic):
            if per and s > p:
                raise ValueError(
                    f"`stride` along periodic {axis} ({s}) must be <= the patch size "
                    f"{p}, or cells are left uncovered."
                )
        per = (False,) + periodic
        axes = [
            axis_starts(n, p, s, q)
            for n, p, s, q in zip(self.shape, self.size, self.stride, per)
        ]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        self.starts = tuple(tuple(int(v) for v in row) for row in grid)

    @classmethod
    def from_grid(cls, grid: Grid, n_times: int, size, stride) -> "PatchLayout":
        """A layout on `grid` over `n_times` steps; y and x are periodic when the grid
        is."""
        if not isinstance(grid, Grid):
            raise TypeError(
                f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}."
            )
        return cls((n_times,) + grid.shape, size, stride, grid.periodic)

    @property
    def n_patches(self) -> int:
        """P."""
        return len(self.starts)

    def _indices(self):
        starts = np.asarray(self.starts)
        (pt, py, px), (_, ny, nx) = self.size, self.shape
        ti = starts[:, 0:1] + np.arange(pt)
        yi = starts[:, 1:2] + np.arange(py)
        xi = starts[:, 2:3] + np.arange(px)
        yi = yi % ny if self.periodic[0] else yi
        xi = xi % nx if self.periodic[1] else xi
        return (
            ti[:, :, None, None],
            yi[:, None, :, None],
            xi[:, None, None, :],
        )

    def extract(
        self, x: Float[ArrayLike, "T *C ny nx"]
    ) -> Float[Array, "P pt *C py px"]:
        """The patches of a trajectory `(T, ny, nx)` or `(T, C, ny, nx)`."""
        x = jnp.asarray(x)
        t, ny, nx = self.shape
        if x.ndim not in (3, 4) or x.shape[0] != t or x.shape[-2:] != (ny, nx):
            raise ValueError(
                f"`x` must have shape ({t}, {ny}, {nx}) or ({t}, C, {ny}, {nx}); got "
                f"{x.shape}."
            )
        return _extract(self, x)

    def weights(self, window: str | Float[ArrayLike, "pt py px"] = "hann") -> Array:
        """The taper of one patch, `(p_t, p_y, p_x)`: the tensor product of
        `window_1d` along the three axes, or the given array (finite, > 0)."""
        if isinstance(window, str):
            w = [window_1d(p, window) for p in self.size]
            return jnp.asarray(w[0][:, None, None] * w[1][None, :, None] * w[2])
        w = jnp.asarray(window)
        if w.shape != self.size:
            raise ValueError(f"`window` must have shape {self.size}; got {w.shape}.")
        if is_concrete(w) and not np.all(np.isfinite(w) & (np.asarray(w) > 0)):
            raise ValueError("`window` must be finite and > 0 everywhere.")
        return w

    def recombine(
        self,
        patches: Float[ArrayLike, "P pt *C py px"],
        window: str | Float[ArrayLike, "pt py px"] = "hann",
    ) -> Float[Array, "T *C ny nx"]:
        r"""The domain from its patches, $\sum_p w_p \hat x_p / \sum_p w_p$ cell by
        cell, with the taper `window` (see `weights`). Linear in `patches` and
        differentiable."""
        patches = jnp.asarray(patches)
        (pt, py, px), p = self.size, self.n_patches
        ok = patches.ndim in (4, 5) and patches.shape[:2] == (p, pt)
        if not ok or patches.shape[-2:] != (py, px):
            raise ValueError(
                f"`patches` must have shape ({p}, {pt}, {py}, {px}) or ({p}, {pt}, C, "
                f"{py}, {px}) (P = {p} patches of this layout); got {patches.shape}."
            )
        return _recombine(self, patches, self.weights(window))

    def coverage(self) -> Float[Array, "T ny nx"]:
        """How many patches cover each cell (>= 1 everywhere)."""
        ti, yi, xi = self._indices()
        ones = jnp.ones((self.n_patches,) + self.size, int)
        return jnp.zeros(self.shape, int).at[ti, yi, xi].add(ones)


@eqx.filter_jit
def _extract(layout: PatchLayout, x):
    ti, yi, xi = layout._indices()
    if x.ndim == 3:
        return x[ti, yi, xi]
    moved = jnp.moveaxis(x, 1, -1)[ti, yi, xi]  # (P, pt, py, px, C)
    return jnp.moveaxis(moved, -1, 2)


@eqx.filter_jit
def _recombine(layout: PatchLayout, patches, w):
    w = w.astype(patches.dtype)
    ti, yi, xi = layout._indices()
    full_w = jnp.broadcast_to(w, (layout.n_patches,) + layout.size)
    wsum = jnp.zeros(layout.shape, w.dtype).at[ti, yi, xi].add(full_w)
    if patches.ndim == 4:
        num = jnp.zeros(layout.shape, patches.dtype).at[ti, yi, xi].add(w * patches)
        return num / wsum
    moved = jnp.moveaxis(patches, 2, -1)  # (P, pt, py, px, C)
    num = jnp.zeros(layout.shape + (patches.shape[2],), patches.dtype)
    num = num.at[ti, yi, xi].add(w[..., None] * moved)
    return jnp.moveaxis(num / wsum[..., None], -1, 1)


__all__ = ["PatchLayout", "axis_starts", "window_1d"]
