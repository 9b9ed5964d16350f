r"""Weak-constraint 4DVar in the forcing formulation, matrix-free.

The state formulation (`WeakConstraint4DVar`) takes the whole trajectory as control
and weights the model errors $x_{t+1} - \Phi(x_t)$ by $Q^{-1}$, which needs $Q^{-1}$
and, in Gauss-Newton, dense $n \times n$ blocks. The forcing formulation [T06] takes
the initial state and the model-error forcings as control,

$$x_t = \Phi(x_{t-1}) + \eta_t, \qquad t = 1, \dots, T-1,$$

and with the control-variable transform on both, $x_0 = x_b + U_B w$,
$\eta_t = U_Q v_t$ ($B = U_B U_B^\top$, $Q = U_Q U_Q^\top$), the cost is

$$J(w, v) = \tfrac12\|w\|^2 + \tfrac12 \sum_{t=1}^{T-1} \|v_t\|^2
+ \tfrac12 \sum_t \|h_t(x_t) - y_t\|^2_{R_t^{-1}, \mathrm{mask}}:$$

no inverse covariance, one forward run of the model per cost, one adjoint run per
gradient, and every matrix-free solver applies (`LBFGS`, `GaussNewtonCG`). The map
$(x_0, \eta) \mapsto x$ is a bijection, so the minimiser is that of the state
formulation with the same $B$ and $Q$ (exactly, for square invertible $U_B, U_Q$);
as $Q \to 0$ the forcings vanish and it tends to the strong-constraint minimiser.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._results import all_finite
from ..grid import AbstractCovariance
from ..models import AbstractFlowMap
from ._control_transform import (
    check_control_array,
    check_covariance,
    check_no_background,
)
from ._costs import AbstractVarProblem, StrongConstraint4DVar, _obs_term
from ._solution import Solution


class WeakConstraintForcing(AbstractVarProblem):
    r"""Weak-constraint 4DVar with model-error forcings as control (module docstring).

    The control is the pair $(w, v)$: $w$ of shape `background_covariance.
    control_shape` ($x_0 = x_b + U_B w$) and $v$ of shape
    `(T - 1, *model_error_covariance.control_shape)` (the forcing
    $\eta_t = U_Q v_{t-1}$ added after step $t$), for a window of $T$ states.

    **Arguments:**

    - `problem`: a `StrongConstraint4DVar` giving the flow map (a
      `jaxda.models.AbstractFlowMap`), the observations, `obs_var` and the
      observation operator; it must have no `background` of its own.
    - `mean`: the background $x_b$ of the initial state.
    - `background_covariance`: $B$, a `jaxda.grid.AbstractCovariance` on the state.
    - `model_error_covariance`: $Q$, the covariance of every $\eta_t$ (the same at
      every step), a `jaxda.grid.AbstractCovariance` on the state.
    - `checkpoint`: rematerialise each model step in reverse mode (default `False`;
      see `jaxda.models.rollout`).

    `initial_control()` is $(0, 0)$ (the background run), `trajectory(control)` the
    states $x_0, \dots, x_{T-1}$, and `map_solution` turns a `Solution` in $(w, v)$
    into one whose `x` is that trajectory.
    """

    problem: StrongConstraint4DVar
    mean: Float[Array, "*state"]
    background_covariance: AbstractCovariance
    model_error_covariance: AbstractCovariance
    checkpoint: bool = eqx.field(static=True, default=False)

    def __init__(
        self,
        problem,
        mean,
        background_covariance,
        model_error_covariance,
        checkpoint: bool = False,
    ):
        if not isinstance(problem, StrongConstraint4DVar):
            raise TypeError(
                "`problem` must be a jaxda.var.StrongConstraint4DVar (its flow, "
                f"observations and operator); got {type(problem).__name__}."
            )
        if not isinstance(problem.flow, AbstractFlowMap):
            raise TypeError(
                "`problem.flow` must be a one-step jaxda.models.AbstractFlowMap (the "
                f"forcing is added after each step); got {type(problem.flow).__name__}."
            )
        check_no_background("problem", problem)
        mean = jnp.asarray(mean)
        problem.check_control("mean", mean)
        check_covariance("background_covariance", background_covariance, mean.shape)
        check_covariance("model_error_covariance", model_error_covariance, mean.shape)
        if not isinstance(checkpoint, bool):
            raise TypeError(
                f"`checkpoint` must be a bool; got {type(checkpoint).__name__}."
            )
        self.problem = problem
        self.mean = mean
        self.background_covariance = background_covariance
        self.model_error_covariance = model_error_covariance
        self.checkpoint = checkpoint

    @property
    def n_times(self) -> int:
        """$T$, the number of states in the window."""
        return int(jnp.shape(self.problem.obs.values)[0])

    @property
    def shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the control `(w, v)`."""
        w_shape = tuple(self.background_covariance.control_shape)
        v_shape = (self.n_times - 1, *self.model_error_covariance.control_shape)
        return (w_shape, v_shape)

    def initial_control(self) -> tuple[Array, Array]:
        """$(w, v) = (0, 0)$: the model run from the background."""
        w_shape, v_shape = self.shape
        return (jnp.zeros(w_shape, self.dtype), jnp.zeros(v_shape, self.dtype))

    def forcings(self, v: Float[Array, " Tm1 *control"]) -> Float[Array, " Tm1 *state"]:
        r"""$\eta_t = U_Q v_t$ for every step."""
        return jax.vmap(self.model_error_covariance.sqrt)(v)

    def trajectory(self, control) -> Float[Array, " T *state"]:
        r"""$x_0 = x_b + U_B w$, $x_t = \Phi(x_{t-1}) + \eta_t$."""
        w, v = control
        flow = self.problem.flow
        x0 = self.mean + self.background_covariance.sqrt(w)
        dtype = jnp.result_type(x0)
        steps = self.n_times - 1
        ts = jnp.asarray(flow.dt, dtype) * jnp.arange(steps, dtype=dtype)

        def body(x, inputs):
            t, eta = inputs
            x_next = flow(x, t) + eta
            return x_next, x_next

        if self.checkpoint:
            body = jax.checkpoint(body, prevent_cse=False)
        _, xs = jax.lax.scan(body, x0, (ts, self.forcings(v)))
        return jnp.concatenate([x0[None], xs], axis=0)

    def map_solution(self, solution: Solution) -> Solution:
        """`solution` (of a solve in $(w, v)$) with `x` and `iterates.x` mapped to
        the trajectory; the cost, steps, result and stats are unchanged."""
        out = eqx.tree_at(lambda s: s.x, solution, self.trajectory(solution.x))
        if solution.iterates is not None and solution.iterates.x is not None:
            xs = jax.vmap(self.trajectory)(solution.iterates.x)
            out = eqx.tree_at(lambda s: s.iterates.x, out, xs)
        return out

    def check_control(self, name, control):
        if not (isinstance(control, tuple) and len(control) == 2):
            raise ValueError(
                f"`{name}` must be a tuple (w, v) of the initial-state control and "
                "the forcing controls."
            )
        w_shape, v_shape = self.shape
        check_control_array(f"{name}[0]", control[0], w_shape)
        check_control_array(f"{name}[1]", control[1], v_shape)

    def values_valid(self):
        return self.problem.values_valid() & all_finite(self.mean)

    def residual_terms(self, control):
        w, v = control
        p = self.problem
        obs = _obs_term(self.trajectory(control), p.obs, p.obs_var, p.operator)
        return (obs, w, v)
