r"""The iterative ensemble Kalman smoother (iEnKS), transform variant [BS14].

**Windows.** The observation sequence has one row per model step, row 0 at the time
of the initial ensemble (as `jaxda.ensemble.assimilate`). Time is cut into *cycles*
of `steps_per_cycle` model steps; the analysis times are the cycle ends. A
data-assimilation window covers $L$ = `lag` cycles, from its start $t_0$ (where the
ensemble lives) to $t_L$, and slides by $S$ = `shift` cycles: window $k$ starts at
model step $k S$ `steps_per_cycle`. It assimilates the observations of its last $S$
cycles, those no earlier window assimilated ("single data assimilation" [BS14,
sec. 3]); the first window assimilates all of its rows, its start included.
Observations may lie at any model step (asynchronous observations): each is compared
with the forecast at its own step.

**Cost in ensemble space.** With the prior ensemble $E_0$ at $t_0$ ($N$ members,
rows), its mean $\bar x_0$ and anomalies $X_0 = E_0 - \mathbf 1 \bar x_0^\top$, a state
is $x_0(w) = \bar x_0 + X_0^\top w$, $w \in \mathbb R^N$, and the iEnKS minimises

$$J(w) = \tfrac{\zeta}{2} \|w\|^2 + \tfrac12 \sum_{j \in \text{window}}
\big\| y_j - H_j \mathcal M_{0 \to j}(x_0(w)) \big\|^2_{R^{-1}},
\qquad \zeta = N - 1,$$

by Gauss-Newton [BS14, Algorithm 1]. The sensitivities of the observed forecast to
$w$ are estimated from the ensemble $E = \mathbf 1 \bar x_0^\top + (\mathbf 1 w^\top +
T) X_0$ forecast through the window (the "transform" variant): with $Y$ the
$R^{-1/2}$-weighted observation anomalies of that ensemble (rows; zero where nothing
is observed), $Y_0 = T^{-1} Y$ and $\delta y$ the weighted innovation of its mean,

$$\mathcal H = \zeta I + Y_0 Y_0^\top, \qquad
w \leftarrow w + \mathcal H^{-1} (Y_0\, \delta y - \zeta w), \qquad
T = \sqrt{N-1}\, \mathcal H^{-1/2}.$$

The $N \times N$ matrix functions come from one symmetric eigendecomposition of
$Y_0 Y_0^\top$ per iteration. Iterations stop when $\|\Delta w\|^2 <$ `tol` $N$
([DAPPER]'s `wtol`) or after `max_iterations`.

**After the iterations.** The smoothed ensemble at $t_0$ is
$\mathbf 1 \bar x_0^\top + (\mathbf 1 w^\top + T) X_0$; it is inflated
(multiplicatively, about its mean), optionally rotated by a random mean-preserving
orthogonal matrix, and forecast by $S$ cycles: the prior of the next window. The
analysis at each cycle end $t_c$ of the window is the last iterate's forecast plus
the linearised final increment, $E_c + (\mathbf 1 \Delta w^\top + T - T_{\text{old}})
X^f_c$, with $X^f_c$ the first iterate's forecast anomalies ([DAPPER]'s convention:
no extra model run, and exactly the ETKF analysis after one iteration).

**Options.**

- `mda=True`: the iterations are annealing steps instead of Gauss-Newton ([DAPPER]'s
  `MDA`; the ensemble smoother with multiple data assimilation [ER13]): each of the
  `max_iterations` steps is a square-root ETKF update of the current ensemble with
  $R$ multiplied by the number of steps; on a linear-Gaussian model they compose to
  the exact posterior.
- `finite_size=x_N`: the finite-size iEnKS-N [B11, BRH15]: $\zeta$ becomes
  $\zeta(w) = (N-1)\, c_L / (e_N + \|w\|^2)$, the gradient of the EnKF-N prior term
  $\tfrac{N-1}{2} c_L \log(e_N + \|w\|^2)$, with [DAPPER]'s mode-corrected
  hyperprior coefficients $(e_N, c_L)$ multiplied by $x_N$: an adaptive inflation.

Divergence is reported in the result, never as silent NaN: a window whose forecast or
analysis is not finite gets `RESULTS.nonfinite` (its analysis and the next prior
become the window's prior ensemble: persistence), one whose smoothed ensemble
collapsed (spread below `min_spread`) `RESULTS.collapsed`, as in
`jaxda.ensemble.assimilate`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Int, Key
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import check_int, check_key, check_positive, is_concrete
from ..models import AbstractFlowMap
from ..obs import Observations
from ._ensemble import mean_preserving_rotation


# The item of a collapsed ensemble, as `jaxda.ensemble.assimilate` reports it.
COLLAPSED = RESULTS.collapsed


class IEnKS(eqx.Module):
    r"""Settings of the iterative ensemble Kalman smoother [BS14] (the mathematics is
    in the module docstring).

    **Fields:**

    - `lag` $L \ge 1$: cycles per window (`lag=1`: the iterative EnKF).
    - `shift` $1 \le S \le L$: cycles by which the window slides.
    - `max_iterations` $\ge 1$: Gauss-Newton iterations per window (annealing steps
      with `mda=True`).
    - `tol` $\ge 0$: stop when $\|\Delta w\|^2 <$ `tol` $N$; a window that does not
      meet it in `max_iterations` is reported `RESULTS.max_steps_reached`. `tol=0`
      runs exactly `max_iterations` iterations and reports no such failure
      ([DAPPER]'s default; with `lag=1`, `max_iterations=1, tol=0` gives the ETKF
      analysis, and on a linear model the ETKF itself).
      Ignored with `mda=True`. Default `1e-5` ([DAPPER]'s recommended value).
    - `inflation` $\lambda \ge 1$: multiplicative inflation of the smoothed anomalies
      at the window start, before the forecast to the next window (traced: a sweep
      over it reuses the compilation).
    - `rotate`: apply a random mean-preserving orthogonal rotation to the smoothed
      anomalies (needs a `key`).
    - `mda`: annealing steps [ER13] instead of Gauss-Newton.
    - `finite_size`: `None`, or $x_N > 0$ for the finite-size iEnKS-N ([B11],
      [BRH15]; $x_N = 1$: Jeffreys hyperprior, larger: more confident).
    """

    lag: int = eqx.field(static=True, default=1)
    shift: int = eqx.field(static=True, default=1)
    max_iterations: int = eqx.field(static=True, default=10)
    tol: float = eqx.field(static=True, default=1e-5)
    inflation: Float[Array, ""] = eqx.field(default=1.0, converter=jnp.asarray)
    rotate: bool = eqx.field(static=True, default=False)
    mda: bool = eqx.field(static=True, default=False)
    finite_size: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_int("lag", self.lag, minimum=1)
        check_int("shift", self.shift, minimum=1)
        if self.shift > self.lag:
            raise ValueError(
                f"`shift` must be between 1 and `lag` (= {self.lag}); got {self.shift}."
            )
        check_int("max_iterations", self.max_iterations, minimum=1)
        _check_number("tol", self.tol)
        check_positive("tol", self.tol, allow_zero=True)
        if is_concrete(self.inflation):
            value = np.asarray(self.inflation)
            if value.shape != () or not np.isfinite(value) or value < 1:
                raise ValueError(
                    "`inflation` must be a finite float >= 1 (1: no inflation); got "
                    f"{value}."
                )
        for name in ("rotate", "mda"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool; got {type(value).__name__}.")
        if self.finite_size is not None:
            _check_number("finite_size", self.finite_size)
            check_positive("finite_size", self.finite_size)


def _check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(
            f"`{name}` must be a Python number (a static setting); got "
            f"{type(value).__name__} ({value!r})."
        )


class IEnKSResult(eqx.Module):
    """The output of `ienks_cycle`.

    The analysis times are the cycle ends, model steps `steps_per_cycle * (1, 2, ...)`
    (`analysis_steps`). The first window gives its first $L - S$ cycle ends, each
    window the last $S$ cycle ends of its window: the estimate at the newest times of
    each window (at the window's end the filtering analysis, [DAPPER]'s `rmse.a`).

    **Fields:**

    - `analysis` `(A, *state)`, `std` `(A, *state)`: the mean and standard deviation
      (divisor $N - 1$) of the analysis ensemble at the `A = L - S + K S` analysis
      times.
    - `members` `(A, N, *state)`: the analysis ensembles (`save_members=True`), else
      `None`.
    - `analysis_steps` `(A,)`: the model step (row of `obs`) of each analysis time.
    - `smoothed` `(K, *state)`: the mean of each window's smoothed ensemble at its
      start (model step `k S steps_per_cycle`), given the observations up to the
      window's end.
    - `final_ensemble` `(N, *state)`: the prior ensemble of the window after the last
      one (to continue cycling).
    - `n_iterations` `(K,)`: the iterations of each window.
    - `window_result` `(K,)`: each window's `jaxda.RESULTS` item: `successful`,
      `nonfinite` (divergence), `collapsed` (collapsed ensemble),
      `max_steps_reached` (`tol > 0` not met) or `invalid_input` (a value check
      failed under `jit`).
    - `result`: the first failing window's item, `successful` when none failed.

    `spread` `(A,)` is the root-mean-square of `std` over the state (DAPPER's
    spread); `converged` `(K,)` is `window_result == RESULTS.successful`.
    """

    analysis: Float[Array, "A *state"]
    std: Float[Array, "A *state"]
    members: Float[Array, "A N *state"] | None
    analysis_steps: Int[Array, " A"]
    smoothed: Float[Array, "K *state"]
    final_ensemble: Float[Array, "N *state"]
    n_iterations: Int[Array, " K"]
    window_result: RESULTS
    result: RESULTS

    @property
    def spread(self) -> Float[Array, " A"]:
        """The spread at each analysis time, $\\sqrt{\\text{mean of the variances}}$."""
        axes = tuple(range(self.analysis_steps.ndim, self.std.ndim))
        return jnp.sqrt(jnp.mean(self.std**2, axis=axes))

    @property
    def converged(self) -> Bool[Array, " K"]:
        """Per window: whether it succeeded."""
        return self.window_result == RESULTS.successful


def ienks_cycle(
    method: IEnKS,
    flow: AbstractFlowMap,
    obs: Observations,
    ensemble0: Float[Array, "N *state"],
    *,
    obs_var,
    steps_per_cycle: int,
    key: Key | None = None,
    save_members: bool = False,
    min_spread: float | None = None,
    throw: bool = True,
) -> IEnKSResult:
    r"""Run the iEnKS over a long observation sequence, window by window, in one
    compiled `lax.scan` (the forecast `vmap`ped over members).

    **Arguments:**

    - `method`: an `IEnKS` (lag, shift, iterations, inflation, ...).
    - `flow`: the one-step flow map $\Phi$ (`jaxda.models.flow_map`).
    - `obs`: the `Observations` of the sequence, `(T, *state)`, one row per model
      step, row 0 at the time of `ensemble0`. Needs $T \ge 1 + L$ `steps_per_cycle`;
      rows after the last window are not used.
    - `ensemble0`: the initial (prior) ensemble `(N, *state)`, $N \ge 2$.
    - `obs_var`: the observation-error variances $R$ (diagonal), a scalar or
      state-shaped, $> 0$.
    - `steps_per_cycle` $\ge 1$: model steps per cycle.
    - `key`: a `jax.random` key, needed when `method.rotate`.
    - `save_members`: also return the analysis ensembles.
    - `min_spread`: the spread of the smoothed ensemble below which it counts as
      collapsed; default `sqrt(eps) * (1 + rms(mean))` in the ensemble's dtype.
    - `throw`: raise an `equinox.EquinoxRuntimeError` with the first failing
      window's message (eagerly and under `jit`); with `throw=False` inspect
      `result` / `window_result`.

    **Returns:** an `IEnKSResult`.
    """
    if not isinstance(method, IEnKS):
        raise TypeError(
            f"`method` must be a jaxda IEnKS(...); got {type(method).__name__}."
        )
    if not isinstance(flow, AbstractFlowMap):
        raise TypeError(
            f"`flow` must be a jaxda.models.AbstractFlowMap; got {type(flow).__name__}."
        )
    for name, value in (("save_members", save_members), ("throw", throw)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool; got {type(value).__name__}.")
    steps_per_cycle = check_int("steps_per_cycle", steps_per_cycle, minimum=1)
    state_shape = tuple(flow.model.state_shape)
    flow.model.check_state("ensemble0", ensemble0, leading=1)
    ensemble0 = jnp.asarray(ensemble0)
    if not jnp.issubdtype(ensemble0.dtype, jnp.floating):
        raise TypeError(
            f"`ensemble0` must be a floating array; got dtype {ensemble0.dtype}."
        )
    if ensemble0.shape[0] < 2:
        raise ValueError(
            "`ensemble0` must have at least 2 members (shape (N, *state) with N >= 2); "
            f"got N = {ensemble0.shape[0]}."
        )
    Observations.check(obs, state_shape)
    n_needed = 1 + method.lag * steps_per_cycle
    if obs.shape[0] < n_needed:
        raise ValueError(
            f"`obs` must have at least 1 + lag * steps_per_cycle = {n_needed} time "
            f"steps (row 0 at the initial ensemble's time); got {obs.shape[0]}."
        )
    if jnp.shape(obs_var) not in ((), state_shape):
        raise ValueError(
            f"`obs_var` must be a scalar or have the state shape {state_shape}; got "
            f"shape {tuple(jnp.shape(obs_var))}."
        )
    check_positive("obs_var", obs_var)
    if min_spread is not None:
        check_positive("min_spread", min_spread, allow_zero=True)
    if method.rotate:
        check_key("key", key)
    else:
        key = jax.random.key(0)  # not used
    res = _ienks_cycle(
        method, flow, obs, ensemble0, obs_var, key, steps_per_cycle, save_members,
        min_spread,
    )  # fmt: skip
    return raise_if_failed(res, res.result, throw)


def _finite_size_zeta(eigenvalues, w, xn):
    """[DAPPER]'s EnKF-N $\\zeta(w) = (N-1) c_L / (e_N + \\|w\\|^2)$ with the
    mode-corrected hyperprior coefficients [BRH15, eq. 36], multiplied by `xn`."""
    n = w.shape[0]
    n1 = n - 1
    e_n = (n + 1) / n
    c_l = n / n1
    prior_mode = e_n / c_l
    # The prior's weight, ~ 1 / (1 + H B H^T / R), from the Hessian's diagonal.
    prior_weight = jnp.mean(1.0 / (eigenvalues + n1)) * n1
    correction = jnp.sqrt(prior_mode**prior_weight)
    e_n = e_n / correction * xn
    c_l = c_l * correction * xn
    return n1 * c_l / (e_n + w @ w)


def _forecast(flow, ensemble, step0, n_steps: int, state_shape):
    """Forecast a flat ensemble `(N, n)` from model step `step0` by `n_steps` steps:
    the states `(n_steps, N, n)` at steps `step0 + 1, ..., step0 + n_steps`."""
    dtype = ensemble.dtype
    dt = jnp.asarray(flow.dt, dtype)

    def one(x, t):
        return flow(x.reshape(state_shape), t).reshape(-1)

    step = jax.vmap(one, in_axes=(0, None))

    def body(x, j):
        x = step(x, dt * (step0 + j).astype(dtype))
        return x, x

    _, states = jax.lax.scan(body, ensemble, jnp.arange(n_steps))
    return states


@eqx.filter_jit
def _ienks_cycle(
    method, flow, obs, ensemble0, obs_var, key, dko, save_members, min_spread
) -> IEnKSResult:
    """The cycling loop, compiled once per configuration (no argument checks)."""
    lag, shift = method.lag, method.shift
    state_shape = tuple(flow.model.state_shape)
    dtype = ensemble0.dtype
    n_members = ensemble0.shape[0]
    n1 = n_members - 1
    flat0 = ensemble0.reshape(n_members, -1)
    n_state = flat0.shape[1]
    n_cycles = (obs.shape[0] - 1) // dko
    n_windows = (n_cycles - lag) // shift + 1
    steps = lag * dko  # model steps per window
    values = obs.values.astype(dtype).reshape(obs.shape[0], -1)
    mask = obs.mask.reshape(obs.shape[0], -1)
    obs_var = jnp.broadcast_to(jnp.asarray(obs_var, dtype).reshape(-1), (n_state,))
    inflation = method.inflation.astype(dtype)
    valid = all_finite(flat0, jnp.where(mask, values, 0.0), inflation)
    valid = valid & jnp.all(obs_var > 0) & (inflation >= 1)
    eye = jnp.eye(n_members, dtype=dtype)
    sqrt_n1 = jnp.sqrt(jnp.asarray(n1, dtype))
    # Rows 0..steps of a window (its start, then its steps) that hold observations
    # no earlier window assimilated: those of its last S cycles (all in window 0).
    row_cycle = (jnp.arange(steps + 1) - 1) // dko
    newest = (row_cycle >= lag - shift) & (jnp.arange(steps + 1) > 0)

    def window(k, prior, key_k):
        step0 = k * shift * dko
        rows = jax.lax.dynamic_slice_in_dim(values, step0, steps + 1)
        rows_mask = jax.lax.dynamic_slice_in_dim(mask, step0, steps + 1)
        new = newest | (k == 0)
        weight = jnp.where(rows_mask & new[:, None], obs_var**-0.5, 0.0)
        y = (rows * weight).reshape(-1)  # (P,), P = (steps + 1) n
        x0 = jnp.mean(prior, axis=0)
        X0 = prior - x0

        def body(carry):
            i, w, T, T_inv, _, _, _, Xf, _ = carry
            members = x0 + (w[None, :] + T) @ X0
            states = _forecast(flow, members, step0, steps, state_shape)
            ends = states[dko - 1 :: dko]  # (L, N, n), the cycle ends
            Xf = jnp.where(i == 0, ends - jnp.mean(ends, axis=1, keepdims=True), Xf)
            states = jnp.concatenate([members[None], states], axis=0)
            observed = jnp.swapaxes(states * weight[:, None, :], 0, 1)
            observed = observed.reshape(n_members, -1)  # (N, P), R^{-1/2}-weighted
            y_mean = jnp.mean(observed, axis=0)
            Y = observed - y_mean
            dy = y - y_mean
            Y0 = T_inv @ Y
            eigenvalues, V = jnp.linalg.eigh(Y0 @ Y0.T)
            eigenvalues = jnp.maximum(eigenvalues, 0.0)
            if method.finite_size is None:
                zeta = jnp.asarray(n1, dtype)
            else:
                zeta = _finite_size_zeta(eigenvalues, w, method.finite_size)
            if method.mda:
                zeta = zeta * method.max_iterations

            def power(e):  # (zeta I + Y0 Y0^T)^(-e)
                return (V * (eigenvalues + zeta) ** (-e)) @ V.T

            if method.mda:
                # Annealing: an ETKF step with R x max_iterations on the current
                # ensemble (anomaly coefficients T), no de-conditioning.
                dw = (Y @ dy) @ power(1.0) @ T
                T_new = (power(0.5) * jnp.sqrt(zeta)) @ T
                T_inv_new = T_inv
                done = jnp.array(False)
            else:
                dw = (Y0 @ dy - zeta * w) @ power(1.0)  # the Gauss-Newton step
                T_new = power(0.5) * sqrt_n1
                T_inv_new = power(-0.5) / sqrt_n1
                done = jnp.array(method.tol > 0) & (dw @ dw < method.tol * n_members)
            done = done | ~jnp.all(jnp.isfinite(dw))
            return (i + 1, w + dw, T_new, T_inv_new, dw, T, ends, Xf, done)

        def cond(carry):
            return (carry[0] < method.max_iterations) & ~carry[-1]

        zeros_w = jnp.zeros(n_members, dtype)
        zeros_ends = jnp.zeros((lag, n_members, n_state), dtype)
        start, not_done = jnp.asarray(0), jnp.asarray(False)
        init = (
            start,
            zeros_w,
            eye,
            eye,
            zeros_w,
            eye,
            zeros_ends,
            zeros_ends,
            not_done,
        )
        n_it, w, T, _, dw, T_old, ends, Xf, done = jax.lax.while_loop(cond, body, init)
        analysis = ends + jnp.einsum("nm,lmx->lnx", dw[None, :] + T - T_old, Xf)
        smoothed = x0 + (w[None, :] + T) @ X0
        smoothed_mean = jnp.mean(smoothed, axis=0)
        anomalies = smoothed - smoothed_mean
        if method.rotate:
            anomalies = mean_preserving_rotation(key_k, n_members, dtype) @ anomalies
        posterior = smoothed_mean + inflation * anomalies
        next_prior = _forecast(flow, posterior, step0, shift * dko, state_shape)[-1]
        finite = all_finite(analysis, next_prior, smoothed_mean)
        # Divergence: persistence of the window's prior, reported in the result.
        analysis = jnp.where(finite, analysis, prior[None])
        next_prior = jnp.where(finite, next_prior, prior)
        smoothed_mean = jnp.where(finite, smoothed_mean, x0)
        rms = jnp.sqrt(jnp.mean(jnp.sum(anomalies**2, axis=0) / n1))
        floor = (
            jnp.sqrt(jnp.finfo(dtype).eps) * (1 + jnp.sqrt(jnp.mean(smoothed_mean**2)))
            if min_spread is None
            else jnp.asarray(min_spread, dtype)
        )
        converged = done | jnp.array(method.mda or method.tol == 0)
        result = first_failure(
            (~valid, RESULTS.invalid_input),
            (~finite, RESULTS.nonfinite),
            (finite & (rms <= floor), COLLAPSED),
            (~converged, RESULTS.max_steps_reached),
        )
        return next_prior, analysis, smoothed_mean, n_it, result

    def scan_body(prior, inputs):
        k, key_k = inputs
        next_prior, analysis, smoothed_mean, n_it, result = window(k, prior, key_k)
        mean = jnp.mean(analysis, axis=1)
        std = jnp.std(analysis, axis=1, ddof=1)
        out = (mean, std, analysis if save_members else None)
        return next_prior, (*out, smoothed_mean, n_it, result)

    keys = jax.random.split(key, n_windows)
    last, (mean, std, members, smoothed, n_it, window_result) = jax.lax.scan(
        scan_body, flat0, (jnp.arange(n_windows), keys)
    )

    def assemble(x):  # (K, L, ...) -> (L - S + K S, ...)
        head = x[0, : lag - shift]
        tails = x[:, lag - shift :]
        tails = tails.reshape((n_windows * shift, *tails.shape[2:]))
        return jnp.concatenate([head, tails], axis=0)

    n_analysis = lag - shift + n_windows * shift
    mean = assemble(mean).reshape(n_analysis, *state_shape)
    std = assemble(std).reshape(n_analysis, *state_shape)
    if save_members:
        members = assemble(members).reshape(n_analysis, n_members, *state_shape)
    failed = window_result != RESULTS.successful
    first = jnp.argmax(failed)
    picked = jax.tree_util.tree_map(lambda v: v[first], window_result)
    return IEnKSResult(
        analysis=mean,
        std=std,
        members=members,
        analysis_steps=dko * (1 + jnp.arange(n_analysis)),
        smoothed=smoothed.reshape(n_windows, *state_shape),
        final_ensemble=last.reshape(n_members, *state_shape),
        n_iterations=n_it,
        window_result=window_result,
        result=RESULTS.where(jnp.any(failed), picked, RESULTS.successful),
    )


__all__ = ["IEnKS", "IEnKSResult", "ienks_cycle"]
