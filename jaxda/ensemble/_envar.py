r"""Cycled hybrid EnVar: an ensemble filter for the ensemble, a variational analysis
of the control member with the hybrid background covariance, and recentring.

The cycle of hybrid ensemble-variational assimilation [HS00; L03; B05] as
operational centres run it ("EnVar"). At each analysis time, with the forecast
ensemble $E^f$ (mean $x_b$, scaled anomalies $a_k$, $P_e = \sum_k a_k a_k^\top$):

1. the ensemble filter (`ETKF`, `LETKF`, ...) updates the members,
   $E' = E^f + X A^f$;
2. the control member is analysed by a 3D variational solve in the control
   variable $w$ of the hybrid background covariance built from the **forecast**
   ensemble,

   $$B = \beta\, B_s + (1 - \beta)\,(C \circ P_e), \qquad
   x = x_b + U w,\quad U U^\top = B,$$

   $$J(w) = \tfrac12 \|w\|^2 + \tfrac12 \|y - h(x_b + U w)\|^2_{R^{-1}},$$

   (`jaxda.var.ControlTransform` of the observation term with a
   `HybridCovariance`; any `jaxda.var` solver). For a linear $h = H$ the minimiser
   is the Gaussian posterior mean $x^a = x_b + B H^\top (H B H^\top + R)^{-1}
   (y - H x_b)$: with $\beta = 0$ and no localisation it is the ETKF's mean (the
   ensemble Kalman gain), with $\beta = 1$ the optimal interpolation with $B_s$;
3. the analysis ensemble is the filter's, recentred on the variational analysis,
   $E^a_i = E'_i - \overline{E'} + x^a$ (the filter's anomalies are kept), then
   inflated and rotated as the filter asks.

A variational solve that fails (its `jaxda.RESULTS` item is not `successful`, or
its analysis is not finite) keeps the filter's mean at that time and is reported in
the step's result.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Float, Int, Key
from .._results import (
    RESULTS,
    all_finite,
    all_positive,
    first_failure,
    raise_if_failed,
)
from .._validation import check_int, check_key, check_positive, is_concrete
from ..grid import AbstractCovariance
from ..models import AbstractFlowMap
from ..obs import (
    AbstractObservationOperator,
    IdentityOperator,
    Observations,
    check_operator,
    check_operator_observations,
)
from ..var import (
    AbstractSolver,
    AbstractVarProblem,
    ControlTransform,
    GaussNewtonCG,
    solve as var_solve,
)
from ._analysis import LETKF, AbstractEnsembleAnalysis
from ._assimilate import (
    COLLAPSED,
    EnsembleResult,
    _check_ensemble,
    _check_obs_var,
    _first_failure,
    _post_process,
    _rms,
)
from ._ensemble import ensemble_std, flat
from ._hybrid import EnsembleCovariance, HybridCovariance


def _as_array(x):
    return jnp.asarray(x)


class HybridEnVar(eqx.Module):
    r"""Settings of cycled hybrid EnVar (module docstring) for `assimilate_envar`
    and `jaxda.cycling.assimilate`.

    **Arguments:**

    - `filter`: the ensemble analysis that updates the members (`ETKF(...)`,
      `LETKF(...)`, `EnKFN(...)`, `EnKF(...)`); its `inflation` and `rotate` act
      after the recentring.
    - `static`: the static background covariance $B_s$, a
      `jaxda.grid.AbstractCovariance` on the state shape (e.g. `TaperCovariance` of
      a dense matrix on small states, a `jaxda.grid.SpectralCovariance` on grids).
    - `weight`: $\beta \in [0, 1]$, the static share of $B$ (0: pure EnVar, 1:
      3DVar with $B_s$ recentring the filter's ensemble).
    - `localisation`: the correlation $C$ of the ensemble part (unit variance, on
      the state shape), or `None` (no localisation: $N$ ensemble control
      variables).
    - `solver`: a `jaxda.var` solver for the variational analysis (default
      `var.GaussNewtonCG()`; `var.DenseGaussNewton()` for small controls).
    - `max_steps`: the solver's iteration cap per analysis (default 10).
    """

    filter: AbstractEnsembleAnalysis
    static: AbstractCovariance
    weight: Float[Array, ""] = eqx.field(converter=_as_array)
    localisation: AbstractCovariance | None = None
    solver: AbstractSolver = eqx.field(default_factory=GaussNewtonCG)
    max_steps: int = eqx.field(default=10, static=True)

    def __check_init__(self):
        if not isinstance(self.filter, AbstractEnsembleAnalysis):
            raise TypeError(
                "`filter` must be an ensemble analysis (jaxda.ensemble.ETKF(), "
                f"LETKF(...), EnKFN(), EnKF()); got {type(self.filter).__name__}."
            )
        for name in ("static", "localisation"):
            value = getattr(self, name)
            if name == "localisation" and value is None:
                continue
            if not isinstance(value, AbstractCovariance):
                raise TypeError(
                    f"`{name}` must be a jaxda.grid.AbstractCovariance; got "
                    f"{type(value).__name__}."
                )
        if self.localisation is not None and tuple(
            self.localisation.field_shape
        ) != tuple(self.static.field_shape):
            raise ValueError(
                "`localisation.field_shape` must be `static.field_shape` "
                f"{tuple(self.static.field_shape)}; got "
                f"{tuple(self.localisation.field_shape)}."
            )
        weight = self.weight
        if weight.shape != () or not (
            jnp.issubdtype(weight.dtype, jnp.floating)
            or jnp.issubdtype(weight.dtype, jnp.integer)
        ):
            raise TypeError(
                f"`weight` must be a real number in [0, 1]; got {self.weight!r}."
            )
        if is_concrete(weight) and not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"`weight` must be in [0, 1]; got {float(weight)}.")
        if not isinstance(self.solver, AbstractSolver):
            raise TypeError(
                "`solver` must be a jaxda.var solver; got "
                f"{type(self.solver).__name__}."
            )
        check_int("max_steps", self.max_steps, minimum=1)

    @property
    def inflation(self) -> Float[Array, ""]:
        """The filter's multiplicative inflation."""
        return self.filter.inflation

    @property
    def rotate(self) -> bool:
        """Whether the filter rotates its analysis anomalies."""
        return self.filter.rotate

    def covariance(self, forecast: Float[Array, "N *state"]) -> HybridCovariance:
        r"""The hybrid $B = \beta B_s + (1 - \beta)(C \circ P_e)$ of a forecast
        ensemble `(N, *state)`."""
        ensemble = EnsembleCovariance(forecast, self.localisation)
        weight = self.weight.astype(forecast.dtype)
        return HybridCovariance(self.static, ensemble, weight)


class ObservationTerm(AbstractVarProblem):
    r"""The observation term of one analysis time as a `jaxda.var` problem in the
    state $x$: $J(x) = \tfrac12 \sum_j W_j (y_j - h(x)_j)^2$, residuals
    $W^{1/2}(h(x) - y)$.

    **Arguments:** `y` `(p,)` the observations (flattened), `weight` `(p,)` the
    weights $R^{-1}$ on the observed entries and 0 elsewhere, `state_shape`,
    `operator` a `jaxda.obs` operator $h$ (`None`: the state itself, $p = n$) and
    `time` the row index passed to it.
    """

    y: Float[Array, " p"]
    weight: Float[Array, " p"]
    state_shape: tuple[int, ...] = eqx.field(static=True)
    operator: AbstractObservationOperator | None = None
    time: Int[Array, ""] | int = 0

    def observe(self, x: Float[Array, "*state"]) -> Float[Array, " p"]:
        """$h(x)$, flattened."""
        hx = x if self.operator is None else self.operator(x, self.time)
        return jnp.ravel(hx)

    def residual_terms(self, x):
        return (jnp.sqrt(self.weight) * (self.observe(x) - self.y),)

    def check_control(self, name, x):
        if tuple(jnp.shape(x)) != tuple(self.state_shape):
            raise ValueError(
                f"`{name}` must have the state shape {tuple(self.state_shape)}; got "
                f"{tuple(jnp.shape(x))}."
            )

    def values_valid(self) -> Bool[Array, ""]:
        return all_finite(self.y, self.weight)


class EnVarResult(eqx.Module):
    """The output of `assimilate_envar`.

    **Fields:**

    - `ensemble`: the `EnsembleResult` of the cycle (`analysis` the recentred
      analysis mean, `std`, `members`, `final_ensemble`, `step_result` with the
      failed variational solves, `result`).
    - `var_result` `(T,)`: the variational solve's `jaxda.RESULTS` item at each
      time (`successful` at times without an analysis).
    - `var_steps` `(T,)`: its number of iterations (0 without an analysis).
    - `filter_analysis` `(T, *state)`: the filter's mean before recentring.
    """

    ensemble: EnsembleResult
    var_result: RESULTS
    var_steps: Int[Array, " T"]
    filter_analysis: Float[Array, "T *state"]

    @property
    def result(self) -> RESULTS:
        """The first failing time's item, `successful` when none failed."""
        return self.ensemble.result

    @property
    def analysis(self) -> Float[Array, "T *state"]:
        return self.ensemble.analysis

    @property
    def spread(self) -> Float[Array, " T"]:
        return self.ensemble.spread


def analyse(
    method: HybridEnVar,
    key: Key,
    forecast: Float[Array, "N *state"],
    y: Float[Array, " p"],
    weight: Float[Array, " p"],
    *,
    operator: AbstractObservationOperator | None = None,
    time: Int[Array, ""] | int = 0,
):
    r"""One hybrid EnVar analysis (steps 1-3 of the module docstring), before the
    filter's inflation and rotation.

    **Arguments:** `method`; `key` (the filter's); `forecast` the forecast ensemble
    `(N, *state)`; `y` `(p,)` the flattened observations; `weight` `(p,)` $R^{-1}$
    on the observed entries and 0 elsewhere; `operator` $h$ (`None`: the state
    itself); `time` the row index passed to a per-time operator.

    **Returns:** `(ensemble, filter_mean, solution)`: the recentred analysis
    ensemble `(N, *state)`, the filter's mean and the variational `Solution` (in
    $x$; when it failed, the ensemble keeps the filter's mean).
    """
    n_members, *state = forecast.shape
    state_shape = tuple(state)
    e = flat(forecast)
    if operator is None:
        observed = e
    else:
        hx = jax.vmap(lambda x: operator(x, time))(forecast)
        observed = jnp.reshape(hx, (n_members, -1)).astype(e.dtype)
    transform = method.filter.transform(
        key, observed, y, weight, state_shape=state_shape
    )
    e_filter = transform(e)
    filter_mean = jnp.mean(e_filter, axis=0)
    term = ObservationTerm(y, weight, state_shape, operator, time)
    x_b = jnp.mean(forecast, axis=0)
    problem = ControlTransform(term, x_b, method.covariance(forecast))
    sol = var_solve(
        problem, method.solver, problem.initial_control(),
        max_steps=method.max_steps, throw=False,
    )  # fmt: skip
    sol = problem.map_solution(sol)
    x_var = jnp.ravel(sol.x).astype(e.dtype)
    ok = (sol.result == RESULTS.successful) & all_finite(x_var)
    centre = jnp.where(ok, x_var, filter_mean)
    e_a = e_filter - filter_mean + centre
    out = jnp.reshape(e_a, forecast.shape)
    return out, jnp.reshape(filter_mean, state_shape), sol


def assimilate_envar(
    method: HybridEnVar,
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
) -> EnVarResult:
    r"""Cycle hybrid EnVar over a whole observation sequence, in one compiled
    `lax.scan` (as `jaxda.ensemble.assimilate`, with the same arguments).

    For each time $t$: forecast the members (not at $t = 0$); where `obs.mask[t]`
    has an entry, the hybrid EnVar analysis (`analyse`: the filter, the variational
    solve with $B$ from the forecast ensemble, the recentring), then the filter's
    inflation and rotation. A non-finite ensemble keeps the last finite one; a
    collapsed ensemble or a failed variational solve is reported in the step's
    result (`RESULTS.nonfinite`, `collapsed`, the solver's item).

    **Arguments:** as `jaxda.ensemble.assimilate`, with `method` a `HybridEnVar`
    whose `static` (and `localisation`) covariances live on the state shape; the
    `operator` (default: the state through the mask) is used by the filter and by
    the variational analysis alike. The LETKF filter takes `None` or an
    `IdentityOperator` only.

    **Returns:** an `EnVarResult`.
    """
    if not isinstance(method, HybridEnVar):
        raise TypeError(
            f"`method` must be a jaxda.ensemble.HybridEnVar; got "
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
    if tuple(method.static.field_shape) != state_shape:
        raise ValueError(
            f"`method.static.field_shape` must be the model's state shape "
            f"{state_shape}; got {tuple(method.static.field_shape)}."
        )
    ensemble0 = _check_ensemble(ensemble0, state_shape)
    if operator is None:
        obs_shape = state_shape
        Observations.check(obs, obs_shape, name="obs")
    else:
        check_operator(operator, state_shape)
        check_operator_observations(obs, operator)
        obs_shape = tuple(operator.obs_shape)
        if isinstance(method.filter, LETKF) and not isinstance(
            operator, IdentityOperator
        ):
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
    res = _assimilate_envar(
        method, flow, obs, ensemble0, key, jnp.asarray(obs_var, dtype),
        jnp.asarray(t0, dtype), save_members, min_spread, operator,
    )  # fmt: skip
    return raise_if_failed(res, res.result, throw)


@eqx.filter_jit
def _assimilate_envar(
    method, flow, obs, ensemble0, key, obs_var, t0, save_members, min_spread,
    operator,
) -> EnVarResult:  # fmt: skip
    """The cycling loop, compiled once per configuration (no argument checks)."""
    dtype = ensemble0.dtype
    n_times = obs.values.shape[0]
    values = jnp.reshape(obs.values.astype(dtype), (n_times, -1))
    mask = jnp.reshape(obs.mask, (n_times, -1))
    var = jnp.reshape(jnp.broadcast_to(obs_var, obs.values.shape[1:]), (-1,))
    valid = (
        all_positive(var)
        & all_finite(ensemble0, values, method.inflation)
        & (method.inflation >= 1)
        & (method.weight >= 0)
        & (method.weight <= 1)
    )
    dt = jnp.asarray(flow.dt, dtype)

    def forecast(e, time):
        return jax.vmap(flow, in_axes=(0, None))(e, time).astype(dtype)

    def analysed(key, k, y, weight, e):
        key_a, key_r = jax.random.split(key)
        e_a, filter_mean, sol = analyse(
            method, key_a, e, y, weight, operator=operator, time=k
        )
        e_a = _post_process(method, key_r, flat(e_a))
        return (
            jnp.reshape(e_a, e.shape),
            filter_mean.astype(dtype),
            sol.result,
            jnp.asarray(sol.n_steps).astype(jnp.int32),
        )

    def skipped(key, k, y, weight, e):
        mean = jnp.mean(e, axis=0)
        return e, mean, RESULTS.successful, jnp.asarray(0, jnp.int32)

    def step(e, inputs):
        k, key, y, m = inputs
        e_f = jax.lax.cond(
            k == 0, lambda e: e, lambda e: forecast(e, t0 + dt * (k - 1)), e
        )
        weight = jnp.where(m, 1.0 / var, 0.0).astype(dtype)
        observed = jnp.any(m)
        e_a, filter_mean, var_result, var_steps = jax.lax.cond(
            observed, analysed, skipped, key, k, y, weight, e_f
        )
        finite = all_finite(e_a)
        e_a = jnp.where(finite, e_a, e)
        mean = jnp.mean(e_a, axis=0)
        std = ensemble_std(e_a)
        floor = (
            jnp.sqrt(jnp.finfo(dtype).eps) * (1 + _rms(jnp.ravel(mean), 1))
            if min_spread is None
            else min_spread
        )
        collapsed = _rms(jnp.ravel(std), 1) <= floor
        var_failed = var_result != RESULTS.successful
        result = first_failure(
            (~valid, RESULTS.invalid_input),
            (~finite, RESULTS.nonfinite),
            (var_failed, var_result),
            (collapsed, COLLAPSED),
        )
        out = {
            "mean": mean,
            "std": std,
            "observed": observed,
            "result": result,
            "var_result": var_result,
            "var_steps": var_steps,
            "filter_mean": filter_mean,
        }
        if save_members:
            out["members"] = e_a
        return e_a, out

    keys = jax.random.split(key, n_times)
    inputs = (jnp.arange(n_times), keys, values, mask)
    e_last, out = jax.lax.scan(step, ensemble0, inputs)
    ensemble = EnsembleResult(
        analysis=out["mean"],
        std=out["std"],
        analysed=out["observed"],
        members=out["members"] if save_members else None,
        smoothed=None,
        smoothed_std=None,
        final_ensemble=e_last,
        step_result=out["result"],
        result=_first_failure(out["result"]),
    )
    return EnVarResult(
        ensemble=ensemble,
        var_result=out["var_result"],
        var_steps=out["var_steps"],
        filter_analysis=out["filter_mean"],
    )
