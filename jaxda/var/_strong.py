r"""Dense Gauss-Newton / Levenberg-Marquardt for small controls (strong constraint).

For a strong-constraint problem the control is the initial state $x_0$ of size $n$, so
the normal equations $J_r^T J_r\,\delta = -J_r^T r$ are a dense $n \times n$ system
(plus the model parameters for joint estimation). The residual Jacobian $J_r$ is
computed through the trajectory either in forward mode (`jacobian="fwd"`, $n$ tangent
passes) or reverse mode (`"rev"`, one adjoint pass per residual). A trajectory
integrated by diffrax needs an adjoint compatible with the mode:
`DiffraxTrajectory(adjoint=diffrax.ForwardMode())` for `"fwd"`, the default
`RecursiveCheckpointAdjoint` for `"rev"`.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._custom_types import Array, Float
from .._validation import check_choice, check_int, check_positive
from ..models import AbstractDynamics
from ._gauss_newton import (
    AbstractAdaptiveLevenbergMarquardt,
    AbstractLineSearchGaussNewton,
)


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


def _dense_system(problem, u, jacobian: str):
    flat, unravel = ravel_pytree(u)

    def res(z):
        return problem.residuals(unravel(z))

    r = res(flat)
    jac = jax.jacfwd(res)(flat) if jacobian == "fwd" else jax.jacrev(res)(flat)
    return jac.T @ jac, jac.T @ r, unravel


def _chol_solve(A, b):
    chol = jnp.linalg.cholesky(A)
    ok = jnp.all(jnp.isfinite(chol))
    return jax.scipy.linalg.cho_solve((chol, True), b), ok


class DenseGaussNewton(AbstractLineSearchGaussNewton):
    r"""Gauss-Newton with Armijo backtracking and dense normal equations.

    For small controls: the initial state of a `StrongConstraint4DVar` (and model
    parameters in a `JointStateParameter`). Each step forms the residual Jacobian $J_r$
    (`jacobian="fwd"` or `"rev"`), solves $(J_r^T J_r)\,\delta = -J_r^T r$ by Cholesky
    and backtracks on the step length as `GaussNewton`. Cost $O(m n^2 + n^3)$ per step
    for $m$ residuals and $n$ unknowns: do not use it on a whole trajectory.

    **Arguments:** `rtol`, `atol`, `jacobian` (`"fwd"` default, `"rev"`),
    `max_backtracks`, `armijo`.
    """

    jacobian: str = eqx.field(static=True, default="fwd")
    max_backtracks: int = eqx.field(static=True, default=20)
    armijo: float = 1e-4

    def __check_init__(self):
        check_choice("jacobian", self.jacobian, ("fwd", "rev"))

    def direction(self, problem, u):
        A, g, unravel = _dense_system(problem, u, self.jacobian)
        delta, ok = _chol_solve(A, -g)
        return unravel(delta), unravel(g), ok


class DenseLevenbergMarquardt(AbstractAdaptiveLevenbergMarquardt):
    r"""Levenberg-Marquardt with adaptive damping and dense normal equations.

    Solves $(J_r^T J_r + \lambda\,\mathrm{diag}(J_r^T J_r))\,\delta = -J_r^T r$; damping
    rule as `LevenbergMarquardt`. For small controls (strong-constraint $x_0$).

    **Arguments:** `rtol`, `atol`, `jacobian` (`"fwd"`/`"rev"`), `damping` (1e-3),
    `max_damping` (1e10).
    """

    jacobian: str = eqx.field(static=True, default="fwd")
    damping: float = 1e-3
    max_damping: float = 1e10

    def __check_init__(self):
        check_choice("jacobian", self.jacobian, ("fwd", "rev"))
        check_positive("damping", self.damping)

    def damped_direction(self, problem, u, lam):
        A, g, unravel = _dense_system(problem, u, self.jacobian)
        A = A + lam * jnp.diag(jnp.diagonal(A))
        delta, ok = _chol_solve(A, -g)
        return unravel(delta), unravel(g), ok
