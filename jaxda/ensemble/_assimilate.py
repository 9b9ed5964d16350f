r"""The cycling driver of the ensemble methods, and the fixed-lag smoother EnKS.

`assimilate` runs a whole observation sequence `(T, *state)` in one `lax.scan` over
the time steps: the ensemble is forecast by the flow map (vmapped over members) and,
at every time with at least one observation, analysed (`lax.cond`: times without
observations cost a forecast only), then inflated and optionally rotated. A step
whose ensemble is not finite keeps the last finite ensemble, so a diverging run never
fills its output with NaN; the failure is reported in `EnsembleResult.step_result`
and `result`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Key
from .._results import (
    RESULTS,
    all_finite,
    all_positive,
    first_failure,
    raise_if_failed,
)
from .._validation import check_finite, check_int, check_key, check_positive
from ..models import AbstractFlowMap
from ..obs import (
    AbstractObservationOperator,
    IdentityOperator,
    Observations,
    check_operator,
    check_operator_observations,
)
from ._analysis import LETKF, AbstractEnsembleAnalysis
from ._ensemble import ensemble_std, flat, mean_preserving_rotation


# The result item of a collapsed ensemble (its spread vanished): the library has no
# dedicated item yet.
COLLAPSED = RESULTS.collapsed


class EnKS(eqx.Module):
    r"""The fixed-lag ensemble Kalman smoother [E09, ch. 9] around a filter.

    Each analysis transform $X$ of `filter` (at time $t$, $E^a_t = E_t + X A_t$) is
    applied to the stored ensembles of the `lag` previous times,
    $E_s \leftarrow E_s + X A_s$ for $t - \text{lag} \le s < t$: for a linear model
    this conditions the joint ensemble of the lag window on $y_t$, so the smoothed
    estimate of time $s$ uses the observations up to $s + \text{lag}$. Inflation
    and rotation act on the current ensemble only (as DAPPER's `EnKS`). Results in
    `EnsembleResult.smoothed` / `smoothed_std`; `analysis` is the filter's.

    **Arguments:** `filter` an ensemble analysis (`ETKF()`, `EnKF()`, `LETKF(...)`,
    ...); `lag` >= 0, in time steps of the observation sequence (DAPPER's `Lag`
    times its steps per cycle).
    """

    filter: AbstractEnsembleAnalysis
    lag: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.filter, AbstractEnsembleAnalysis):
            raise TypeError(
                "`filter` must be an ensemble analysis (jaxda.ensemble.ETKF(), "
                f"EnKF(), LETKF(...)); got {type(self.filter).__name__}."
            )
        check_int("lag", self.lag, minimum=0)


class EnsembleResult(eqx.Module):
    """The output of `assimilate`.

    **Fields:**
    - `analysis` `(T, *state)`: the ensemble mean at every time of the observation
      sequence: the analysis mean at the times with observations (`analysed`), the
      forecast mean in between (the same layout as `jaxda.var.cycle`'s `analysis`).
    - `std` `(T, *state)`: the ensemble standard deviation, same times.
    - `analysed` `(T,)`: whether an analysis took place at each time.
    - `members` `(T, N, *state)` with `save_members=True`, else `None`.
    - `smoothed`, `smoothed_std` `(T, *state)`: the smoother's mean and standard
      deviation (`EnKS` only, else `None`).
    - `final_ensemble` `(N, *state)`: the last ensemble (to continue cycling).
    - `step_result` `(T,)`: the `jaxda.RESULTS` item of each time: `successful`,
      `nonfinite` (the ensemble became non-finite: the last finite one is kept),
      `collapsed` (the ensemble collapsed: its spread fell below `min_spread`) or
      `invalid_input` (a value check failed under `jit`).
    - `result`: the first failing time's item, `successful` when none failed.

    `spread` `(T,)` is the root-mean-square of `std` over the state (DAPPER's
    "spread"); `converged` `(T,)` is `step_result == RESULTS.successful`.
    """

    analysis: Float[Array, "T *state"]
    std: Float[Array, "T *state"]
    analysed: Bool[Array, " T"]
    members: Float[Array, "T N *state"] | None
    smoothed: Float[Array, "T *state"] | None
    smoothed_std: Float[Array, "T *state"] | None
    final_ensemble: Float[Array, "N *state"]
    step_result: RESULTS
    result: RESULTS

    @property
    def spread(self) -> Float[Array, " T"]:
        """The spread at each time, $\\sqrt{\\text{mean of the variances}}$."""
        return _rms(self.std, self.analysis.ndim - self.analysed.ndim)

    @property
    def converged(self) -> Bool[Array, " T"]:
        """Per time: whether the step succeeded."""
        return self.step_result == RESULTS.successful


def _rms(x, n_state_axes):
    axes = tuple(range(x.ndim - n_state_axes, x.ndim))
    return jnp.sqrt(jnp.mean(x**2, axis=axes))


def _first_failure(step_result: RESULTS) -> RESULTS:
    failed = step_result != RESULTS.successful
    first = jnp.argmax(failed, axis=-1)
    picked = jax.tree_util.tree_map(lambda v: v[first], step_result)
    return RESULTS.where(jnp.any(failed), picked, RESULTS.successful)


def assimilate(
    method: AbstractEnsembleAnalysis | EnKS,
    flow: AbstractFlowMap,
    obs: Observations,
    ensemble0: Float[Array, "N *state"],
    *,
    key: Key,
    obs_var,
    t0: float = 0.0,
    save_members: bool = False,
    min_spread: float | None = None,
    operator: AbstractObservationOperator | None = None,
    throw: bool = True,
) -> EnsembleResult:
    r"""Cycle an ensemble method over a whole observation sequence.

    `ensemble0` is the ensemble at the time of `obs.values[0]`. For each time
    $t = 0, \dots, T-1$: forecast $E_i \leftarrow \Phi(E_i)$ (not at $t = 0$); if any
    entry of `obs.mask[t]` is true, the analysis of `method` with weights
    $R^{-1}$ on the observed entries and 0 elsewhere, then
    $E \leftarrow \bar x + \lambda Q A$ (inflation `method.inflation`, a random
    mean-preserving rotation $Q$ when `method.rotate`). Compiled once per
    configuration (shapes, dtypes, method class and static settings); the
    hyperparameters `inflation` and `radius` are traced, so sweeps over them reuse
    the compilation (and `vmap` over them). Under a `vmap` over observations whose
    masks differ between the runs, the choice "analyse or not" becomes a `select`:
    every time step then pays an analysis (the results are the same).

    **Arguments:**
    - `method`: `ETKF()`, `EnKF()`, `EnKFN()`, `LETKF(radius)` or `EnKS(filter, lag)`.
    - `flow`: the one-step flow map $\Phi$ (`jaxda.models.flow_map`).
    - `obs`: the observations of the sequence, `Observations` of shape `(T, *state)`
      (zero-filled values and the mask of the observed entries; `(T, *obs_shape)`
      with an `operator`), one time per flow-map step.
    - `ensemble0`: the initial ensemble `(N, *state)`, $N \ge 2$, finite, not
      collapsed.
    - `key`: a `jax.random` key (perturbed observations, rotations).
    - `obs_var`: the observation-error variances $R$ (diagonal): a scalar or an array
      of the state shape, > 0.
    - `t0`: the time of `ensemble0` (passed to the flow map).
    - `operator`: a `jaxda.obs` observation operator $h_t$ (`MatrixOperator`,
      `SelectionOperator`, `NonlinearOperator`, ...; a per-time operator is called
      with the row index of `obs`), with `obs` of shape `(T, *operator.obs_shape)`;
      default `None`: the state itself through the mask (`obs` of the state's
      shape). The LETKF localises observations at the state's grid points, so it
      takes `None` or an `IdentityOperator` only.
    - `save_members`: also return every member at every time.
    - `min_spread`: the spread below which the ensemble counts as collapsed; default
      `sqrt(eps) * (1 + rms(mean))` in the ensemble's dtype.
    - `throw`: raise an `equinox.EquinoxRuntimeError` with the first failing step's
      message (eagerly and under `jit`); with `throw=False`, inspect `result`.

    **Returns:** an `EnsembleResult`.
    """
    if isinstance(method, EnKS):
        analysis, lag = method.filter, method.lag
    elif isinstance(method, AbstractEnsembleAnalysis):
        analysis, lag = method, 0
    else:
        raise TypeError(
            "`method` must be an ensemble analysis (jaxda.ensemble.ETKF(), EnKF(), "
            "EnKFN(), LETKF(radius)) or EnKS(filter, lag); got "
            f"{type(method).__name__}."
        )
    if not isinstance(flow, AbstractFlowMap):
        raise TypeError(
            f"`flow` must be a jaxda.models.AbstractFlowMap; got {type(flow).__name__}."
        )
    for name, value in (("throw", throw), ("save_members", save_members)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool; got {type(value).__name__}.")
    state_shape = tuple(flow.model.state_shape)
    ensemble0 = _check_ensemble(ensemble0, state_shape)
    if operator is None:
        obs_shape = state_shape  # the state itself, through the mask
        Observations.check(obs, obs_shape, name="obs")
    else:
        check_operator(operator, state_shape)
        check_operator_observations(obs, operator)
        obs_shape = tuple(operator.obs_shape)
        if isinstance(analysis, LETKF) and not isinstance(operator, IdentityOperator):
            raise ValueError(
                "the LETKF localises observations at the state's grid points: "
                "`operator` must be None or a jaxda.obs.IdentityOperator; got "
                f"{type(operator).__name__}."
            )
    check_key("key", key)
    _check_obs_var(obs_var, obs_shape)
    if min_spread is not None:
        check_positive("min_spread", min_spread, allow_zero=True)
        min_spread = jnp.asarray(min_spread, ensemble0.dtype)
    dtype = ensemble0.dtype
    res = _assimilate(
        analysis, lag, flow, obs, ensemble0, key, jnp.asarray(obs_var, dtype),
        jnp.asarray(t0, dtype), save_members, min_spread, operator,
    )  # fmt: skip
    return raise_if_failed(res, res.result, throw)


def _check_ensemble(ensemble0, state_shape) -> Array:
    ensemble0 = jnp.asarray(ensemble0)
    if not jnp.issubdtype(ensemble0.dtype, jnp.floating):
        raise TypeError(
            f"`ensemble0` must be a floating array; got dtype {ensemble0.dtype}."
        )
    shape = tuple(ensemble0.shape)
    if len(shape) != 1 + len(state_shape) or shape[1:] != state_shape:
        raise ValueError(
            f"`ensemble0` must have shape (N, {', '.join(map(str, state_shape))}) "
            f"(N members of the model's state shape {state_shape}); got {shape}."
        )
    if shape[0] < 2:
        raise ValueError(
            f"`ensemble0` must have N >= 2 members; got N = {shape[0]} (shape {shape})."
        )
    check_finite("ensemble0", ensemble0)
    if not isinstance(ensemble0, jax.core.Tracer):
        if float(np.max(np.std(np.asarray(ensemble0), axis=0))) == 0.0:
            raise ValueError(
                "`ensemble0` must have a positive spread; got N identical members."
            )
    return ensemble0


def _check_obs_var(obs_var, obs_shape) -> None:
    shape = tuple(jnp.shape(obs_var))
    try:
        ok = np.broadcast_shapes(shape, obs_shape) == obs_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            "`obs_var` must be a scalar or broadcastable to the observation shape "
            f"{obs_shape}; got shape {shape}."
        )
    check_positive("obs_var", obs_var)


def _post_process(analysis, key, ensemble):
    """$\\bar x + \\lambda Q A$: inflation, and a rotation when `analysis.rotate`."""
    mean = jnp.mean(ensemble, axis=0)
    a = ensemble - mean
    if analysis.rotate:
        a = mean_preserving_rotation(key, ensemble.shape[0], ensemble.dtype) @ a
    return mean + analysis.inflation.astype(ensemble.dtype) * a


@eqx.filter_jit
def _assimilate(
    analysis, lag, flow, obs, ensemble0, key, obs_var, t0, save_members,
    min_spread, operator,
) -> EnsembleResult:  # fmt: skip
    """The cycling loop, compiled once per configuration (no argument checks)."""
    n_members, *state = ensemble0.shape
    state_shape = tuple(state)
    dtype = ensemble0.dtype
    n_times = obs.values.shape[0]
    values = jnp.reshape(obs.values.astype(dtype), (n_times, -1))
    mask = jnp.reshape(obs.mask, (n_times, -1))
    var = jnp.reshape(jnp.broadcast_to(obs_var, obs.values.shape[1:]), (-1,))
    valid = (
        all_positive(var)
        & all_finite(ensemble0, values, analysis.inflation)
        & (analysis.inflation >= 1)
    )
    e0 = flat(ensemble0)
    dt = jnp.asarray(flow.dt, dtype)

    def members(e):
        return jnp.reshape(e, (n_members, *state_shape))

    def forecast(e, time):
        out = jax.vmap(flow, in_axes=(0, None))(members(e), time)
        return flat(out).astype(dtype)

    def observe(e, k):
        if operator is None:
            return e  # the state itself; the weights mask it
        hx = jax.vmap(lambda x: operator(x, k))(members(e))
        return jnp.reshape(hx, (n_members, -1)).astype(dtype)

    def analyse(key, k, y, weight, e, buffer):
        key_a, key_r = jax.random.split(key)
        observed = observe(e, k)
        transform = analysis.transform(
            key_a, observed, y, weight, state_shape=state_shape
        )
        e_a = _post_process(analysis, key_r, transform(e))
        if lag:
            buffer = jax.vmap(transform)(buffer)
        return e_a, buffer

    def step(carry, inputs):
        e, buffer = carry
        k, key, y, m = inputs
        e_f = jax.lax.cond(
            k == 0, lambda e: e, lambda e: forecast(e, t0 + dt * (k - 1)), e
        )
        weight = jnp.where(m, 1.0 / var, 0.0).astype(dtype)
        observed = jnp.any(m)
        e_a, new_buffer = jax.lax.cond(
            observed,
            lambda e, b: analyse(key, k, y, weight, e, b),
            lambda e, b: (e, b),
            e_f,
            buffer,
        )
        finite = all_finite(e_a, new_buffer)
        e_a = jnp.where(finite, e_a, e)
        new_buffer = jnp.where(finite, new_buffer, buffer)
        mean = jnp.mean(e_a, axis=0)
        std = ensemble_std(e_a)
        floor = (
            jnp.sqrt(jnp.finfo(dtype).eps) * (1 + _rms(mean, 1))
            if min_spread is None
            else min_spread
        )
        collapsed = _rms(std, 1) <= floor
        result = first_failure(
            (~valid, RESULTS.invalid_input),
            (~finite, RESULTS.nonfinite),
            (collapsed, COLLAPSED),
        )
        out = {"mean": mean, "std": std, "observed": observed, "result": result}
        if save_members:
            out["members"] = e_a
        if lag:
            out["smoothed"] = jnp.mean(new_buffer[0], axis=0)
            out["smoothed_std"] = ensemble_std(new_buffer[0])
            new_buffer = jnp.concatenate([new_buffer[1:], e_a[None]], axis=0)
        return (e_a, new_buffer), out

    buffer0 = jnp.broadcast_to(e0, (lag, *e0.shape))
    keys = jax.random.split(key, n_times)
    inputs = (jnp.arange(n_times), keys, values, mask)
    (e_last, buffer), out = jax.lax.scan(step, (e0, buffer0), inputs)

    def shaped(x):
        return jnp.reshape(x, (x.shape[0], *state_shape))

    smoothed = smoothed_std = None
    if lag:
        tail_mean = jnp.mean(buffer, axis=1)
        tail_std = jnp.std(buffer, axis=1, ddof=1)
        smoothed = jnp.concatenate([out["smoothed"], tail_mean], axis=0)[lag:]
        smoothed_std = jnp.concatenate([out["smoothed_std"], tail_std], axis=0)[lag:]
        smoothed, smoothed_std = shaped(smoothed), shaped(smoothed_std)
    saved = None
    if save_members:
        saved = jnp.reshape(out["members"], (n_times, n_members, *state_shape))
    return EnsembleResult(
        analysis=shaped(out["mean"]),
        std=shaped(out["std"]),
        analysed=out["observed"],
        members=saved,
        smoothed=smoothed,
        smoothed_std=smoothed_std,
        final_ensemble=members(e_last),
        step_result=out["result"],
        result=_first_failure(out["result"]),
    )
