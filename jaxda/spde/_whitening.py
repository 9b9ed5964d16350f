r"""The whitening operator $G$ of an SPDE window ($Q = G^\top G$), with its stencils
computed once, so that every product inside an iterative solver is nine
multiply-adds per block.

$(Gv)_0 = K_0^{\alpha/2} v_0 / s_0$ and $(Gv)_k = (B_k v_k - v_{k-1}) / s_k$, with
$B_k = I + \Delta t\,\mathcal A_k^{\alpha/2}$, $s_0 = \tau_0$ and $s_k = \tau_k
\sqrt{\Delta t}$ (fields), $K_0$ and $\mathcal A_k$ 9-point operators applied
$\alpha/2$ times (`jaxda.spde.SPDEPrior`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from ..grid._grid import Grid
from ._operator import apply_stencil, stencil
from ._parameters import SPDEParameters


class Whitening(eqx.Module):
    """$G$ from precomputed stencils (`steps` has one entry per transition, or one
    for all when the parameters are stationary in time; none when $T = 1$)."""

    initial: Float[Array, "9 ny nx"]
    steps: Float[Array, "S 9 ny nx"]
    scales: Float[Array, "T ny nx"]
    dt: float = eqx.field(static=True)
    power: int = eqx.field(static=True)
    grid: Grid = eqx.field(static=True)

    @classmethod
    def build(
        cls, params: SPDEParameters, grid: Grid, dt: float, alpha: int = 2
    ) -> "Whitening":
        kap, adv, dif, tau = params.stacked()
        initial = stencil(grid, kap[0], adv[0], dif[0], include_advection=False)
        n_times = params.n_times
        if n_times == 1:
            steps = jnp.zeros((0, *initial.shape), initial.dtype)
        else:
            n_steps = 1 if params.stationary_in_time else n_times - 1
            steps = jax.vmap(lambda k, a, h: stencil(grid, k, a, h))(
                kap[1 : 1 + n_steps], adv[1 : 1 + n_steps], dif[1 : 1 + n_steps]
            )
        shape = (n_times, *grid.shape)
        scales = jnp.broadcast_to(tau * jnp.sqrt(jnp.asarray(dt, tau.dtype)), shape)
        first = jnp.broadcast_to(params.initial_tau, grid.shape)
        scales = jnp.concatenate([first[None], scales[1:]])
        return cls(initial, steps, scales, float(dt), alpha // 2, grid)

    @property
    def n_times(self) -> int:
        return self.scales.shape[0]

    @property
    def radius(self) -> int:
        """The stencil radius of every block ($\\alpha/2$ cells)."""
        return self.power

    def all_steps(self) -> Float[Array, "T1 9 ny nx"]:
        """The stencils of $\\mathcal A_1, \\dots, \\mathcal A_{T-1}$."""
        n = self.n_times - 1
        return jnp.broadcast_to(self.steps, (n, *self.steps.shape[1:]))

    def _power(self, coefficients, p):
        for _ in range(self.power):
            p = apply_stencil(coefficients, p, self.grid)
        return p

    def initial_block(self):
        """$K_0^{\\alpha/2}$, fields to fields."""
        return lambda p: self._power(self.initial, p)

    def step_block(self, coefficients):
        """$B = I + \\Delta t\\,\\mathcal A^{\\alpha/2}$ of a step's stencil."""
        return lambda p: p + self.dt * self._power(coefficients, p)

    def apply(self, v: Float[Array, "T ny nx"]) -> Float[Array, "T ny nx"]:
        """$G v$."""
        first = self.initial_block()(v[0])[None]
        if self.n_times == 1:
            return first / self.scales
        bx = jax.vmap(lambda c, p: self.step_block(c)(p))(self.all_steps(), v[1:])
        return jnp.concatenate([first, bx - v[:-1]]) / self.scales

    def transpose(self, z: Float[Array, "T ny nx"]) -> Float[Array, "T ny nx"]:
        """$G^\\top z$."""
        zero = jnp.zeros(self.scales.shape, z.dtype)
        return jax.linear_transpose(self.apply, zero)(z)[0]

    def gram(self, v: Float[Array, "T ny nx"]) -> Float[Array, "T ny nx"]:
        """$Q v = G^\\top G v$."""
        return self.transpose(self.apply(v))

    def gram_diagonal(self) -> Float[Array, "T ny nx"]:
        r"""$\mathrm{diag}(Q)$: $\mathrm{diag}(X_k^\top W_k X_k)$ per block by probing
        with colourings of period $2r + 1$ ($X$ of radius $r = \alpha/2$, its Gram of
        radius $2r$, so same-coloured cells never share a row), plus $W_{k+1}$ from
        the next step's identity term ($W_k = 1/s_k^2$)."""
        combs = colour_combs(self.grid, self.scales.dtype, 2 * self.radius + 1)
        w = 1.0 / self.scales**2
        zero = jnp.zeros(self.grid.shape, self.scales.dtype)

        def gram_diag(apply, weight):
            apply_t = jax.linear_transpose(apply, zero)
            prods = jax.vmap(lambda p: apply_t(weight * apply(p))[0])(combs)
            return jnp.sum(prods * combs, axis=0)

        first = gram_diag(self.initial_block(), w[0])[None]
        if self.n_times == 1:
            return first
        rest = jax.vmap(lambda c, wk: gram_diag(self.step_block(c), wk))(
            self.all_steps(), w[1:]
        )
        return jnp.concatenate([first, rest]).at[:-1].add(w[1:])


def _axis_colours(n: int, periodic: bool, period: int) -> np.ndarray:
    """Colours along one axis: cells of one colour are >= `period` apart (cyclically
    on a periodic axis, where the last `n % period` cells get colours of their
    own)."""
    i = np.arange(n)
    if not periodic or n % period == 0:
        return i % period
    q = period * (n // period)
    return np.where(i < q, i % period, period + i - q)


def colour_combs(grid: Grid, dtype, period: int = 3) -> Array:
    """`(C, ny, nx)` indicator fields of the 2-D colours (static)."""
    cy = _axis_colours(grid.ny, grid.periodic, period)
    cx = _axis_colours(grid.nx, grid.periodic, period)
    ncx = int(cx.max()) + 1
    colour = cy[:, None] * ncx + cx[None, :]
    n = (int(cy.max()) + 1) * ncx
    return jnp.asarray(colour[None] == np.arange(n)[:, None, None], dtype)
