r"""4DVarNet with an SPDE Gaussian prior in its cost ([BF24]): the generative
4DVarNet, with the augmented state $\{x, \Theta\}$.

For a window $x$ `(T, ny, nx)` and SPDE parameter fields $\theta$ `(P, ny, nx)`
(`SPDEFieldMap`), the inner cost is

$$J(x, \theta) = \lambda_o \sum_\Omega (x - y)^2 + \lambda_p\,\tfrac12
(x - \mu)^\top Q_\theta (x - \mu), \qquad Q_\theta = G_\theta^\top G_\theta,$$

($Q_\theta$ of `jaxda.spde.SPDEPrior`, matrix-free), and the network runs $K$
iterations of a solver on the gradients of the augmented state,

$$(x, \theta)^{(k+1)} = (x, \theta)^{(k)} - \Gamma\big(\nabla_x J,\ \nabla_\theta J,
s_k\big),$$

from $x^{(0)}$ the observations where observed and $\mu$ elsewhere, and $\theta^{(0)}$
a learned field (e.g. a stationary prior fitted by maximum likelihood). The solver
thus estimates the window's prior parameters from its observations. With $\lambda_o
= 1/(2\sigma^2)$, $\lambda_p = 1$ and $\theta$ fixed, $J$ is the negative log posterior
of the SPDE optimal interpolation (`jaxda.spde.spde_map`), whose minimiser a converged
solver reaches.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key, Scalar
from .._validation import check_int, check_positive
from ..nn._conv import Conv, ConvLSTMCell
from ..obs import Observations
from ..spde._whitening import Whitening
from ._model import _inv_softplus
from ._solvers import gradient_scale
from ._spde_fields import SPDEFieldMap


class SPDECost(eqx.Module):
    r"""$J(x, \theta) = \lambda_o \sum_\Omega (x - y)^2 + \lambda_p \tfrac12
    \|G_\theta(x - \mu)\|^2$ (module docstring); $\lambda_{o,p} = \mathrm{softplus}$
    of learnable raw weights.

    **Arguments:** `field_map` (`SPDEFieldMap`); `lam_obs`, `lam_prior` (initial
    weights > 0; $1/(2\sigma^2)$ and 1 make $J$ the negative log posterior for
    observation noise of variance $\sigma^2$); `dtype`.
    """

    field_map: SPDEFieldMap
    raw_lam_obs: Float[Array, ""]
    raw_lam_prior: Float[Array, ""]

    def __init__(
        self, field_map: SPDEFieldMap, lam_obs=1.0, lam_prior=1.0, *, dtype=None
    ):
        if not isinstance(field_map, SPDEFieldMap):
            raise TypeError(
                f"`field_map` must be an SPDEFieldMap; got {type(field_map).__name__}."
            )
        check_positive("lam_obs", lam_obs)
        check_positive("lam_prior", lam_prior)
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        self.field_map = field_map
        self.raw_lam_obs = _inv_softplus(lam_obs, dtype)
        self.raw_lam_prior = _inv_softplus(lam_prior, dtype)

    @property
    def lam_obs(self) -> Scalar:
        return jax.nn.softplus(self.raw_lam_obs)

    @property
    def lam_prior(self) -> Scalar:
        return jax.nn.softplus(self.raw_lam_prior)

    def whitening(self, theta: Float[Array, "P ny nx"]) -> Whitening:
        """$G_\\theta$ with its stencils computed."""
        fm = self.field_map
        return Whitening.build(fm.parameters(theta), fm.grid, fm.dt, fm.alpha)

    def __call__(
        self, x: Float[Array, "T ny nx"], theta: Float[Array, "P ny nx"], obs
    ) -> Scalar:
        return self.with_whitening(x, self.whitening(theta), obs)

    def with_whitening(self, x, whitening: Whitening, obs) -> Scalar:
        """$J$ with $G_\theta$ given (built once when $\theta$ is fixed)."""
        r_obs = jnp.where(obs.mask, x - obs.values, 0.0)
        z = whitening.apply(x - self.field_map.mean)
        lam_o = self.lam_obs.astype(x.dtype)
        lam_p = self.lam_prior.astype(x.dtype)
        return lam_o * jnp.sum(r_obs**2) + lam_p * 0.5 * jnp.sum(z**2)


class AbstractAugmentedSolver(eqx.Module):
    r"""An update rule of the augmented state, $(x, \theta) \leftarrow (x, \theta) -
    \Gamma(\nabla_x J, \nabla_\theta J, s)$."""

    @abc.abstractmethod
    def init(self, x, theta, grad_x, grad_theta) -> Any:
        """The solver's state before the first update."""

    @abc.abstractmethod
    def step(self, x, theta, grad_x, grad_theta, state, n_iter: int):
        """One update: `(x, theta, state)`."""

    @property
    def uses_theta_gradient(self) -> bool:
        """Whether `step` reads $\nabla_\theta J$ (when not, the unroll passes
        zeros and skips its computation)."""
        return True


