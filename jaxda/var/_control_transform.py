r"""The control-variable transform: a background covariance as an operator.

A background term $\tfrac12 (x - x_b)^\top B^{-1} (x - x_b)$ on a gridded field needs
$B^{-1}$, which a covariance operator does not give (and whose conditioning ruins
minimisation). The control-variable transform [CTH94; WC01] changes the control to
$w$ with

$$x = x_b + U w, \qquad B = U U^\top, \qquad
J(w) = \tfrac12 \|w\|^2 + J_o(x_b + U w),$$

so that the background term is $\tfrac12\|w\|^2$ and the Gauss-Newton Hessian is
$I + U^\top H^\top R^{-1} H U$ (eigenvalues $\ge 1$). For $U$ square and invertible
the minimiser is $x^\star = x_b + U w^\star$, the minimiser of the $B^{-1}$ form.

`ControlTransform(problem, mean, covariance)` wraps any `jaxda.var` problem whose
control is one array shaped like `covariance.field_shape` (the initial state of a
`StrongConstraint4DVar`, a field parameter) and that has no background term of its
own: its residuals are the problem's at $x_b + U w$ followed by $w$. Every solver
runs on it (`LBFGS`, `GaussNewtonCG`, `DenseGaussNewton` on small grids, the
first-order solvers); `map_solution` maps a `Solution` in $w$ back to $x$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._results import all_finite
from .._validation import check_finite
from ..grid import AbstractCovariance
from ._costs import AbstractVarProblem, StrongConstraint4DVar, WeakConstraint4DVar
from ._solution import Solution


def check_covariance(name: str, covariance, shape: tuple[int, ...]) -> None:
    """`TypeError` unless `covariance` is an `AbstractCovariance`, `ValueError`
    unless its `field_shape` is `shape`."""
    if not isinstance(covariance, AbstractCovariance):
        raise TypeError(
            f"`{name}` must be a jaxda.grid.AbstractCovariance (B = U U^T as an "
            f"operator); got {type(covariance).__name__}."
        )
    if tuple(covariance.field_shape) != tuple(shape):
        raise ValueError(
            f"`{name}.field_shape` must be the state shape {tuple(shape)}; got "
            f"{tuple(covariance.field_shape)}."
        )


def check_no_background(name: str, problem) -> None:
    """`ValueError` when a wrapped problem has its own background term."""
    if isinstance(problem, StrongConstraint4DVar | WeakConstraint4DVar) and (
        problem.background is not None
    ):
        raise ValueError(
            f"`{name}` must have no `background` of its own: the control-variable "
            "transform is the background term (J_b = |w|^2 / 2); build the problem "
            "with background=None."
        )


def check_control_array(name: str, w, shape: tuple[int, ...]) -> None:
    if tuple(jnp.shape(w)) != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)}; got {jnp.shape(w)}."
        )
    check_finite(name, w)


class ControlTransform(AbstractVarProblem):
    r"""A problem in the control variable $w$, $x = x_b + U w$ (module docstring).

    $$J(w) = \tfrac12\|w\|^2 + J_{\text{problem}}(x_b + U w).$$

    **Arguments:**

    - `problem`: a `jaxda.var` problem with one array as its control, of shape
      `covariance.field_shape` (e.g. a `StrongConstraint4DVar`: the initial state),
      and no `background` of its own.
    - `mean`: the background $x_b$, shaped like the problem's control.
    - `covariance`: the background covariance $B = U U^\top$, a
      `jaxda.grid.AbstractCovariance` with `field_shape` the control's shape.

    The control $w$ has shape `covariance.control_shape` (start from
    `initial_control()`, $w = 0$, i.e. $x = x_b$); `state(w)` is $x_b + U w$ and
    `map_solution(solution)` the same `Solution` with `x` (and saved iterates) in
    state space.
    """

    problem: AbstractVarProblem
    mean: Float[Array, "*state"]
    covariance: AbstractCovariance

    def __init__(self, problem, mean, covariance):
        if not isinstance(problem, AbstractVarProblem):
            raise TypeError(
                f"`problem` must be a jaxda.var problem; got {type(problem).__name__}."
            )
        check_no_background("problem", problem)
        mean = jnp.asarray(mean)
        problem.check_control("mean", mean)
        check_covariance("covariance", covariance, mean.shape)
        self.problem = problem
        self.mean = mean
        self.covariance = covariance

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the control $w$ (`covariance.control_shape`)."""
        return tuple(self.covariance.control_shape)

    def initial_control(self) -> Float[Array, "*control"]:
        """$w = 0$ (the background $x_b$), in the problem's dtype."""
        return jnp.zeros(self.shape, self.dtype)

    def state(self, w: Float[Array, "*control"]) -> Float[Array, "*state"]:
        """$x = x_b + U w$."""
        return self.mean + self.covariance.sqrt(w)

    def map_solution(self, solution: Solution) -> Solution:
        """`solution` (of a solve in $w$) with `x` and `iterates.x` mapped to
        $x_b + U w$; the cost, steps, result and stats are unchanged."""
        out = eqx.tree_at(lambda s: s.x, solution, self.state(solution.x))
        if solution.iterates is not None and solution.iterates.x is not None:
            xs = jax.vmap(self.state)(solution.iterates.x)
            out = eqx.tree_at(lambda s: s.iterates.x, out, xs)
        return out

    def check_control(self, name, w):
        check_control_array(name, w, self.shape)

    def values_valid(self):
        return self.problem.values_valid() & all_finite(self.mean)

    def residual_terms(self, w):
        return (*self.problem.residual_terms(self.state(w)), w)
