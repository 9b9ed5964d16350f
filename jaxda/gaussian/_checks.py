r"""Inputs, results and the definiteness checks shared by the Gaussian MAPs.

**Value checks.** `mu` must be finite, and `y` finite and `obs_var` finite and $> 0$
where `mask` is `True`. Eagerly a violation is a `ValueError` naming the argument;
under `jit` the same check gives `RESULTS.invalid_input` in the output's `result`.

**Definiteness** (see `jaxda.gaussian`): the system matrix must be SPD, the prior
positive semi-definite, checked by factorising $A + \delta I$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool
from .._results import (
    RESULTS,
    all_finite,
    all_positive,
    first_failure,
    value_result,
)
from .._validation import check_finite, check_positive, check_same_shape, is_concrete
from ..linalg import AbstractSPDMatrix


def validate(mu, y, mask, obs_var):
    """Static checks (shapes, dtypes) and, on concrete values, the value checks."""
    mu = jnp.asarray(mu)
    if not jnp.issubdtype(mu.dtype, jnp.floating):
        mu = mu.astype(jnp.result_type(float))
    y = jnp.asarray(y)
    mask = jnp.asarray(mask)
    check_same_shape("mu", mu, "y", y)
    check_same_shape("mu", mu, "mask", mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
    obs_var = jnp.asarray(obs_var)
    if obs_var.ndim:
        check_same_shape("y", y, "obs_var", obs_var)
    obs_var = jnp.broadcast_to(obs_var, y.shape)
    check_finite("mu", mu)
    if is_concrete(mask):
        m = np.asarray(mask)
        if is_concrete(obs_var):
            check_positive("obs_var (where mask is True)", np.asarray(obs_var)[m])
        if is_concrete(y):
            check_finite("y (where mask is True)", np.asarray(y)[m])
    return mu, y, mask, obs_var


def prepare(mu, y, mask, obs_var):
    """Flat `(mu, m, var, innov, input_result)`: `var` is 1 and `innov` 0 where
    unobserved; `input_result` is the traced value check (`invalid_input`)."""
    dtype = jnp.result_type(mu.dtype, y.dtype, obs_var.dtype)
    m = mask.reshape(-1)
    var = jnp.where(m, obs_var.reshape(-1).astype(dtype), 1.0)
    innov = jnp.where(m, y.reshape(-1).astype(dtype) - mu.reshape(-1), 0.0)
    valid = all_finite(mu, innov) & all_positive(var)
    return mu, m, var, innov, value_result(valid)


def vector_shape(A, d: int) -> tuple[int, ...]:
    """`A.vector_shape`, with a `TypeError` / `ValueError` for a wrong prior."""
    if not isinstance(A, AbstractSPDMatrix):
        raise TypeError(
            "the prior matrix must be a `SymmetricBandMatrix`, a `BlockTridiagonal` "
            f"or (covariance form only) a dense array; got {type(A).__name__}."
        )
    if A.size != d:
        raise ValueError(
            f"the prior matrix has size {A.size} but `mu` has {d} entries "
            f"(shape {A.vector_shape} expected after flattening)."
        )
    return A.vector_shape


def check_prior_finite(name: str, A) -> None:
    """Eagerly, a `ValueError` naming `name` when the prior matrix holds NaN / inf."""
    for leaf in jax.tree_util.tree_leaves(A):
        check_finite(name, leaf)


def _shift(dtype, max_diag):
    info = jnp.finfo(dtype)
    return jnp.sqrt(info.eps) * max_diag + info.tiny


def _stack(a, b):
    dtype = jnp.result_type(a.dtype, b.dtype)
    return jnp.stack([a.astype(dtype), b.astype(dtype)])


def structured_factors(prior: AbstractSPDMatrix, system: AbstractSPDMatrix, method):
    """`(prior_result, system_cholesky)`: $A + \\delta I$ (semi-definiteness of the
    prior, no gradient) and the system, factorised in one batched pass."""
    prior = jax.lax.stop_gradient(prior)
    idx = jnp.arange(prior.size)
    diag = prior.entries(idx, idx)
    delta = _shift(diag.dtype, jnp.max(jnp.abs(diag)))
    shifted = prior.add_diagonal(jnp.full(prior.vector_shape, delta, diag.dtype))
    both = jax.tree.map(_stack, shifted, system)
    chols = jax.vmap(lambda A: A.cholesky(method))(both)
    prior_chol = jax.tree.map(lambda x: x[0], chols)
    system_chol = jax.tree.map(lambda x: x[1], chols)
    system_chol = eqx.tree_at(lambda c: c.matrix, system_chol, system)
    return prior_chol.result, system_chol


def dense_factors(prior, system):
    """`(prior_result, lower)`: as `structured_factors` for dense matrices (two
    factorisations: `system` may be smaller than `prior`), `lower` the Cholesky
    factor of `system` (NaN when it is not SPD)."""
    prior = jax.lax.stop_gradient(prior)
    eye = jnp.eye(prior.shape[0], dtype=prior.dtype)
    delta = _shift(prior.dtype, jnp.max(jnp.abs(jnp.diagonal(prior))))
    prior_result = first_failure(
        (~all_finite(prior), RESULTS.nonfinite_input),
        (
            ~_factor_ok(jnp.linalg.cholesky(prior + delta * eye)),
            RESULTS.not_positive_definite,
        ),
    )
    return prior_result, jnp.linalg.cholesky(system)


def _factor_ok(low) -> Bool[Array, ""]:
    return all_finite(low) & jnp.all(jnp.diagonal(low, axis1=-2, axis2=-1) > 0)


def dense_system_result(low) -> RESULTS:
    """`not_positive_definite` unless the dense Cholesky factor `low` is finite with
    a positive diagonal."""
    return RESULTS.where(
        _factor_ok(low), RESULTS.successful, RESULTS.not_positive_definite
    )


def overflow_result(overflow: Bool[Array, ""]) -> RESULTS:
    """`invalid_input` when there are more observations than `max_obs`."""
    return RESULTS.where(overflow, RESULTS.invalid_input, RESULTS.successful)


def prior_semidefinite_result(prior) -> RESULTS:
    """Whether the prior matrix (structured or dense) is positive semi-definite:
    `not_positive_definite` unless $A + \\delta I$ factorises (no gradient)."""
    prior = jax.lax.stop_gradient(prior)
    if isinstance(prior, AbstractSPDMatrix):
        idx = jnp.arange(prior.size)
        diag = prior.entries(idx, idx)
        delta = _shift(diag.dtype, jnp.max(jnp.abs(diag)))
        shifted = prior.add_diagonal(jnp.full(prior.vector_shape, delta, diag.dtype))
        return shifted.cholesky("sequential").result
    eye = jnp.eye(prior.shape[0], dtype=prior.dtype)
    delta = _shift(prior.dtype, jnp.max(jnp.abs(jnp.diagonal(prior))))
    return first_failure(
        (~all_finite(prior), RESULTS.nonfinite_input),
        (
            ~_factor_ok(jnp.linalg.cholesky(prior + delta * eye)),
            RESULTS.not_positive_definite,
        ),
    )
