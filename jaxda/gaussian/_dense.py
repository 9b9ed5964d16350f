r"""`map_dense`: the dense $O(d^3)$ reference MAP for tests and small problems."""

import jax.numpy as jnp

from .._custom_types import ArrayLike, Bool, Float
from .._results import (
    RESULTS,
    all_finite,
    all_positive,
    first_failure,
    raise_if_failed,
    value_result,
)
from .._validation import check_finite, check_positive
from ..obs import AbstractLinearObservationOperator
from . import _operator as op
from ._checks import dense_factors, dense_system_result, prepare, validate
from ._solution import GaussianMAP


def map_dense(
    mu: Float[ArrayLike, " *shape"],
    y: Float[ArrayLike, " ..."],
    obs_var: Float[ArrayLike, " ..."] | float,
    *,
    mask: Bool[ArrayLike, " *shape"] | None = None,
    H: Float[ArrayLike, "m d"] | None = None,
    operator: AbstractLinearObservationOperator | None = None,
    cov: Float[ArrayLike, "d d"] | None = None,
    precision: Float[ArrayLike, "d d"] | None = None,
    throw: bool = True,
) -> GaussianMAP:
    r"""Dense reference MAP for tests and small problems ($O(d^3)$).

    Covariance form $x = \mu + P H^\top (H P H^\top + R)^{-1}(y - H\mu)$, precision
    form $x = \mu + (Q + H^\top R^{-1} H)^{-1} H^\top R^{-1} (y - H\mu)$, each one
    dense `jnp.linalg.solve`. The same checks as the structured MAPs (see
    `jaxda.gaussian`): the prior must be positive semi-definite and the system
    matrix SPD (dense Cholesky factorisations, computed for the check only).

    **Arguments:**

    - `mu`: prior mean (finite).
    - `y`, `obs_var`: observations and their variances $r > 0$: of the shape of `mu`
      with `mask`, of shape `(m,)` with `H`.
    - `mask` or `H`: exactly one; a boolean mask of the shape of `mu` (the observed
      rows are selected with the full-size masking identity, so traced masks work) or
      a dense observation matrix of shape `(m, d)`.
    - `operator`: instead of `H` (and then `mask` is optional, over the entries of
      `y`): any linear `jaxda.obs` operator acting on the state shape of `mu` or on
      each `mu[t]` (see `jaxda.gaussian`), densified by one application of
      $H_t^\top$ per observation entry; `y`, `mask`, `obs_var` of shape
      `lead + obs_shape`.
    - `cov` or `precision`: exactly one; the prior covariance $P$ or precision $Q$,
      shape `(d, d)`.
    - `throw`: raise when `result` is not successful.

    **Returns:** a `GaussianMAP` (`mean` with the shape of `mu`, `result`).
    """
    if (cov is None) == (precision is None):
        raise ValueError("give exactly one of `cov` and `precision`.")
    if operator is None and (mask is None) == (H is None):
        raise ValueError("give exactly one of `mask` and `H`.")
    prior = jnp.asarray(cov if precision is None else precision)
    mu = jnp.asarray(mu)
    mu_f = mu.reshape(-1)
    d = mu_f.size
    if prior.shape != (d, d):
        name = "cov" if precision is None else "precision"
        raise ValueError(f"`{name}` must have shape ({d}, {d}); got {prior.shape}.")
    if operator is not None:
        if H is not None:
            raise ValueError("give at most one of `H` and `operator`.")
        mu, y, mask, obs_var, lead = op.validate(mu, y, mask, obs_var, operator)
        x2, mk, var, innov, weight, input_result = op.prepare(
            mu, y, mask, obs_var, operator, lead
        )
        m = mk.reshape(-1)
        rows = op.rows(operator, jnp.arange(m.size), x2.shape[0], innov.dtype)
        h = m[:, None].astype(rows.dtype) * rows
        r_diag = jnp.where(m, var.reshape(-1), 1.0)
        r_inv = weight.reshape(-1)
        innov = innov.reshape(-1)
    elif mask is not None:
        mu, m, var, innov, input_result = prepare(*validate(mu, y, mask, obs_var))
        h = jnp.diag(m.astype(var.dtype))
        r_diag = jnp.where(m, var, 1.0)
        r_inv = jnp.where(m, 1.0 / var, 0.0)
    else:
        h = jnp.asarray(H)
        if h.ndim != 2 or h.shape[1] != d:
            raise ValueError(f"`H` must have shape (m, {d}); got {h.shape}.")
        y = jnp.reshape(jnp.asarray(y), (-1,))
        if y.shape != (h.shape[0],):
            raise ValueError(f"`y` must have shape ({h.shape[0]},); got {y.shape}.")
        var = jnp.broadcast_to(jnp.asarray(obs_var), y.shape)
        check_finite("mu", mu)
        check_finite("y", y)
        check_positive("obs_var", var)
        r_diag, r_inv = var, 1.0 / var
        input_result = value_result(all_finite(mu, y) & all_positive(var))
        innov = y - h @ mu_f
    if precision is not None:
        a = prior + h.T @ (r_inv[:, None] * h)
        dx = jnp.linalg.solve(a, h.T @ (r_inv * innov))
    else:
        a = h @ prior @ h.T + jnp.diag(r_diag)
        dx = prior @ h.T @ jnp.linalg.solve(a, innov)
    prior_result, low = dense_factors(prior, a)
    result = first_failure(
        *(
            (r != RESULTS.successful, r)
            for r in (input_result, prior_result, dense_system_result(low))
        )
    )
    out = GaussianMAP(mu + dx.reshape(mu.shape), result)
    return raise_if_failed(out, out.result, throw)
