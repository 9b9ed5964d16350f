r"""Ensemble-smoother first guesses for long 4DVar windows.

Weak-constraint Gauss-Newton from the interpolated observations of a long window can
converge to a wrong local minimum when most components are unobserved between the
observation times (the F21-L96 windows: 20 of 40 components every 4 steps). A
fixed-lag EnKS [E09, ch. 9] cycled over the window from a climatological ensemble
gives a first guess on the attractor: its smoothed mean $\bar x^s_t$ uses the
observations up to $t + L$. `climatology_ensemble` draws the initial members from
archived states (e.g. the training windows, all times pooled);
`smoother_first_guess` runs the smoother and returns the smoothed mean and spread.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key
from .._results import RESULTS
from .._validation import check_int, check_key
from ..models import AbstractFlowMap
from ..obs import Observations
from ._analysis import ETKF, AbstractEnsembleAnalysis
from ._assimilate import EnKS, assimilate


class SmootherFirstGuess(eqx.Module):
    """The output of `smoother_first_guess`.

    **Fields:** `mean` `(T, *state)` (the smoothed mean: the first guess), `std`
    `(T, *state)` (the smoothed ensemble standard deviation) and `result` (the
    smoother's `jaxda.RESULTS` item).
    """

    mean: Float[Array, "T *state"]
    std: Float[Array, "T *state"]
    result: RESULTS


def climatology_ensemble(
    key: Key, states: Float[Array, "M *state"], n_members: int
) -> Float[Array, "N *state"]:
    """`n_members` distinct states drawn uniformly without replacement from the
    archive `states` `(M, *state)` (a climatological initial ensemble).

    `jax.vmap` over keys gives one independent ensemble per window.
    """
    check_key("key", key)
    states = jnp.asarray(states)
    if states.ndim < 2:
        raise ValueError(
            f"`states` must be an archive (M, *state) of states; got shape "
            f"{states.shape}."
        )
    n_members = check_int("n_members", n_members, minimum=2)
    if n_members > states.shape[0]:
        raise ValueError(
            f"`n_members` must be <= the number of archived states "
            f"({states.shape[0]}); got {n_members}."
        )
    return states[jax.random.choice(key, states.shape[0], (n_members,), False)]


def smoother_first_guess(
    flow: AbstractFlowMap,
    obs: Observations,
    ensemble0: Float[Array, "N *state"],
    *,
    key: Key,
    obs_var,
    lag: int,
    filter: AbstractEnsembleAnalysis | None = None,
    throw: bool = True,
    **options,
) -> SmootherFirstGuess:
    r"""The fixed-lag EnKS smoothed mean of a window, a first guess for its 4DVar.

    **Arguments:** `flow` the one-step flow map; `obs` the window's `Observations`
    `(T, *state)` (row 0 at the time of `ensemble0`); `ensemble0` `(N, *state)` (e.g.
    `climatology_ensemble`); `key`; `obs_var` ($R$, scalar or state-shaped); `lag`
    $\ge 0$ in time steps; `filter` (default `ETKF()`; e.g. `ETKF(inflation=1.1)`);
    `throw`; `options` passed to `jaxda.ensemble.assimilate` (`operator`,
    `min_spread`, `t0`).

    **Returns:** a `SmootherFirstGuess` (`mean` is the first guess, `std` its
    spread).
    """
    method = EnKS(ETKF() if filter is None else filter, lag)
    res = assimilate(
        method, flow, obs, ensemble0, key=key, obs_var=obs_var, throw=throw, **options
    )
    return SmootherFirstGuess(res.smoothed, res.smoothed_std, res.result)
