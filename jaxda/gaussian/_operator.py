r"""The Gaussian MAPs with a linear observation operator $H$ (`operator=`).

The operator $H_t$ (`jaxda.obs`) acts on the trailing `operator.state_shape` axes of
`mu`: `mu` has shape `state_shape` (one state, $T = 1$) or `(T, *state_shape)` (a
trajectory, $H = \mathrm{blockdiag}(H_0, \dots, H_{T-1})$ over the flattened
time-major vector, the layout of `BlockTridiagonal`); `y`, `mask` and `obs_var` have
shape `lead + obs_shape` (`lead` = `()` or `(T,)`), the mask saying which entries of
$y$ are available. Unobserved entries get $r = 1$, innovation 0 and weight 0, so they
drop out of every formula.

Which form takes which operator:

- precision form (`map_precision`, `posterior_variance`): $Q + H^\top R^{-1} H$ must
  keep the structure of $Q$. A selection operator (`IdentityOperator`,
  `SelectionOperator`: $H^\top R^{-1} H$ diagonal) works with any $Q$; any other
  linear operator needs a `BlockTridiagonal` $Q$ with one block per time and blocks
  of the operator's state size, to whose diagonal blocks $H_t^\top R_t^{-1} H_t$ is
  added ($O(T (m n^2 + n^3))$). A banded $Q$ with a non-diagonal $H^\top R^{-1} H$
  is refused.
- covariance form (`map_covariance`): any linear operator, in observation space:
  the rows $h_i$ of $H$ for the $k$ observed entries ($k$ = all of them, or a
  buffer of `max_obs`), $S = H P H^\top + R$ ($k \times k$, dense Cholesky) and
  $x = \mu + P H^\top S^{-1} (y - H\mu)$: $k$ applications of $H^\top$ and of $P$,
  $O(k\,d\,b + k^2 d + k^3)$.
- `map_dense`: any linear operator, densified ($O(d^3)$, tests and small problems).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._results import RESULTS, all_finite, all_positive, first_failure, value_result
from .._validation import check_finite, check_positive, is_concrete
from ..linalg import BlockTridiagonal
from ..obs import AbstractSelectionOperator, check_operator


def check_linear(operator):
    """`operator`, or a `TypeError` unless it is a linear observation operator."""
    return check_operator(
        operator, getattr(operator, "state_shape", ()), linear=True, name="operator"
    )


def lead_shape(operator, shape, name: str) -> tuple[int, ...]:
    """`()` when `shape` is the operator's state shape, `(T,)` for `(T, *state)`."""
    state = tuple(operator.state_shape)
    shape = tuple(shape)
    if shape == state:
        lead = ()
    elif len(shape) == len(state) + 1 and shape[1:] == state:
        lead = shape[:1]
    else:
        raise ValueError(
            f"`{name}` must have the state shape {state} of `operator`, or "
            f"(T, {', '.join(map(str, state))}) for a trajectory; got {shape}."
        )
    if operator.n_times is not None and lead != (operator.n_times,):
        raise ValueError(
            f"`operator` varies in time over T = {operator.n_times} times, so `{name}` "
            f"must have shape ({operator.n_times}, {', '.join(map(str, state))}); got "
            f"{shape}."
        )
    return lead


