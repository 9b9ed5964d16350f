r"""Training losses of 4DVarNet ([F21], eqs. 13-14) and the dataset pytree for
`fit_fourdvarnet`.

Each loss is for ONE window; `jaxda.train.fit` vmaps and averages them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key, Scalar
from .._validation import check_positive
from ..obs import Observations
from ._model import FourDVarNet
from ._tasks import window_steps


def supervised_loss(
    model: FourDVarNet,
    obs: Observations,
    truth: Float[Array, "T *state"],
    x_init: Float[Array, "T *state"] | None = None,
    *,
    prior_weight: float = 0.0,
    steps: int | Sequence[int] | None = None,
) -> Scalar:
    r"""$\frac{1}{|x|}\|\Psi(x^{(0)}, y, \Omega) - x^{true}\|^2$ (eq. 14), plus, with
    `prior_weight` $w > 0$, $\frac{w}{|x|}(\|\hat x - \Phi(\hat x)\|^2 +
    \|x^{true} - \Phi(x^{true})\|^2)$ (the regularisation of the authors' code; it
    leaves a prior with `train_prior=False` unchanged).

    With `steps` $S$ (an int or a sequence of time steps, negative from the end;
    `None`: the whole window) the first term is restricted to those steps,
    $\frac{1}{|S|\,|x_t|}\sum_{t \in S}\|\hat x_t - x^{true}_t\|^2$: the loss of
    one task of the window ([BF24] train mapping on the centre step, near real
    time and forecasts on the last one; see `jaxda.fourdvarnet.window_steps`). The
    prior term stays on the whole window."""
    x = model(obs, x_init)
    sq = (x - truth) ** 2
    if steps is not None:
        sq = sq[jnp.asarray(window_steps(steps, x.shape[0]))]
    loss = jnp.mean(sq)
    if prior_weight:
        prior = model.effective_cost().prior
        reg = jnp.mean((x - prior(x)) ** 2) + jnp.mean((truth - prior(truth)) ** 2)
        loss = loss + prior_weight * reg
    return loss


def unsupervised_loss(
    model: FourDVarNet,
    obs: Observations,
    x_init: Float[Array, "T *state"] | None = None,
) -> Scalar:
    r"""$U_\Phi(\Psi(x^{(0)}, y, \Omega), y, \Omega)$ (eq. 13): no ground truth; divided
    by the number of entries $|x|$ when the cost is a sum (`reduction="sum"`), as is
    when it is already a mean (`"mean"`).

    The weights $\lambda_{o,p}$ are not trained by this loss (set a priori, as in eq.
    13;
    learning them would drive the loss to zero): it runs the model with
    `train_weights=False`."""
    model = dataclasses.replace(model, train_weights=False)
    x = model(obs, x_init)
    cost = model.effective_cost()
    u = cost(x, obs)
    return u if cost.reduction == "mean" else u / x.size


def semisupervised_loss(
    model: FourDVarNet, obs: Observations, key: Key, *, holdout: float = 0.2
) -> Scalar:
    r"""Held-out observations as the target.

    A random fraction `holdout` of the observed entries ($\Omega_h$) is removed from the
    input; the network sees $\Omega \setminus \Omega_h$ (and its own interpolated first
    guess) and the loss is $\frac{1}{|\Omega_h|}\sum_{\Omega_h}(\hat x - y)^2$ (0 when
    nothing was held out)."""
    held = obs.mask & (jax.random.uniform(key, obs.mask.shape) < holdout)
    keep = obs.mask & ~held
    obs_in = Observations(jnp.where(keep, obs.values, 0.0), keep)
    x = model(obs_in)
    sq = jnp.where(held, (x - obs.values) ** 2, 0.0)
    return jnp.sum(sq) / jnp.maximum(jnp.sum(held), 1).astype(x.dtype)


MODES = ("supervised", "unsupervised", "semisupervised")


def make_fourdvarnet_loss(
    mode: str = "supervised",
    *,
    prior_weight: float = 0.0,
    holdout: float = 0.2,
    steps: int | Sequence[int] | None = None,
) -> Callable[[FourDVarNet, dict, Key], Scalar]:
    """A per-example loss `loss(model, example, key)` for `jaxda.train.fit`.

    `example` is a dict with `"obs"` (`Observations`), optionally `"x_init"` and, for
    `mode="supervised"`, `"truth"` (see `make_training_data`). `steps` restricts the
    supervised loss to those time steps (see `supervised_loss`); it needs
    `mode="supervised"`.
    """
    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(map(repr, MODES))}; got {mode!r}."
        )
    check_positive("prior_weight", prior_weight, allow_zero=True)
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"`holdout` must be in (0, 1); got {holdout!r}.")
    if steps is not None:
        if mode != "supervised":
            raise ValueError(
                f"`steps` restricts the supervised loss; got mode={mode!r}."
            )

    def loss(model, example, key):
        obs, x_init = example["obs"], example.get("x_init")
        if mode == "supervised":
            return supervised_loss(
                model,
                obs,
                example["truth"],
                x_init,
                prior_weight=prior_weight,
                steps=steps,
            )
        if mode == "unsupervised":
            return unsupervised_loss(model, obs, x_init)
        return semisupervised_loss(model, obs, key, holdout=holdout)

    return loss


def make_training_data(
    obs: Observations,
    truth: Float[Array, "N T *state"] | None = None,
    x_init: Float[Array, "N T *state"] | None = None,
) -> dict:
    """The dataset pytree for `fit_fourdvarnet`: `{"obs", ["truth"], ["x_init"]}` with a
    leading window axis, after shape checks."""
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`obs` must be jaxda.obs.Observations; got {type(obs).__name__}."
        )
    shape = tuple(obs.values.shape)
    data = {"obs": obs}
    for name, arr in (("truth", truth), ("x_init", x_init)):
        if arr is not None:
            if tuple(jnp.shape(arr)) != shape:
                raise ValueError(
                    f"`{name}` must have the shape of `obs` {shape}; got "
                    f"{tuple(jnp.shape(arr))}."
                )
            data[name] = jnp.asarray(arr, obs.values.dtype)
    return data


__all__ = [
    "MODES",
    "make_fourdvarnet_loss",
    "make_training_data",
    "semisupervised_loss",
    "supervised_loss",
    "unsupervised_loss",
]
