r"""The SPDE parameters $\Theta$ of 4DVarNet-SPDE ([BF24]) as unconstrained fields.

The generative 4DVarNet augments its state with the parameter fields of an SPDE prior
(`jaxda.spde`). The solver updates them freely, so they are stored unconstrained,
one channel per quantity, in units of the grid (cells and time steps):

- 0: $\log\kappa$, $\kappa = e^{\theta_0}$ (per time unit);
- 1: $\log\tau$, $\tau = e^{\theta_1}$;
- 2, 3: the advection in cells per step, $\mathbf m = (\Delta x, \Delta y)\,
  \theta_{2:4} / \Delta t$;
- 4: the log isotropic diffusion in cells$^2$ per step, $\gamma = \Delta x\,\Delta y
  \, e^{\theta_4} / \Delta t$;
- 5, 6: the anisotropy in cells per $\sqrt{\text{step}}$, $\mathbf v = (\Delta x,
  \Delta y)\,\theta_{5:7} / \sqrt{\Delta t}$;

and $\mathbf H = \gamma\mathbf I + \mathbf v\mathbf v^\top$
(`jaxda.spde.diffusion_from_anisotropy`), positive definite for every $\theta$.
`advection=False` drops channels 2-3 (then $\mathbf m = 0$), `anisotropy=False`
channels 5-6 ($\mathbf H = \gamma\mathbf I$). Every field is shared by the states of a
window (stationary in time within it, non-stationary in space and across windows).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Float
from .._validation import check_positive
from ..grid._grid import Grid
from ..spde import SPDEParameters, SPDEPrior, diffusion_from_anisotropy


class SPDEFieldMap(eqx.Module):
    r"""Unconstrained fields $\theta$ `(P, ny, nx)` $\to$ the `jaxda.spde.SPDEPrior`
    of a window (the table of the module docstring).

    **Arguments:**

    - `grid`: the `jaxda.grid.Grid` of the prior (a closed grid gives the exact
      banded log-determinant for fields varying in space).
    - `n_times`: states per window $T$; `dt`: the time step.
    - `alpha`: the operator's power, 2 or 4 (`jaxda.spde.SPDEParameters`).
    - `advection`, `anisotropy`: whether $\mathbf m$ and $\mathbf v$ are learned.
    - `mean`: the prior mean $\mu$ (a scalar, e.g. 0 for anomalies).
    """

    grid: Grid = eqx.field(static=True)
    n_times: int = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    alpha: int = eqx.field(static=True, default=4)
    advection: bool = eqx.field(static=True, default=True)
    anisotropy: bool = eqx.field(static=True, default=True)
    mean: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        if not isinstance(self.grid, Grid):
            raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {self.grid!r}.")
        check_positive("dt", self.dt)
        if self.alpha not in (2, 4):
            raise ValueError(f"`alpha` must be 2 or 4; got {self.alpha!r}.")

    @property
    def n_channels(self) -> int:
        """$P$: 3 (kappa, tau, gamma), plus 2 with advection, plus 2 with
        anisotropy."""
        return 3 + 2 * self.advection + 2 * self.anisotropy

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(P, ny, nx)`: the shape of $\\theta$."""
        return (self.n_channels, *self.grid.shape)

    def _split(self, theta):
        log_kappa, log_tau, rest = theta[0], theta[1], theta[2:]
        if self.advection:
            move, rest = rest[:2], rest[2:]
        else:
            move = jnp.zeros((2, *theta.shape[1:]), theta.dtype)
        log_gamma, aniso = rest[0], rest[1:]
        if not self.anisotropy:
            aniso = jnp.zeros((2, *theta.shape[1:]), theta.dtype)
        return log_kappa, log_tau, move, log_gamma, aniso

    def _cells(self, dtype):
        return jnp.asarray([self.grid.dx, self.grid.dy], dtype)[:, None, None]

    def parameters(self, theta: Float[ArrayLike, "P ny nx"]) -> SPDEParameters:
        r"""The `jaxda.spde.SPDEParameters` of $\theta$ (traceable)."""
        theta = self._check(theta)
        log_kappa, log_tau, move, log_gamma, aniso = self._split(theta)
        cells = self._cells(theta.dtype)
        gamma = self.grid.dx * self.grid.dy * jnp.exp(log_gamma) / self.dt
        v = cells * aniso / math.sqrt(self.dt)
        return SPDEParameters(
            self.grid,
            self.n_times,
            kappa=jnp.exp(log_kappa),
            tau=jnp.exp(log_tau),
            advection=cells * move / self.dt,
            diffusion=diffusion_from_anisotropy(gamma, v),
            dt=self.dt,
            alpha=self.alpha,
            dtype=theta.dtype,
        )

    def prior(self, theta: Float[ArrayLike, "P ny nx"], **kwargs) -> SPDEPrior:
        """The `jaxda.spde.SPDEPrior` of $\\theta$ (`kwargs`: its `solver`, `rtol`,
        `max_steps`)."""
        return SPDEPrior(
            self.parameters(theta), self.grid, self.dt, mean=self.mean, **kwargs
        )

    def fields(
        self,
        *,
        kappa,
        tau,
        diffusion,
        advection=(0.0, 0.0),
        anisotropy=(0.0, 0.0),
        dtype=None,
    ) -> Float[Array, "P ny nx"]:
        r"""$\theta$ of given physical values (the inverse of `parameters`): `kappa`,
        `tau`, the isotropic `diffusion` $\gamma$ (scalars or `(ny, nx)` fields),
        `advection` $\mathbf m$ and `anisotropy` $\mathbf v$ (`(2,)` or `(2, ny,
        nx)`), e.g. a stationary prior fitted by maximum likelihood as the start
        $\Theta^{(0)}$ of the solver."""
        check_positive("kappa", kappa)
        check_positive("tau", tau)
        check_positive("diffusion", diffusion)
        dtype = jnp.result_type(float) if dtype is None else dtype
        shape = self.grid.shape

        def field(v):
            return jnp.broadcast_to(jnp.asarray(v, dtype), shape)

        def pair(v, name):
            v = jnp.asarray(v, dtype)
            if v.shape[:1] != (2,):
                raise ValueError(
                    f"`{name}` must have shape (2,) or (2, ny, nx); got {v.shape}."
                )
            v = v.reshape(2, *v.shape[1:], *(() if v.ndim > 1 else (1, 1)))
            return jnp.broadcast_to(v, (2, *shape))

        cells = self._cells(dtype)
        channels = [jnp.log(field(kappa))[None], jnp.log(field(tau))[None]]
        if self.advection:
            channels.append(pair(advection, "advection") * self.dt / cells)
        log_gamma = jnp.log(field(diffusion) * self.dt / (self.grid.dx * self.grid.dy))
        channels.append(log_gamma[None])
        if self.anisotropy:
            channels.append(pair(anisotropy, "anisotropy") * math.sqrt(self.dt) / cells)
        return jnp.concatenate(channels)

    def _check(self, theta) -> Array:
        theta = jnp.asarray(theta)
        if theta.shape != self.shape:
            raise ValueError(
                f"`theta` must have shape {self.shape} (P, ny, nx) for this field map; "
                f"got {theta.shape}."
            )
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            theta = theta.astype(jnp.result_type(float))
        return theta


__all__ = ["SPDEFieldMap"]
