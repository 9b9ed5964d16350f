r"""Incremental weak-constraint 4DVar [B24, Algorithm 1].

Outer loop: at the current estimate $z_k$ the prior part of the cost (dynamics and
background) $U$ is replaced by its Gauss-Newton quadratic model, a Gaussian
$\mathcal N(\mu_k, P_k)$ with precision $P_k^{-1} = J_U^T J_U$ (block-tridiagonal in
time) and $P_k^{-1}\mu_k = P_k^{-1} z_k - \nabla U(z_k)$. The inner problem is the
Gaussian MAP with the (linear, masked) observations, in precision form

$$(P_k^{-1} + H^T R^{-1} H)\,x_k = P_k^{-1}\mu_k + H^T R^{-1} y,$$

With an observation operator $h_t$ it is linearised at $z_k$ too,
$h_t(x) \approx h_t(z_k) + H_t (x - z_k)$, and the inner MAP is

$$(P_k^{-1} + H^T R^{-1} H)\,x_k = P_k^{-1}\mu_k + H^T R^{-1} (y - h(z_k) + H z_k),$$

whose right-hand side is $A z_k - \nabla J(z_k)$ ($A$ the Gauss-Newton matrix);
the mask of the state keeps the first form.

solved exactly with the block-tridiagonal Cholesky; then a backtracking line search on
$z_{k+1} = z_k + \alpha_k (x_k - z_k)$ on the full nonlinear cost. The inner system is
written in the information form, so $P_k^{-1}$ may be singular (no background) as long
as the posterior precision is positive definite. In exact arithmetic one outer step
equals one `GaussNewton` step.

With a Levenberg-Marquardt damping $\lambda$ the inner system gains
$\lambda D$ ($D$ the diagonal of the Gauss-Newton matrix $A = P_k^{-1} + H^T R^{-1} H$)
on the left and $\lambda D z_k$ on the right, so that $x_k - z_k$ solves
$(A + \lambda D)(x_k - z_k) = -\nabla J(z_k)$.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp

from .._validation import check_choice
from ..obs import is_state_mask
from ._normal import AbstractNormalSolve, _check_weak, block_solve, linearise


def _block_matvec(diagonal, lower, v):
    """$A v$ for the symmetric block-tridiagonal $A$ given by blocks; `v` `(T, n)`."""
    out = jnp.einsum("tij,tj->ti", diagonal, v)
    out = out.at[1:].add(jnp.einsum("tij,tj->ti", lower, v[:-1]))
    out = out.at[:-1].add(jnp.einsum("tji,tj->ti", lower, v[1:]))
    return out


def gaussian_map_step(problem, z, method: str = "sequential", damping=None):
    r"""One inner step: the Gaussian MAP $x_k$ of the linearised problem at $z$.

    **Returns:** `(x_map, grad, ok)` with `x_map` shaped like `z`, the gradient
    $\nabla J(z)$ (flattened per time) and whether the posterior precision was SPD.
    """
    T = z.shape[0]
    ne = linearise(problem, z)
    zf = jnp.reshape(z, (T, -1))
    n = zf.shape[1]
    if is_state_mask(problem.operator):
        wo = ne.obs_weight
        yf = jnp.reshape(problem.obs.values, (T, n))
        # Prior precision blocks and the information vector P^{-1} mu = P^{-1} z -
        # grad U.
        prior_diag = ne.diagonal - wo[:, :, None] * jnp.eye(n, dtype=wo.dtype)
        grad_u = ne.grad - wo * (zf - yf)
        info = _block_matvec(prior_diag, ne.lower, zf) - grad_u
        rhs = info + wo * yf
    else:
        # P^{-1} mu + H^T W (y - h(z) + H z) = A z - grad J(z), A = P^{-1} + H^T W H.
        rhs = _block_matvec(ne.diagonal, ne.lower, zf) - ne.grad
    diagonal = ne.diagonal
    if damping is not None:
        d = jnp.diagonal(diagonal, axis1=1, axis2=2)
        diagonal = diagonal + damping * d[:, :, None] * jnp.eye(n, dtype=d.dtype)
        rhs = rhs + damping * d * zf
    x_map, ok = block_solve(diagonal, ne.lower, rhs, method)
    return jnp.reshape(x_map, z.shape), ne.grad, ok


class IncrementalMAP(AbstractNormalSolve):
    r"""The step $x_k - z_k$ to the Gaussian MAP of the linearised problem (see the
    module docstring), solved in information form with the block-tridiagonal
    Cholesky.

    **Arguments:**

    - `method`: `"sequential"` (default) or `"parallel"` block-tridiagonal Cholesky.
    """

    method: Literal["sequential", "parallel"] = eqx.field(
        static=True, default="sequential"
    )

    def __check_init__(self):
        check_choice("method", self.method, ("sequential", "parallel"))

    def check_problem(self, solver_name, problem):
        _check_weak(solver_name, problem)

    def direction(self, problem, z, damping):
        x_map, grad, ok = gaussian_map_step(problem, z, self.method, damping)
        return x_map - z, jnp.reshape(grad, z.shape), ok
