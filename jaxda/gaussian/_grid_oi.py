r"""Optimal interpolation on grids: observation-space OI with a covariance function,
and matrix-free conjugate-gradient OI with a covariance operator.

Both compute the covariance-form MAP $x = \mu + P H^\top (H P H^\top + R)^{-1}
(y - H\mu)$ of `jaxda.gaussian` without forming $P$ (a $d \times d$ matrix, $d$ =
`T * ny * nx` up to $10^6$):

- `map_kernel` (DUACS-style, sparse track observations at points off the grid):
  $P$ is a covariance *function* $k$ (`jaxda.grid.SpaceTimeKernel`); $H P H^\top =
  (k(p_i, p_j))_{ij}$ is the $m \times m$ matrix at the observation points, $+R$,
  factorised by a dense Cholesky ($O(m^3)$), and $x_g = \mu_g + \sum_o k(g, p_o)
  z_o$ at every grid point $g$ is evaluated as products of the kernel's axis
  factors, one time level at a time: $O(T (n_y + n_x) m)$ memory, never a
  $d \times m$ matrix.
- `map_covariance_cg` (large $m$): $P$ a covariance operator
  (`jaxda.grid.AbstractCovariance`: spectral, diffusion, space-time) and $H$ a
  linear `jaxda.obs` operator; $(H P H^\top + R) z = y - H\mu$ by (Jacobi
  preconditioned) conjugate gradients (`lineax.CG`), each iteration one $H^\top$,
  one $P v$ and one $H$; $x = \mu + P H^\top z$. $O(d + m)$ memory.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float, Int
from .._results import (
    RESULTS,
    all_finite,
    all_positive,
    raise_if_failed,
)
from .._validation import check_finite, check_positive, check_real, is_concrete
from ..grid import AbstractCovariance, Grid, SpaceTimeKernel
from ..obs import AbstractLinearObservationOperator, IdentityOperator
from . import _operator as op
from ._checks import dense_system_result
from ._solution import GaussianMAP


class IterativeGaussianMAP(eqx.Module):
    """Result of an iterative (conjugate-gradient) Gaussian MAP.

    **Fields:**

    - `mean`: the posterior mean (= MAP), with the shape of `mu`.
    - `result`: a `jaxda.RESULTS` item: `successful`; `max_steps_reached` (CG did
      not meet its tolerance in `max_steps` iterations: `mean` is the last iterate);
      `breakdown` (a non-finite CG iterate or mean: the covariance or the
      observation variances are not valid); `invalid_input` (a value check
      failed under `jit`).
    - `num_steps`: the number of CG iterations.
    """

    mean: Float[Array, " *shape"]
    result: RESULTS
    num_steps: Int[Array, ""]


def _vector(name: str, value, m: int | None, dtype=None) -> Array:
    arr = jnp.asarray(value)
    if arr.dtype == jnp.bool_ or not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must be a real array; got dtype {arr.dtype}.")
    if m is not None and arr.shape != (m,):
        raise ValueError(f"`{name}` must have shape ({m},); got {arr.shape}.")
    return arr.astype(dtype or jnp.result_type(arr.dtype, float))


def map_kernel(
    kernel: SpaceTimeKernel,
    grid: Grid,
    times: Float[ArrayLike, " T"],
    points: Float[ArrayLike, "m 3"],
    y: Float[ArrayLike, " m"],
    obs_var: Float[ArrayLike, " m"] | float,
    *,
    mask: Bool[ArrayLike, " m"] | None = None,
    mu: Float[ArrayLike, "T ny nx"] | float = 0.0,
    mu_obs: Float[ArrayLike, " m"] | None = None,
    throw: bool = True,
) -> GaussianMAP:
    r"""Observation-space OI of point observations onto a space-time grid.

    Prior $x \sim \mathcal{GP}(\mu, k)$ with the separable kernel
    $k(p, p') = \sigma^2 c_t(t - t') c_y(y - y') c_x(x - x')$
    (`jaxda.grid.SpaceTimeKernel`); observations $y_o = x(p_o) + \varepsilon_o$ at
    the points $p_o = (t_o, y_o, x_o)$, $\varepsilon_o \sim \mathcal N(0, r_o)$. The
    MAP at the grid points $g = (t_a, y_j, x_i)$ is

    $$x_g = \mu_g + \sum_o k(g, p_o)\, z_o, \qquad
    (K + R)\, z = y - \mu_{\text{obs}}, \quad K_{oo'} = k(p_o, p_{o'}),$$

    with $K + R$ factorised by a dense Cholesky ($O(m^3)$ time, $O(m^2)$ memory) and
    the sum evaluated as $\sigma^2 \sum_o c_t[a, o] c_y[j, o] c_x[i, o] z_o$: one
    $(n_y \times m)(m \times n_x)$ matrix product per time level, no $d \times m$
    matrix. Unobserved entries (`mask` False: padding of a fixed-size buffer) are
    decoupled identity rows. Derivatives with respect to `y`, `obs_var`, `points`,
    `mu` and the kernel's parameters flow by automatic differentiation (through the
    Cholesky factorisation).

    **Arguments:**

    - `kernel`: a `jaxda.grid.SpaceTimeKernel`.
    - `grid`, `times`: the analysis grid `(T, ny, nx)`: `grid.y`, `grid.x` and the
      times of shape `(T,)`, in the units of `points`.
    - `points`: observation coordinates $(t, y, x)$, shape `(m, 3)` (finite).
    - `y`, `obs_var`: observed values `(m,)` and their variances $r > 0$ (scalar or
      `(m,)`).
    - `mask`: optional boolean `(m,)`: which entries are observations.
    - `mu`: the prior mean on the grid, a scalar or `(T, ny, nx)`; `mu_obs`: the
      prior mean at the points `(m,)`, required when `mu` is a field (default `mu`).
    - `throw`: raise when `result` is not successful.

    **Returns:** a `GaussianMAP` with `mean` of shape `(T, ny, nx)` and `result`
    (`not_positive_definite` when $K + R$ is not numerically SPD, e.g. a traced
    negative variance; `invalid_input` when a value check fails under `jit`).
    """
    if not isinstance(kernel, SpaceTimeKernel):
        raise TypeError(
            "`kernel` must be a jaxda.grid.SpaceTimeKernel; got "
            f"{type(kernel).__name__}."
        )
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    times = _vector("times", times, None)
    if times.ndim != 1:
        raise ValueError(f"`times` must have shape (T,); got {times.shape}.")
    check_finite("times", times)
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(
            f"`points` must have shape (m, 3) (rows t, y, x); got {points.shape}."
        )
    check_real("points", points)
    m = points.shape[0]
    y = _vector("y", y, m)
    field_shape = (times.shape[0], *grid.shape)
    mu = jnp.asarray(mu)
    if mu.shape not in ((), field_shape):
        raise ValueError(
            f"`mu` must be a scalar or have shape {field_shape}; got {mu.shape}."
        )
    check_real("mu", mu)
    if mu_obs is None:
        if mu.shape != ():
            raise ValueError(
                "`mu_obs` (the prior mean at the observation points) is required "
                "when `mu` is a field."
            )
        mu_obs = jnp.broadcast_to(mu, (m,))
    mu_obs = _vector("mu_obs", mu_obs, m)
    obs_var = jnp.asarray(obs_var)
    if obs_var.shape not in ((), (m,)):
        raise ValueError(
            f"`obs_var` must be a scalar or have shape ({m},); got {obs_var.shape}."
        )
    if mask is None:
        mask = jnp.ones(m, bool)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_ or mask.shape != (m,):
        raise ValueError(
            f"`mask` must be a boolean array of shape ({m},); got {mask.dtype} "
            f"{mask.shape}."
        )
    obs_var = jnp.broadcast_to(obs_var, (m,))
    if is_concrete(mask):
        sel = np.asarray(mask)
        if is_concrete(obs_var):
            check_positive("obs_var (where mask is True)", np.asarray(obs_var)[sel])
        if is_concrete(y):
            check_finite("y (where mask is True)", np.asarray(y)[sel])
        if is_concrete(mu_obs):
            check_finite("mu_obs (where mask is True)", np.asarray(mu_obs)[sel])

    out = _map_kernel(kernel, grid, times, points, y, obs_var, mask, mu, mu_obs)
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _map_kernel(kernel, grid, times, points, y, obs_var, mask, mu, mu_obs):
    dtype = jnp.result_type(y, mu_obs, obs_var, points, kernel.variance, mu)
    mf = mask.astype(dtype)
    r = jnp.where(mask, obs_var.astype(dtype), 1.0)
    innov = jnp.where(mask, (y - mu_obs).astype(dtype), 0.0)
    points = points.astype(dtype)
    valid = all_finite(points, innov, mu) & all_positive(r)
    s = mf[:, None] * kernel(points, points).astype(dtype) * mf[None, :]
    low = jnp.linalg.cholesky(s + jnp.diag(r))
    z = jsl.cho_solve((low, True), innov)

    ct, cy, cx = kernel.axis_factors(times, grid.y, grid.x, points)
    wz = (kernel.variance * z * mf).astype(dtype)
    cy, cx = cy.astype(dtype), cx.astype(dtype)
    incr = jax.lax.map(lambda c: (cy * (c * wz)[None, :]) @ cx.T, ct.astype(dtype))
    result = RESULTS.where(valid, dense_system_result(low), RESULTS.invalid_input)
    return GaussianMAP(mu + incr, result)


PRECONDITIONERS = ("jacobi", None)


def map_covariance_cg(
    mu: Float[ArrayLike, " *field"],
    P: AbstractCovariance,
    y: Float[ArrayLike, " *obs"],
    mask: Bool[ArrayLike, " *obs"] | None,
    obs_var: Float[ArrayLike, " *obs"] | float,
    *,
    operator: AbstractLinearObservationOperator | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 1000,
    preconditioner: str | None = "jacobi",
    throw: bool = True,
) -> IterativeGaussianMAP:
    r"""Matrix-free covariance-form MAP by conjugate gradients in observation space.

    $x = \mu + P H^\top z$ with $(M H P H^\top M + \tilde R)\, z = M (y - H\mu)$ ($M$
    the mask, $\tilde R$ the observation variances, 1 on unobserved entries, which
    decouple), solved by `lineax.CG` with $P$ applied by the covariance operator and
    $H$, $H^\top$ by the observation operator: $O(d + m)$ memory, one $P v$ per
    iteration. The Jacobi preconditioner is $\mathrm{diag}(M\,[H \mathrm{diag}(P)]_+
    + \tilde R)^{-1}$ (exact for a selection operator, an approximation of
    $\mathrm{diag}(H P H^\top)$ for an interpolation). CG converges in about
    $\sqrt{\kappa}$ iterations, $\kappa \le 1 + \lambda_{\max}(H P H^\top)/\min r$:
    many observations within a correlation length of little noise make it slow.
    Derivatives flow through `lineax.linear_solve` (implicitly, a second CG solve).

    **Arguments:**

    - `mu`: the prior mean, of shape `P.field_shape`.
    - `P`: a `jaxda.grid.AbstractCovariance`.
    - `y`, `mask`, `obs_var`: observations, their mask (or `None`: all observed) and
      variances $r > 0$, shaped as in `jaxda.gaussian` for `operator`: with
      `operator=None` (an `IdentityOperator` on the whole field) the shape of `mu`;
      with an operator on the whole field, its `obs_shape`; with an operator on each
      `mu[t]`, `(T, *obs_shape)`.
    - `operator`: a linear `jaxda.obs` operator (`SelectionOperator`, an
      interpolation, any `LinearFunctionOperator`).
    - `rtol`, `atol`: CG stops when $|r_i| \le$ `atol` $+$ `rtol` $|b_i|$ for every
      residual entry and the last step is as small relative to $z$ (max norms;
      lineax's test); `rtol` defaults to `1e-4` in float32 and `1e-8` in float64
      (float32 CG cannot reach much below $10^{-5}$ on ill-conditioned systems: it
      stalls and drifts), `atol` to `rtol * max|b|`.
    - `max_steps`: CG iteration cap (static int).
    - `preconditioner`: `"jacobi"` (default) or `None`.
    - `throw`: raise when `result` is not successful.

    **Returns:** an `IterativeGaussianMAP` (`mean`, `result`, `num_steps`).
    """
    if not isinstance(P, AbstractCovariance):
        raise TypeError(
            f"`P` must be a jaxda.grid.AbstractCovariance; got {type(P).__name__}."
        )
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(
            f"`preconditioner` must be 'jacobi' or None; got {preconditioner!r}."
        )
    if rtol is not None:
        check_positive("rtol", rtol)
    if atol is not None:
        check_positive("atol", atol, allow_zero=True)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be an int >= 1; got {max_steps!r}.")
    mu = jnp.asarray(mu)
    if tuple(mu.shape) != tuple(P.field_shape):
        raise ValueError(
            f"`mu` must have the field shape {P.field_shape} of `P`; got {mu.shape}."
        )
    if operator is None:
        operator = IdentityOperator(P.field_shape)
    mu, y, mask, obs_var, lead = op.validate(mu, y, mask, obs_var, operator)
    out = _map_covariance_cg(
        mu, P, y, mask, obs_var, operator, lead, rtol, atol, max_steps, preconditioner
    )
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _map_covariance_cg(
    mu, P, y, mask, obs_var, operator, lead, rtol, atol, max_steps, preconditioner
):
    x2, mk, var, innov, _, input_result = op.prepare(
        mu, y, mask, obs_var, operator, lead
    )
    dtype = innov.dtype
    if rtol is None:
        rtol = 1e-4 if jnp.finfo(dtype).bits <= 32 else 1e-8
    mf = mk.astype(dtype)
    n_lead = x2.shape[0]

    def h(x):
        x = jnp.reshape(x, (n_lead, *operator.state_shape))
        return jnp.reshape(operator.trajectory(x), mf.shape).astype(dtype)

    def h_t(v):
        return jnp.reshape(op.transpose_all(operator, v), mu.shape).astype(dtype)

    def normal(z):
        return mf * h(P.apply(h_t(mf * z))) + var * z

    struct = jax.ShapeDtypeStruct(innov.shape, dtype)
    system = lx.FunctionLinearOperator(normal, struct, lx.positive_semidefinite_tag)
    options = {}
    if preconditioner == "jacobi":
        diag = mf * jnp.maximum(h(P.variance.astype(dtype)), 0.0) + var
        options["preconditioner"] = lx.FunctionLinearOperator(
            lambda r: r / diag, struct, lx.positive_semidefinite_tag
        )
    if atol is None:  # a tolerance, not a function of the data to differentiate
        scale = jax.lax.stop_gradient(jnp.max(jnp.abs(innov)))
        atol = rtol * scale + jnp.finfo(dtype).tiny
    solver = lx.CG(rtol=rtol, atol=atol, max_steps=max_steps)
    sol = lx.linear_solve(system, innov, solver, options=options, throw=False)
    z = sol.value
    mean = mu.astype(dtype) + P.apply(h_t(mf * z)).astype(dtype)
    cg_result = RESULTS.promote(sol.result)
    cg_result = RESULTS.where(all_finite(z, mean), cg_result, RESULTS.breakdown)
    result = RESULTS.where(input_result == RESULTS.successful, cg_result, input_result)
    return IterativeGaussianMAP(mean, result, sol.stats["num_steps"])