def lead_from_size(operator, size: int, name: str) -> tuple[int, ...]:
    """The leading shape of a prior of `size` entries: `()` or `(size // n,)`."""
    n = operator.state_size
    if size == n and operator.n_times is None:
        return ()
    if size % n:
        raise ValueError(
            f"`{name}` has size {size}, not a multiple of the state size {n} of "
            "`operator`."
        )
    return lead_shape(operator, (size // n, *operator.state_shape), name)


def validate_obs(operator, lead, y, mask, obs_var, *, dtype):
    """Shapes and dtypes of `y`, `mask`, `obs_var` in observation space and, on
    concrete values, finite `y` and `obs_var > 0` where observed."""
    want = lead + tuple(operator.obs_shape)
    if y is not None:
        y = jnp.asarray(y)
        if tuple(y.shape) != want:
            raise ValueError(
                f"`y` must have shape {want} (the observation space of `operator`, "
                f"obs_shape {tuple(operator.obs_shape)}, for each time); got "
                f"{tuple(y.shape)}."
            )
    if mask is None:
        mask = jnp.ones(want, bool)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
    if tuple(mask.shape) != want:
        raise ValueError(
            f"`mask` must have shape {want} (the shape of `y`, over the observation "
            f"entries of `operator`); got {tuple(mask.shape)}."
        )
    obs_var = jnp.asarray(obs_var)
    if obs_var.ndim and tuple(obs_var.shape) != want:
        raise ValueError(
            f"`obs_var` must be a scalar or have shape {want}; got "
            f"{tuple(obs_var.shape)}."
        )
    obs_var = jnp.broadcast_to(obs_var, want)
    if is_concrete(mask):
        m = np.asarray(mask)
        if is_concrete(obs_var):
            check_positive("obs_var (where mask is True)", np.asarray(obs_var)[m])
        if y is not None and is_concrete(y):
            check_finite("y (where mask is True)", np.asarray(y)[m])
    if y is None:
        y = jnp.zeros(want, dtype)
    return y, mask, obs_var


def validate(mu, y, mask, obs_var, operator):
    """`(mu, y, mask, obs_var, lead)` checked for a linear `operator`."""
    check_linear(operator)
    mu = jnp.asarray(mu)
    if not jnp.issubdtype(mu.dtype, jnp.floating):
        mu = mu.astype(jnp.result_type(float))
    lead = lead_shape(operator, mu.shape, "mu")
    check_finite("mu", mu)
    y, mask, obs_var = validate_obs(operator, lead, y, mask, obs_var, dtype=mu.dtype)
    return mu, y, mask, obs_var, lead


def _times(x2):
    return jnp.arange(x2.shape[0])


def prepare(mu, y, mask, obs_var, operator, lead):
    """Per-time arrays: `x2` `(L, *state)`, and `(L, m)` mask, variances (1 where
    unobserved), innovations $y - H\\mu$ (0 where unobserved), weights $m / r$; the
    traced value check."""
    size = math.prod(lead)
    m = operator.obs_size
    x2 = jnp.reshape(mu, (size, *operator.state_shape))
    hmu = jnp.reshape(operator.trajectory(x2), (size, m))
    dtype = jnp.result_type(mu.dtype, y.dtype, obs_var.dtype, hmu.dtype)
    mk = jnp.reshape(mask, (size, m))
    var = jnp.where(mk, jnp.reshape(obs_var, (size, m)).astype(dtype), 1.0)
    innov = jnp.where(mk, jnp.reshape(y, (size, m)).astype(dtype) - hmu, 0.0)
    weight = jnp.where(mk, 1.0 / var, 0.0)
    valid = all_finite(mu, innov) & all_positive(var)
    return x2.astype(dtype), mk, var, innov, weight, value_result(valid)


def transpose_all(operator, v):
    """$H^\\top v$ per time: `v` `(L, m)` -> `(L, n)`."""

    def one(v_t, t):
        y_t = jnp.reshape(v_t, operator.obs_shape)
        return jnp.reshape(operator.transpose(y_t, t), (-1,))

    return jax.vmap(one)(v, jnp.arange(v.shape[0]))


def gram_blocks(operator, weight):
    """$H_t^\\top \\mathrm{diag}(w_t) H_t$ per time, `(L, n, n)`."""

    def one(w_t, t):
        return operator.gram(jnp.reshape(w_t, operator.obs_shape), t)

    return jax.vmap(one)(weight, jnp.arange(weight.shape[0]))


def diagonal_grams(operator, weight):
    """The diagonals of $H_t^\\top \\mathrm{diag}(w_t) H_t$ per time, `(L, n)`."""

    def one(w_t, t):
        return operator.diagonal_gram(jnp.reshape(w_t, operator.obs_shape), t)

    return jax.vmap(one)(weight, jnp.arange(weight.shape[0]))


def rows(operator, idx, size, dtype):
    """The rows $h_i$ of $H$ (over the flattened `(L, n)` state) for the flat
    observation indices `idx` (entry `k` of time `t` is `t m + k`): `(len(idx), L n)`,
    each by one application of $H_t^\\top$ to a unit vector."""
    m, n = operator.obs_size, operator.state_size

    def row(i):
        t, k = i // m, i % m
        e = jnp.zeros(m, dtype).at[k].set(1.0)
        h = jnp.reshape(operator.transpose(jnp.reshape(e, operator.obs_shape), t), -1)
        return jnp.zeros((size, n), h.dtype).at[t].set(h).reshape(-1)

    return jax.vmap(row)(idx)


def posterior_precision(Q, operator, weight):
    r"""$Q + H^\top W H$ in the structure of $Q$ (see the module docstring)."""
    if isinstance(operator, AbstractSelectionOperator):
        dg = diagonal_grams(operator, weight)
        return Q.add_diagonal(jnp.reshape(dg, Q.vector_shape))
    g = gram_blocks(operator, weight)
    dtype = jnp.result_type(Q.diagonal.dtype, g.dtype)
    return BlockTridiagonal(Q.diagonal.astype(dtype) + g, Q.lower.astype(dtype))


def check_precision_structure(Q, operator, lead, name: str = "Q") -> None:
    """Refuse a precision that cannot absorb $H^\\top R^{-1} H$ (a `ValueError`
    naming `name` and `operator`)."""
    if isinstance(operator, AbstractSelectionOperator):
        return
    n = operator.state_size
    size = math.prod(lead)
    if not isinstance(Q, BlockTridiagonal):
        raise ValueError(
            f"`{name}` is a {type(Q).__name__}, which cannot absorb the non-diagonal "
            f"H^T R^-1 H of `operator` ({type(operator).__name__}): the precision "
            "form takes a SymmetricBandMatrix only with a selection operator "
            "(IdentityOperator, SelectionOperator). Give a BlockTridiagonal "
            f"`{name}` with blocks of the operator's state size {n}, or use "
            "map_covariance / map_dense."
        )
    if Q.vector_shape != (size, n):
        raise ValueError(
            f"`{name}` has {Q.num_blocks} blocks of size {Q.block_size}, but "
            f"`operator` needs one block per time ({size}) of its state size {n} to "
            "add H_t^T R_t^-1 H_t to the diagonal blocks."
        )


def combine(*results):
    """The first of `results` that is not successful."""
    return first_failure(*((r != RESULTS.successful, r) for r in results))


def matrices(operator, size, dtype):
    """The dense $H_t$ of every time, `(L, m, n)`."""
    return jax.vmap(lambda t: operator.matrix(t, dtype))(jnp.arange(size))


def observation_blocks(P, operator, mask, var):
    r"""$S = M H P H^\top M + \tilde R$ for a `BlockTridiagonal` $P$ with one block
    per time: block-tridiagonal with blocks of the observation size $m$,
    $S_{tt} = H_t P_{tt} H_t^\top$ and $S_{t+1,t} = H_{t+1} P_{t+1,t} H_t^\top$
    (masked), plus the variances ($1$ where unobserved) on the diagonal."""
    size = P.num_blocks
    h = matrices(operator, size, P.diagonal.dtype)
    mf = mask.astype(h.dtype)
    h = mf[:, :, None] * h
    diagonal = jnp.einsum("tai,tij,tbj->tab", h, P.diagonal, h)
    lower = jnp.einsum("tai,tij,tbj->tab", h[1:], P.lower, h[:-1])
    diagonal = 0.5 * (diagonal + jnp.swapaxes(diagonal, 1, 2))
    return BlockTridiagonal(diagonal, lower).add_diagonal(var)


def blocks_fit(P, operator, lead) -> bool:
    """Whether `P` is block-tridiagonal with one block per time of the operator's
    state size (so that $H P H^\\top$ is block-tridiagonal too)."""
    return isinstance(P, BlockTridiagonal) and P.vector_shape == (
        math.prod(lead),
        operator.state_size,
    )
