r"""4DVar cost functions: weak-constraint, strong-constraint, joint state/parameter.

Every problem is an `equinox.Module` holding the flow map, the observations and the
weights. It exposes the whitened residual vector $r(u)$ of its control $u$ and the cost
$J(u) = \tfrac12 \|r(u)\|^2$, so gradient solvers use `cost` and least-squares solvers
(Gauss-Newton, Levenberg-Marquardt) use `residuals`; both come from the same terms.

The observation term is $\tfrac12 \sum_t \|m_t \odot (h_t(x_t) - y_t)\|^2_{R_t^{-1}}$:
with no `operator` (or a `jaxda.obs.IdentityOperator`) $h_t$ is the identity and
`obs` has the state's shape, the mask selecting the observed entries; with an
operator (`jaxda.obs`: selection, dense, matrix-free, nonlinear) `obs` lives in its
observation space, `(T, *operator.obs_shape)`.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Scalar
from .._results import all_finite, all_positive
from .._validation import check_finite, check_positive, is_concrete
from ..models import AbstractFlowMap, rollout
from ..obs import (
    AbstractObservationOperator,
    Observations,
    check_operator,
    check_operator_observations,
    is_state_mask,
)
from ._strong import DiffraxTrajectory


def _flat(a: Array) -> Array:
    return jnp.reshape(a, (-1,))


def _check_broadcast(name: str, value, shape: tuple[int, ...]) -> None:
    try:
        np.broadcast_shapes(tuple(jnp.shape(value)), shape)
        ok = len(jnp.shape(value)) <= len(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"`{name}` must be a scalar or broadcastable to {shape}; got shape "
            f"{tuple(jnp.shape(value))}."
        )
    check_positive(name, value)


class Background(eqx.Module):
    r"""Background term on the initial state, $\tfrac12 \|x_0 - x_b\|^2_{B^{-1}}$.

    Give either `var` (diagonal $B$: a scalar or an array shaped like the state) or
    `precision` (a `jaxda.linalg.SymmetricBandMatrix` $B^{-1}$ on the flattened state).

    **Arguments:** `mean` $x_b$ (state shape); `var` or `precision`.
    """

    mean: Float[Array, "*state"]
    var: Float[Array, "*state"] | None = None
    precision: eqx.Module | None = None

    def __init__(self, mean, var=None, precision=None):
        if (var is None) == (precision is None):
            raise ValueError("`Background` needs exactly one of `var` or `precision`.")
        self.mean = jnp.asarray(mean)
        check_finite("mean", self.mean)
        if var is not None:
            _check_broadcast("var", var, self.mean.shape)
            self.var = jnp.asarray(var, dtype=self.mean.dtype)
            self.precision = None
        else:
            size = int(np.prod(self.mean.shape))
            dense_shape = tuple(jnp.shape(precision.to_dense()))
            if dense_shape != (size, size):
                raise ValueError(
                    f"`precision` must be {size}x{size} to match `mean` of shape "
                    f"{self.mean.shape}; got {dense_shape}."
                )
            self.var = None
            self.precision = precision

    def precision_dense(self) -> Float[Array, "n n"]:
        """$B^{-1}$ as a dense `(n, n)` matrix over the flattened state."""
        n = self.mean.size
        if self.var is not None:
            w = jnp.broadcast_to(1.0 / self.var, self.mean.shape).reshape(-1)
            return jnp.diag(w)
        return jnp.reshape(self.precision.to_dense(), (n, n))

    def values_valid(self) -> Bool[Array, ""]:
        """Finite mean and variances > 0 (traceable; see `AbstractVarProblem`)."""
        ok = all_finite(self.mean)
        return ok & all_positive(self.var) if self.var is not None else ok

    def whitened(self, x0: Float[Array, "*state"]) -> Float[Array, " n"]:
        r"""$r_b$ with $\|r_b\|^2 = (x_0 - x_b)^T B^{-1} (x_0 - x_b)$."""
        d = x0 - self.mean
        if self.var is not None:
            return _flat(d / jnp.sqrt(self.var))
        chol = jnp.linalg.cholesky(self.precision_dense())
        return chol.T @ _flat(d)


class AbstractVarProblem(eqx.Module):
    r"""A variational problem: residuals $r(u)$, cost $J(u) = \tfrac12\|r(u)\|^2$."""

    @abc.abstractmethod
    def residual_terms(self, u) -> tuple[Array, ...]:
        """The whitened residual terms (any shapes)."""

    @abc.abstractmethod
    def check_control(self, name: str, u) -> None:
        """Raise `ValueError` unless `u` is a valid control for this problem."""

    @property
    def dtype(self):
        """The floating dtype the cost is computed in: the promotion of the problem's
        floating-point arrays. `solve` casts the first guess to it."""
        leaves = [
            leaf
            for leaf in jax.tree_util.tree_leaves(self)
            if eqx.is_inexact_array(leaf)
        ]
        return jnp.result_type(*leaves) if leaves else jnp.result_type(float)

    @abc.abstractmethod
    def values_valid(self) -> Bool[Array, ""]:
        """Whether the value checks of the constructor hold (traceable): variances
        finite and > 0, observed values finite. Under `jit` the constructor cannot
        look at traced values; `solve` reports `RESULTS.invalid_input` when this is
        `False`."""

    def residuals(self, u) -> Float[Array, " m"]:
        r"""The whitened residual vector $r(u)$ (1-D); $J(u) = \tfrac12 \|r\|^2$."""
        return jnp.concatenate([_flat(r) for r in self.residual_terms(u)])

    def cost(self, u) -> Scalar:
        """The cost $J(u) = \\tfrac12 \\|r(u)\\|^2$."""
        return 0.5 * sum(jnp.sum(r**2) for r in self.residual_terms(u))


def _check_obs(obs, state_shape, operator=None) -> tuple[int, ...]:
    """`Observations.check` (or, with an operator, the observation-space check), and
    (concrete values) finite observed values. Returns the observation shape
    `(T, *obs)`."""
    if is_state_mask(operator):
        Observations.check(obs, state_shape)
        if operator is not None:
            check_operator(operator, state_shape)
    else:
        check_operator(operator, state_shape)
        check_operator_observations(obs, operator)
    if is_concrete(obs.values) and is_concrete(obs.mask):
        bad = ~np.isfinite(np.asarray(obs.values)) & np.asarray(obs.mask)
        if np.any(bad):
            raise ValueError(
                f"`obs.values` has {int(bad.sum())} non-finite entries where "
                "`obs.mask` is True; mark missing observations with mask=False."
            )
    return tuple(jnp.shape(obs.values))


def _obs_valid(obs, obs_var, background) -> Bool[Array, ""]:
    ok = all_finite(jnp.where(obs.mask, obs.values, 0.0)) & all_positive(obs_var)
    return ok & background.values_valid() if background is not None else ok


def _obs_term(x, obs, obs_var, operator=None):
    r"""The whitened observation residual $m \odot (h(x) - y) / \sqrt r$."""
    mask = obs.mask
    hx = x if is_state_mask(operator) else operator.trajectory(x)
    y = jnp.where(mask, obs.values, 0.0)
    inv_sd = jnp.where(mask, 1.0 / jnp.sqrt(jnp.broadcast_to(obs_var, hx.shape)), 0.0)
    return inv_sd * (hx - y)


def _check_operator_field(operator) -> None:
    if operator is not None and not isinstance(operator, AbstractObservationOperator):
        raise TypeError(
            "`operator` must be a jaxda.obs observation operator or None; got "
            f"{type(operator).__name__}."
        )


class WeakConstraint4DVar(AbstractVarProblem):
    r"""Weak-constraint 4DVar over one window; the control is the trajectory $x$.

    $$J(x) = \tfrac12 \sum_t \|h_t(x_t) - y_t\|^2_{R_t^{-1}, \mathrm{mask}}
    + \tfrac12 \sum_{t=0}^{T-2} \|x_{t+1} - \Phi(x_t)\|^2_{Q^{-1}}
    + \tfrac12 \|x_0 - x_b\|^2_{B^{-1}},$$

    with $h_t$ the observation operator (by default the identity: the mask of the
    state, $\|x_t - y_t\|^2$ over the observed entries) and the norm over the
    entries of $y_t$ where `obs.mask` holds.

    **Arguments:**
    - `flow`: the one-step flow map $\Phi$ (`jaxda.models.flow_map`).
    - `obs`: observations, zero-filled `.values` and boolean `.mask`: `(T, *state)`
      without an operator (or with an `IdentityOperator`), else `(T, *obs_shape)`
      of the operator.
    - `obs_var`: $R$ (diagonal), a scalar or broadcastable to the shape of `obs`,
      > 0.
    - `model_var`: $Q$, diagonal: a scalar or broadcastable to `(T-1, *state)`, > 0.
    - `background`: an optional `Background` on $x_0$.
    - `t0`: time of the first state ($\Phi$ is called with $t_0 + t\,dt$).
    - `operator`: an optional `jaxda.obs` observation operator $h_t$ on states of
      the flow's shape: any of them, linear or not (`GaussNewton`,
      `LevenbergMarquardt` and `Incremental4DVar` add $H_t^\top R_t^{-1} H_t$,
      $H_t = \partial h_t/\partial x$, to the diagonal blocks and stay
      $O(T n^3)$; the gradient and dense solvers differentiate the cost).
    """

    flow: AbstractFlowMap
    obs: eqx.Module
    obs_var: Float[Array, "..."]
    model_var: Float[Array, "..."]
    background: Background | None = None
    t0: float = 0.0
    operator: AbstractObservationOperator | None = None

    def __check_init__(self):
        if not isinstance(self.flow, AbstractFlowMap):
            raise TypeError(
                "`flow` must be a jaxda.models.AbstractFlowMap; got "
                f"{type(self.flow).__name__}."
            )
        _check_operator_field(self.operator)
        state_shape = tuple(self.flow.model.state_shape)
        obs_shape = _check_obs(self.obs, state_shape, self.operator)
        T = obs_shape[0]
        _check_broadcast("obs_var", self.obs_var, obs_shape)
        _check_broadcast("model_var", self.model_var, (max(T - 1, 1), *state_shape))
        if self.background is not None:
            if not isinstance(self.background, Background):
                raise TypeError(
                    "`background` must be a jaxda.var.Background or None; got "
                    f"{type(self.background).__name__}."
                )
            if tuple(self.background.mean.shape) != state_shape:
                raise ValueError(
                    f"`background.mean` must have the state shape {state_shape}; got "
                    f"{tuple(self.background.mean.shape)}."
                )

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape `(T, *state)` of the control."""
        T = jnp.shape(self.obs.values)[0]
        return (T, *tuple(self.flow.model.state_shape))

    def check_control(self, name, x):
        if tuple(jnp.shape(x)) != self.shape:
            raise ValueError(
                f"`{name}` must have shape {self.shape}; got {jnp.shape(x)}."
            )
        check_finite(name, x)

    def values_valid(self):
        valid = _obs_valid(self.obs, self.obs_var, self.background)
        return valid & all_positive(self.model_var)

    def times(self, n: int) -> Float[Array, " n"]:
        """Model times $t_0 + t\\,dt$ of the first `n` states."""
        return self.t0 + self.flow.dt * jnp.arange(n)

    def dynamics_residual(
        self, x: Float[Array, " T *state"]
    ) -> Float[Array, " Tm1 *state"]:
        r"""The unweighted model errors $x_{t+1} - \Phi(x_t)$."""
        pred = jax.vmap(self.flow)(x[:-1], self.times(x.shape[0] - 1))
        return x[1:] - pred

    def residual_terms(self, x):
        terms = [_obs_term(x, self.obs, self.obs_var, self.operator)]
        if x.shape[0] > 1:
            d = self.dynamics_residual(x)
            terms.append(d / jnp.sqrt(jnp.broadcast_to(self.model_var, d.shape)))
        if self.background is not None:
            terms.append(self.background.whitened(x[0]))
        return tuple(terms)


