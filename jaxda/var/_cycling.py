r"""Cycled (sliding-window) 4DVar over a long observation sequence.

Window $k$ covers the states $kS, \dots, kS + L - 1$ (length $L$ = `window`, shift $S$ =
`shift`). Its background is the forecast from the previous window's analysis,
$x_b^{(k)} = \Phi(x^{(k-1)}_{S-1})$ (the first window uses the given `x_b`), and its
first guess is the previous analysis shifted by $S$ and extended by a model forecast.
The windows run in one `lax.scan`.

A window whose solve fails keeps its best iterate (finite whenever its first guess
is). Where a forecast overflows, persistence replaces it: a weak-constraint first guess
whose cost is not finite becomes the background state at every time, a trajectory or
forecast that is not finite becomes its last finite starting state. So a failed
window never fills the analysis with NaN; the failure is reported in
`CycleResult.result` / `window_result` instead.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Float, Int
from .._results import RESULTS, raise_if_failed
from .._validation import check_int, check_positive
from ..models import AbstractFlowMap, rollout
from ._costs import Background, StrongConstraint4DVar, WeakConstraint4DVar
from ._solver import AbstractSolver


class CycleResult(eqx.Module):
    """Result of `cycle`.

    **Fields:**
    - `analysis` `(L - S + K S, *state)`: the analysis trajectory. Times `0 .. L-S-1`
      come from the first window; afterwards the last `S` states of each window $k$
      (times $kS + L - S, \\dots, kS + L - 1$): the estimate at the newest times of each
      window, as the filtering-type "analysis" of cycled DA benchmarks (DAPPER).
    - `cost`, `n_steps` `(K,)`: per-window solver results.
    - `window_result` `(K,)`: each window's `jaxda.RESULTS` item.
    - `result`: the overall item: the first failing window's, `successful` when every
      window succeeded.

    `converged` `(K,)` is `window_result == RESULTS.successful`.
    """

    analysis: Float[Array, " N *state"]
    cost: Float[Array, " K"]
    n_steps: Int[Array, " K"]
    window_result: RESULTS
    result: RESULTS

    @property
    def converged(self) -> Bool[Array, " K"]:
        """Per window: whether its solve succeeded."""
        return self.window_result == RESULTS.successful


def _first_failure(window_result: RESULTS) -> RESULTS:
    failed = window_result != RESULTS.successful
    first = jnp.argmax(failed, axis=-1)
    picked = jax.tree_util.tree_map(lambda v: v[first], window_result)
    return RESULTS.where(jnp.any(failed), picked, RESULTS.successful)


def _finite_rows(x, fallback):
    """`x` with its non-finite rows (leading axis) replaced by `fallback`."""
    axes = tuple(range(1, x.ndim))
    ok = jnp.all(jnp.isfinite(x), axis=axes).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(ok, x, fallback)


def _finite_or(x, fallback):
    return jnp.where(jnp.all(jnp.isfinite(x)), x, fallback)


def cycle(
    flow: AbstractFlowMap,
    obs,
    *,
    obs_var,
    window: int,
    shift: int,
    x_b: Float[Array, "*state"],
    background_var,
    solver: AbstractSolver,
    model_var=None,
    max_steps: int = 20,
    throw: bool = True,
) -> CycleResult:
    r"""Assimilate a long observation sequence window by window.

    Weak-constraint windows (`WeakConstraint4DVar`, control: the window's trajectory)
    when `model_var` is given, strong-constraint windows (`StrongConstraint4DVar`,
    control: the window's initial state) when it is `None`. Each window's cost includes
    the background $\tfrac12\|x_0 - x_b^{(k)}\|^2 / \sigma_b^2$ with $x_b^{(k)}$ the
    forecast of the previous window's analysis (see the module docstring).

    **Arguments:**
    - `flow`: one-step flow map $\Phi$.
    - `obs`: observations of the whole sequence, `.values`/`.mask` shaped `(N, *state)`.
    - `obs_var`: $R$ (scalar or state-shaped), `model_var`: $Q$ (scalar or state-shaped,
      or `None` for strong-constraint windows), `background_var`: $\sigma_b^2$ (scalar
      or state-shaped), all > 0.
    - `window` $L \ge 2$ (states per window), `shift` $1 \le S \le L$.
    - `x_b`: background of the first window's initial state.
    - `solver`: e.g. `GaussNewton()` (weak) or `DenseGaussNewton()` (strong).
    - `max_steps`: iteration cap per window.
    - `throw`: raise an `equinox.EquinoxRuntimeError` with the first failing window's
      message (eagerly and under `jit`); with `throw=False`, inspect
      `CycleResult.result` and `window_result`.

    **Returns:** a `CycleResult`.
    """
    window = check_int("window", window, minimum=2)
    shift = check_int("shift", shift, minimum=1)
    max_steps = check_int("max_steps", max_steps, minimum=0)
    if shift > window:
        raise ValueError(f"`shift` must be <= `window` ({window}); got {shift}.")
    n_total = jnp.shape(obs.values)[0]
    if n_total < window:
        raise ValueError(
            f"`obs` must have at least `window` = {window} time steps; got {n_total}."
        )
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {type(throw).__name__}.")
    check_positive("background_var", background_var)
    x_b = jnp.asarray(x_b)
    strong = model_var is None
    # Validate everything once on the concrete first window (and the whole sequence).
    if strong:
        StrongConstraint4DVar(flow, obs, obs_var)
    else:
        WeakConstraint4DVar(flow, obs, obs_var, model_var)
    flow.model.check_state("x_b", x_b)
    solver.check_problem(
        _window_problem(
            flow, obs, obs_var, model_var, background_var, x_b, 0, window, 0
        )
    )
    res = _cycle(
        flow, obs, obs_var, model_var, background_var, x_b, solver, window, shift,
        max_steps,
    )  # fmt: skip
    return raise_if_failed(res, res.result, throw)


def _window_problem(
    flow, obs, obs_var, model_var, background_var, xb, k, window, shift
):
    """The 4DVar problem of window `k` (states `k S, ..., k S + L - 1`)."""
    start = k * shift
    values = jax.lax.dynamic_slice_in_dim(obs.values, start, window)
    mask = jax.lax.dynamic_slice_in_dim(obs.mask, start, window)
    wobs = eqx.tree_at(lambda o: (o.values, o.mask), obs, (values, mask))
    bg = Background(xb, background_var)
    if model_var is None:
        return StrongConstraint4DVar(flow, wobs, obs_var, bg)
    return WeakConstraint4DVar(flow, wobs, obs_var, model_var, bg, flow.dt * start)


@eqx.filter_jit
def _cycle(
    flow, obs, obs_var, model_var, background_var, x_b, solver, window, shift, max_steps
) -> CycleResult:
    """The cycling loop, compiled once per configuration (no argument checks)."""
    strong = model_var is None
    n_windows = (obs.values.shape[0] - window) // shift + 1

    def make_problem(k, xb):
        return _window_problem(
            flow, obs, obs_var, model_var, background_var, xb, k, window, shift
        )

    def trajectory(problem, u, k):
        if strong:
            return rollout(flow, u, window - 1, t0=flow.dt * k * shift)
        return u

    def body(carry, k):
        xb, guess = carry
        problem = make_problem(k, xb)
        if not strong:
            # A first guess whose cost overflows: persistence of the background.
            finite = jnp.isfinite(problem.cost(guess))
            guess = jnp.where(finite, guess, jnp.broadcast_to(xb, guess.shape))
        sol = solver.run(problem, guess, max_steps)
        result = RESULTS.where(
            problem.values_valid(), sol.result, RESULTS.invalid_input
        )
        traj = trajectory(problem, sol.x, k)
        # A (strong-constraint) trajectory that overflows: persistence of its start.
        traj = _finite_rows(traj, traj[0])
        t_next = flow.dt * ((k + 1) * shift - 1)
        xb_next = _finite_or(flow(traj[shift - 1], t_next), traj[shift - 1])
        if strong:
            guess_next = xb_next
        else:
            tail = rollout(flow, traj[-1], shift, t0=flow.dt * (k * shift + window - 1))
            tail = _finite_rows(tail[1:], traj[-1])
            guess_next = jnp.concatenate([traj[shift:], tail], axis=0)
        out = (traj, sol.cost, sol.n_steps, result)
        return (xb_next, guess_next), out

    guess0 = x_b if strong else _finite_rows(rollout(flow, x_b, window - 1), x_b)
    _, (trajs, cost, n_steps, window_result) = jax.lax.scan(
        body, (x_b, guess0), jnp.arange(n_windows)
    )
    head = trajs[0, : window - shift]
    tails = trajs[:, window - shift :]
    tails = jnp.reshape(tails, (n_windows * shift, *tails.shape[2:]))
    analysis = jnp.concatenate([head, tails], axis=0)
    res = CycleResult(
        analysis, cost, n_steps, window_result, _first_failure(window_result)
    )
    return res