class AugmentedGradientDescent(AbstractAugmentedSolver):
    r"""Fixed-step gradient descent $x \leftarrow x - \eta_x\nabla_x J$, $\theta
    \leftarrow \theta - \eta_\theta\nabla_\theta J$: the untrained baseline, and with
    $\eta_\theta = 0$ and enough iterations the SPDE OI (a Python float step stays
    constant, an array is trained).

    **Arguments:** `step_x` $> 0$, `step_theta` $\ge 0$ (default 0: $\theta$ stays
    at $\theta^{(0)}$).
    """

    step_x: float | Float[Array, ""]
    step_theta: float | Float[Array, ""] = 0.0

    def __check_init__(self):
        check_positive("step_x", self.step_x)
        check_positive("step_theta", self.step_theta, allow_zero=True)

    @property
    def uses_theta_gradient(self) -> bool:
        step = self.step_theta
        return not (isinstance(step, int | float) and step == 0)

    def init(self, x, theta, grad_x, grad_theta):
        return ()

    def step(self, x, theta, grad_x, grad_theta, state, n_iter):
        x = x - jnp.asarray(self.step_x, x.dtype) * grad_x
        theta = theta - jnp.asarray(self.step_theta, theta.dtype) * grad_theta
        return x, theta, state


class AugmentedConvLSTMSolver(AbstractAugmentedSolver):
    r"""A 2-D ConvLSTM on the gradients of the augmented state ([BF24]; [F21] eq. 11).

    The $T$ time steps of $x$ and the $P$ parameter fields are the channels:
    $\tilde g = \alpha\,[\nabla_x J / \rho_x,\ \nabla_\theta J / \rho_\theta]$
    ($\rho$ the RMS of each block at the iteration), $(h, c) \leftarrow
    \mathrm{ConvLSTM}(\tilde g, h, c)$ from zero, and $(x, \theta) \leftarrow (x,
    \theta) - \mathcal L(h) / K$ with $\mathcal L$ a 1x1 convolution.

    **Arguments:** `n_times` $T$; `n_fields` $P$ (`SPDEFieldMap.n_channels`); `key`;
    `hidden` channels (default 32); `kernel_size` (odd, default 3);
    `periodic_space` (wrap-around padding, for doubly periodic data); `alpha`
    (initial gradient scaling, learnable); `dtype`.
    """

    cell: ConvLSTMCell
    out: Conv
    alpha: Float[Array, ""]
    n_times: int = eqx.field(static=True)
    n_fields: int = eqx.field(static=True)

    def __init__(
        self,
        n_times: int,
        n_fields: int,
        *,
        key: Key,
        hidden: int = 32,
        kernel_size: int = 3,
        periodic_space: bool = False,
        alpha: float = 1.0,
        dtype=None,
    ):
        self.n_times = check_int("n_times", n_times, minimum=1)
        self.n_fields = check_int("n_fields", n_fields, minimum=1)
        hidden = check_int("hidden", hidden, minimum=1)
        check_positive("alpha", alpha)
        channels = self.n_times + self.n_fields
        k1, k2 = jax.random.split(key)
        per = bool(periodic_space)
        self.cell = ConvLSTMCell(
            channels, hidden, kernel_size, key=k1, n_spatial=2, periodic=(per, per),
            dtype=dtype,
        )  # fmt: skip
        self.out = Conv(hidden, channels, (1, 1), key=k2, n_spatial=2, dtype=dtype)
        self.alpha = jnp.asarray(alpha, jnp.zeros((), dtype).dtype)

    def init(self, x, theta, grad_x, grad_theta):
        h = jnp.zeros((self.cell.hidden, *x.shape[1:]), x.dtype)
        return h, h

    def step(self, x, theta, grad_x, grad_theta, state, n_iter):
        h, c = state
        alpha = self.alpha.astype(x.dtype)
        g = jnp.concatenate(
            [grad_x / gradient_scale(grad_x), grad_theta / gradient_scale(grad_theta)]
        )
        h, c = self.cell(alpha * g, h, c)
        d = self.out(h) / n_iter
        return x - d[: self.n_times], theta - d[self.n_times :], (h, c)


