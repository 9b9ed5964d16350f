r"""4DVar with the motion as control: strong and weak constraint, with penalties.

The state $x = (q, u, v)$ carries what is observed ($q$: a height or a tracer image)
and the velocity $\mathbf w = (u, v)$ that moves it. With the one-step model $\Phi$
(`jaxda.models.ForwardBackward` for shallow water, `SSPRK3` of an `Advection2D` with
the velocity in the state) and observations $y_t$ of $q$ only, the motion is
recovered by minimising

- strong constraint (control $x_0$, $x_t = \Phi^t(x_0)$):
  $$J(x_0) = \frac{1}{2\sigma^2}\sum_t \|m_t\odot(x_t - y_t)\|^2 + J_w(\mathbf w_0);$$
- weak constraint (control the trajectory $x_{0:T-1}$, [HBM12]):
  $$J(x) = \frac{1}{2\sigma^2}\sum_t \|m_t\odot(x_t - y_t)\|^2
  + \tfrac12\sum_{t} \|x_{t+1} - \Phi(x_t)\|^2_{Q^{-1}} + J_w(\mathbf w_0),$$

with $R = \sigma^2 I$, no background term (as [FBC23]: the first guess is the start
of the iterations, not a prior), and $J_w$ the optional `MotionPenalty` on the
initial velocity. Without a penalty the problem is ill-posed: a velocity that moves
nothing observable (parallel to the height's contours, or where the observed field
is flat) is in the null space of the observation term, so iterative solvers
regularise by the number of iterations they take: on [FBC23]'s basin the velocity
error of unpenalised L-BFGS is smallest after a few tens of iterations and grows
many-fold by 250 as the iterates fit the noise (their published unpenalised scores
come from an optimiser that stops early on its cost-change tolerance); a smoothness
penalty removes the null space and makes the minimiser the estimate (measured on the
benchmarks page, `benchmarks/bench_motion.py`). Use `jaxda.var.solve` with `LBFGS`,
`GaussNewtonCG` or an `OptaxSolver`.
"""

import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from .._validation import check_positive, check_real, is_concrete
from ..models._flow import AbstractFlowMap
from ..obs._observations import Observations
from ..var._costs import AbstractVarProblem, StrongConstraint4DVar, WeakConstraint4DVar
from ._penalty import MotionPenalty


class Motion4DVar(AbstractVarProblem):
    r"""A motion 4DVar problem: a strong- or weak-constraint 4DVar plus a penalty on
    the initial velocity (module docstring). Build it with `motion_4dvar`.

    **Fields:** `problem` (the `StrongConstraint4DVar` or `WeakConstraint4DVar`),
    `penalty` (a `MotionPenalty` or `None`).

    `obs` is the window's observations, `cost(u)` is $J$, `residuals(u)` its whitened
    residuals, `initial_state(u)` the $x_0$ of a control, `trajectory(u)` the states
    $x_{0:T-1}$ (the model's for the strong constraint, the control itself for the
    weak one).
    """

    problem: StrongConstraint4DVar | WeakConstraint4DVar
    penalty: MotionPenalty | None = None

    @property
    def weak(self) -> bool:
        """Whether the control is the trajectory (weak constraint)."""
        return isinstance(self.problem, WeakConstraint4DVar)

    @property
    def shape(self) -> tuple[int, ...]:
        """The control's shape: `(C, ny, nx)` (strong) or `(T, C, ny, nx)` (weak)."""
        return self.problem.shape

    @property
    def obs(self) -> Observations:
        """The window's observations (those of the wrapped 4DVar problem)."""
        return self.problem.obs

    def check_control(self, name, u):
        self.problem.check_control(name, u)

    def values_valid(self):
        return self.problem.values_valid() & jnp.any(self.obs.mask)

    def initial_state(self, u) -> Float[Array, "C ny nx"]:
        """$x_0$ of the control `u`."""
        return u[0] if self.weak else u

    def trajectory(self, u) -> Float[Array, "T C ny nx"]:
        """The window's states for the control `u`."""
        return u if self.weak else self.problem.trajectory(u)

    def residual_terms(self, u):
        terms = tuple(self.problem.residual_terms(u))
        if self.penalty is None:
            return terms
        return terms + tuple(self.penalty.residual_terms(self.initial_state(u)))


