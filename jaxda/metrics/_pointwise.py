r"""Point scores: MSE / RMSE over every entry or split observed / unobserved, and
[F21]'s scores (conventions in the package docstring, `jaxda.metrics`)."""

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Bool, Float
from .._validation import check_same_shape
from ..obs import Observations


def _prep(estimate, truth, mask, transform):
    estimate = jnp.asarray(estimate)
    truth = jnp.asarray(truth)
    check_same_shape("estimate", estimate, "truth", truth)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
        check_same_shape("mask", mask, "truth", truth)
    if transform is not None:
        estimate, truth = transform(estimate), transform(truth)
    return estimate, truth, mask


def _masked_mean(sq, mask):
    if mask is None:
        return jnp.mean(sq)
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, sq, jnp.zeros((), sq.dtype)))
    return total / count.astype(sq.dtype)


def mse(
    estimate: Float[ArrayLike, "*shape"],
    truth: Float[ArrayLike, "*shape"],
    mask: Bool[ArrayLike, "*shape"] | None = None,
    *,
    transform: Callable[[Array], Array] | None = None,
) -> Float[Array, ""]:
    r"""Mean squared error $\frac{1}{|S|}\sum_{i \in S} (\hat x_i - x_i)^2$.

    $S$ is every entry, or the entries where `mask` is `True`. `transform` (e.g.
    `normalisation.apply`) is applied to both arrays first.

    **Arguments:** `estimate`, `truth` of the same shape; optional boolean `mask` of
    that shape; optional `transform`.

    **Returns:** a scalar (NaN when `mask` selects nothing).
    """
    estimate, truth, mask = _prep(estimate, truth, mask, transform)
    return _masked_mean((estimate - truth) ** 2, mask)


def rmse(
    estimate: Float[ArrayLike, "*shape"],
    truth: Float[ArrayLike, "*shape"],
    mask: Bool[ArrayLike, "*shape"] | None = None,
    *,
    transform: Callable[[Array], Array] | None = None,
) -> Float[Array, ""]:
    r"""Root mean squared error $\sqrt{\mathrm{mse}}$ (see `mse`)."""
    return jnp.sqrt(mse(estimate, truth, mask, transform=transform))


class ErrorSplit(NamedTuple):
    """An error over all entries, the observed ones and the unobserved ones (pytree)."""

    all: Float[Array, ""]
    observed: Float[Array, ""]
    unobserved: Float[Array, ""]


def mse_split(
    estimate: Float[ArrayLike, "*shape"],
    truth: Float[ArrayLike, "*shape"],
    obs_mask: Bool[ArrayLike, "*shape"],
    *,
    transform: Callable[[Array], Array] | None = None,
) -> ErrorSplit:
    r"""MSE over all entries, over observed entries ($m = 1$) and unobserved ones ($m =
    0$).

    **Returns:** `ErrorSplit(all, observed, unobserved)`; a part with no entry is NaN.
    """
    if obs_mask is None:
        raise ValueError("`obs_mask` must be a boolean array; got None.")
    estimate, truth, obs_mask = _prep(estimate, truth, obs_mask, transform)
    sq = (estimate - truth) ** 2
    return ErrorSplit(
        _masked_mean(sq, None), _masked_mean(sq, obs_mask), _masked_mean(sq, ~obs_mask)
    )


def rmse_split(
    estimate: Float[ArrayLike, "*shape"],
    truth: Float[ArrayLike, "*shape"],
    obs_mask: Bool[ArrayLike, "*shape"],
    *,
    transform: Callable[[Array], Array] | None = None,
) -> ErrorSplit:
    """RMSE over all, observed and unobserved entries: square root of `mse_split`."""
    s = mse_split(estimate, truth, obs_mask, transform=transform)
    return ErrorSplit(*(jnp.sqrt(v) for v in s))


def one_step_score(
    flow: Callable[[Array], Array], x: Float[ArrayLike, " T *state"]
) -> Float[Array, ""]:
    r"""[F21]'s "ODE-score": mean squared one-step prediction error of a flow map.

    $\frac{1}{(T-1)\,n}\sum_{t=0}^{T-2} \|x_{t+1} - \Phi(x_t)\|^2$, with $\Phi$ = `flow`
    (e.g. `jaxda.models.flow_map(model, dt)`) applied to each state of the window `x`.
    """
    import jax

    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(
            f"`x` must have shape (T, *state) with T >= 2; got {tuple(x.shape)}."
        )
    pred = jax.vmap(flow)(x[:-1])
    return jnp.mean((x[1:] - pred) ** 2)


def fourdvar_score(
    prior: Callable[[Array], Array],
    x: Float[ArrayLike, " T *state"],
    obs: Observations,
    *,
    obs_weight: float = 0.01,
) -> Float[Array, ""]:
    r"""[F21]'s "4DVar-score" of one window: the variational cost with fixed weights.

    $\lambda \frac{1}{N}\sum_{t,i} m_{t,i}(x_{t,i} - y_{t,i})^2 + \frac{1}{N}
    \sum_{t \ge 1} \|x_t - \Phi(x)_t\|^2$, $N$ the number of entries of the window,
    $\lambda$ = `obs_weight` (the paper's 0.01), $\Phi$ = `prior` mapping a window to
    its one-step prediction (e.g. `jaxda.fourdvarnet.ODEPrior`: $\Phi(x)_t =
    \mathrm{RK4}(x_{t-1})$), `obs` a `jaxda.obs.Observations` of the window. Use
    normalised units, as the paper does.

    **Returns:** a scalar.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (T, *state); got {tuple(x.shape)}.")
    Observations.check(obs, x.shape[1:], n_times=x.shape[0], name="obs")
    misfit = jnp.where(obs.mask, x - obs.values, 0.0) ** 2
    model = (x - prior(x))[1:] ** 2
    return obs_weight * jnp.mean(misfit) + jnp.sum(model) / x.size


__all__ = [
    "ErrorSplit",
    "fourdvar_score",
    "mse",
    "mse_split",
    "one_step_score",
    "rmse",
    "rmse_split",
]
