r"""Background-error covariances on grids, as operators (never dense matrices).

A background covariance $B$ on fields of shape `field_shape` (`(ny, nx)`, or
`(C, ny, nx)` for several channels, or `(T, ...)` in space and time) is given by a
square root $U$ with $B = U U^\top$. Incremental 4DVar and the OI solvers use it
through the control-variable transform [WC01]

$$x = x_b + U w, \qquad J_b = \tfrac12 \|w\|^2 = \tfrac12 (x - x_b)^\top B^{-1}
(x - x_b),$$

so that $B^{-1}$ is never needed; OI needs only products $B v$. Every covariance
here is $B = \Sigma C \Sigma$ with $\Sigma = \mathrm{diag}(\sigma)$ the standard
deviation field and $C$ a correlation ($\mathrm{diag}(C) = 1$):

- `SpectralCovariance`: a stationary correlation on a periodic grid, diagonal in
  Fourier space: $C^{1/2} = F^{-1} \mathrm{diag}(\sqrt{s}) F$ (real, symmetric);
- `DiffusionCovariance`: $M$ explicit steps of a diffusion operator normalised to
  unit variance [WC01], with a length-scale field, periodic or closed boundaries;
- `SpaceTimeCovariance` (`_space_time.py`): a spatial covariance times a Gaussian
  or exponential correlation in time, $B = C_t \otimes B_s$, matrix-free;
- `SpaceTimeKernel` (`_space_time.py`): the same separable model as a covariance
  *function* of point coordinates $(t, y, x)$, for observation-space OI at points
  off the grid.

**Length scales.** The Gaussian correlation of length scale $\ell$ is
$c(r) = \exp(-r^2 / (2\ell^2))$ ($\ell$ is the standard deviation of the kernel,
not the e-folding distance $\sqrt2\,\ell$); anisotropic scales $(\ell_y, \ell_x)$
replace $r^2/\ell^2$ by $\Delta y^2/\ell_y^2 + \Delta x^2/\ell_x^2$.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float, Key
from .._validation import (
    check_choice,
    check_int,
    check_key,
    check_positive,
    is_concrete,
)
from ._differences import centres_to_faces, weighted_laplacian
from ._grid import Grid


class AbstractCovariance(eqx.Module):
    r"""A symmetric positive semi-definite covariance $B = U U^\top$ on gridded fields.

    **Fields:**

    - `field_shape`: the shape of one field $x$ (e.g. `(ny, nx)` or `(C, ny, nx)`).

    **Methods** (every vector is an array of its own shape, not flattened; all are
    linear, traceable, `jax.vmap`-able and differentiable):

    - `apply(v)`: $B v$, `v` and the result of shape `field_shape`;
    - `sqrt(w)`: $U w$, from control space (`control_shape`) to `field_shape`;
    - `sqrt_transpose(v)`: $U^\top v$, from `field_shape` to `control_shape`;
    - `variance`: the pointwise variance field $\mathrm{diag}(B)$, shape
      `field_shape`;
    - `matrix()`: the dense $B$, `(d, d)` over the C-order flattened field, $d$ =
      `prod(field_shape)`: for tests and small grids only.

    `control_shape` is the shape of the control vector $w$; for every covariance in
    `jaxda.grid` it equals `field_shape` ($U$ square). The control-variable transform
    of incremental 4DVar is $x = x_b + U w$ with $J_b = \|w\|^2/2$.
    """

    field_shape: eqx.AbstractVar[tuple[int, ...]]

    @property
    def control_shape(self) -> tuple[int, ...]:
        """The shape of a control vector $w$ (here always `field_shape`)."""
        return self.field_shape

    @property
    def size(self) -> int:
        """$d$, the number of entries of a field."""
        return math.prod(self.field_shape)

    @abc.abstractmethod
    def sqrt(self, w: Float[Array, " *control"]) -> Float[Array, " *field"]:
        r"""$U w$: a control vector mapped to a field increment."""

    @abc.abstractmethod
    def sqrt_transpose(self, v: Float[Array, " *field"]) -> Float[Array, " *control"]:
        r"""$U^\top v$: the adjoint of `sqrt`."""

    @property
    @abc.abstractmethod
    def variance(self) -> Float[Array, " *field"]:
        r"""$\mathrm{diag}(B)$, the pointwise variance field."""

    def apply(self, v: Float[Array, " *field"]) -> Float[Array, " *field"]:
        r"""$B v = U (U^\top v)$."""
        return self.sqrt(self.sqrt_transpose(v))

    def matrix(self, dtype=None) -> Float[Array, "d d"]:
        r"""The dense $B$, `(d, d)` over the C-order flattened field (small grids
        only: it costs $d$ products $B e_i$)."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        eye = jnp.eye(self.size, dtype=dtype)
        cols = jax.vmap(lambda e: self.apply(e.reshape(self.field_shape)).ravel())(eye)
        return cols.T


