r"""`map_precision`, `map_covariance` and `posterior_variance` (structured priors)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import ArrayLike, Bool, Float
from .._results import RESULTS, first_failure, raise_if_failed
from .._validation import check_choice, check_int, is_concrete
from ..linalg import AbstractSPDMatrix, BlockTridiagonal, SymmetricBandMatrix
from ..linalg._base import METHODS
from ..linalg._implicit import factor_solve
from ..obs import AbstractLinearObservationOperator, IdentityOperator
from . import _operator as op
from ._checks import (
    check_prior_finite,
    dense_factors,
    dense_system_result,
    overflow_result,
    prepare,
    prior_semidefinite_result,
    structured_factors,
    validate,
    vector_shape,
)
from ._solution import GaussianMAP, PosteriorVariance


def map_precision(
    mu: Float[ArrayLike, " *shape"],
    Q: SymmetricBandMatrix | BlockTridiagonal,
    y: Float[ArrayLike, " *obs"],
    mask: Bool[ArrayLike, " *obs"] | None,
    obs_var: Float[ArrayLike, " *obs"] | float,
    *,
    operator: AbstractLinearObservationOperator | None = None,
    method: str = "sequential",
    throw: bool = True,
) -> GaussianMAP:
    r"""MAP of $x$ with prior precision $Q$: $(Q + H^\top R^{-1}H)\,x = Q\mu + H^\top
    R^{-1}y$.

    Solved as $x = \mu + (Q + H^\top W H)^{-1} H^\top W (y - H\mu)$ with
    $W = \mathrm{diag}(m / r)$, one structured Cholesky, $O(d b^2)$ or $O(T n^3)$.
    For the mask of the state $H^\top W H = D = \mathrm{diag}(m / r)$. $Q$ may be
    singular (an intrinsic prior) as long as the posterior precision is SPD; $Q$
    must be positive semi-definite (checked to working precision, see
    `jaxda.gaussian`).

    **Arguments:**

    - `mu`: prior mean, any shape of size $d$ (finite); with an `operator`, its state
      shape or `(T, *state_shape)`.
    - `Q`: prior precision, `SymmetricBandMatrix` or `BlockTridiagonal` of size $d$.
    - `y`, `mask`: observations (finite where observed) and boolean mask, shape of
      `mu`; with an `operator`, shape `lead + obs_shape` (`lead` the leading axis of
      `mu`, if any) and `mask` may be `None` (everything observed).
    - `obs_var`: observation-error variances $r > 0$ (scalar or shape of `y`; ignored
      where `mask` is `False`).
    - `operator`: an optional linear `jaxda.obs` operator $H_t$ acting on each state
      (see `jaxda.gaussian`): a selection operator (`IdentityOperator`,
      `SelectionOperator`, diagonal $H^\top R^{-1} H$) with any `Q`; any other
      linear operator only with a `BlockTridiagonal` `Q` of one block per time of
      the operator's state size, $Q_{tt} + H_t^\top R_t^{-1} H_t$. A banded `Q` with
      such an operator is refused (`ValueError`): use `map_covariance` or
      `map_dense`. Derivatives with respect to the operator's parameters flow
      through the implicit rules of the solve.
    - `method`: `"sequential"` or `"parallel"` (block-tridiagonal `Q` only).
    - `throw`: raise an `equinox.EquinoxRuntimeError` when `result` is not
      successful (eagerly and under `jit`); `False` to inspect `result` instead.

    **Returns:** a `GaussianMAP` (`mean`, `result`).

    **Raises:** `ValueError` / `TypeError` for wrong shapes or types and, on concrete
    values, for a non-finite `mu`, `y` (where observed) or `Q`, or `obs_var <= 0`.
    """
    check_choice("method", method, METHODS)
    if operator is not None:
        mu, y, mask, obs_var, lead = op.validate(mu, y, mask, obs_var, operator)
        vector_shape(Q, mu.size)
        check_prior_finite("Q", Q)
        if not isinstance(operator, IdentityOperator):
            op.check_precision_structure(Q, operator, lead)
            out = _map_precision_operator(mu, Q, y, mask, obs_var, operator, method)
            return raise_if_failed(out, out.result, throw)
    mu, y, mask, obs_var = validate(mu, y, mask, obs_var)
    vector_shape(Q, mu.size)
    check_prior_finite("Q", Q)
    out = _map_precision(mu, Q, y, mask, obs_var, method)
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _map_precision_operator(mu, Q, y, mask, obs_var, operator, method):
    lead = mu.shape[: mu.ndim - len(operator.state_shape)]
    _, _, _, innov, weight, input_result = op.prepare(
        mu, y, mask, obs_var, operator, lead
    )
    post = op.posterior_precision(Q, operator, weight)
    rhs = op.transpose_all(operator, weight * innov)
    prior_result, chol = structured_factors(Q, post, method)
    dx = factor_solve(chol, jnp.reshape(rhs, Q.vector_shape))
    result = op.combine(input_result, prior_result, chol.result)
    return GaussianMAP(mu + dx.reshape(mu.shape), result)


@eqx.filter_jit
def _map_precision(mu, Q, y, mask, obs_var, method):
    mu, m, var, innov, input_result = prepare(mu, y, mask, obs_var)
    shape = Q.vector_shape
    prec = jnp.where(m, 1.0 / var, 0.0)
    post = Q.add_diagonal(prec.reshape(shape))
    prior_result, chol = structured_factors(Q, post, method)
    dx = factor_solve(chol, (prec * innov).reshape(shape))
    result = first_failure(
        (input_result != RESULTS.successful, input_result),
        (prior_result != RESULTS.successful, prior_result),
        (chol.result != RESULTS.successful, chol.result),
    )
    return GaussianMAP(mu + dx.reshape(mu.shape), result)


def map_covariance(
    mu: Float[ArrayLike, " *shape"],
    P: SymmetricBandMatrix | BlockTridiagonal | Float[ArrayLike, "d d"],
    y: Float[ArrayLike, " *obs"],
    mask: Bool[ArrayLike, " *obs"] | None,
    obs_var: Float[ArrayLike, " *obs"] | float,
    *,
    operator: AbstractLinearObservationOperator | None = None,
    max_obs: int | None = None,
    throw: bool = True,
) -> GaussianMAP:
    r"""MAP of $x$ with prior covariance $P$: $x = \mu + P H^\top (H P H^\top + R)^{-1}
    (y - H\mu)$, i.e. $x = \mu + K (y - H\mu)$ with the gain
    $K = P H^\top (H P H^\top + R)^{-1}$ [B24, eqs. 2.3-2.4].

    For the mask of the state (no `operator`, or an `IdentityOperator`), two forms,
    equal up to rounding:

    - **State space** (`max_obs=None`, any mask): with $S = M P M + \tilde R$ (same band
      / blocks as $P$; see the module docstring) and $z = S^{-1} M (y - \mu)$, $x = \mu
      + P z$. $O(d b^2)$ for a band, $O(T n^3)$ for blocks, $O(d^3)$ for a dense `P`
      of shape `(d, d)`; the structured factorisations are a sequential pass over $d$.
      $P$ itself is checked to be positive semi-definite (`jaxda.gaussian`): an
      indefinite $P$ gives `not_positive_definite` even when $S$ is SPD.
    - **Observation space** (`max_obs=m`): the observed indices $o_1 < \dots < o_p$
      ($p \le m$) are gathered into a static buffer of length $m$, $H P H^\top + R =
      (P_{o_i o_j} + r_{o_i}\delta_{ij})$ is factorised densely, $w = (H P H^\top +
      R)^{-1}(y - \mu)_o$, and $x = \mu + P H^\top w$ (one matvec). $O(m^3 + d b)$
      with no sequential pass: far cheaper when observations are sparse ([B24]'s
      windows hold 4 observations for $d = 96$). Unused buffer slots are decoupled
      identity rows. Only the observed principal block $H P H^\top$ is checked to be
      positive semi-definite (a necessary condition for $P$; indefiniteness of $P$
      outside the observed rows and columns is not detected, since detecting it
      needs the sequential pass this form avoids). A mask with more than `max_obs`
      observations gives `invalid_input` and a NaN mean (a `ValueError` here when the
      mask is concrete); the observation patterns of `jaxda.obs` give the bound as
      `pattern.max_count(T, state_shape)`.

    With any other linear `operator` (`jaxda.obs`: `SelectionOperator`,
    `MatrixOperator`, `LinearFunctionOperator`; per time or shared), always in
    observation space: the rows $h_i$ of $H$ for the $k$ observed entries ($k$ =
    every entry of `y` with `max_obs=None`, unobserved ones decoupled as identity
    rows; or a buffer of `max_obs`) are formed by $k$ applications of $H_t^\top$,
    then $P h_i$ ($k$ matvecs), $S = H P H^\top + R$ ($k \times k$, dense Cholesky)
    and $x = \mu + (P H^\top) S^{-1} (y - H\mu)$: $O(k\,d\,b + k^2 d + k^3)$ for a
    band. The observed block $H P H^\top$ is checked to be positive semi-definite
    and, with `max_obs=None`, $P$ itself too. When `P` is a `BlockTridiagonal` with
    one block per time of the operator's state size (and `max_obs=None`),
    $S = M H P H^\top M + \tilde R$ is block-tridiagonal with blocks of the
    observation size $m$, $S_{t+1,t} = H_{t+1} P_{t+1,t} H_t^\top$, and is
    factorised by the structured Cholesky instead: $O(T (m n^2 + m^3))$. The mean
    is NaN when `result` is not successful.

    Derivatives with respect to `mu`, `y`, `obs_var`, `P` and the operator's
    parameters are implicit (state space, structured `P`) or autodiff through the
    dense Cholesky.

    **Arguments:** as `map_precision`, with `P` the prior covariance (structured, or a
    dense array of shape `(d, d)`), `operator` (any linear `jaxda.obs` operator) and
    `max_obs` (optional static int).

    **Returns:** a `GaussianMAP` (`mean`, `result`).

    **Raises:** as `map_precision`, and a `ValueError` when a concrete `mask` holds
    more than `max_obs` observations.
    """
    general = operator is not None and not isinstance(operator, IdentityOperator)
    if operator is not None:
        mu, y, mask, obs_var, lead = op.validate(mu, y, mask, obs_var, operator)
    if not general:
        mu, y, mask, obs_var = validate(mu, y, mask, obs_var)
    if max_obs is not None:
        max_obs = check_int("max_obs", max_obs, minimum=1)
        count = int(np.sum(np.asarray(mask))) if is_concrete(mask) else 0
        if count > max_obs:
            raise ValueError(
                f"`mask` holds {count} observations but `max_obs` is "
                f"{max_obs}; give max_obs >= the number of observed entries."
            )
    d = mu.size
    if isinstance(P, AbstractSPDMatrix):
        vector_shape(P, d)
    else:
        P = jnp.asarray(P)
        if P.shape != (d, d):
            raise TypeError(
                "`P` must be a `SymmetricBandMatrix`, a `BlockTridiagonal` or a dense "
                f"array of shape {(d, d)}; got {type(P).__name__} of shape "
                f"{getattr(P, 'shape', None)}."
            )
    check_prior_finite("P", P)
    if general and max_obs is None and op.blocks_fit(P, operator, lead):
        out = _map_covariance_blocks(mu, P, y, mask, obs_var, operator)
    elif general:
        out = _map_covariance_operator(mu, P, y, mask, obs_var, operator, max_obs)
    elif max_obs is not None:
        out = _map_covariance_obs_space(mu, P, y, mask, obs_var, max_obs)
    else:
        out = _map_covariance(mu, P, y, mask, obs_var)
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _map_covariance_blocks(mu, P, y, mask, obs_var, operator):
    lead = mu.shape[: mu.ndim - len(operator.state_shape)]
    _, mk, var, innov, _, input_result = op.prepare(
        mu, y, mask, obs_var, operator, lead
    )
    s_mat = op.observation_blocks(P, operator, mk, var)
    chol = s_mat.cholesky("sequential")
    z = factor_solve(chol, innov.astype(s_mat.diagonal.dtype))
    dx = P.matvec(op.transpose_all(operator, z).reshape(P.vector_shape))
    result = _combine(input_result, prior_semidefinite_result(P), chol.result)
    ok = result == RESULTS.successful
    mean = jnp.where(ok, mu + dx.reshape(mu.shape), jnp.nan)
    return GaussianMAP(mean, result)


@eqx.filter_jit
def _map_covariance_operator(mu, P, y, mask, obs_var, operator, max_obs):
    lead = mu.shape[: mu.ndim - len(operator.state_shape)]
    x2, mk, var, innov, _, input_result = op.prepare(
        mu, y, mask, obs_var, operator, lead
    )
    size = x2.shape[0]
    m, v, r = mk.reshape(-1), var.reshape(-1), innov.reshape(-1)
    results = [input_result]
    if max_obs is None:
        idx = jnp.arange(m.size)
        used = m
        results.append(prior_semidefinite_result(P))
    else:
        count = jnp.sum(m)
        (idx,) = jnp.nonzero(m, size=max_obs, fill_value=0)
        used = jnp.arange(max_obs) < count
        results.insert(0, overflow_result(count > max_obs))
    h_rows = op.rows(operator, idx, size, innov.dtype)
    ph = jax.vmap(lambda h: _matvec(P, h))(h_rows)
    pair = used[:, None] & used[None, :]
    p_obs = jnp.where(pair, h_rows @ ph.T, 0.0)
    p_obs = 0.5 * (p_obs + p_obs.T)
    s_mat = p_obs + jnp.diag(jnp.where(used, v[idx], 1.0))
    block_result, low = dense_factors(p_obs, s_mat)
    w = jax.scipy.linalg.cho_solve((low, True), jnp.where(used, r[idx], 0.0))
    dx = ph.T @ jnp.where(used, w, 0.0)
    result = _combine(*results, block_result, dense_system_result(low))
    ok = result == RESULTS.successful
    mean = jnp.where(ok, mu + dx.reshape(mu.shape), jnp.nan)
    return GaussianMAP(mean, result)


def _entries(P, rows, cols):
    if isinstance(P, AbstractSPDMatrix):
        return P.entries(rows, cols)
    return P[rows, cols]


def _matvec(P, z):
    if isinstance(P, AbstractSPDMatrix):
        return P.matvec(z.reshape(P.vector_shape)).reshape(-1)
    return P @ z


def _combine(*results):
    return first_failure(*((r != RESULTS.successful, r) for r in results))


@eqx.filter_jit
def _map_covariance_obs_space(mu, P, y, mask, obs_var, max_obs):
    mu, m, var, innov, input_result = prepare(mu, y, mask, obs_var)
    count = jnp.sum(m)
    (idx,) = jnp.nonzero(m, size=max_obs, fill_value=0)
    used = jnp.arange(max_obs) < count
    pair = used[:, None] & used[None, :]
    p_obs = jnp.where(pair, _entries(P, idx[:, None], idx[None, :]), 0.0)
    s_mat = p_obs + jnp.diag(jnp.where(used, var[idx], 1.0))
    prior_result, low = dense_factors(p_obs, s_mat)
    w = jax.scipy.linalg.cho_solve((low, True), jnp.where(used, innov[idx], 0.0))
    z = jnp.zeros_like(innov).at[idx].add(jnp.where(used, w, 0.0))
    overflow = overflow_result(count > max_obs)
    result = _combine(overflow, input_result, prior_result, dense_system_result(low))
    ok = result == RESULTS.successful
    mean = jnp.where(ok, mu + _matvec(P, z).reshape(mu.shape), jnp.nan)
    return GaussianMAP(mean, result)


@eqx.filter_jit
def _map_covariance(mu, P, y, mask, obs_var):
    mu, m, var, innov, input_result = prepare(mu, y, mask, obs_var)
    if isinstance(P, AbstractSPDMatrix):
        shape = P.vector_shape
        s_mat = P.diag_congruence(m.reshape(shape)).add_diagonal(
            jnp.where(m, var, 1.0).reshape(shape)
        )
        prior_result, chol = structured_factors(P, s_mat, "sequential")
        z = factor_solve(chol, innov.reshape(shape))
        dx = P.matvec(z)
        result = _combine(input_result, prior_result, chol.result)
        return GaussianMAP(mu + dx.reshape(mu.shape), result)
    mf = m.astype(P.dtype)
    s_mat = mf[:, None] * P * mf[None, :] + jnp.diag(jnp.where(m, var, 1.0))
    prior_result, low = dense_factors(P, s_mat)
    z = jax.scipy.linalg.cho_solve((low, True), innov)
    result = _combine(input_result, prior_result, dense_system_result(low))
    return GaussianMAP(mu + (P @ z).reshape(mu.shape), result)


def posterior_variance(
    Q: SymmetricBandMatrix | BlockTridiagonal,
    mask: Bool[ArrayLike, " *obs"] | None,
    obs_var: Float[ArrayLike, " *obs"] | float,
    *,
    operator: AbstractLinearObservationOperator | None = None,
    throw: bool = True,
) -> PosteriorVariance:
    r"""Posterior marginal variances $\mathrm{diag}((Q + H^\top R^{-1} H)^{-1})$.

    Computed by selected inversion of the posterior precision's band / blocks,
    $O(d b^2)$ or $O(T n^3)$; not differentiable (gradient-free factor).

    **Arguments:** `Q`, `mask`, `obs_var` and `operator` as in `map_precision` (the
    same operators with the same `Q`; with an operator the state is `Q`'s vector
    reshaped to the operator's state shape, or `(T, *state_shape)`, and `mask` may
    be `None`); `throw`: raise when `result` is not successful (else the variances
    hold NaN where it failed).

    **Returns:** a `PosteriorVariance` (`variance` with the shape of `mask`, or of
    the state with an operator; `result`: `not_positive_definite` when $Q$ is not
    positive semi-definite or the posterior precision is not SPD, `invalid_input`
    for a failed value check under `jit`).
    """
    if operator is not None:
        op.check_linear(operator)
        if not isinstance(Q, AbstractSPDMatrix):
            vector_shape(Q, 0)
        lead = op.lead_from_size(operator, Q.size, "Q")
        _, mask, obs_var = op.validate_obs(
            operator, lead, None, mask, obs_var, dtype=jnp.result_type(float)
        )
        if not isinstance(operator, IdentityOperator):
            op.check_precision_structure(Q, operator, lead)
            check_prior_finite("Q", Q)
            out = _posterior_variance_operator(Q, mask, obs_var, operator, lead)
            return raise_if_failed(out, out.result, throw)
    mask = jnp.asarray(mask)
    zeros = jnp.zeros(mask.shape, jnp.result_type(float))
    _, _, mask, obs_var = validate(zeros, zeros, mask, obs_var)
    vector_shape(Q, mask.size)
    check_prior_finite("Q", Q)
    out = _posterior_variance(Q, mask, obs_var)
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _posterior_variance_operator(Q, mask, obs_var, operator, lead):
    dtype = jnp.result_type(float)
    zeros = jnp.zeros(lead + tuple(operator.state_shape), dtype)
    y = jnp.zeros(mask.shape, dtype)
    _, _, _, _, weight, input_result = op.prepare(
        zeros, y, mask, obs_var, operator, lead
    )
    post = op.posterior_precision(Q, operator, weight)
    prior_result, chol = structured_factors(Q, post, "sequential")
    variance = chol.inverse_diagonal(throw=False).reshape(zeros.shape)
    return PosteriorVariance(
        variance, _combine(input_result, prior_result, chol.result)
    )


@eqx.filter_jit
def _posterior_variance(Q, mask, obs_var):
    zeros = jnp.zeros(mask.shape, jnp.result_type(float))
    _, m, var, _, input_result = prepare(zeros, zeros, mask, obs_var)
    post = Q.add_diagonal(jnp.where(m, 1.0 / var, 0.0).reshape(Q.vector_shape))
    prior_result, chol = structured_factors(Q, post, "sequential")
    variance = chol.inverse_diagonal(throw=False).reshape(mask.shape)
    return PosteriorVariance(
        variance, _combine(input_result, prior_result, chol.result)
    )
