"""The Lorenz (1996) periodic model."""

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_int, check_real
from ._base import AbstractDynamics


class Lorenz96(AbstractDynamics):
    r"""Lorenz-96 on a periodic ring of `n` sites.

    $$\dot x_i = (x_{i+1} - x_{i-2})\, x_{i-1} - x_i + F,\qquad x_{i+n} = x_i.$$

    `x = F` (all sites) is a fixed point. **Arguments:** `n` (>= 4, static, default 40),
    `forcing` F (default 8: chaotic; a finite real number, float or array).
    """

    n: int = eqx.field(static=True, default=40)
    forcing: Float[Array, ""] | float = 8.0

    def __check_init__(self):
        check_int("n", self.n, minimum=4)
        check_real("forcing", self.forcing)

    def vector_field(self, t, x: Float[Array, " n"]) -> Float[Array, " n"]:
        # one periodic padding instead of three rolls (fewer kernels per step):
        # xp[i + 2] = x[i], so x[i+1] = xp[i+3], x[i-1] = xp[i+1], x[i-2] = xp[i]
        xp = jnp.concatenate([x[-2:], x, x[:1]])
        return (xp[3:] - xp[:-3]) * xp[1:-2] - x + self.forcing

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n,)

    @property
    def reference_state(self) -> Float[Array, " n"]:
        """The fixed point `x = F` with `x_0` nudged by 0.01 (Lorenz's usual start)."""
        x = jnp.full((self.n,), 1.0) * self.forcing
        return x.at[0].add(0.01)
