"""The damped nonlinear pendulum."""

import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_real
from ._base import AbstractDynamics


class Pendulum(AbstractDynamics):
    r"""Damped nonlinear pendulum with state `x = (angle, angular velocity)`.

    $$\dot\theta = \omega,\qquad \dot\omega = -\omega_0^2 \sin\theta - \gamma\,\omega.$$

    **Arguments:** `omega0_sq` = g / l (default 1), `damping` gamma (default 0:
    undamped); finite real numbers, floats or arrays.
    """

    omega0_sq: Float[Array, ""] | float = 1.0
    damping: Float[Array, ""] | float = 0.0

    def __check_init__(self):
        check_real("omega0_sq", self.omega0_sq)
        check_real("damping", self.damping)

    def vector_field(self, t, x: Float[Array, "2"]) -> Float[Array, "2"]:
        theta, omega = x[0], x[1]
        return jnp.stack(
            [omega, -self.omega0_sq * jnp.sin(theta) - self.damping * omega]
        )

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def component_names(self) -> tuple[str, ...]:
        return ("angle", "velocity")