class SPDEFourDVarNet(eqx.Module):
    r"""The generative 4DVarNet of [BF24]: `n_iter` solver iterations on the augmented
    state $\{x, \Theta\}$ of the SPDE cost (module docstring).

    Calling it on one window returns $(\hat x, \hat\theta)$: the reconstruction and
    the window's SPDE parameter fields, whose prior `field_map.prior(theta)` the
    conditional ensembles sample (`jaxda.fourdvarnet.spde_conditional_ensemble`).

    **Arguments:**

    - `cost`: an `SPDECost`.
    - `solver`: an `AbstractAugmentedSolver` (`AugmentedConvLSTMSolver`,
      `AugmentedGradientDescent`).
    - `theta_init`: $\theta^{(0)}$ `(P, ny, nx)` (learnable; e.g.
      `field_map.fields(...)` of a fitted stationary prior).
    - `n_iter`: the number of iterations $K \ge 1$ (static).
    - `checkpoint`: rematerialise each iteration in the backward pass.
    - `update_theta`: when False, $\theta$ stays at $\theta^{(0)}$ (the solver's
      update of it is dropped and $\nabla_\theta J$ not computed): a 4DVarNet with a
      fixed Gaussian prior, whose converged solver is the SPDE OI ([BF24], Fig. 6).
    - `train_theta_init`: when False, gradients to $\theta^{(0)}$ are stopped (with
      `update_theta=False`: a prior held fixed during training too).
    """

    cost: SPDECost
    solver: AbstractAugmentedSolver
    theta_init: Float[Array, "P ny nx"]
    n_iter: int = eqx.field(static=True, default=10)
    checkpoint: bool = eqx.field(static=True, default=False)
    update_theta: bool = eqx.field(static=True, default=True)
    train_theta_init: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not isinstance(self.cost, SPDECost):
            raise TypeError(
                f"`cost` must be an SPDECost; got {type(self.cost).__name__}."
            )
        if not isinstance(self.solver, AbstractAugmentedSolver):
            raise TypeError(
                "`solver` must be an AbstractAugmentedSolver; got "
                f"{type(self.solver).__name__}."
            )
        check_int("n_iter", self.n_iter, minimum=1)
        want = self.field_map.shape
        if tuple(jnp.shape(self.theta_init)) != want:
            raise ValueError(
                f"`theta_init` must have shape {want} (the field map's P, ny, nx); got "
                f"{tuple(jnp.shape(self.theta_init))}."
            )
        solver = self.solver
        if isinstance(solver, AugmentedConvLSTMSolver) and (
            solver.n_times,
            solver.n_fields,
        ) != (self.field_map.n_times, self.field_map.n_channels):
            raise ValueError(
                f"`solver` was built for {solver.n_times} times and {solver.n_fields} "
                f"fields; the field map has {self.field_map.n_times} and "
                f"{self.field_map.n_channels}."
            )

    @property
    def field_map(self) -> SPDEFieldMap:
        return self.cost.field_map

    @property
    def window_shape(self) -> tuple[int, int, int]:
        return (self.field_map.n_times, *self.field_map.grid.shape)

    def check_obs(self, obs, *, batched: bool = False) -> None:
        """Shapes of `obs` against the model (`ValueError` naming `obs`)."""
        Observations.check(obs, batched=batched, name="obs")
        shape = tuple(obs.values.shape[1:] if batched else obs.values.shape)
        if shape != self.window_shape:
            raise ValueError(
                f"`obs` must be windows of shape {self.window_shape} (T, ny, nx); got "
                f"{shape}."
            )

    def first_guess(self, obs: Observations) -> Float[Array, "T ny nx"]:
        r"""$x^{(0)}$: the observations where observed, the prior mean elsewhere."""
        mean = jnp.asarray(self.field_map.mean, obs.values.dtype)
        return jnp.where(obs.mask, obs.values, mean)

    def __call__(self, obs: Observations, *, return_path: bool = False):
        r"""$(\hat x, \hat\theta)$ of one window (bare arrays, for losses), and with
        `return_path` the iterates of $x$ `(K + 1, T, ny, nx)`."""
        self.check_obs(obs)
        x0 = self.first_guess(obs)
        theta0 = jnp.asarray(self.theta_init, x0.dtype)
        if not self.train_theta_init:
            theta0 = jax.lax.stop_gradient(theta0)
        return unroll_augmented(
            self.cost, self.solver, obs, x0, theta0, self.n_iter,
            checkpoint=self.checkpoint, return_path=return_path,
            update_theta=self.update_theta,
        )  # fmt: skip


