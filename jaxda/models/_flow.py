"""One-step flow maps `Phi: x(t) -> x(t + dt)` for use inside cost functions.

A flow map is evaluated thousands of times inside a 4DVar cost, so it is a plain JAX
function of the state (a fixed-step Runge-Kutta step, optionally with substeps), not a
`diffrax.diffeqsolve` per step, which costs far more (docs/performance.md).
`DiffraxStep` gives any diffrax solver's single `.step` when a particular scheme is
wanted.
"""

import abc

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_choice, check_int, check_positive
from ._base import AbstractDynamics


class AbstractFlowMap(eqx.Module):
    """Maps a state at time `t` to the state at `t + dt`: `x[t+1] = Phi(x[t])`."""

    model: eqx.AbstractVar[AbstractDynamics]
    dt: eqx.AbstractVar[float]
    substeps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def _step(self, x, t, h):
        """One step of size `h` from `(t, x)`."""

    def __call__(
        self, x: Float[Array, "*state"], t: Float[Array, ""] | float = 0.0
    ) -> Float[Array, "*state"]:
        h = self.dt / self.substeps
        if self.substeps == 1:
            return self._step(x, t, h)

        def body(i, x):
            return self._step(x, t + i * h, h)

        return jax.lax.fori_loop(0, self.substeps, body, x)

    def __check_init__(self):
        check_positive("dt", self.dt)
        check_int("substeps", self.substeps, minimum=1)

    @property
    def order(self) -> int:
        """Global order of accuracy of the scheme."""
        return 1


class Euler(AbstractFlowMap):
    r"""Explicit Euler $x \mapsto x + h f(t, x)$, `substeps` steps of $h = dt/substeps$.

    First order: error $O(dt)$ over a fixed horizon.
    """

    model: AbstractDynamics
    dt: float
    substeps: int = eqx.field(static=True, default=1)

    def _step(self, x, t, h):
        return x + h * self.model.vector_field(t, x)


class RK4(AbstractFlowMap):
    r"""Classical fourth-order Runge-Kutta, `substeps` steps of $h = dt / substeps$.

    $$k_1 = f(t, x),\ k_2 = f(t + h/2, x + h k_1/2),\ k_3 = f(t + h/2, x + h k_2/2),\
    k_4 = f(t + h, x + h k_3),\quad x \mapsto x + h (k_1 + 2k_2 + 2k_3 + k_4)/6.$$
    """

    model: AbstractDynamics
    dt: float
    substeps: int = eqx.field(static=True, default=1)

    def _step(self, x, t, h):
        f = self.model.vector_field
        k1 = f(t, x)
        k2 = f(t + h / 2, x + (h / 2) * k1)
        k3 = f(t + h / 2, x + (h / 2) * k2)
        k4 = f(t + h, x + h * k3)
        return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    @property
    def order(self) -> int:
        return 4


class DiffraxStep(AbstractFlowMap):
    """One `.step` of a diffrax solver (default `Tsit5`) per substep, no step control.

    No step-size control and no `diffeqsolve` overhead: the same cost class as `RK4`.
    """

    model: AbstractDynamics
    dt: float
    substeps: int = eqx.field(static=True, default=1)
    solver: diffrax.AbstractSolver = diffrax.Tsit5()

    def _step(self, x, t, h):
        term = diffrax.ODETerm(lambda t, y, args: self.model.vector_field(t, y))
        t0 = jnp.asarray(t, dtype=jnp.result_type(x))
        t1 = t0 + h
        state = self.solver.init(term, t0, t1, x, None)
        x1, _, _, _, _ = self.solver.step(term, t0, t1, x, None, state, made_jump=False)
        return x1

    @property
    def order(self) -> int:
        return self.solver.order(diffrax.ODETerm(lambda t, y, a: y))


