r"""A strong-constraint trajectory integrated by diffrax.

For a strong-constraint problem the control is the initial state $x_0$, and the dense
solvers (`DenseGaussNewton`, `DenseLevenbergMarquardt`) differentiate the residuals
through the trajectory in forward mode (`jacobian="fwd"`) or reverse mode (`"rev"`).
A trajectory integrated by diffrax needs an adjoint compatible with the mode:
`DiffraxTrajectory(adjoint=diffrax.ForwardMode())` for `"fwd"`, the default
`RecursiveCheckpointAdjoint` for `"rev"`.
"""

import diffrax
import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_int, check_positive
from ..models import AbstractDynamics


class DiffraxTrajectory(eqx.Module):
    r"""A model trajectory $x_t = x(t_0 + t\,dt)$ from one `diffrax.diffeqsolve`.

    Use as the `flow` of a `StrongConstraint4DVar`. With the default constant step size
    there are `substeps` solver steps per `dt`.

    **Arguments:** `model` (an `AbstractDynamics`), `dt` > 0, `solver` (default
    `diffrax.Tsit5()`), `substeps` (default 1), `adjoint` (default
    `diffrax.RecursiveCheckpointAdjoint()`: reverse mode only; use
    `diffrax.ForwardMode()` or `diffrax.DirectAdjoint()` for forward-mode Jacobians),
    `t0`.
    """

    model: AbstractDynamics
    dt: float
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    substeps: int = eqx.field(static=True, default=1)
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    t0: float = 0.0

    def __check_init__(self):
        if not isinstance(self.model, AbstractDynamics):
            raise TypeError(
                "`model` must be a jaxda.models.AbstractDynamics; got "
                f"{type(self.model).__name__}."
            )
        check_positive("dt", self.dt)
        check_int("substeps", self.substeps, minimum=1)

    def __call__(
        self, x0: Float[Array, "*state"], n_steps: int
    ) -> Float[Array, " n_steps_plus_1 *state"]:
        """The states at $t_0, t_0 + dt, \\dots, t_0 + n\\,dt$."""
        term = diffrax.ODETerm(lambda t, y, args: self.model.vector_field(t, y))
        dtype = jnp.result_type(x0)
        ts = self.t0 + self.dt * jnp.arange(n_steps + 1, dtype=dtype)
        sol = diffrax.diffeqsolve(
            term,
            self.solver,
            t0=ts[0],
            t1=ts[-1],
            dt0=jnp.asarray(self.dt / self.substeps, dtype),
            y0=x0,
            saveat=diffrax.SaveAt(ts=ts),
            adjoint=self.adjoint,
            max_steps=n_steps * self.substeps + 1,
        )
        return sol.ys
