"""The Lorenz (1963) convection model."""

import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_real
from ._base import AbstractDynamics


class Lorenz63(AbstractDynamics):
    r"""Lorenz-63: a three-variable model of atmospheric convection.

    $$\dot u_1 = \sigma (u_2 - u_1),\quad \dot u_2 = \rho u_1 - u_2 - u_1 u_3,\quad
    \dot u_3 = u_1 u_2 - \beta u_3.$$

    **Arguments:** `sigma`, `rho`, `beta` (defaults 10, 28, 8/3: the chaotic regime):
    finite real numbers, Python floats or arrays (e.g. `jnp.array(28.0)`, to learn
    them); anything else is a `TypeError` naming the parameter.
    """

    sigma: Float[Array, ""] | float = 10.0
    rho: Float[Array, ""] | float = 28.0
    beta: Float[Array, ""] | float = 8.0 / 3.0

    def __check_init__(self):
        check_real("sigma", self.sigma)
        check_real("rho", self.rho)
        check_real("beta", self.beta)

    def vector_field(self, t, x: Float[Array, "3"]) -> Float[Array, "3"]:
        u1, u2, u3 = x[0], x[1], x[2]
        return jnp.stack(
            [
                self.sigma * (u2 - u1),
                self.rho * u1 - u2 - u1 * u3,
                u1 * u2 - self.beta * u3,
            ]
        )

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (3,)

    @property
    def reference_state(self) -> Float[Array, "3"]:
        """`(1, 1, 1)`: off the unstable fixed point at the origin."""
        return jnp.ones(3)

    @property
    def component_names(self) -> tuple[str, ...]:
        return ("u1", "u2", "u3")