def unroll_augmented(
    cost,
    solver,
    obs,
    x_init,
    theta_init,
    n_iter,
    *,
    checkpoint=False,
    return_path=False,
    update_theta=True,
):
    r"""$K$ updates of $(x, \theta)$ with $(\nabla_x J, \nabla_\theta J)$ (one
    `lax.scan`, exactly $K$ gradient evaluations, no checks). With `update_theta`
    False, $\theta$ stays `theta_init` and the solver gets a zero $\nabla_\theta
    J$."""
    if update_theta and solver.uses_theta_gradient:
        grad_fn = jax.grad(lambda x, th: cost(x, th, obs), argnums=(0, 1))
    else:
        whitening = cost.whitening(theta_init)  # theta stays at theta_init

        def grad_fn(x, th):
            g = jax.grad(lambda x: cost.with_whitening(x, whitening, obs))(x)
            return g, jnp.zeros_like(th)

    gx, gt = grad_fn(x_init, theta_init)
    s0 = solver.init(x_init, theta_init, gx, gt)

    def update(x, th, gx, gt, s):
        x, th_new, s = solver.step(x, th, gx, gt, s, n_iter)
        return x, (th_new if update_theta else theta_init), s

    def body(carry, _):
        x, th, gx, gt, s = carry
        x, th, s = update(x, th, gx, gt, s)
        gx, gt = grad_fn(x, th)
        return (x, th, gx, gt, s), (x if return_path else None)

    if checkpoint:
        body = jax.checkpoint(body)
    carry = (x_init, theta_init, gx, gt, s0)
    (x, th, gx, gt, s), path = jax.lax.scan(body, carry, None, length=n_iter - 1)
    x, th, _ = update(x, th, gx, gt, s)
    if not return_path:
        return x, th
    return x, th, jnp.concatenate([x_init[None], path, x[None]], axis=0)


__all__ = [
    "AbstractAugmentedSolver",
    "AugmentedConvLSTMSolver",
    "AugmentedGradientDescent",
    "SPDECost",
    "SPDEFourDVarNet",
    "unroll_augmented",
]
