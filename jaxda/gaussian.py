r"""Gaussian MAP estimation (optimal interpolation) with structured prior matrices.

Prior $x \sim \mathcal N(\mu, P)$ (or precision $Q = P^{-1}$), observations
$y = H x + \varepsilon$, $\varepsilon \sim \mathcal N(0, R)$ with diagonal $R$, where
$H$ selects the entries where `mask` is `True`. The posterior mean (= MAP) is

- covariance form: $x = \mu + P H^\top (H P H^\top + R)^{-1} (y - H\mu)$;
- precision form: $(Q + H^\top R^{-1} H)\, x = Q\mu + H^\top R^{-1} y$.

Arrays `mu`, `y`, `mask` (and `obs_var` unless scalar) share one shape of size $d$ and
are flattened in C order: a `(T, n)` trajectory becomes the interleaved time-major
layout $i = t n + j$, matching `SymmetricBandMatrix` (bandwidth $\le 2n-1$) and
`BlockTridiagonal` (blocks of size $n$). Results have the shape of `mu`.

Costs are $O(d b^2)$ (band) or $O(T n^3)$ (block-tridiagonal): for a mask, $H^\top
R^{-1} H = \mathrm{diag}(m / r)$ is added to the diagonal of $Q$; in covariance form
the observed block $H P H^\top + R$ is embedded in a $d \times d$ matrix of the same
structure, $S = M P M + \tilde R$ with $M = \mathrm{diag}(m)$ and $\tilde R$ the
observation variances on observed entries and $1$ elsewhere: $S$ is block diagonal
(after permutation) with blocks $H P H^\top + R$ and $I$, so with
$z = S^{-1} M (y - \mu)$ (zero on unobserved entries), $x = \mu + P z$.

Derivatives with respect to `mu`, `y`, `obs_var` and the prior matrix entries come from
the implicit rules of `jaxda.linalg.solve`. Every function handles one problem and is
`jax.vmap`-able over samples and masks; with no observation at all the MAP is `mu`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, ArrayLike, Bool, Float
from ._validation import (
    check_choice,
    check_int,
    check_positive,
    check_same_shape,
    is_concrete,
)
from .linalg import BlockTridiagonal, SymmetricBandMatrix
from .linalg._implicit import factor_solve


class GaussianMAP(eqx.Module):
    """Result of a Gaussian MAP estimate.

    **Fields:**

    - `mean`: the posterior mean (= MAP), with the shape of `mu`.
    - `ok`: boolean scalar, `True` when the linear system was symmetric positive
      definite (its Cholesky factorisation succeeded). When `False` the mean holds
      NaN; check it inside `jit`.
    """

    mean: Float[Array, " *shape"]
    ok: Bool[Array, ""]


def _validate(mu, y, mask, obs_var):
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
    if is_concrete(obs_var) and is_concrete(mask):
        check_positive("obs_var (where mask is True)", obs_var[mask])
    return mu, y, mask, obs_var


def _prepare(mu, y, mask, obs_var):
    dtype = jnp.result_type(mu.dtype, y.dtype, obs_var.dtype)
    m = mask.reshape(-1)
    var = jnp.where(m, obs_var.reshape(-1).astype(dtype), 1.0)
    innov = jnp.where(m, y.reshape(-1).astype(dtype) - mu.reshape(-1), 0.0)
    return mu, m, var, innov


def _vector_shape(A, d):
    if isinstance(A, SymmetricBandMatrix):
        shape = (A.size,)
    elif isinstance(A, BlockTridiagonal):
        shape = (A.num_blocks, A.block_size)
    else:
        raise TypeError(
            "the prior matrix must be a `SymmetricBandMatrix`, a `BlockTridiagonal` "
            f"or (covariance form only) a dense array; got {type(A).__name__}."
        )
    if A.size != d:
        raise ValueError(
            f"the prior matrix has size {A.size} but `mu` has {d} entries "
            f"(shape {shape} expected after flattening)."
        )
    return shape


def map_precision(
    mu: Float[ArrayLike, " *shape"],
    Q: SymmetricBandMatrix | BlockTridiagonal,
    y: Float[ArrayLike, " *shape"],
    mask: Bool[ArrayLike, " *shape"],
    obs_var: Float[ArrayLike, " *shape"] | float,
    *,
    method: str = "sequential",
) -> GaussianMAP:
    r"""MAP of $x$ with prior precision $Q$: $(Q + H^\top R^{-1}H)\,x = Q\mu + H^\top
    R^{-1}y$.

    Solved as $x = \mu + (Q + D)^{-1} D (y - \mu)$ with $D = \mathrm{diag}(m / r)$,
    one structured Cholesky, $O(d b^2)$ or $O(T n^3)$.

    **Arguments:**

    - `mu`: prior mean, any shape of size $d$.
    - `Q`: prior precision, `SymmetricBandMatrix` or `BlockTridiagonal` of size $d$.
    - `y`, `mask`: observations and boolean mask, shape of `mu`.
    - `obs_var`: observation-error variances $r > 0$ (scalar or shape of `y`; ignored
      where `mask` is `False`).
    - `method`: `"sequential"` or `"parallel"` (block-tridiagonal `Q` only).

    **Returns:** a `GaussianMAP` (`mean`, `ok`).
    """
    check_choice("method", method, ("sequential", "parallel"))
    mu, y, mask, obs_var = _validate(mu, y, mask, obs_var)
    _vector_shape(Q, mu.size)
    return _map_precision(mu, Q, y, mask, obs_var, method)


@eqx.filter_jit
def _map_precision(mu, Q, y, mask, obs_var, method):
    mu, m, var, innov = _prepare(mu, y, mask, obs_var)
    shape = _vector_shape(Q, m.size)
    prec = jnp.where(m, 1.0 / var, 0.0)
    post = Q.add_diagonal(prec.reshape(shape))
    chol = (
        post.cholesky(method=method)
        if isinstance(post, BlockTridiagonal)
        else post.cholesky()
    )
    dx = factor_solve(chol, (prec * innov).reshape(shape), check=False)
    return GaussianMAP(mu + dx.reshape(mu.shape), chol.is_spd)


def map_covariance(
    mu: Float[ArrayLike, " *shape"],
    P: SymmetricBandMatrix | BlockTridiagonal | Float[ArrayLike, "d d"],
    y: Float[ArrayLike, " *shape"],
    mask: Bool[ArrayLike, " *shape"],
    obs_var: Float[ArrayLike, " *shape"] | float,
    *,
    max_obs: int | None = None,
) -> GaussianMAP:
    r"""MAP of $x$ with prior covariance $P$: $x = \mu + P H^\top (H P H^\top + R)^{-1}
    (y - H\mu)$.

    Two forms, equal up to rounding:

    - **State space** (`max_obs=None`, any mask): with $S = M P M + \tilde R$ (same band
      / blocks as $P$; see the module docstring) and $z = S^{-1} M (y - \mu)$, $x = \mu
      + P z$. $O(d b^2)$ for a band, $O(T n^3)$ for blocks, $O(d^3)$ for a dense `P`
      of shape `(d, d)`; the structured factorisations are a sequential pass over $d$.
    - **Observation space** (`max_obs=m`): the observed indices $o_1 < \dots < o_p$
      ($p \le m$) are gathered into a static buffer of length $m$, $H P H^\top + R =
      (P_{o_i o_j} + r_{o_i}\delta_{ij})$ is factorised densely, $w = (H P H^\top +
      R)^{-1}(y - \mu)_o$, and $x = \mu + P H^\top w$ (one matvec). $O(m^3 + d b)$
      with no sequential pass: far cheaper when observations are sparse ([B24]'s
      windows hold 4 observations for $d = 96$). Unused buffer slots are decoupled
      identity rows. A mask with more than `max_obs` observations gives `ok=False`
      and a NaN mean (a `ValueError` here when the mask is concrete); the observation
      patterns of `jaxda.obs` give the bound as `pattern.max_count(T, state_shape)`.

    Derivatives with respect to `mu`, `y`, `obs_var` and `P` are implicit (state space,
    structured `P`) or autodiff through the dense $m \times m$ Cholesky.

    **Returns:** a `GaussianMAP` (`mean`, `ok`: whether the system was SPD and, with
    `max_obs`, the observations fitted the buffer).
    """
    mu, y, mask, obs_var = _validate(mu, y, mask, obs_var)
    if max_obs is not None:
        max_obs = check_int("max_obs", max_obs, minimum=1)
        count = int(np.sum(np.asarray(mask))) if is_concrete(mask) else 0
        if count > max_obs:
            raise ValueError(
                f"`mask` holds {count} observations but `max_obs` is "
                f"{max_obs}; give max_obs >= the number of observed entries."
            )
    d = mu.size
    if isinstance(P, SymmetricBandMatrix | BlockTridiagonal):
        _vector_shape(P, d)
    else:
        P = jnp.asarray(P)
        if P.shape != (d, d):
            raise TypeError(
                "`P` must be a `SymmetricBandMatrix`, a `BlockTridiagonal` or a dense "
                f"array of shape {(d, d)}; got {type(P).__name__} of shape "
                f"{getattr(P, 'shape', None)}."
            )
    if max_obs is not None:
        return _map_covariance_obs_space(mu, P, y, mask, obs_var, max_obs)
    return _map_covariance(mu, P, y, mask, obs_var)


def _entries(P, rows, cols):
    if isinstance(P, SymmetricBandMatrix | BlockTridiagonal):
        return P.entries(rows, cols)
    return P[rows, cols]


def _matvec(P, z):
    if isinstance(P, SymmetricBandMatrix | BlockTridiagonal):
        return P.matvec(z.reshape(_vector_shape(P, z.size))).reshape(-1)
    return P @ z


@eqx.filter_jit
def _map_covariance_obs_space(mu, P, y, mask, obs_var, max_obs):
    mu, m, var, innov = _prepare(mu, y, mask, obs_var)
    count = jnp.sum(m)
    (idx,) = jnp.nonzero(m, size=max_obs, fill_value=0)
    used = jnp.arange(max_obs) < count
    pair = used[:, None] & used[None, :]
    s_mat = jnp.where(pair, _entries(P, idx[:, None], idx[None, :]), 0.0)
    s_mat = s_mat + jnp.diag(jnp.where(used, var[idx], 1.0))
    low = jnp.linalg.cholesky(s_mat)
    w = jax.scipy.linalg.cho_solve((low, True), jnp.where(used, innov[idx], 0.0))
    z = jnp.zeros_like(innov).at[idx].add(jnp.where(used, w, 0.0))
    ok = jnp.all(jnp.isfinite(low)) & (count <= max_obs)
    mean = jnp.where(ok, mu + _matvec(P, z).reshape(mu.shape), jnp.nan)
    return GaussianMAP(mean, ok)


@eqx.filter_jit
def _map_covariance(mu, P, y, mask, obs_var):
    mu, m, var, innov = _prepare(mu, y, mask, obs_var)
    if isinstance(P, SymmetricBandMatrix | BlockTridiagonal):
        shape = _vector_shape(P, m.size)
        s_mat = P.diag_congruence(m.reshape(shape)).add_diagonal(
            jnp.where(m, var, 1.0).reshape(shape)
        )
        chol = s_mat.cholesky()
        z = factor_solve(chol, innov.reshape(shape), check=False)
        dx = P.matvec(z)
        return GaussianMAP(mu + dx.reshape(mu.shape), chol.is_spd)
    mf = m.astype(P.dtype)
    s_mat = mf[:, None] * P * mf[None, :] + jnp.diag(jnp.where(m, var, 1.0))
    low = jnp.linalg.cholesky(s_mat)
    ok = jnp.all(jnp.isfinite(low))
    z = jax.scipy.linalg.cho_solve((low, True), innov)
    return GaussianMAP(mu + (P @ z).reshape(mu.shape), ok)


def posterior_variance(
    Q: SymmetricBandMatrix | BlockTridiagonal,
    mask: Bool[ArrayLike, " *shape"],
    obs_var: Float[ArrayLike, " *shape"] | float,
) -> Float[Array, " *shape"]:
    r"""Posterior marginal variances $\mathrm{diag}((Q + H^\top R^{-1} H)^{-1})$.

    Computed by selected inversion of the posterior precision's band / blocks,
    $O(d b^2)$ or $O(T n^3)$; not differentiable (gradient-free factor). Returns the
    shape of `mask`; NaN if the posterior precision is not SPD.
    """
    mask = jnp.asarray(mask)
    zeros = jnp.zeros(mask.shape, jnp.result_type(float))
    _, _, mask, obs_var = _validate(zeros, zeros, mask, obs_var)
    _vector_shape(Q, mask.size)
    return _posterior_variance(Q, mask, obs_var)


@eqx.filter_jit
def _posterior_variance(Q, mask, obs_var):
    zeros = jnp.zeros(mask.shape, jnp.result_type(float))
    _, m, var, _ = _prepare(zeros, zeros, mask, obs_var)
    shape = _vector_shape(Q, m.size)
    post = Q.add_diagonal(jnp.where(m, 1.0 / var, 0.0).reshape(shape))
    return post.cholesky().inverse_diagonal().reshape(mask.shape)


def map_dense(
    mu: Float[ArrayLike, " *shape"],
    y: Float[ArrayLike, " ..."],
    obs_var: Float[ArrayLike, " ..."] | float,
    *,
    mask: Bool[ArrayLike, " *shape"] | None = None,
    H: Float[ArrayLike, "m d"] | None = None,
    cov: Float[ArrayLike, "d d"] | None = None,
    precision: Float[ArrayLike, "d d"] | None = None,
) -> Float[Array, " *shape"]:
    r"""Dense reference MAP for tests and small problems ($O(d^3)$).

    Give exactly one of `cov` ($P$, covariance form) or `precision` ($Q$, precision
    form), and either `mask` (`y` of the shape of `mu`) or a dense `H` of shape
    `(m, d)` (`y` of shape `(m,)`). With a mask, the observed rows are selected
    with the full-size masking identity, so traced masks work.
    """
    if (cov is None) == (precision is None):
        raise ValueError("give exactly one of `cov` and `precision`.")
    if (mask is None) == (H is None):
        raise ValueError("give exactly one of `mask` and `H`.")
    mu = jnp.asarray(mu)
    mu_f = mu.reshape(-1)
    d = mu_f.size
    if mask is not None:
        mu, m, var, innov = _prepare(*_validate(mu, y, mask, obs_var))
        h = jnp.diag(m.astype(var.dtype))
        r_inv = jnp.where(m, 1.0 / var, 0.0)
        if precision is not None:
            a = jnp.asarray(precision) + jnp.diag(r_inv)
            return mu + jnp.linalg.solve(a, r_inv * innov).reshape(mu.shape)
        p = jnp.asarray(cov)
        s = h @ p @ h + jnp.diag(jnp.where(m, var, 1.0))
        return mu + (p @ jnp.linalg.solve(s, innov)).reshape(mu.shape)
    h = jnp.asarray(H)
    if h.ndim != 2 or h.shape[1] != d:
        raise ValueError(f"`H` must have shape (m, {d}); got {h.shape}.")
    y = jnp.reshape(jnp.asarray(y), (-1,))
    if y.shape != (h.shape[0],):
        raise ValueError(f"`y` must have shape ({h.shape[0]},); got {y.shape}.")
    var = jnp.broadcast_to(jnp.asarray(obs_var), y.shape)
    innov = y - h @ mu_f
    if precision is not None:
        a = jnp.asarray(precision) + h.T @ (h / var[:, None])
        return mu + jnp.linalg.solve(a, h.T @ (innov / var)).reshape(mu.shape)
    p = jnp.asarray(cov)
    s = h @ p @ h.T + jnp.diag(var)
    return mu + (p @ h.T @ jnp.linalg.solve(s, innov)).reshape(mu.shape)
