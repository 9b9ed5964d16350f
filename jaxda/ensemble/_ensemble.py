r"""Ensembles `(N, *state)`: statistics, transforms, inflation and random rotations.

An ensemble $E$ has $N$ members $E_i$ as rows, mean $\bar x = \tfrac1N \sum_i E_i$
and anomalies $A = E - \mathbf 1 \bar x^\top$ (rows; DAPPER's convention, unscaled),
so that the ensemble covariance is $P_e = A^\top A / (N - 1)$. Every analysis here
updates the ensemble by a linear combination of its members,

$$E^a = E + X A,$$

with $X$ an $N \times N$ matrix (the *ensemble transform*; one per state entry for
the LETKF). Because the same $X$ may be applied to earlier ensembles, a fixed-lag
smoother (EnKS) costs one matrix product per stored time.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key


def flat(ensemble: Float[Array, "N *state"]) -> Float[Array, "N n"]:
    """The ensemble with each member flattened, `(N, n)`."""
    return jnp.reshape(ensemble, (ensemble.shape[0], -1))


def anomalies(ensemble: Float[Array, "N n"]) -> Float[Array, "N n"]:
    r"""$A = E - \mathbf 1 \bar x^\top$ (unscaled anomalies)."""
    return ensemble - jnp.mean(ensemble, axis=0)


def ensemble_std(ensemble: Float[Array, "N *state"]) -> Float[Array, "*state"]:
    r"""The ensemble standard deviation of each entry, $\sqrt{\sum_i A_i^2/(N-1)}$."""
    return jnp.std(ensemble, axis=0, ddof=1)


class Transform(eqx.Module):
    r"""The update $E \mapsto E + X A$ of an ensemble by its own anomalies.

    `left` holds $X$: one `(N, N)` matrix (global analyses), or one per state entry,
    `(n, N, N)` (local analyses, entry $j$ updated by `left[j]`). With `right`, $X$
    is the low-rank product `left @ right.T` (`(N, r)` factors), used when the
    ensemble is larger than the observation space.
    """

    left: Float[Array, "*n N r"]
    right: Float[Array, "N r"] | None = None

    def __call__(self, ensemble: Float[Array, "N n"]) -> Float[Array, "N n"]:
        a = anomalies(ensemble)
        if self.left.ndim == 3:
            return ensemble + jnp.einsum("jmk,kj->mj", self.left, a)
        if self.right is None:
            return ensemble + self.left @ a
        return ensemble + self.left @ (self.right.T @ a)


@eqx.filter_jit
def inflate(
    ensemble: Float[Array, "N *state"], factor: float | Float[Array, ""]
) -> Float[Array, "N *state"]:
    r"""Multiplicative inflation $E \mapsto \bar x + \lambda A$ (covariance times
    $\lambda^2$); the mean is unchanged.

    **Arguments:** `ensemble` `(N, *state)`; `factor` $\lambda$ (DAPPER's `infl`).

    **Returns:** the inflated ensemble.
    """
    mean = jnp.mean(ensemble, axis=0)
    return mean + factor * (ensemble - mean)


@eqx.filter_jit
def mean_preserving_rotation(key: Key, n_members: int, dtype=float) -> Array:
    r"""A random orthogonal $N \times N$ matrix $Q$ with $Q \mathbf 1 = \mathbf 1$.

    $Q = H \operatorname{diag}(1, O) H$ with $O$ Haar-distributed on $O(N-1)$ (QR of a
    Gaussian matrix, signs fixed by the diagonal of $R$) and $H$ the Householder
    reflection exchanging $e_1$ and $\mathbf 1/\sqrt N$. Then $Q A$ keeps the ensemble
    mean ($\mathbf 1^\top Q A = \mathbf 1^\top A = 0$) and covariance
    ($A^\top Q^\top Q A = A^\top A$) while mixing the members (DAPPER's `rot=True`).
    """
    g = jax.random.normal(key, (n_members - 1, n_members - 1), dtype)
    q, r = jnp.linalg.qr(g)
    o = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)
    block = jnp.zeros((n_members, n_members), dtype).at[0, 0].set(1.0)
    block = block.at[1:, 1:].set(o)
    v = jnp.full((n_members,), -1.0 / jnp.sqrt(n_members), dtype).at[0].add(1.0)
    h = jnp.eye(n_members, dtype=dtype) - 2.0 * jnp.outer(v, v) / jnp.dot(v, v)
    return h @ block @ h


@eqx.filter_jit
def rotate(key: Key, ensemble: Float[Array, "N *state"]) -> Float[Array, "N *state"]:
    r"""A random mean-preserving rotation of the anomalies, $\bar x + Q A$
    (`mean_preserving_rotation`): same mean, same covariance, new members.

    **Arguments:** `key` a `jax.random` key; `ensemble` `(N, *state)`, $N \ge 2$.

    **Returns:** the rotated ensemble.
    """
    e = flat(ensemble)
    q = mean_preserving_rotation(key, e.shape[0], e.dtype)
    mean = jnp.mean(e, axis=0)
    return jnp.reshape(mean + q @ (e - mean), ensemble.shape)
