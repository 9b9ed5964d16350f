r"""Incremental weak-constraint 4DVar [B24, Algorithm 1].

Outer loop: at the current estimate $z_k$ the prior part of the cost (dynamics and
background) $U$ is replaced by its Gauss-Newton quadratic model, a Gaussian
$\mathcal N(\mu_k, P_k)$ with precision $P_k^{-1} = J_U^T J_U$ (block-tridiagonal in
time) and $P_k^{-1}\mu_k = P_k^{-1} z_k - \nabla U(z_k)$. The inner problem is the
Gaussian MAP with the (linear, masked) observations, in precision form

$$(P_k^{-1} + H^T R^{-1} H)\,x_k = P_k^{-1}\mu_k + H^T R^{-1} y,$$

solved exactly with the block-tridiagonal Cholesky; then a backtracking line search on
$z_{k+1} = z_k + \alpha_k (x_k - z_k)$ on the full nonlinear cost. The inner system is
written in the information form, so $P_k^{-1}$ may be singular (no background) as long
as the posterior precision is positive definite. In exact arithmetic one outer step
equals one `GaussNewton` step.
"""

import jax.numpy as jnp

from ._gauss_newton import AbstractStructuredGaussNewton, block_solve, linearise


def _block_matvec(diagonal, lower, v):
    """$A v$ for the symmetric block-tridiagonal $A$ given by blocks; `v` `(T, n)`."""
    out = jnp.einsum("tij,tj->ti", diagonal, v)
    out = out.at[1:].add(jnp.einsum("tij,tj->ti", lower, v[:-1]))
    out = out.at[:-1].add(jnp.einsum("tji,tj->ti", lower, v[1:]))
    return out


def gaussian_map_step(problem, z, method: str = "sequential"):
    r"""One inner step: the Gaussian MAP $x_k$ of the linearised problem at $z$.

    **Returns:** `(x_map, grad, ok)` with `x_map` shaped like `z`, the gradient
    $\nabla J(z)$ (flattened per time) and whether the posterior precision was SPD.
    """
    T = z.shape[0]
    ne = linearise(problem, z)
    zf = jnp.reshape(z, (T, -1))
    n = zf.shape[1]
    wo = ne.obs_weight
    yf = jnp.reshape(problem.obs.values, (T, n))
    # Prior precision blocks and the information vector P^{-1} mu = P^{-1} z - grad U.
    prior_diag = ne.diagonal - wo[:, :, None] * jnp.eye(n, dtype=wo.dtype)
    grad_u = ne.grad - wo * (zf - yf)
    info = _block_matvec(prior_diag, ne.lower, zf) - grad_u
    rhs = info + wo * yf
    x_map, ok = block_solve(ne.diagonal, ne.lower, rhs, method)
    return jnp.reshape(x_map, z.shape), ne.grad, ok


class Incremental4DVar(AbstractStructuredGaussNewton):
    r"""Incremental weak-constraint 4DVar: Gaussian-MAP inner solves + line search.

    $x_k = \mathrm{MAP}(y; \mu(z_k), P(z_k))$, $z_{k+1} = z_k + \alpha_k (x_k - z_k)$
    with $\alpha_k$ the largest of $1, 1/2, \dots$ meeting the Armijo condition on the
    full cost (see the module docstring). Stopping rules as `GaussNewton`.

    **Arguments:** `rtol` (1e-8), `atol` (1e-12), `max_backtracks` (20), `armijo`
    (1e-4), `method` (`"sequential"`/`"parallel"` block-tridiagonal solver).
    """

    def direction(self, problem, z):
        x_map, grad, ok = gaussian_map_step(problem, z, self.method)
        return x_map - z, jnp.reshape(grad, z.shape), ok