# ---------------------------------------------------------------- argument helpers


def _float_array(name: str, value) -> Array:
    try:
        arr = None if isinstance(value, bool) else jnp.asarray(value)
    except (TypeError, ValueError):
        arr = None
    real = arr is not None and arr.dtype != jnp.bool_
    real = real and (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
    )
    if not real:
        raise TypeError(
            f"`{name}` must be a real number or an array of them; got "
            f"{type(value).__name__} ({value!r})."
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _scale_pair(name: str, value, grid_shape: tuple[int, int], *, field: bool):
    """A length scale as `(2, ...)`: `(l_y, l_x)` constants, or fields when `field`."""
    arr = _float_array(name, value)
    ny, nx = grid_shape
    if arr.shape == ():
        arr = jnp.stack([arr, arr])
    elif arr.shape == (2,):
        pass
    elif field and arr.shape == (ny, nx):
        arr = jnp.stack([arr, arr])
    elif field and arr.shape == (2, ny, nx):
        pass
    else:
        want = "a scalar or a pair (l_y, l_x)"
        if field:
            want += f", a field ({ny}, {nx}) or a pair of fields (2, {ny}, {nx})"
        raise ValueError(f"`{name}` must be {want}; got shape {arr.shape}.")
    check_positive(name, arr)
    return arr


def _std(variance, field_shape: tuple[int, ...]) -> Array:
    """$\\sigma = \\sqrt{\\text{variance}}$, broadcastable to `field_shape`."""
    arr = _float_array("variance", variance)
    try:
        shape = jnp.broadcast_shapes(arr.shape, field_shape)
    except ValueError:
        shape = None
    if shape != tuple(field_shape):
        raise ValueError(
            f"`variance` must be a scalar or a field broadcastable to {field_shape}; "
            f"got shape {arr.shape}."
        )
    check_positive("variance", arr)
    return jnp.sqrt(arr)


def _as_field(v) -> Array:
    """`v` as an array of its own floating dtype (the field's dtype governs: a
    float32 field stays float32 whatever the dtype of the covariance's parameters)."""
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.result_type(float))
    return v


def _field_shape(grid: Grid, n_channels) -> tuple[int, ...]:
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    if n_channels is None:
        return grid.shape
    return (check_int("n_channels", n_channels, minimum=1), *grid.shape)


# ------------------------------------------------------------------- spectral


KERNELS = ("gaussian", "matern")


