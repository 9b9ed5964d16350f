r"""4DVarNet ([F21]): a learnable variational cost and its unrolled learned solver.

The cost of one window $x$ `(T, *state)` given observations $(y, \Omega)$ is (eq. 4)

$$U_\Phi(x, y, \Omega) = \lambda_o \|x - y\|^2_\Omega + \lambda_p \|x - \Phi(x)\|^2,$$

with $\lambda_{o,p} = \mathrm{softplus}(\cdot)$ of learnable raw weights and $\Phi$ a
prior
(`ODEPrior`, `GENN`, `UNetPrior`, any module). The network $\Psi_{\Phi,\Gamma}$ runs $K$
iterations (a `lax.scan`) of a solver $\Gamma$ on the gradient $\nabla_x U_\Phi$,
computed
with `jax.grad` inside the unroll (so training differentiates through it):

$$x^{(k+1)} = x^{(k)} - \Gamma(\nabla_x U_\Phi(x^{(k)}, y, \Omega), s_k),\quad k < K.$$

With an `ODEPrior` of an RK4 flow map, $\lambda_o = 1/(2R)$ and $\lambda_p = 1/(2Q)$,
$U_\Phi$ equals `jaxda.var.WeakConstraint4DVar(...).cost`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Scalar
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import (
    check_choice,
    check_finite,
    check_int,
    check_positive,
    is_concrete,
)
from ..data import interpolate_observations
from ..obs import Observations
from ._solvers import AbstractGradientSolver


def _inv_softplus(v: float, dtype) -> Array:
    v = jnp.asarray(v, dtype)
    return v + jnp.log(-jnp.expm1(-v))


def _freeze(tree):
    """Stop gradients to every inexact array of `tree` (constants for the optimiser)."""
    return jax.tree_util.tree_map(
        lambda a: jax.lax.stop_gradient(a) if eqx.is_inexact_array(a) else a, tree
    )


class VariationalCost(eqx.Module):
    r"""$U_\Phi(x, y, \Omega) = \lambda_o \sum_\Omega (x - y)^2 + \lambda_p \sum (x -
    \Phi(x))^2$, or with `reduction="mean"` the authors' form (their `Compute_Grad`)

    $$U_\Phi(x, y, \Omega) = \frac{\lambda_o}{|\Omega|} \sum_\Omega (x - y)^2 +
    \frac{\lambda_p}{|x|} \sum (x - \Phi(x))^2,$$

    means over the observed entries and over all entries of the window. The paper's
    weights ($\lambda_1 = 0.01$, $\lambda_2 = 1$ for its 4DVar-score) are weights of
    this form: for [F21]'s Lorenz-63 windows (22 observed of 600 entries) the
    observation term weighs 27 times more than with the same weights in the sum form.

    $\lambda_o = \mathrm{softplus}(a)$, $\lambda_p = \mathrm{softplus}(b)$ with
    learnable raw weights $a, b$ (so the weights stay positive during training).

    **Arguments:** `prior` $\Phi$ (a module mapping `(T, *state)` to the same shape);
    `lam_obs`, `lam_prior` (initial weights, > 0, default 1); `reduction` (`"sum"`,
    the default, or `"mean"`); `dtype`.
    """

    prior: Callable
    raw_lam_obs: Float[Array, ""]
    raw_lam_prior: Float[Array, ""]
    reduction: str = eqx.field(static=True, default="sum")

    def __init__(
        self,
        prior: Callable,
        lam_obs=1.0,
        lam_prior=1.0,
        *,
        reduction: str = "sum",
        dtype=None,
    ):
        if not callable(prior):
            raise TypeError(f"`prior` must be callable; got {type(prior).__name__}.")
        check_positive("lam_obs", lam_obs)
        check_positive("lam_prior", lam_prior)
        check_choice("reduction", reduction, ("sum", "mean"))
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        self.prior = prior
        self.reduction = reduction
        self.raw_lam_obs = _inv_softplus(lam_obs, dtype)
        self.raw_lam_prior = _inv_softplus(lam_prior, dtype)

    @property
    def lam_obs(self) -> Scalar:
        return jax.nn.softplus(self.raw_lam_obs)

    @property
    def lam_prior(self) -> Scalar:
        return jax.nn.softplus(self.raw_lam_prior)

    def terms(
        self, x: Float[Array, "T *state"], obs: Observations
    ) -> tuple[Scalar, Scalar]:
        r"""The unweighted terms $(\|x - y\|^2_\Omega, \|x - \Phi(x)\|^2)$, divided by
        $|\Omega|$ and $|x|$ with `reduction="mean"`."""
        r_obs = jnp.where(obs.mask, x - obs.values, 0.0)
        r_prior = x - self.prior(x)
        o, p = jnp.sum(r_obs**2), jnp.sum(r_prior**2)
        if self.reduction == "mean":
            n_obs = jnp.maximum(jnp.sum(obs.mask), 1).astype(o.dtype)
            o, p = o / n_obs, p / x.size
        return o, p

    def __call__(self, x: Float[Array, "T *state"], obs: Observations) -> Scalar:
        o, p = self.terms(x, obs)
        return self.lam_obs.astype(x.dtype) * o + self.lam_prior.astype(x.dtype) * p


_PRIOR_SHAPES: dict = {}  # (prior structure, window, dtype) -> output shape


def _prior_out_shape(prior, window, dtype):
    return tuple(jax.eval_shape(prior, jax.ShapeDtypeStruct(window, dtype)).shape)


def _check_prior(prior, window: tuple, dtype) -> None:
    """The prior maps windows of shape `window` to the same shape (traced once per
    prior structure, window shape and dtype)."""
    leaves, treedef = jax.tree_util.tree_flatten(prior)
    sig = tuple(
        (np.shape(a), str(getattr(a, "dtype", type(a).__name__))) for a in leaves
    )
    key = (treedef, sig, window, str(jnp.dtype(dtype)))
    try:
        out = _PRIOR_SHAPES.get(key)
    except TypeError:  # unhashable static data: no caching
        key, out = None, None
    if out is None:
        try:
            out = _prior_out_shape(prior, window, dtype)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"The prior cannot take windows of shape {window}: {e}"
            ) from e
        if key is not None:
            if len(_PRIOR_SHAPES) > 256:
                _PRIOR_SHAPES.clear()
            _PRIOR_SHAPES[key] = out
    if out != window:
        raise ValueError(
            f"The prior must map windows of shape {window} to the same shape; got "
            f"{out}."
        )


def _check_values(obs: Observations, x_init, lead: int) -> None:
    """Eager value checks: at least one observation per window, finite observed
    values and first guess (`ValueError` naming the argument)."""
    if is_concrete(obs.mask):
        m = np.asarray(obs.mask).reshape(obs.mask.shape[: lead - 1] + (-1,))
        empty = ~m.any(axis=-1)
        if np.any(empty):
            where = (
                f" (windows {np.flatnonzero(empty)[:10].tolist()})" if lead == 2 else ""
            )
            raise ValueError(
                f"`obs` has no observation at all{where}: 4DVarNet needs at least "
                "one observed value per window."
            )
        if is_concrete(obs.values):
            v = np.asarray(obs.values)
            if not np.all(np.isfinite(v[np.asarray(obs.mask)])):
                raise ValueError("`obs` must have finite observed values.")
    if x_init is not None:
        check_finite("x_init", x_init)


def _valid(obs: Observations, x_init) -> Array:
    """The value checks of `_check_values` on (traced) values of ONE window."""
    ok = jnp.any(obs.mask) & all_finite(jnp.where(obs.mask, obs.values, 0))
    return ok & all_finite(x_init)


class FourDVarNetSolution(eqx.Module):
    """Output of `assimilate` (one window) and `assimilate_batch` (a leading window
    axis on every field).

    **Fields:**

    - `x`: the estimate $x^{(K)}$, `(T, *state)` (or `(N, T, *state)`).
    - `path`: the iterates $x^{(0)}, \\dots, x^{(K)}$, `(K + 1, T, *state)` (or `(N,
      K + 1, T, *state)`), with `return_path=True`; else None.
    - `result`: a `jaxda.RESULTS` (one per window): `successful`; `invalid_input` (a
      window with no observation, or a non-finite observed value or first guess,
      seen under `jit`); `nonfinite` (the estimate is not finite, e.g. the unroll
      diverged from a first guess of $10^{30}$).
    """

    x: Array
    path: Array | None
    result: RESULTS


class FourDVarNet(eqx.Module):
    r"""The end-to-end 4DVarNet $\Psi_{\Phi,\Gamma}(x^{(0)}, y, \Omega)$ ([F21],
    Fig. 1).

    Calling it on one window runs `n_iter` iterations of `solver` on the gradient of
    `cost` from the first guess (default: `jaxda.data.interpolate_observations(obs,
    fill)`). `jax.vmap` it over windows, or use `assimilate_batch`.

    **Arguments:**

    - `cost`: a `VariationalCost` (prior + weights).
    - `solver`: an `AbstractGradientSolver` (`TrainableStepGradient`, `ConvLSTMSolver`,
      `CNNSolver`).
    - `n_iter`: number of unrolled iterations $K \ge 1$ (static; `with_iterations`).
    - `fill`: first-guess value of never-observed components (0: the mean in normalised
      units).
    - `checkpoint`: rematerialise each iteration in the backward pass
    (`jax.checkpoint`):
      memory O(1) in $K$ instead of O(K), at about one more forward pass.
    - `train_prior`, `train_weights`: when False, gradients to the prior's parameters /
      to $\lambda_{o,p}$ are stopped (e.g. learning only the solver of a known ODE cost,
      [F21] eq. 13).
    """

    cost: VariationalCost
    solver: AbstractGradientSolver
    n_iter: int = eqx.field(static=True, default=20)
    fill: float = eqx.field(static=True, default=0.0)
    checkpoint: bool = eqx.field(static=True, default=False)
    train_prior: bool = eqx.field(static=True, default=True)
    train_weights: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not isinstance(self.cost, VariationalCost):
            raise TypeError(
                f"`cost` must be a VariationalCost; got {type(self.cost).__name__}."
            )
        if not isinstance(self.solver, AbstractGradientSolver):
            raise TypeError(
                "`solver` must be a jaxda.fourdvarnet.AbstractGradientSolver; got "
                f"{type(self.solver).__name__}."
            )
        check_int("n_iter", self.n_iter, minimum=1)

    def with_iterations(self, n_iter: int) -> FourDVarNet:
        """The same model with `n_iter` unrolled iterations."""
        return dataclasses.replace(self, n_iter=check_int("n_iter", n_iter, minimum=1))

    def effective_cost(self) -> VariationalCost:
        """`cost` with gradients stopped where `train_prior` / `train_weights` are
        False."""
        cost = self.cost
        if not self.train_prior:
            cost = eqx.tree_at(lambda c: c.prior, cost, _freeze(cost.prior))
        if not self.train_weights:
            cost = eqx.tree_at(
                lambda c: (c.raw_lam_obs, c.raw_lam_prior),
                cost,
                (_freeze(cost.raw_lam_obs), _freeze(cost.raw_lam_prior)),
            )
        return cost

    def check_inputs(self, obs, x_init=None, *, batched: bool = False) -> None:
        """Validate observations / first guess: shapes always (the prior's output
        shape is traced once per window shape and dtype, then cached), values when
        concrete (`ValueError` naming the argument)."""
        Observations.check(obs, batched=batched, name="obs")
        lead = 2 if batched else 1
        shape = tuple(obs.values.shape)
        if x_init is not None and tuple(jnp.shape(x_init)) != shape:
            raise ValueError(
                f"`x_init` must have the shape of `obs` {shape}; got "
                f"{tuple(jnp.shape(x_init))}."
            )
        window = shape[lead - 1 :]
        self.solver.check_state_shape(window[1:])
        _check_prior(self.cost.prior, window, obs.values.dtype)
        _check_values(obs, x_init, lead)

    def __call__(
        self,
        obs: Observations,
        x_init: Float[Array, "T *state"] | None = None,
        *,
        return_path: bool = False,
    ) -> Float[Array, "T *state"] | tuple[Float[Array, "T *state"], Array]:
        r"""Assimilate one window, as a bare array (for training losses; for a result
        code use `jaxda.fourdvarnet.assimilate`).

        **Arguments:** `obs` (`Observations` of shape `(T, *state)`); `x_init` (first
        guess $x^{(0)}$, default the interpolated observations); `return_path`.

        **Returns:** $x^{(K)}$, and with `return_path=True` also the iterates
        $x^{(0)}, \dots, x^{(K)}$ stacked, `(K + 1, T, *state)`.
        """
        self.check_inputs(obs, x_init)
        return self._run(obs, x_init, return_path)

    def _run(self, obs, x_init, return_path):
        """`__call__` without the checks."""
        if x_init is None:
            x_init = interpolate_observations(obs, self.fill)
        return unroll(
            self.effective_cost(),
            self.solver,
            obs,
            jnp.asarray(x_init, obs.values.dtype),
            self.n_iter,
            checkpoint=self.checkpoint,
            return_path=return_path,
        )


def unroll(
    cost: Callable[[Array, Observations], Scalar],
    solver: AbstractGradientSolver,
    obs: Observations,
    x_init: Float[Array, "T *state"],
    n_iter: int,
    *,
    checkpoint: bool = False,
    return_path: bool = False,
):
    r"""$K$ iterations $x^{(k+1)} = \Gamma$-update of $x^{(k)}$ with $\nabla_x
    U(x^{(k)})$.

    Exactly $K$ gradient evaluations (`jax.grad` of `cost(x, obs)`), one `lax.scan`;
    traceable, no argument checks (see `FourDVarNet`).

    **Returns:** $x^{(K)}$, or `(x_K, path)` with `path` `(K + 1, T, *state)`.
    """
    grad_fn = jax.grad(lambda x: cost(x, obs))
    g0 = grad_fn(x_init)
    s0 = solver.init(x_init, g0)

    def body(carry, _):
        x, g, s = carry
        x, s = solver.step(x, g, s, n_iter)
        g = grad_fn(x)
        return (x, g, s), (x if return_path else None)

    if checkpoint:
        body = jax.checkpoint(body)
    (x, g, s), path = jax.lax.scan(body, (x_init, g0, s0), None, length=n_iter - 1)
    x, _ = solver.step(x, g, s, n_iter)
    if not return_path:
        return x
    return x, jnp.concatenate([x_init[None], path, x[None]], axis=0)


def _solve_one(model, obs, x_init, return_path) -> FourDVarNetSolution:
    if x_init is None:
        x_init = interpolate_observations(obs, model.fill)
    x_init = jnp.asarray(x_init, obs.values.dtype)
    out = model._run(obs, x_init, return_path)
    x, path = out if return_path else (out, None)
    result = first_failure(
        (~_valid(obs, x_init), RESULTS.invalid_input),
        (~all_finite(x), RESULTS.nonfinite),
    )
    return FourDVarNetSolution(x, path, result)


def _check_model(model):
    if not isinstance(model, FourDVarNet):
        raise TypeError(f"`model` must be a FourDVarNet; got {type(model).__name__}.")


@eqx.filter_jit
def _single(model, obs, x_init, return_path, throw):
    sol = _solve_one(model, obs, x_init, return_path)
    return raise_if_failed(sol, sol.result, throw)


def assimilate(
    model: FourDVarNet,
    obs: Observations,
    x_init: Float[Array, "T *state"] | None = None,
    *,
    return_path: bool = False,
    throw: bool = True,
) -> FourDVarNetSolution:
    r"""Run `model` on one window (compiled with `eqx.filter_jit`), with a result code.

    $\hat x = \Psi_{\Phi,\Gamma}(x^{(0)}, y, \Omega) = x^{(K)}$ (see `FourDVarNet`).

    **Arguments:**

    - `model`: a `FourDVarNet`.
    - `obs`: `Observations` of shape `(T, *state)`, at least one observed value.
    - `x_init`: first guess $x^{(0)}$ (default: the interpolated observations).
    - `return_path`: also return the iterates.
    - `throw`: raise (eagerly and under `jit`) when `result` is not successful;
      `False` to inspect `result` instead.

    **Returns:** a `FourDVarNetSolution` (`.x`, `.path`, `.result`).

    Shapes are checked always, values (no observation, non-finite observed values or
    `x_init`) eagerly with a `ValueError`, and under `jit` as `RESULTS.invalid_input`.
    The checks that need tracing (the prior's output shape) run once per window shape.
    """
    _check_model(model)
    model.check_inputs(obs, x_init)
    return _single(model, obs, x_init, bool(return_path), bool(throw))


@eqx.filter_jit
def _batched(model, obs, x_init, return_path, chunk_size, throw):
    if x_init is None:

        def one(o):
            return _solve_one(model, o, None, return_path)

        xs = obs
    else:

        def one(args):
            return _solve_one(model, args[0], args[1], return_path)

        xs = (obs, x_init)
    if chunk_size is None:
        sol = jax.vmap(one)(xs)
    else:
        sol = jax.lax.map(one, xs, batch_size=chunk_size)
    return raise_if_failed(sol, sol.result, throw)


def assimilate_batch(
    model: FourDVarNet,
    obs: Observations,
    x_init: Float[Array, "N T *state"] | None = None,
    *,
    return_path: bool = False,
    chunk_size: int | None = None,
    throw: bool = True,
) -> FourDVarNetSolution:
    """Run `model` on a batch of windows (`jax.vmap` under `eqx.filter_jit`), with a
    result code per window.

    **Arguments:**

    - `model`: a `FourDVarNet`.
    - `obs`: `Observations` with a leading window axis `(N, T, *state)`.
    - `x_init`: first guesses `(N, T, *state)` (default: interpolated observations).
    - `return_path`: also return the iterates.
    - `chunk_size`: vmap over this many windows at a time inside one compiled loop,
      `jax.lax.map(..., batch_size=chunk_size)`: memory bounded by the chunk, and on
      CPU a working set that stays in cache; any `N`, one compilation.
    - `throw`: raise when any window failed; `False` to inspect `result` instead.

    **Returns:** a `FourDVarNetSolution` with a leading window axis: `.x` `(N, T,
    *state)`, `.path` `(N, K + 1, T, *state)` with `return_path`, `.result` `(N,)`.

    Checks as in `assimilate`; the ones that need tracing run once per window shape,
    so the per-call overhead stays small next to the compiled work.
    """
    _check_model(model)
    model.check_inputs(obs, x_init, batched=True)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        if chunk_size >= obs.values.shape[0]:
            chunk_size = None
    return _batched(model, obs, x_init, bool(return_path), chunk_size, bool(throw))


__all__ = [
    "FourDVarNet",
    "FourDVarNetSolution",
    "VariationalCost",
    "assimilate",
    "assimilate_batch",
    "unroll",
]
