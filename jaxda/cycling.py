r"""One driver for cycled data assimilation: ensemble filters and smoothers, the iEnKS
and sliding-window 4DVar behind the same call and the same output.

`assimilate(method, flow, obs, first_guess, obs_var=..., key=...)` runs `method`
over an observation sequence `obs` (`(T, *state)`, one row per model step, row 0 at
the time of `first_guess`) and returns a `CycledAnalysis`: the analysis mean at the
method's analysis times (`steps`, rows of `obs`), the ensemble standard deviation
and members where the method has an ensemble, and one `result`. A benchmark swaps
methods in one line:

```python
for method in (ETKF(inflation=1.02), IEnKS(lag=2, shift=1), Cycled4DVar(...)):
    out = jaxda.cycling.assimilate(method, flow, obs, ensemble0, obs_var=1.0, key=key)
    rmse, spread = out.score(truth, burn_in=100)
```

What each `method` runs, its analysis times (`steps`) and its `first_guess`:

- `ensemble.ETKF`, `EnKF`, `EnKFN`, `LETKF`, `EnKS`: `ensemble.assimilate`; every
  row (`analysed` marks the rows with an analysis); an ensemble `(N, *state)`.
- `ensemble.HybridEnVar`: `ensemble.assimilate_envar` (the filter, a variational
  analysis of the mean with the hybrid B, recentring); as the ensemble filters.
- `ensemble.IEnKS`: `ensemble.ienks_cycle`; the cycle ends; an ensemble.
- `Cycled4DVar`: `var.cycle`; rows `0 .. L - S + K S - 1` (the newest `S` states of
  each window); a state, or an ensemble (its mean is the first background).

In every case `analysed` is `True` at the rows of `steps` that carry an observation
(for the iEnKS: every cycle end), and `score` averages over them: the time mean of
the spatial RMSE of the analysis, [DAPPER]'s `rmse.a`, and of the spread.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Bool, Float, Int, Key
from ._results import RESULTS
from ._validation import check_int, check_positive
from .ensemble import (
    AbstractEnsembleAnalysis,
    EnKS,
    HybridEnVar,
    IEnKS,
    assimilate as _filter,
    assimilate_envar as _envar,
    ienks_cycle,
)
from .models import AbstractFlowMap
from .obs import Observations
from .var import AbstractSolver, cycle as _var_cycle


class Cycled4DVar(eqx.Module):
    r"""Settings of sliding-window 4DVar (`jaxda.var.cycle`) for `assimilate`.

    **Fields:** `window` $L \ge 2$ and `shift` $1 \le S \le L$ in model steps;
    `solver` (e.g. `var.DenseGaussNewton()` for strong-constraint windows,
    `var.GaussNewton()` for weak ones); `background_var` $\sigma_b^2 > 0$ (scalar or
    state-shaped); `model_var` $Q$ (`None`: strong-constraint windows); `max_steps`
    the iteration cap per window.
    """

    window: int = eqx.field(static=True)
    shift: int = eqx.field(static=True)
    solver: AbstractSolver
    background_var: Float[Array, "..."] | float
    model_var: Float[Array, "..."] | float | None = None
    max_steps: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        check_int("window", self.window, minimum=2)
        check_int("shift", self.shift, minimum=1)
        if self.shift > self.window:
            raise ValueError(
                f"`shift` must be <= `window` (= {self.window}); got {self.shift}."
            )
        if not isinstance(self.solver, AbstractSolver):
            raise TypeError(
                "`solver` must be a jaxda.var solver; got "
                f"{type(self.solver).__name__}."
            )
        check_positive("background_var", self.background_var)
        if self.model_var is not None:
            check_positive("model_var", self.model_var)
        check_int("max_steps", self.max_steps, minimum=0)


class CycledAnalysis(eqx.Module):
    """The output of `assimilate`, the same for every method.

    **Fields:**

    - `analysis` `(A, *state)`: the analysis mean at the analysis times.
    - `steps` `(A,)`: the row of `obs` (model step) of each analysis time.
    - `analysed` `(A,)`: whether that row carries an observation (an analysis, not
      a forecast).
    - `std` `(A, *state)`: the ensemble standard deviation (`None` for 4DVar).
    - `members` `(A, N, *state)`: the ensembles, with `save_members=True` (ensemble
      methods), else `None`.
    - `result`: the method's overall `jaxda.RESULTS` item.
    - `native`: the method's own result (`ensemble.EnsembleResult`, `EnVarResult`,
      `ensemble.IEnKSResult` or `var.CycleResult`), for what only it has.
    """

    analysis: Float[Array, "A *state"]
    steps: Int[Array, " A"]
    analysed: Bool[Array, " A"]
    std: Float[Array, "A *state"] | None
    members: Float[Array, "A N *state"] | None
    result: RESULTS
    native: eqx.Module

    @property
    def spread(self) -> Float[Array, " A"] | None:
        """The spread at each analysis time, the root-mean-square of `std` over the
        state ([DAPPER]'s spread); `None` without an ensemble."""
        if self.std is None:
            return None
        axes = tuple(range(1, self.std.ndim))
        return jnp.sqrt(jnp.mean(self.std**2, axis=axes))

    def score(
        self, truth: Float[Array, "T *state"], burn_in: int = 0
    ) -> tuple[Float[Array, ""], Float[Array, ""] | None]:
        r"""Time-averaged analysis RMSE and spread over the analysed times at or
        after model step `burn_in`.

        $\overline{\mathrm{RMSE}} = \frac1{|A'|}\sum_{a \in A'}
        \sqrt{\tfrac1n \|\bar x_a - x^\star_{s_a}\|^2}$ with $A'$ the analysed times
        with $s_a \ge$ `burn_in` and `truth` the true trajectory on the rows of `obs`.
        The spread (`None` without an ensemble) is averaged the same way.
        """
        truth = jnp.asarray(truth)
        state_shape = self.analysis.shape[1:]
        if truth.ndim < 1 or truth.shape[1:] != state_shape:
            raise ValueError(
                f"`truth` must have shape (T, {', '.join(map(str, state_shape))}); "
                f"got {truth.shape}."
            )
        burn_in = check_int("burn_in", burn_in, minimum=0)
        if truth.shape[0] <= int(np.max(np.asarray(self.steps))):
            raise ValueError(
                f"`truth` must cover the analysis times (rows up to "
                f"{int(np.max(np.asarray(self.steps)))}); got {truth.shape[0]} rows."
            )
        axes = tuple(range(1, self.analysis.ndim))
        error = jnp.sqrt(jnp.mean((self.analysis - truth[self.steps]) ** 2, axis=axes))
        keep = self.analysed & (self.steps >= burn_in)
        count = jnp.sum(keep)
        rmse = jnp.sum(jnp.where(keep, error, 0.0)) / count
        spread = self.spread
        if spread is not None:
            spread = jnp.sum(jnp.where(keep, spread, 0.0)) / count
        return rmse, spread


def _ensemble(name: str, value, state_shape) -> Array:
    value = jnp.asarray(value)
    if value.ndim != len(state_shape) + 1 or value.shape[1:] != state_shape:
        raise ValueError(
            f"`{name}` must be an ensemble of shape (N, "
            f"{', '.join(map(str, state_shape))}) for this method; got {value.shape}."
        )
    return value


def assimilate(
    method: AbstractEnsembleAnalysis | EnKS | HybridEnVar | IEnKS | Cycled4DVar,
    flow: AbstractFlowMap,
    obs: Observations,
    first_guess: Float[Array, "N *state"] | Float[Array, "*state"],
    *,
    obs_var,
    key: Key | None = None,
    steps_per_cycle: int | None = None,
    save_members: bool = False,
    throw: bool = True,
    **options,
) -> CycledAnalysis:
    r"""Cycle `method` over the observation sequence `obs` (see the module
    docstring for what each method runs and returns).

    **Arguments:**

    - `method`: an ensemble analysis (`ensemble.ETKF()`, `EnKF()`, `EnKFN()`,
      `LETKF(radius)`), `ensemble.EnKS(...)`, `ensemble.HybridEnVar(...)`,
      `ensemble.IEnKS(...)` or `Cycled4DVar(...)`.
    - `flow`: the one-step flow map $\Phi$.
    - `obs`: `Observations` `(T, *state)`, one row per model step, row 0 at the time
      of `first_guess`.
    - `first_guess`: the initial ensemble `(N, *state)` (ensemble methods), or the
      background state `(*state)` of the first window (`Cycled4DVar`; an ensemble is
      replaced by its mean).
    - `obs_var`: the observation-error variances $R$ (scalar or state-shaped).
    - `key`: a `jax.random` key (stochastic EnKF, rotations); `None` for 4DVar.
    - `steps_per_cycle`: model steps between the iEnKS's cycles (default: the
      spacing of the observed rows of `obs`, which must then be regular).
    - `save_members`: also return the ensembles (ensemble methods).
    - `throw`: raise on failure (`equinox.EquinoxRuntimeError`); with `throw=False`
      inspect `result`.
    - `options`: passed on to the method's own driver (`min_spread`, `operator`, `t0`
      for `ensemble.assimilate` and `ensemble.assimilate_envar`; `min_spread` for
      the iEnKS).

    **Returns:** a `CycledAnalysis`.
    """
    if not isinstance(flow, AbstractFlowMap):
        raise TypeError(
            f"`flow` must be a jaxda.models.AbstractFlowMap; got {type(flow).__name__}."
        )
    Observations.check(obs, name="obs")
    state_shape = tuple(flow.model.state_shape)
    n_rows = obs.values.shape[0]
    observed = jnp.any(obs.mask.reshape(n_rows, -1), axis=1)
    if isinstance(method, AbstractEnsembleAnalysis | EnKS | HybridEnVar):
        ensemble0 = _ensemble("first_guess", first_guess, state_shape)
        if key is None:
            raise TypeError("`key` must be a jax.random key for ensemble methods.")
        driver = _envar if isinstance(method, HybridEnVar) else _filter
        res = driver(
            method, flow, obs, ensemble0, key=key, obs_var=obs_var,
            save_members=save_members, throw=throw, **options,
        )  # fmt: skip
        e = res.ensemble if isinstance(method, HybridEnVar) else res
        return CycledAnalysis(
            e.analysis, jnp.arange(n_rows), e.analysed, e.std, e.members, res.result,
            res,
        )  # fmt: skip
    if isinstance(method, IEnKS):
        ensemble0 = _ensemble("first_guess", first_guess, state_shape)
        if steps_per_cycle is None:
            steps_per_cycle = _regular_spacing(observed)
        res = ienks_cycle(
            method, flow, obs, ensemble0, obs_var=obs_var,
            steps_per_cycle=steps_per_cycle, key=key, save_members=save_members,
            throw=throw, **options,
        )  # fmt: skip
        analysed = jnp.ones(res.analysis_steps.shape, bool)
        return CycledAnalysis(
            res.analysis, res.analysis_steps, analysed, res.std, res.members,
            res.result, res,
        )  # fmt: skip
    if isinstance(method, Cycled4DVar):
        if options:
            raise TypeError(
                f"`Cycled4DVar` takes no further options; got {sorted(options)}."
            )
        x_b = jnp.asarray(first_guess)
        if x_b.ndim == len(state_shape) + 1:
            x_b = jnp.mean(x_b, axis=0)
        res = _var_cycle(
            flow, obs, obs_var=obs_var, window=method.window, shift=method.shift,
            x_b=x_b, background_var=method.background_var, solver=method.solver,
            model_var=method.model_var, max_steps=method.max_steps, throw=throw,
        )  # fmt: skip
        steps = jnp.arange(res.analysis.shape[0])
        return CycledAnalysis(
            res.analysis, steps, observed[steps], None, None, res.result, res
        )
    raise TypeError(
        "`method` must be a jaxda.ensemble analysis (ETKF(), EnKF(), EnKFN(), "
        "LETKF(radius)), EnKS(...), HybridEnVar(...), IEnKS(...) or a "
        "jaxda.cycling.Cycled4DVar(...); "
        f"got {type(method).__name__}."
    )


def _regular_spacing(observed) -> int:
    rows = np.flatnonzero(np.asarray(observed))
    rows = rows[rows > 0]
    if rows.size == 0:
        raise ValueError("`obs` has no observation after row 0 to cycle on.")
    gaps = np.diff(np.concatenate([[0], rows]))
    if np.any(gaps != gaps[0]):
        raise ValueError(
            "the observed rows of `obs` are not regularly spaced: pass "
            "`steps_per_cycle` for the iEnKS."
        )
    return int(gaps[0])
