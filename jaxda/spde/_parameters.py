r"""The parameter fields $\Theta = (\kappa, \mathbf m, \mathbf H, \tau)$ of the
advection-diffusion SPDE prior, stationary or not.

Each field is stored with a *leading time axis* of length 1 (the same at every time)
or $T$ (one value per state of the window), and *spatial axes* of length 1 (constant
in space) or `(ny, nx)`:

- `kappa` `(T|1, ny|1, nx|1)`: the damping rate $\kappa > 0$ enters as $\kappa^2$;
- `advection` `(T|1, 2, ny|1, nx|1)`: $\mathbf m = (m_x, m_y)$ (component 0 along x);
- `diffusion` `(T|1, 3, ny|1, nx|1)`: the symmetric tensor $\mathbf H$ stored as
  $(H_{xx}, H_{xy}, H_{yy})$, positive definite at every point;
- `tau` `(T|1, ny|1, nx|1)`: the noise amplitude $\tau > 0$;
- `initial_tau` `(1|ny, 1|nx)`: the amplitude of the initial state's spatial field.

Time index $k$ reads entry $k$ (or 0 of a length-1 axis): $\Theta_0$ defines the initial
state's law, $\Theta_k$ ($k \ge 1$) the transition from $x_{k-1}$ to $x_k$.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from .._validation import check_positive, check_real, is_concrete
from ..grid._grid import Grid


def _field(name: str, value, n_times: int, grid: Grid, dtype, n_components=None):
    """`value` as `(T|1, [C,] ny|1, nx|1)`; accepted inputs are listed in the error."""
    check_real(name, value)
    value = jnp.asarray(value, dtype)
    ny, nx = grid.shape
    lead = () if n_components is None else (n_components,)
    nd = value.ndim - len(lead)
    shapes = {0: lead, 2: (*lead, ny, nx), 3: (n_times, *lead, ny, nx)}
    if nd not in shapes or value.shape != shapes[nd]:
        want = " or ".join(str(s) for s in shapes.values())
        raise ValueError(
            f"`{name}` must have shape {want} (constant, a field on the "
            f"{ny} x {nx} grid, or one field per time of the {n_times}-state "
            f"window); got {value.shape}."
        )
    if nd == 0:
        value = value.reshape((1, *lead, 1, 1))
    elif nd == 2:
        value = value[None]
    return value


def diffusion_from_anisotropy(
    gamma: Float[ArrayLike, "*shape"], v: Float[ArrayLike, "2 *shape"]
) -> Float[Array, "3 *shape"]:
    r"""The diffusion tensor $\mathbf H = \gamma \mathbf I + \mathbf v \mathbf v^\top$
    as $(H_{xx}, H_{xy}, H_{yy})$: positive definite for every $\gamma > 0$ and every
    $\mathbf v$, the unconstrained parametrisation learned in [BF24].

    **Arguments:** `gamma` $> 0$ (isotropic part), `v` `(2, *shape)` (the direction
    and strength of the extra diffusion, component 0 along x).
    """
    gamma = jnp.asarray(gamma)
    v = jnp.asarray(v)
    if v.shape[:1] != (2,):
        raise ValueError(f"`v` must have shape (2, *shape); got {v.shape}.")
    vx, vy = v[0], v[1]
    return jnp.stack([gamma + vx * vx, vx * vy, gamma + vy * vy])


def _check_spd(name: str, h) -> None:
    if not is_concrete(h):
        return
    h = np.asarray(h)
    hxx, hxy, hyy = h[:, 0], h[:, 1], h[:, 2]
    det = hxx * hyy - hxy * hxy
    bad = ~np.isfinite(det) | (hxx <= 0) | (det <= 0)
    if np.any(bad):
        raise ValueError(
            f"`{name}` must be a symmetric positive definite tensor (H_xx > 0 and "
            f"H_xx H_yy - H_xy^2 > 0) at every point and time; got {int(bad.sum())} "
            f"points where it is not (smallest determinant {float(np.min(det)):.3g})."
        )


class SPDEParameters(eqx.Module):
    r"""The fields of the SPDE $\partial_t x + \{\kappa^2 + \mathbf m \cdot \nabla -
    \nabla\cdot(\mathbf H \nabla)\}\, x = \tau z$ on a grid, over a window of
    `n_times` states (see the module docstring for the shapes).

    **Arguments:**

    - `grid`: the `jaxda.grid.Grid`; `n_times` $T \ge 1$.
    - `kappa` $> 0$, `tau` $> 0$: scalars, fields `(ny, nx)` or `(T, ny, nx)`.
    - `advection`: $(m_x, m_y)$: `(2,)`, `(2, ny, nx)` or `(T, 2, ny, nx)`
      (default 0), in grid length units per time unit.
    - `diffusion`: $\mathbf H$ as $(H_{xx}, H_{xy}, H_{yy})$: a scalar $h$ (isotropic,
      $\mathbf H = h \mathbf I$), `(3,)`, `(3, ny, nx)` or `(T, 3, ny, nx)`; positive
      definite at every point (see `diffusion_from_anisotropy`).
    - `initial_tau` $> 0$: a scalar or `(ny, nx)` field, the amplitude of the initial
      state $x_0$ (see `jaxda.spde.SPDEPrior`); default
      $\tau_0 = \tau\kappa^{\alpha/2} / \sqrt{2 + \Delta t\,\kappa^\alpha}$ at time
      0, which makes the variance of $x_0$ the process's stationary variance when
      $\mathbf m = 0$, $\mathbf H = 0$ (`dt` is then needed).
    - `dt`: the time step, only to form the default `initial_tau`.
    - `alpha`: 2 (default, [BF24]) or 4, the power $\alpha/2$ of the operator:
      $B_k = I + \Delta t\,\mathcal A_k^{\alpha/2}$ and $K_0^{\alpha/2}$ for the
      initial state. With noise white in space, $\alpha = 2$ gives fields as rough as
      a Matérn field of smoothness 0 at equilibrium (spectrum $\propto 1/(2a +
      \Delta t\,a^2)$, $a = \kappa^2 + h k^2$), $\alpha = 4$ one of smoothness 1
      ($\propto 1/(2a^2 + \Delta t\,a^4)$), for smooth fields such as SSH.
    - `dtype`: floating dtype (default JAX's default float).

    Value checks (positivity, a positive definite $\mathbf H$) run on concrete values
    and raise `ValueError` naming the argument; `jaxda.spde.SPDEPrior` repeats them
    under `jit` and reports `RESULTS.invalid_input`.
    """

    kappa: Float[Array, "Tk yk xk"]
    advection: Float[Array, "Tm 2 ym xm"]
    diffusion: Float[Array, "Th 3 yh xh"]
    tau: Float[Array, "Tt yt xt"]
    initial_tau: Float[Array, "y0 x0"]
    n_times: int = eqx.field(static=True)
    grid_shape: tuple[int, int] = eqx.field(static=True)
    alpha: int = eqx.field(static=True)

    def __init__(
        self,
        grid: Grid,
        n_times: int,
        *,
        kappa,
        tau,
        advection=0.0,
        diffusion=1.0,
        initial_tau=None,
        dt: float | None = None,
        alpha: int = 2,
        dtype=None,
    ):
        if not isinstance(grid, Grid):
            raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid)}.")
        if isinstance(n_times, bool) or not isinstance(n_times, int | np.integer):
            raise TypeError(f"`n_times` must be an int; got {n_times!r}.")
        if n_times < 1:
            raise ValueError(f"`n_times` must be >= 1; got {n_times}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        if alpha not in (2, 4) or isinstance(alpha, bool):
            raise ValueError(f"`alpha` must be 2 or 4; got {alpha!r}.")
        self.alpha = int(alpha)
        self.n_times = int(n_times)
        self.grid_shape = grid.shape
        check_positive("kappa", kappa)
        check_positive("tau", tau)
        self.kappa = _field("kappa", kappa, n_times, grid, dtype)
        self.tau = _field("tau", tau, n_times, grid, dtype)
        if jnp.ndim(advection) == 0:
            advection = jnp.full((2,), advection, dtype)
        self.advection = _field("advection", advection, n_times, grid, dtype, 2)
        if jnp.ndim(diffusion) == 0:
            h = jnp.asarray(diffusion, dtype)
            diffusion = jnp.stack([h, jnp.zeros_like(h), h])
        self.diffusion = _field("diffusion", diffusion, n_times, grid, dtype, 3)
        _check_spd("diffusion", self.diffusion)
        if initial_tau is None:
            if dt is None:
                raise ValueError(
                    "`initial_tau` was not given: pass it, or pass `dt` to use the "
                    "stationary default tau kappa^(alpha/2) / sqrt(2 + dt kappa^alpha)."
                )
            check_positive("dt", dt)
            k0, t0 = self.kappa[0], self.tau[0]
            p = self.alpha // 2
            initial_tau = t0 * k0**p / jnp.sqrt(2 + dt * k0 ** (2 * p))
        else:
            check_positive("initial_tau", initial_tau)
            initial_tau = jnp.asarray(initial_tau, dtype)
            if initial_tau.ndim not in (0, 2) or (
                initial_tau.ndim == 2 and initial_tau.shape != grid.shape
            ):
                raise ValueError(
                    f"`initial_tau` must be a scalar or a {grid.shape} field; got "
                    f"shape {initial_tau.shape}."
                )
        self.initial_tau = (
            jnp.broadcast_to(jnp.asarray(initial_tau, dtype), (1, 1))
            if jnp.ndim(initial_tau) == 0
            else jnp.asarray(initial_tau, dtype)
        )

    @property
    def dtype(self):
        return self.kappa.dtype

    @property
    def spatially_constant(self) -> bool:
        """Whether every field is constant in space (then, on a periodic grid, every
        operator is a convolution and the FFT solves it exactly)."""
        return all(
            a.shape[-2:] == (1, 1)
            for a in (self.kappa, self.advection, self.diffusion, self.tau)
        ) and self.initial_tau.shape == (1, 1)

    @property
    def stationary_in_time(self) -> bool:
        """Whether every field has a length-1 time axis (one transition for all
        times)."""
        return all(
            a.shape[0] == 1
            for a in (self.kappa, self.advection, self.diffusion, self.tau)
        )

    def at(self, k) -> tuple[Array, Array, Array, Array]:
        """`(kappa, advection, diffusion, tau)` at time index `k` (an int)."""

        def take(a):
            return a[0] if a.shape[0] == 1 else a[k]

        return (
            take(self.kappa),
            take(self.advection),
            take(self.diffusion),
            take(self.tau),
        )

    def stacked(self) -> tuple[Array, Array, Array, Array]:
        """`(kappa, advection, diffusion, tau)` broadcast to a time axis of `n_times`
        (views: no copy under `jit`), for a scan over the window."""
        t = self.n_times
        return tuple(
            jnp.broadcast_to(a, (t, *a.shape[1:]))
            for a in (self.kappa, self.advection, self.diffusion, self.tau)
        )

    def values_valid(self):
        """Traceable: every amplitude positive and finite, every tensor SPD."""
        h = self.diffusion
        det = h[:, 0] * h[:, 2] - h[:, 1] ** 2
        ok = [
            jnp.all(jnp.isfinite(a) & (a > 0))
            for a in (self.kappa, self.tau, self.initial_tau)
        ]
        ok += [jnp.all(jnp.isfinite(self.advection))]
        ok += [jnp.all((h[:, 0] > 0) & (det > 0))]
        return jnp.all(jnp.stack(ok))