class StrongConstraint4DVar(AbstractVarProblem):
    r"""Strong-constraint 4DVar; the control is the initial state $x_0$.

    $$J(x_0) = \tfrac12 \|x_0 - x_b\|^2_{B^{-1}}
    + \tfrac12 \sum_t \|h_t(\mathcal{M}_t(x_0)) - y_t\|^2_{R_t^{-1}, \mathrm{mask}},$$
    with the trajectory $\mathcal{M}_t(x_0) = \Phi^t(x_0)$ given by
    `jaxda.models.rollout` of a flow map, or by a `DiffraxTrajectory` (diffrax
    `diffeqsolve`), and $h_t$ the observation operator (default: the mask of the
    state).

    **Arguments:** `flow` (a flow map or a `DiffraxTrajectory`), `obs` (`(T, *state)`,
    or `(T, *obs_shape)` with an operator), `obs_var` (scalar or broadcastable to
    the shape of `obs`), `background` (optional), `operator` (optional `jaxda.obs`
    observation operator, linear or not: the dense solvers differentiate
    $h_t \circ \mathcal M_t$ with the rest of the residuals), `checkpoint` (keyword,
    flow maps only: rematerialise each model step in reverse mode,
    `rollout(..., checkpoint=True)`, so the gradient stores one state per step instead
    of every stage of the scheme; same values and derivatives; default `False`).
    """

    flow: eqx.Module
    obs: eqx.Module
    obs_var: Float[Array, "..."]
    background: Background | None = None
    operator: AbstractObservationOperator | None = None
    checkpoint: bool = eqx.field(static=True, default=False, kw_only=True)

    def __check_init__(self):
        if not isinstance(self.checkpoint, bool):
            raise TypeError(
                f"`checkpoint` must be a bool; got {type(self.checkpoint).__name__}."
            )
        if not isinstance(self.flow, AbstractFlowMap | DiffraxTrajectory):
            raise TypeError(
                "`flow` must be a jaxda.models flow map or a DiffraxTrajectory; got "
                f"{type(self.flow).__name__}."
            )
        _check_operator_field(self.operator)
        state_shape = tuple(self.flow.model.state_shape)
        obs_shape = _check_obs(self.obs, state_shape, self.operator)
        _check_broadcast("obs_var", self.obs_var, obs_shape)
        if (
            self.background is not None
            and tuple(self.background.mean.shape) != state_shape
        ):
            raise ValueError(
                f"`background.mean` must have the state shape {state_shape}; got "
                f"{tuple(self.background.mean.shape)}."
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the control $x_0$ (the state shape)."""
        return tuple(self.flow.model.state_shape)

    def check_control(self, name, x0):
        if tuple(jnp.shape(x0)) != self.shape:
            raise ValueError(
                f"`{name}` must have shape {self.shape}; got {jnp.shape(x0)}."
            )
        check_finite(name, x0)

    def values_valid(self):
        return _obs_valid(self.obs, self.obs_var, self.background)

    def trajectory(self, x0: Float[Array, "*state"]) -> Float[Array, " T *state"]:
        """The model trajectory $\\Phi^t(x_0)$, $t = 0..T-1$."""
        n_steps = self.obs.values.shape[0] - 1
        if isinstance(self.flow, AbstractFlowMap):
            return rollout(self.flow, x0, n_steps, checkpoint=self.checkpoint)
        return self.flow(x0, n_steps)

    def residual_terms(self, x0):
        terms = [_obs_term(self.trajectory(x0), self.obs, self.obs_var, self.operator)]
        if self.background is not None:
            terms.append(self.background.whitened(x0))
        return tuple(terms)


class JointStateParameter(AbstractVarProblem):
    r"""Joint state/parameter estimation: the control is `(u, params)`.

    `params` are the leaves of `problem.flow` selected by `filter_spec` (default: every
    inexact array, e.g. `Lorenz63(sigma=jnp.array(10.0))`); an optional Gaussian prior
    $\tfrac12 \|\theta - \theta_b\|^2 / \sigma_\theta^2$ with $\theta_b$ the parameters
    of `problem.flow` is added when `param_var` is given:
    $J(u, \theta) = J_{\text{problem with } \theta}(u) +
    \tfrac12\|\theta-\theta_b\|^2/\sigma^2_\theta$.

    **Arguments:** `problem` (a weak- or strong-constraint problem), `param_var`
    (optional scalar > 0), `filter_spec` (an `eqx.filter` spec). Use
    `initial_control(u)` to start.

    The wrapped problem keeps its observations and observation operator
    (`operator=`); only the flow's parameters are estimated.
    """

    problem: AbstractVarProblem
    param_var: Float[Array, ""] | None = None
    filter_spec: object = eqx.field(static=True, default=eqx.is_inexact_array)

    def __check_init__(self):
        if self.param_var is not None:
            check_positive("param_var", self.param_var)
        if not jax.tree_util.tree_leaves(self.params()):
            raise ValueError(
                "`problem.flow` has no parameter selected by `filter_spec`; make the "
                "model parameters arrays, e.g. Lorenz63(sigma=jnp.array(10.0))."
            )

    def params(self):
        """The current (background) parameters of the flow map."""
        return eqx.filter(self.problem.flow, self.filter_spec)

    def initial_control(self, u):
        """The control `(u, params)` with the flow's own parameters."""
        return (u, self.params())

    def with_params(self, params) -> AbstractVarProblem:
        """The wrapped problem with the flow's parameters replaced by `params`."""
        static = eqx.filter(self.problem.flow, self.filter_spec, inverse=True)
        flow = eqx.combine(params, static)
        return eqx.tree_at(lambda p: p.flow, self.problem, flow)

    def check_control(self, name, control):
        if not (isinstance(control, tuple) and len(control) == 2):
            raise ValueError(f"`{name}` must be a tuple (state, params).")
        self.problem.check_control(f"{name}[0]", control[0])

    def values_valid(self):
        valid = self.problem.values_valid()
        return (
            valid & all_positive(self.param_var)
            if self.param_var is not None
            else valid
        )

    def residual_terms(self, control):
        u, params = control
        terms = list(self.with_params(params).residual_terms(u))
        if self.param_var is not None:
            diff = jax.tree_util.tree_map(lambda a, b: a - b, params, self.params())
            leaves = [_flat(leaf) for leaf in jax.tree_util.tree_leaves(diff)]
            terms.append(jnp.concatenate(leaves) / jnp.sqrt(self.param_var))
        return tuple(terms)
