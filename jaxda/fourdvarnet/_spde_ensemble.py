r"""Training loss, reconstruction and conditional ensembles of the generative 4DVarNet
(`SPDEFourDVarNet`, [BF24]).

- Loss of one window with truth $x^\star$ and output $(\hat x, \hat\theta)$:
  $\mathcal L = \lambda_1 \frac{1}{|S|\,|x_t|}\sum_{t\in S}\|\hat x_t - x^\star_t\|^2 +
  \lambda_2\,\frac1d\big[\tfrac12 (x^\star - \mu)^\top Q_{\hat\theta}(x^\star - \mu) -
  \tfrac12\log|Q_{\hat\theta}|\big]$: the reconstruction error on the task's steps
  $S$ and the Gaussian negative log-likelihood of the truth under the estimated prior
  (per value $d$, without the constant $\tfrac12\log 2\pi$).
- Conditional ensembles $X^{\star}_i = \hat x + (X^S_i - \hat X^S_i)$: $X^S_i$ drawn
  from the estimated prior $\mathcal N(\mu, Q_{\hat\theta}^{-1})$, observed on the
  same $\Omega$ with noise of the observations' variance, and $\hat X^S_i$ their
  reconstruction by the same network. For an exact linear estimator (the OI) the
  members are exact posterior samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key, Scalar
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import check_choice, check_int, check_key, check_positive
from ..obs import Observations
from ..spde._prior import LOGDETS, _sample
from ._spde_net import SPDEFourDVarNet
from ._tasks import window_steps


def _check_model(model) -> SPDEFourDVarNet:
    if not isinstance(model, SPDEFourDVarNet):
        raise TypeError(
            f"`model` must be an SPDEFourDVarNet; got {type(model).__name__}."
        )
    return model


def truth_nll(
    model: SPDEFourDVarNet,
    theta: Float[Array, "P ny nx"],
    truth: Float[Array, "T ny nx"],
    *,
    logdet: str = "auto",
) -> Scalar:
    r"""$\frac1d[\tfrac12 (x^\star - \mu)^\top Q_\theta (x^\star - \mu) - \tfrac12
    \log|Q_\theta|]$: the negative log-density per value of `truth` under the prior
    of `theta`, without $\tfrac12\log 2\pi$ (`logdet`: `jaxda.spde.SPDEPrior.
    logdet_precision`'s method). Non-finite when the prior is degenerate."""
    prior = model.field_map.prior(theta)
    value = prior.energy(truth) - 0.5 * prior.logdet_precision(logdet, throw=False)
    return value / prior.size


def generative_loss(
    model: SPDEFourDVarNet,
    obs: Observations,
    truth: Float[Array, "T ny nx"],
    *,
    steps: int | Sequence[int] | None = None,
    reconstruction_weight: float = 1.0,
    nll_weight: float = 1.0,
    logdet: str = "auto",
) -> Scalar:
    r"""$\lambda_1$ (`reconstruction_weight`) times the mean squared error on the
    steps `steps` (all when None; see `jaxda.fourdvarnet.window_steps`) plus
    $\lambda_2$ (`nll_weight`) times `truth_nll` of the estimated parameters
    ([BF24]'s training loss, module docstring)."""
    x, theta = model(obs)
    sq = (x - truth) ** 2
    if steps is not None:
        sq = sq[jnp.asarray(window_steps(steps, x.shape[0]))]
    loss = reconstruction_weight * jnp.mean(sq)
    if nll_weight:
        loss = loss + nll_weight * truth_nll(model, theta, truth, logdet=logdet)
    return loss


def make_generative_loss(
    *,
    steps: int | Sequence[int] | None = None,
    reconstruction_weight: float = 1.0,
    nll_weight: float = 1.0,
    logdet: str = "auto",
):
    """`loss(model, example, key)` of `generative_loss` for `jaxda.train.fit`, with
    `example = {"obs": Observations, "truth": array}` (one window); `steps` is
    checked against the window at the first call."""
    check_positive("reconstruction_weight", reconstruction_weight, allow_zero=True)
    check_positive("nll_weight", nll_weight, allow_zero=True)
    check_choice("logdet", logdet, LOGDETS)

    def loss(model, example, key):
        return generative_loss(
            model, example["obs"], example["truth"], steps=steps,
            reconstruction_weight=reconstruction_weight, nll_weight=nll_weight,
            logdet=logdet,
        )  # fmt: skip

    return loss


class SPDEReconstruction(eqx.Module):
    """Output of `spde_reconstruct`: `x` `([N,] T, ny, nx)`, the parameter fields
    `theta` `([N,] P, ny, nx)` and `result` (`invalid_input`: no observation or a
    non-finite observed value; `nonfinite`: the network diverged)."""

    x: Array
    theta: Array
    result: RESULTS


def _one(model, obs):
    x, theta = model(obs)
    valid = jnp.any(obs.mask) & all_finite(jnp.where(obs.mask, obs.values, 0))
    result = first_failure(
        (~valid, RESULTS.invalid_input),
        (~(all_finite(x) & all_finite(theta)), RESULTS.nonfinite),
    )
    return SPDEReconstruction(x, theta, result)


@eqx.filter_jit
def _reconstruct(model, obs, batched, throw):
    out = jax.vmap(lambda o: _one(model, o))(obs) if batched else _one(model, obs)
    return raise_if_failed(out, out.result, throw)


def spde_reconstruct(
    model: SPDEFourDVarNet, obs: Observations, *, throw: bool = True
) -> SPDEReconstruction:
    """Run `model` (compiled) on one window `(T, ny, nx)` or a batch `(N, T, ny,
    nx)`, with a result code per window (raised with `throw`)."""
    _check_model(model)
    batched = jnp.ndim(obs.values) == 4 if isinstance(obs, Observations) else False
    model.check_obs(obs, batched=batched)
    return _reconstruct(model, obs, batched, bool(throw))


class SPDEEnsemble(eqx.Module):
    """Output of `spde_conditional_ensemble`.

    **Fields:** `members` `(n, T, ny, nx)`; `estimate` (the network's $\\hat x$);
    `theta` (the estimated parameter fields); `result` (`invalid_input`; the prior
    sampler's failure, e.g. `singular`; `nonfinite`)."""

    members: Array
    estimate: Array
    theta: Array
    result: RESULTS

    @property
    def mean(self) -> Array:
        return jnp.mean(self.members, axis=0)

    @property
    def std(self) -> Array:
        """The members' standard deviation (ddof 1)."""
        return jnp.std(self.members, axis=0, ddof=1)


def _sampling_solver(grid, params) -> str:
    if grid.periodic:
        return "fft" if params.spatially_constant else "iterative"
    return "banded"


@eqx.filter_jit
def _ensemble(model, key, obs, obs_var, n_members, chunk_size):
    rec = _one(model, obs)
    fm = model.field_map
    params = fm.parameters(rec.theta)
    prior = fm.prior(rec.theta, solver=_sampling_solver(fm.grid, params))
    k_prior, k_noise = jax.random.split(key)
    dtype = rec.x.dtype
    z = jax.random.normal(k_prior, (n_members, *prior.shape), dtype)
    samples, sample_result = _sample(prior, z)
    noise = jnp.sqrt(jnp.asarray(obs_var, dtype)) * jax.random.normal(
        k_noise, samples.shape, dtype
    )
    ys = jnp.where(obs.mask, samples + noise, 0.0)

    def reconstruct(y):
        return model(Observations(y, obs.mask))[0]

    rebuilt = jax.lax.map(reconstruct, ys, batch_size=chunk_size)
    members = rec.x + samples - rebuilt
    result = first_failure(
        (rec.result != RESULTS.successful, rec.result),
        (~params.values_valid(), RESULTS.invalid_input),
        (sample_result != RESULTS.successful, sample_result),
        (~all_finite(members), RESULTS.nonfinite),
    )
    return SPDEEnsemble(members, rec.x, rec.theta, result)


def spde_conditional_ensemble(
    key: Key,
    model: SPDEFourDVarNet,
    obs: Observations,
    obs_var: float,
    n_members: int,
    *,
    chunk_size: int | None = 32,
    throw: bool = True,
) -> SPDEEnsemble:
    r"""[BF24]'s conditional ensemble through the trained network: $X^\star_i =
    \hat x + (X^S_i - \hat X^S_i)$ (module docstring), for one window.

    **Arguments:** `key`; `model` (`SPDEFourDVarNet`); `obs` (`(T, ny, nx)`);
    `obs_var` $\sigma^2 > 0$ (the observation noise, in the model's units);
    `n_members` $\ge 2$; `chunk_size` (members reconstructed at once, bounding
    memory; None: all); `throw`.

    The prior samples use banded LU solves on a closed grid, the FFT for constant
    fields on a periodic one, GMRES otherwise (`jaxda.spde.SPDEPrior`).
    """
    check_key("key", key)
    _check_model(model)
    model.check_obs(obs)
    check_positive("obs_var", obs_var)
    n_members = check_int("n_members", n_members, minimum=2)
    if chunk_size is not None:
        chunk_size = min(check_int("chunk_size", chunk_size, minimum=1), n_members)
    out = _ensemble(model, key, obs, obs_var, n_members, chunk_size)
    return raise_if_failed(out, out.result, throw)


__all__ = [
    "SPDEEnsemble",
    "SPDEReconstruction",
    "generative_loss",
    "make_generative_loss",
    "spde_conditional_ensemble",
    "spde_reconstruct",
    "truth_nll",
]