def flow_map(
    model: AbstractDynamics, dt: float, method: str = "rk4", substeps: int = 1
) -> AbstractFlowMap:
    """Build the one-step flow map of `model` over `dt`.

    **Arguments:** `model`; `dt` > 0; `method` in `"rk4"`, `"euler"` (hand-written
    schemes) or `"tsit5"`, `"dopri5"`, `"heun"`, `"midpoint"` (one diffrax solver
    `.step`, see `DiffraxStep`); `substeps` >= 1 internal steps per `dt`.

    **Returns:** a callable `Phi(x, t=0.0) -> x(t + dt)`.
    """
    if not isinstance(model, AbstractDynamics):
        raise TypeError(
            "`model` must be a jaxda.models.AbstractDynamics; got "
            f"{type(model).__name__}."
        )
    methods = {"rk4": RK4, "euler": Euler}
    diffrax_solvers = {
        "tsit5": diffrax.Tsit5,
        "dopri5": diffrax.Dopri5,
        "heun": diffrax.Heun,
        "midpoint": diffrax.Midpoint,
    }
    check_choice("method", method, (*methods, *diffrax_solvers))
    if method in diffrax_solvers:
        return DiffraxStep(model, dt, substeps, diffrax_solvers[method]())
    return methods[method](model, dt, substeps)


def rollout(
    flow: AbstractFlowMap,
    x0: Float[Array, "*state"],
    n_steps: int,
    t0: float = 0.0,
    *,
    checkpoint: bool = False,
) -> Float[Array, " n_steps+1 *state"]:
    r"""Iterate a flow map: `[x0, Phi(x0), Phi(Phi(x0)), ...]`, `n_steps + 1` states.

    A `lax.scan`, so cost is linear in `n_steps` and compile time constant; step `k`
    starts at time `t0 + k dt` (in the dtype of `x0`).

    **Checkpointing.** Reverse-mode differentiation (a 4DVar gradient: one adjoint
    run) normally stores every intermediate of every step: the stages of the scheme
    and the vector field's temporaries, $O(T\,s\,n)$ for $T$ steps, $s$
    intermediates of state size $n$ per step. With `checkpoint=True` each step is
    rematerialised (`jax.checkpoint` of the scan body): only the states
    $x_0 \dots x_T$ are kept (they are returned anyway) and the adjoint of step $k$
    recomputes that step's intermediates from $x_k$, one step at a time, at the price
    of one more forward step per step ($O(T n + s n)$ memory). A two-level
    $\sqrt T$ scheme would save nothing more here: the trajectory is the output.
    The values and derivatives are the same as without checkpointing.

    **Arguments:** `flow` an `AbstractFlowMap`; `x0` of shape `flow.model.state_shape`;
    `n_steps` >= 0 (static); `t0` the time of `x0`; `checkpoint` (keyword, default
    `False`): rematerialise each step in reverse mode (see above).

    **Returns:** the states `x_0 ... x_{n_steps}`, shape `(n_steps + 1, *state_shape)`.
    """
    if not isinstance(flow, AbstractFlowMap):
        raise TypeError(
            f"`flow` must be a jaxda.models.AbstractFlowMap; got {type(flow).__name__}."
        )
    n_steps = check_int("n_steps", n_steps, minimum=0)
    if not isinstance(checkpoint, bool):
        raise TypeError(
            f"`checkpoint` must be a bool; got {type(checkpoint).__name__} "
            f"({checkpoint!r})."
        )
    flow.model.check_state("x0", x0)
    x0 = jnp.asarray(x0)
    t0 = jnp.asarray(t0, jnp.result_type(x0))
    return _rollout(flow, x0, n_steps, t0, checkpoint)


@eqx.filter_jit
def _rollout(flow, x0, n_steps, t0, checkpoint=False):
    # Jitted so that eager calls compile once per configuration (an eager `lax.scan`
    # re-traces and re-compiles its body at every call); inlined under an outer jit.
    dtype = jnp.result_type(x0)
    ts = t0 + jnp.asarray(flow.dt, dtype) * jnp.arange(n_steps, dtype=dtype)

    def body(x, t):
        x_next = flow(x, t)
        return x_next, x_next

    if checkpoint:
        # Inside a scan, common-subexpression elimination cannot merge the
        # recomputation with the forward pass, so `prevent_cse` is not needed.
        body = jax.checkpoint(body, prevent_cse=False)
    _, xs = jax.lax.scan(body, x0, ts)
    return jnp.concatenate([x0[None], xs], axis=0)