class SpectralCovariance(AbstractCovariance):
    r"""A stationary covariance on a periodic grid, diagonal in Fourier space.

    $B = \Sigma C \Sigma$ with $C = F^{-1} \mathrm{diag}(s) F$ ($F$ the 2-D DFT over
    the last two axes), $s_k$ the spectral density of the correlation sampled at the
    grid's wavenumbers $k = (k_y, k_x)$ and normalised to mean 1, so that
    $\mathrm{diag}(C) = \mathrm{mean}(s) = 1$ exactly and $U = \Sigma C^{1/2}$,
    $C^{1/2} = F^{-1}\mathrm{diag}(\sqrt{s})F$ (real and symmetric), $U^\top =
    C^{1/2}\Sigma$; `apply` filters by $s$ once. With
    $q = \ell_y^2 k_y^2 + \ell_x^2 k_x^2$:

    - `kernel="gaussian"`: $s \propto e^{-q/2}$, the correlation
      $c(r) = e^{-r^2/(2\ell^2)}$;
    - `kernel="matern"`: $s \propto (1 + q/(2\nu))^{-(\nu + 1)}$, the Matérn
      correlation $c(r) = \frac{2^{1-\nu}}{\Gamma(\nu)} (\sqrt{2\nu}\,r/\ell)^\nu
      K_\nu(\sqrt{2\nu}\,r/\ell)$ (e.g. $\nu = 3/2$: $(1 + \sqrt3 r/\ell)
      e^{-\sqrt3 r/\ell}$); $\nu + 1$ implicit diffusion steps [WC01].

    $C$ is the periodic correlation whose spectrum is the continuous one sampled at
    $2\pi n / L$: the continuous kernel summed over periodic images, up to the part
    of the spectrum beyond the Nyquist wavenumber $\pi/\Delta$ (negligible for the
    Gaussian once $\ell \gtrsim 2\Delta$). One FFT pair per `apply`,
    $O(d \log d)$.

    **Arguments:**

    - `grid`: a periodic `Grid`.
    - `length_scale`: $\ell > 0$, a scalar or a pair $(\ell_y, \ell_x)$ (grid units).
    - `variance`: $\sigma^2 > 0$, a scalar or a field broadcastable to `field_shape`
      (e.g. `(ny, nx)`): $B = \Sigma C \Sigma$.
    - `kernel`: `"gaussian"` (default) or `"matern"`; `nu`: the Matérn smoothness
      $\nu > 0$ (default 1.5, static).
    - `n_channels`: `None` (fields `(ny, nx)`) or $C$ (fields `(C, ny, nx)`, the
      channels independent with the same correlation).

    Length scale and variance are array fields: derivatives flow through them.
    """

    grid: Grid
    length_scale: Float[Array, "2"]
    std: Float[Array, "..."]
    kernel: str = eqx.field(static=True)
    nu: float = eqx.field(static=True)
    field_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        grid: Grid,
        length_scale: Float[ArrayLike, " ..."] | float,
        variance: Float[ArrayLike, "..."] | float = 1.0,
        *,
        kernel: str = "gaussian",
        nu: float = 1.5,
        n_channels: int | None = None,
    ):
        self.field_shape = _field_shape(grid, n_channels)
        if grid.boundary != "periodic":
            raise ValueError(
                "`grid` must be periodic for a SpectralCovariance (FFT); got "
                f"boundary {grid.boundary!r}. Use DiffusionCovariance on closed grids."
            )
        check_choice("kernel", kernel, KERNELS)
        if isinstance(nu, bool) or not isinstance(nu, int | float) or not nu > 0:
            raise ValueError(f"`nu` must be a Python float > 0; got {nu!r}.")
        self.grid = grid
        self.length_scale = _scale_pair(
            "length_scale", length_scale, grid.shape, field=False
        )
        self.std = _std(variance, self.field_shape)
        self.kernel = kernel
        self.nu = float(nu)

    def _spectrum(self, dtype, *, half: bool) -> Float[Array, "ny kx"]:
        g = self.grid
        ky = 2 * jnp.pi * jnp.fft.fftfreq(g.ny, g.dy)
        kx_full = 2 * jnp.pi * jnp.fft.fftfreq(g.nx, g.dx)
        ly, lx = self.length_scale[0], self.length_scale[1]

        def density(kx):
            q = (ly * ky[:, None]) ** 2 + (lx * kx[None, :]) ** 2
            if self.kernel == "gaussian":
                return jnp.exp(-0.5 * q)
            return (1.0 + q / (2.0 * self.nu)) ** (-(self.nu + 1.0))

        mean = jnp.mean(density(kx_full))
        kx = 2 * jnp.pi * jnp.fft.rfftfreq(g.nx, g.dx) if half else kx_full
        return (density(kx) / mean).astype(dtype)

    def _filter(self, v, power: float):
        s = self._spectrum(v.dtype, half=True) ** power
        out = jnp.fft.irfft2(jnp.fft.rfft2(v) * s, s=self.grid.shape)
        return out.astype(v.dtype)

    def sqrt(self, w):
        w = _as_field(w)
        return self.std.astype(w.dtype) * self._filter(w, 0.5)

    def apply(self, v):
        r"""$B v = \Sigma F^{-1}\mathrm{diag}(s) F \Sigma v$: one FFT pair (half the
        cost of $U(U^\top v)$)."""
        v = _as_field(v)
        std = self.std.astype(v.dtype)
        return std * self._filter(std * v, 1.0)

    def sqrt_transpose(self, v):
        v = _as_field(v)
        return self._filter(self.std.astype(v.dtype) * v, 0.5)

    @property
    def variance(self):
        return jnp.broadcast_to(self.std**2, self.field_shape)

    def correlation(self) -> Float[Array, "ny nx"]:
        r"""The correlation $c$ between cell `[0, 0]` and every cell (its first
        column of $C$), shape `(ny, nx)`: $c = F^{-1} s$."""
        s = self._spectrum(self.length_scale.dtype, half=True)
        return jnp.fft.irfft2(s, s=self.grid.shape)


# ------------------------------------------------------------------- diffusion