def motion_4dvar(
    flow: AbstractFlowMap,
    obs: Observations,
    noise_std: float | Float[Array, ""],
    *,
    penalty: MotionPenalty | None = None,
    weak: bool = False,
    model_var: float | Float[Array, "..."] | None = None,
    checkpoint: bool = False,
) -> Motion4DVar:
    r"""The motion 4DVar problem of one window (module docstring).

    **Arguments:**

    - `flow`: the one-step flow map $\Phi$ of a model whose state is
      `(C, ny, nx)` with the velocity in channels 1 and 2 (`C >= 3`).
    - `obs`: `jaxda.obs.Observations` `(T, C, ny, nx)` (`MotionSamples.sample(i)`),
      finite where observed, with at least one observed entry.
    - `noise_std`: $\sigma > 0$, $R = \sigma^2 I$.
    - `penalty`: an optional `MotionPenalty` on the initial velocity, on the flow's
      grid.
    - `weak`: strong (default; control $x_0$ `(C, ny, nx)`) or weak constraint
      (control the trajectory `(T, C, ny, nx)`).
    - `model_var`: $Q$ (diagonal, > 0, a scalar or broadcastable to
      `(T - 1, C, ny, nx)`), required with `weak=True`, not allowed without.
    - `checkpoint`: rematerialise each model step in the strong-constraint gradient
      (`StrongConstraint4DVar(checkpoint=True)`; same values, less memory).

    **Returns:** a `Motion4DVar`, an `AbstractVarProblem` for `jaxda.var.solve`.
    Start from `first_guess(obs)` (strong) or its repetition over the window (weak).
    """
    if not isinstance(flow, AbstractFlowMap):
        raise TypeError(
            f"`flow` must be a jaxda.models.AbstractFlowMap; got {type(flow).__name__}."
        )
    state_shape = tuple(flow.model.state_shape)
    if len(state_shape) != 3 or state_shape[0] < 3:
        raise ValueError(
            "`flow` must step a state (C >= 3, ny, nx) with the velocity in channels "
            f"1 and 2; its state has shape {state_shape}."
        )
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`obs` must be a jaxda.obs.Observations; got {type(obs).__name__}."
        )
    obs_shape = tuple(jnp.shape(obs.values))
    if len(obs_shape) != 4 or obs_shape[1:] != state_shape:
        raise ValueError(
            f"`obs.values` must have shape (T, {', '.join(map(str, state_shape))}) "
            f"to match the flow's state; got {obs_shape}."
        )
    if is_concrete(obs.mask) and not np.any(np.asarray(obs.mask)):
        raise ValueError(
            "`obs.mask` has no observed entry: a window without observations has no "
            "4DVar problem."
        )
    check_real("noise_std", noise_std)
    check_positive("noise_std", noise_std)
    if penalty is not None:
        if not isinstance(penalty, MotionPenalty):
            raise TypeError(
                "`penalty` must be a jaxda.motion.MotionPenalty or None; got "
                f"{type(penalty).__name__}."
            )
        penalty.check_state("the flow's state", jnp.zeros(state_shape))
        grid = getattr(flow.model, "grid", None)
        if grid is not None and grid != penalty.grid:
            raise ValueError(
                f"`penalty.grid` ({penalty.grid.ny} x {penalty.grid.nx}, spacing "
                f"{penalty.grid.dx} x {penalty.grid.dy}) must be the flow's grid "
                f"({grid.ny} x {grid.nx}, spacing {grid.dx} x {grid.dy})."
            )
    if not isinstance(weak, bool):
        raise TypeError(f"`weak` must be a bool; got {type(weak).__name__}.")
    if not isinstance(checkpoint, bool):
        raise TypeError(
            f"`checkpoint` must be a bool; got {type(checkpoint).__name__}."
        )
    obs_var = jnp.asarray(noise_std) ** 2
    if weak:
        if model_var is None:
            raise ValueError("`model_var` (Q) is required with `weak=True`.")
        if checkpoint:
            raise ValueError(
                "`checkpoint` applies to the strong constraint (the weak-constraint "
                "cost runs no trajectory)."
            )
        problem = WeakConstraint4DVar(flow, obs, obs_var, model_var)
    else:
        if model_var is not None:
            raise ValueError(
                "`model_var` is the weak constraint's Q: pass `weak=True` with it, or "
                "leave it None for the strong constraint."
            )
        problem = StrongConstraint4DVar(flow, obs, obs_var, checkpoint=checkpoint)
    return Motion4DVar(problem, penalty)


def first_guess(obs: Observations) -> Float[Array, "C ny nx"]:
    r"""[FBC23]'s first guess of a window: for each channel its first observed
    frame (zero where that frame is not observed), and 0 for the channels never
    observed (the velocity).

    With the height observed at $t = 0$ this is their $X_b$ = `Obs[0]`. Traceable
    (vmap over a batch of windows).

    **Arguments:** `obs` `(T, C, ny, nx)`.

    **Returns:** the state `(C, ny, nx)`.
    """
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`obs` must be a jaxda.obs.Observations; got {type(obs).__name__}."
        )
    if jnp.ndim(obs.values) != 4:
        raise ValueError(
            "`obs.values` must have shape (T, C, ny, nx) (one window); got "
            f"{tuple(jnp.shape(obs.values))}."
        )
    seen = jnp.any(obs.mask, axis=(-2, -1))  # (T, C): which frames have data
    first = jnp.argmax(seen, axis=0)  # (C,) the first such time (0 if none)
    channels = jnp.arange(obs.values.shape[1])
    frames = obs.values[first, channels]  # (C, ny, nx), zero-filled
    return jnp.where(jnp.any(seen, axis=0)[:, None, None], frames, 0.0).astype(
        obs.values.dtype
    )
