r"""The tasks of a window ([F21], [BF24]): which steps a loss
scores and which observations the network sees.

A window has $T$ steps $t = 0, \dots, T - 1$. [BF24]'s tasks on a 9-step window:

- mapping: the step at the centre, $t = \lfloor T / 2 \rfloor$ (4 of 9), all
  observations in;
- near real time: the last step $t = T - 1$, all observations in (none after it);
- short forecast at lead $\ell$: the last step, the observations of the last
  $\ell$ steps removed from the input (`forecast_observations`).

`window_steps` checks a selection of steps against $T$; the losses take it as
`steps` (`supervised_loss(..., steps=4)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from .._validation import check_int
from ..obs import Observations


def window_steps(steps: int | Sequence[int] | None, n_times: int) -> tuple[int, ...]:
    r"""The time steps `steps` of a window of `n_times` steps as non-negative ints
    (`None`: every step; negative indices count from the end, as in Python).

    **Raises:** `TypeError` for a non-integer step, `ValueError` for an empty
    selection, a step outside $[-T, T)$ or a repeated step.
    """
    n_times = check_int("n_times", n_times, minimum=1)
    if steps is None:
        return tuple(range(n_times))
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = (steps,)
    try:
        steps = tuple(steps)
    except TypeError:
        raise TypeError(
            f"`steps` must be an int, a sequence of ints or None; got {steps!r}."
        ) from None
    if not steps:
        raise ValueError("`steps` must select at least one time step; got ().")
    out = []
    for s in steps:
        s = check_int("steps", s)
        if not -n_times <= s < n_times:
            raise ValueError(
                f"`steps` must be in [-{n_times}, {n_times}) for a window of "
                f"{n_times} steps; got {s}."
            )
        out.append(s % n_times)
    if len(set(out)) != len(out):
        raise ValueError(f"`steps` must not repeat a time step; got {steps}.")
    return tuple(out)


def forecast_observations(
    obs: Observations, lead: int, *, time_axis: int = 0
) -> Observations:
    r"""The observations of a short-forecast task: those of the last `lead` steps
    removed, $\Omega_t = \emptyset$ and $y_t = 0$ for $t \ge T - \ell$.

    A network (or an OI) given these and scored at $t = T - 1$ forecasts $\ell$ steps
    beyond its last observation. `lead=0` returns `obs` unchanged.

    **Arguments:** `obs` (`Observations`, one window `(T, *state)` or a batch with
    the time axis `time_axis`, e.g. 1 for `(N, T, *state)`); `lead` $\ell$, an int in
    $[0, T)$ (at least the first step keeps its observations); `time_axis`.

    **Returns:** `Observations` of the same shape.
    """
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`obs` must be jaxda.obs.Observations; got {type(obs).__name__}."
        )
    ndim = obs.values.ndim
    time_axis = check_int("time_axis", time_axis)
    if not -ndim <= time_axis < ndim:
        raise ValueError(
            f"`time_axis` must be an axis of `obs` (ndim {ndim}); got {time_axis}."
        )
    n_times = obs.values.shape[time_axis]
    lead = check_int("lead", lead, minimum=0)
    if lead >= n_times:
        raise ValueError(
            f"`lead` must be < the window's {n_times} steps (some observations must "
            f"stay in); got {lead}."
        )
    if lead == 0:
        return obs
    shape = [1] * ndim
    shape[time_axis] = n_times
    keep = (jnp.arange(n_times) < n_times - lead).reshape(shape)
    mask = obs.mask & keep
    return Observations(jnp.where(mask, obs.values, 0).astype(obs.values.dtype), mask)


__all__ = ["forecast_observations", "window_steps"]
