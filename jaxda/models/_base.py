"""The abstract dynamical system: an ODE `dx/dt = f(t, x)` with learnable parameters."""

import abc

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_finite


class AbstractDynamics(eqx.Module):
    """A dynamical system `dx/dt = f(t, x)`.

    Physical parameters are array fields of the Module, so they can be differentiated
    and learned; sizes are static fields. Subclasses implement `vector_field` and
    `state_shape`.
    """

    @abc.abstractmethod
    def vector_field(
        self, t: Float[Array, ""] | float, x: Float[Array, "*state"]
    ) -> Float[Array, "*state"]:
        """The right-hand side `f(t, x)` of the ODE."""

    @property
    @abc.abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state `x(t)`."""

    @property
    def reference_state(self) -> Float[Array, "*state"]:
        """A typical state: the centre of `sample_initial_states` (default zeros)."""
        return jnp.zeros(self.state_shape)

    @property
    def component_names(self) -> tuple[str, ...]:
        """Names of the state components (flattened order)."""
        size = 1
        for s in self.state_shape:
            size *= s
        return tuple(f"x{i}" for i in range(size))

    def check_state(self, name: str, x, *, leading: int = 0) -> None:
        """Validate a state array: shape `(*leading_dims, *state_shape)`, finite.

        `leading` is the number of leading (batch or time) axes allowed before the
        state. Finiteness is checked on concrete values only (not under `jit`).
        """
        shape = tuple(jnp.shape(x))
        n = len(self.state_shape)
        if len(shape) != leading + n or shape[leading:] != self.state_shape:
            lead = "*, " * leading
            dims = ", ".join(map(str, self.state_shape))
            raise ValueError(
                f"`{name}` must have shape ({lead}{dims}"
                f"{',' if n == 1 and not leading else ''}) for {type(self).__name__}; "
                f"got {shape}."
            )
        check_finite(name, x)
