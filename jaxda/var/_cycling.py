r"""Cycled (sliding-window) 4DVar over a long observation sequence.

Window $k$ covers the states $kS, \dots, kS + L - 1$ (length $L$ = `window`, shift $S$ =
`shift`). Its background is the forecast from the previous window's analysis,
$x_b^{(k)} = \Phi(x^{(k-1)}_{S-1})$ (the first window uses the given `x_b`), and its
first guess is the previous analysis shifted by $S$ and extended by a model forecast.
The windows run in one `lax.scan`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Float, Int
from .._validation import check_int, check_positive
from ..models import AbstractFlowMap, rollout
from ._costs import Background, StrongConstraint4DVar, WeakConstraint4DVar
from ._solution import AbstractSolver


class CycleResult(eqx.Module):
    """Result of `cycle`.

    **Fields:**
    - `analysis` `(L - S + K S, *state)`: the analysis trajectory. Times `0 .. L-S-1`
      come from the first window; afterwards the last `S` states of each window $k$
      (times $kS + L - S, \\dots, kS + L - 1$): the estimate at the newest times of each
      window, as the filtering-type "analysis" of cycled DA benchmarks (DAPPER).
    - `cost`, `n_steps`, `converged` `(K,)`: per-window solver results.
    """

    analysis: Float[Array, " N *state"]
    cost: Float[Array, " K"]
    n_steps: Int[Array, " K"]
    converged: Bool[Array, " K"]


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
    check_positive("background_var", background_var)
    x_b = jnp.asarray(x_b)
    strong = model_var is None
    n_windows = (n_total - window) // shift + 1

    def make_problem(k, xb):
        start = k * shift
        values = jax.lax.dynamic_slice_in_dim(obs.values, start, window)
        mask = jax.lax.dynamic_slice_in_dim(obs.mask, start, window)
        wobs = eqx.tree_at(lambda o: (o.values, o.mask), obs, (values, mask))
        bg = Background(xb, background_var)
        if strong:
            return StrongConstraint4DVar(flow, wobs, obs_var, bg)
        t0 = flow.dt * start
        return WeakConstraint4DVar(flow, wobs, obs_var, model_var, bg, t0)

    # Validate everything once on the concrete first window (and the whole sequence).
    if strong:
        StrongConstraint4DVar(flow, obs, obs_var)
    else:
        WeakConstraint4DVar(flow, obs, obs_var, model_var)
    flow.model.check_state("x_b", x_b)
    first = make_problem(0, x_b)
    solver.check_problem(first)

    def trajectory(problem, u, k):
        if strong:
            return rollout(flow, u, window - 1, t0=flow.dt * k * shift)
        return u

    def body(carry, k):
        xb, guess = carry
        problem = make_problem(k, xb)
        sol = solver.run(problem, guess, max_steps)
        traj = trajectory(problem, sol.x, k)
        t_next = flow.dt * ((k + 1) * shift - 1)
        xb_next = flow(traj[shift - 1], t_next)
        if strong:
            guess_next = xb_next
        else:
            tail = rollout(flow, traj[-1], shift, t0=flow.dt * (k * shift + window - 1))
            guess_next = jnp.concatenate([traj[shift:], tail[1:]], axis=0)
        out = (traj, sol.cost, sol.n_steps, sol.converged)
        return (xb_next, guess_next), out

    guess0 = x_b if strong else rollout(flow, x_b, window - 1)
    _, (trajs, cost, n_steps, converged) = jax.lax.scan(
        body, (x_b, guess0), jnp.arange(n_windows)
    )
    head = trajs[0, : window - shift]
    tails = trajs[:, window - shift :]
    tails = jnp.reshape(tails, (n_windows * shift, *tails.shape[2:]))
    analysis = jnp.concatenate([head, tails], axis=0)
    return CycleResult(analysis, cost, n_steps, converged)