NORMALISATIONS = ("exact", "randomised", "analytic")


class DiffusionCovariance(AbstractCovariance):
    r"""A correlation by $M$ explicit steps of a diffusion operator [WC01].

    With $\kappa_a = \ell_a^2 / (2M)$ ($a = y, x$; $\ell$ possibly a field) and the
    conservative 5-point operator $D f = \nabla\cdot(\kappa \nabla f)$
    (`jaxda.grid.weighted_laplacian`; face values of $\kappa$ the mean of the two
    cells; zero flux through the walls of a closed grid), one pseudo-time step is
    $E = I + D$, a symmetric matrix. $M$ steps of unit length diffuse a point source
    into a kernel of variance $2\kappa M = \ell^2$ per axis (exactly: each step adds
    $2\kappa_a$ to the second moment), close to the Gaussian
    $e^{-r^2/(2\ell^2)}$. Then

    $$C = \Gamma E^M \Gamma, \quad U = \Sigma \Gamma E^{M/2}, \quad U^\top =
    E^{M/2}\Gamma\Sigma, \quad \Gamma = \mathrm{diag}(E^M)^{-1/2},$$

    ($M$ even). $E$ has eigenvalues in $[0, 1]$ when $M \ge 2 \max(\ell_y^2/\Delta y^2
    + \ell_x^2/\Delta x^2)$ (Gershgorin), the default `n_steps`; fewer steps are
    refused. Each product costs $M/2$ stencil applications, $O(M d)$.

    `normalisation` says how $\mathrm{diag}(E^M)$ is obtained:

    - `"exact"` (default): on a periodic grid with a uniform $\ell$, from the
      eigenvalues of the circulant $E$ (any size); otherwise $\|E^{M/2} e_i\|^2$
      for every unit vector, $d$ applications of $E^{M/2}$ in batches
      ($O(M d^2)$: small grids only). Then $\mathrm{diag}(C) = 1$ to rounding.
    - `"randomised"`: $\mathrm{mean}_k (E^{M/2} z_k)^2$ over `n_samples` Gaussian
      probes $z_k$ (`key` required): unbiased, with a relative error of about
      $\sqrt{2/K}$ per cell.
    - `"analytic"`: the continuous-limit factor $\Delta x \Delta y / (2\pi
      \ell_y \ell_x)$ (the peak of a Gaussian kernel of unit mass on the grid), with
      the local $\ell$: right in the interior when $\ell$ varies slowly and spans a
      few cells; near a closed wall the true variance is up to 2x larger (4x in a
      corner), the reflected kernel.

    `variance` returns $\sigma^2$: $\mathrm{diag}(B)$ exactly with `"exact"`,
    approximately otherwise.

    **Arguments:**

    - `grid`: a `Grid` (periodic or closed).
    - `length_scale`: $\ell > 0$: a scalar, a pair $(\ell_y, \ell_x)$, a field
      `(ny, nx)` or a pair of fields `(2, ny, nx)`.
    - `variance`: $\sigma^2 > 0$, scalar or broadcastable to `field_shape`.
    - `n_steps`: $M$ (even, static); default the smallest even $M$ meeting the bound
      above (required when `length_scale` is traced).
    - `normalisation`, `key`, `n_samples` (default 256), `batch_size` (unit vectors
      per batch for `"exact"`, default 256).
    - `n_channels`: as `SpectralCovariance`.
    """

    grid: Grid
    kappa: Float[Array, "2 ny nx"]
    gamma: Float[Array, "ny nx"]
    std: Float[Array, "..."]
    n_steps: int = eqx.field(static=True)
    normalisation: str = eqx.field(static=True)
    field_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        grid: Grid,
        length_scale: Float[ArrayLike, "..."] | float,
        variance: Float[ArrayLike, "..."] | float = 1.0,
        *,
        n_steps: int | None = None,
        normalisation: str = "exact",
        key: Key | None = None,
        n_samples: int = 256,
        batch_size: int = 256,
        n_channels: int | None = None,
    ):
        self.field_shape = _field_shape(grid, n_channels)
        check_choice("normalisation", normalisation, NORMALISATIONS)
        ell = _scale_pair("length_scale", length_scale, grid.shape, field=True)
        if ell.ndim == 1:
            ell = jnp.broadcast_to(ell[:, None, None], (2, *grid.shape))
        if is_concrete(ell):
            e = np.asarray(ell)
            bound = 2.0 * float(np.max(e[0] ** 2 / grid.dy**2 + e[1] ** 2 / grid.dx**2))
            need = 2 * math.ceil(bound / 2)
            if n_steps is None:
                n_steps = max(need, 2)
            n_steps = check_int("n_steps", n_steps, minimum=2)
            if n_steps < bound:
                raise ValueError(
                    f"`n_steps` = {n_steps} is too few for `length_scale` up to "
                    f"{float(np.max(e)):.4g} on this grid: the explicit diffusion "
                    f"needs n_steps >= {need} (2 max(l_y^2/dy^2 + l_x^2/dx^2))."
                )
        elif n_steps is None:
            raise ValueError("`n_steps` is required when `length_scale` is traced.")
        n_steps = check_int("n_steps", n_steps, minimum=2)
        if n_steps % 2:
            raise ValueError(f"`n_steps` must be even (U = E^(M/2)); got {n_steps}.")
        self.grid = grid
        self.n_steps = n_steps
        self.normalisation = normalisation
        kappa = ell**2 / (2.0 * n_steps)
        self.kappa = jnp.stack(  # on the east (x) and north (y) faces
            [
                centres_to_faces(kappa[1], grid, "x"),
                centres_to_faces(kappa[0], grid, "y"),
            ]
        )
        self.std = _std(variance, self.field_shape)
        self.gamma = jnp.ones(grid.shape, kappa.dtype)
        uniform = is_concrete(ell) and bool(
            np.all(np.ptp(np.asarray(ell).reshape(2, -1), axis=1) == 0)
        )
        if normalisation == "exact" and grid.periodic and uniform:
            diag = self._periodic_diagonal(kappa[:, 0, 0])
        elif normalisation == "exact":
            diag = self._exact_diagonal(kappa.dtype, batch_size)
        elif normalisation == "randomised":
            check_key("key", key)
            n_samples = check_int("n_samples", n_samples, minimum=1)
            z = jax.random.normal(key, (n_samples, *grid.shape), kappa.dtype)
            diag = jnp.mean(jax.vmap(self._half_steps)(z) ** 2, axis=0)
        else:
            diag = grid.cell_area / (2.0 * jnp.pi * ell[0] * ell[1])
        self.gamma = 1.0 / jnp.sqrt(diag)

    def _step(self, f):
        return f + weighted_laplacian(f, self.grid, self.kappa.astype(f.dtype))

    def _half_steps(self, f):
        r"""$E^{M/2} f$ on the trailing `(ny, nx)` axes."""
        return jax.lax.fori_loop(0, self.n_steps // 2, lambda _, f: self._step(f), f)

    def _periodic_diagonal(self, kappa):
        r"""$\mathrm{diag}(E^M)$ for a uniform $\kappa$ on a periodic grid: $E$ is
        circulant with eigenvalues $\lambda = 1 - 4\kappa_y \sin^2(\pi k_y/n_y)/
        \Delta y^2 - 4\kappa_x \sin^2(\pi k_x/n_x)/\Delta x^2$, so every diagonal
        entry is $\mathrm{mean}(\lambda^M)$."""
        g = self.grid
        sy = jnp.sin(jnp.pi * jnp.arange(g.ny) / g.ny) ** 2
        sx = jnp.sin(jnp.pi * jnp.arange(g.nx) / g.nx) ** 2
        lam = (
            1.0
            - 4.0 * kappa[0] * sy[:, None] / g.dy**2
            - 4.0 * kappa[1] * sx[None, :] / g.dx**2
        )
        return jnp.full(g.shape, jnp.mean(lam**self.n_steps))

    def _exact_diagonal(self, dtype, batch_size):
        ny, nx = self.grid.shape
        d = ny * nx

        def column_norm(i):
            e = jnp.zeros(d, dtype).at[i].set(1.0).reshape(ny, nx)
            return jnp.sum(self._half_steps(e) ** 2)

        batch_size = check_int("batch_size", batch_size, minimum=1)
        diag = jax.lax.map(column_norm, jnp.arange(d), batch_size=min(batch_size, d))
        return diag.reshape(ny, nx)

    def sqrt(self, w):
        w = _as_field(w)
        scale = (self.std * self.gamma).astype(w.dtype)
        return scale * self._half_steps(w)

    def sqrt_transpose(self, v):
        v = _as_field(v)
        return self._half_steps((self.gamma * self.std).astype(v.dtype) * v)

    @property
    def variance(self):
        return jnp.broadcast_to(self.std**2, self.field_shape)
