"""Trajectory simulation with diffrax: adaptive ODE solves, process noise, burn-in.

`simulate` is for *generating* data (truth trajectories, ensembles, training sets).
Inside cost functions use a one-step flow map (`jaxda.models.flow_map`) instead: a
per-step `diffeqsolve` is much slower than a fixed-step scan (docs/performance.md,
`benchmarks/bench_models.py`).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .._custom_types import Array, Float, Key
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import (
    check_choice,
    check_finite,
    check_int,
    check_key,
    check_positive,
)
from ._base import AbstractDynamics
from ._flow import RK4, Euler


_ODE_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
_FIXED_SOLVERS = {"rk4": RK4, "euler": Euler}
_SDE_SOLVERS = {"shark": diffrax.ShARK, "heun": diffrax.Heun, "euler": diffrax.Euler}
_NOISE_KINDS = ("increment", "sde")
# diffrax's outcomes in jaxda's RESULTS: same-named items map to themselves; any other
# failure (none of them produced by the explicit solvers used here) to `nonfinite`.
_FROM_DIFFRAX = {
    name: name
    for name in (
        "successful",
        "max_steps_reached",
        "singular",
        "breakdown",
        "stagnation",
        "conlim",
        "nonfinite_input",
        "nonfinite",
    )
} | {
    "nonlinear_max_steps_reached": "max_steps_reached",
    "max_steps_rejected": "max_steps_reached",
}


class Simulation(eqx.Module):
    r"""The output of `simulate`: a trajectory and how its integration went.

    **Fields:**

    - `ts`: the output times $t_0 + k\,\Delta t$, shape `(n_steps + 1,)`.
    - `ys`: the states at `ts`, shape `(n_steps + 1, *state_shape)` (diffrax's name).
    - `result`: a `jaxda.RESULTS` item: `successful`; `max_steps_reached` (a diffrax
      solve hit `max_steps`); `nonfinite` (the trajectory diverged); `invalid_input`
      (under `jit`, a traced `dt`, `t0`, `x0`, `process_noise_std`, `rtol` or `atol`
      failed its value check; `ys` is then NaN). After other failures `ys` is what
      the integration produced (diffrax leaves `inf` at the times it did not reach),
      so check `result` before using it.
    """

    ts: Float[Array, " n_steps+1"]
    ys: Float[Array, " n_steps+1 *state"]
    result: RESULTS


def simulate(
    model: AbstractDynamics,
    x0: Float[Array, "*state"],
    *,
    dt: float | Float[Array, ""],
    n_steps: int,
    t0: float | Float[Array, ""] = 0.0,
    key: Key | None = None,
    process_noise_std: float | Float[Array, ""] = 0.0,
    noise: str = "increment",
    burn_in_steps: int = 0,
    solver: str | None = None,
    substeps: int = 1,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_steps: int | None = None,
    throw: bool = True,
) -> Simulation:
    r"""Integrate `model` from `x0`: the states at $t_0 + k\,\Delta t$, $k = 0..n$.

    The deterministic dynamics $\dot x = f(t, x)$ are integrated with diffrax (adaptive
    Tsit5 / Dopri5 with a PID controller on `rtol`, `atol`), or with a fixed-step RK4 /
    Euler flow map of `substeps` steps per `dt`. Optional additive process noise:

    - `noise="increment"`: after each interval of the deterministic flow
      $\Phi_{\Delta t}$, $x_{k+1} = \Phi_{\Delta t}(x_k) + \sigma\,\varepsilon_k$,
      $\varepsilon_k \sim N(0, I)$ i.i.d. ([B24]'s Lorenz-63 set-up is
      $\sigma = \sqrt{\Delta t}$);
    - `noise="sde"`: the Itô SDE $dx = f(t, x)\,dt + \sigma\,dW_t$ solved with a fixed
      step $\Delta t / \text{substeps}$ on a `diffrax.VirtualBrownianTree` (solver
      `"shark"`,
      strong order 1.5 for additive noise, by default; `"heun"` or `"euler"`).
      $\sigma$ is then a diffusion per $\sqrt{\text{time}}$: over one interval the
      noise adds variance $\sigma^2 \Delta t$.

    Burn-in integrates `burn_in_steps` intervals first (over $[t_0 - b\Delta t, t_0]$,
    noise included) and discards them, so that the output starts on the attractor. The
    output includes the initial (post burn-in) state, like `rollout`.

    Pure: works under `jax.jit` and `jax.vmap` (over `x0`, `key`, `dt`, ...). `n_steps`,
    `burn_in_steps`, `substeps`, `solver`, `noise`, `max_steps` are static; `dt`, `t0`,
    `process_noise_std`, `rtol`, `atol` are traced (no recompilation when they change).
    A batch of windows starting on the attractor is
    `jax.vmap(lambda x, k: simulate(m, x, dt=dt, n_steps=n, key=k, ...).ys)(x0s, keys)`,
    with `x0s` from `sample_initial_states`.

    **Arguments:**

    - `model`: an `AbstractDynamics`.
    - `x0`: initial state of shape `model.state_shape`, finite. Its dtype is kept.
    - `dt` > 0: output interval; `n_steps` >= 1: number of intervals; `t0`: first
      output time.
    - `key`: a `jax.random` key; required when `process_noise_std` may be > 0.
    - `process_noise_std` >= 0: $\sigma$ above (0: deterministic, `key` ignored).
    - `noise`: `"increment"` or `"sde"`.
    - `burn_in_steps` >= 0: intervals integrated and discarded before the output.
    - `solver`: ODE: `"tsit5"` (default), `"dopri5"` (adaptive), `"rk4"`, `"euler"`
      (fixed step, `substeps` per `dt`); SDE: `"shark"` (default), `"heun"`, `"euler"`.
    - `substeps` >= 1: steps per `dt` for fixed-step solvers (ignored by adaptive ones).
    - `rtol`, `atol` > 0: tolerances of the adaptive solvers.
    - `max_steps` >= 1: cap on the steps of each diffrax solve (`None`:
      `4096 + 100 * (n_steps + burn_in_steps) * substeps`). Hitting it is a failure.
      Only a loop bound: a larger value costs nothing unless it is reached.
    - `throw`: whether a failure raises (see Returns).

    **Returns:** a `Simulation` with `ts`, `ys` (shape `(n_steps + 1, *state_shape)`)
    and `result`. With `throw=True` (default) a failure (a diffrax solve not
    successful, e.g. `max_steps` reached; a non-finite state; under `jit`, a traced
    argument failing its value check) raises an `equinox.EquinoxRuntimeError` with the
    result's message, eagerly and under `jit` alike (under `vmap`: when any member
    failed). With `throw=False` nothing is raised: inspect `result`. Arguments that
    are concrete are checked before tracing (`ValueError` / `TypeError` naming them).
    """
    if not isinstance(model, AbstractDynamics):
        raise TypeError(
            "`model` must be a jaxda.models.AbstractDynamics; got "
            f"{type(model).__name__}."
        )
    if not hasattr(x0, "shape"):
        x0 = jnp.asarray(x0)
    model.check_state("x0", x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = jnp.asarray(x0, dtype=jnp.result_type(float))
    _check_scalar("dt", dt)
    check_positive("dt", dt)
    _check_scalar("t0", t0)
    check_finite("t0", t0)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    burn_in_steps = check_int("burn_in_steps", burn_in_steps, minimum=0)
    substeps = check_int("substeps", substeps, minimum=1)
    if max_steps is None:
        max_steps = 4096 + 100 * (n_steps + burn_in_steps) * substeps
    max_steps = check_int("max_steps", max_steps, minimum=1)
    _check_scalar("process_noise_std", process_noise_std)
    check_positive("process_noise_std", process_noise_std, allow_zero=True)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    noisy, solver = _noise_and_solver(noise, solver, process_noise_std, key)

    dtype = x0.dtype
    dt = jnp.asarray(dt, dtype=dtype)
    t0 = jnp.asarray(t0, dtype=dtype)
    sigma = jnp.asarray(process_noise_std, dtype=dtype)
    sim = _simulate(
        model,
        x0,
        dt,
        t0,
        key if noisy else None,
        sigma,
        jnp.asarray(rtol, dtype=dtype),
        jnp.asarray(atol, dtype=dtype),
        n_steps=n_steps,
        burn_in_steps=burn_in_steps,
        noise=(noise if noisy else None),
        solver=solver,
        substeps=substeps,
        max_steps=max_steps,
    )
    return raise_if_failed(sim, sim.result, throw)


def sample_initial_states(
    model: AbstractDynamics,
    key: Key,
    n: int,
    *,
    burn_in_time: float,
    spread: float = 1.0,
    center: Float[Array, "*state"] | None = None,
    solver: str = "tsit5",
) -> Float[Array, " n *state"]:
    r"""Draw `n` initial states near the attractor of `model`.

    $x^{(i)} = \Phi_{T}(c + s\,\varepsilon_i)$, $\varepsilon_i \sim N(0, I)$: a Gaussian
    cloud of spread $s$ around `center` (default `model.reference_state`) pushed forward
    deterministically for $T$ = `burn_in_time` (one adaptive diffrax solve per sample,
    vmapped). For a chaotic system and $T$ a few Lyapunov times the samples are close
    to independent draws from the attractor; for a conservative one (undamped pendulum)
    they stay on the energy levels of the initial cloud.

    **Arguments:** `model`; `key`; `n` >= 1; `burn_in_time` >= 0; `spread` >= 0;
    `center` (shape `model.state_shape`); `solver` as in `simulate`.

    **Returns:** an array `(n, *state_shape)` in the dtype of `center` (default float).
    """
    if not isinstance(model, AbstractDynamics):
        raise TypeError(
            "`model` must be a jaxda.models.AbstractDynamics; got "
            f"{type(model).__name__}."
        )
    n = check_int("n", n, minimum=1)
    check_positive("burn_in_time", burn_in_time, allow_zero=True)
    check_positive("spread", spread, allow_zero=True)
    if center is None:
        center = model.reference_state
    center = jnp.asarray(center)
    model.check_state("center", center)
    check_key("key", key)
    eps = jax.random.normal(key, (n, *model.state_shape), dtype=center.dtype)
    starts = center + jnp.asarray(spread, center.dtype) * eps
    if _is_concrete(burn_in_time) and float(burn_in_time) == 0.0:
        return starts
    return jax.vmap(
        lambda x: simulate(model, x, dt=burn_in_time, n_steps=1, solver=solver).ys[-1]
    )(starts)


# Implementation


@eqx.filter_jit
def _simulate(
    model,
    x0,
    dt,
    t0,
    key,
    sigma,
    rtol,
    atol,
    *,
    n_steps,
    burn_in_steps,
    noise,
    solver,
    substeps,
    max_steps,
) -> Simulation:
    # The value checks of the eager path, on traced values (a few scalar comparisons):
    # an invalid argument is integrated from safe stand-ins and reported, never run.
    valid = (
        jnp.isfinite(dt)
        & (dt > 0)
        & jnp.isfinite(t0)
        & all_finite(x0)
        & jnp.isfinite(sigma)
        & (sigma >= 0)
        & jnp.isfinite(rtol)
        & (rtol > 0)
        & jnp.isfinite(atol)
        & (atol > 0)
    )
    one = jnp.ones((), dt.dtype)
    dt = jnp.where(valid, dt, one)
    t0 = jnp.where(valid, t0, 0 * one)
    x0 = jnp.where(valid, x0, jnp.zeros_like(x0))
    sigma = jnp.where(valid, sigma, 0 * one)
    rtol = jnp.where(valid, rtol, 1e-3 * one)
    atol = jnp.where(valid, atol, 1e-3 * one)
    if noise == "sde":
        xs, solved = _simulate_sde(
            model, x0, dt, t0, key, sigma, n_steps, burn_in_steps, solver, substeps,
            max_steps,
        )  # fmt: skip
    elif noise is None and solver in _ODE_SOLVERS:
        xs, solved = _simulate_ode(
            model, x0, dt, t0, n_steps, burn_in_steps, solver, rtol, atol, max_steps
        )
    else:
        xs, solved = _simulate_scan(
            model, x0, dt, t0, key, sigma, n_steps, burn_in_steps, solver, substeps,
            rtol, atol, max_steps,
        )  # fmt: skip
    result = first_failure(
        (~valid, RESULTS.invalid_input),
        (solved != RESULTS.successful, solved),
        (~all_finite(xs), RESULTS.nonfinite),
    )
    xs = jnp.where(valid, xs, jnp.full_like(xs, jnp.nan))
    ts = t0 + dt * jnp.arange(n_steps + 1, dtype=x0.dtype)
    return Simulation(ts=ts, ys=xs, result=result)


def _from_diffrax(result) -> RESULTS:
    """A `diffrax.RESULTS` item as a `jaxda.RESULTS` item (see `_FROM_DIFFRAX`)."""
    out = RESULTS.nonfinite
    for theirs, ours in _FROM_DIFFRAX.items():
        out = RESULTS.where(
            result == getattr(diffrax.RESULTS, theirs), getattr(RESULTS, ours), out
        )
    return out


def _ode_term(model):
    return diffrax.ODETerm(lambda t, y, args: model.vector_field(t, y))


def _simulate_ode(model, x0, dt, t0, n_steps, burn, solver, rtol, atol, max_steps):
    """One adaptive diffeqsolve over the whole horizon, saved at the output times."""
    ts = t0 + dt * jnp.arange(n_steps + 1, dtype=x0.dtype)
    start = t0 - burn * dt
    sol = diffrax.diffeqsolve(
        _ode_term(model),
        _ODE_SOLVERS[solver](),
        start,
        ts[-1],
        None,
        x0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    return sol.ys, _from_diffrax(sol.result)


def _simulate_scan(
    model, x0, dt, t0, key, sigma, n_steps, burn, solver, substeps, rtol, atol,
    max_steps,
):  # fmt: skip
    """A scan over intervals: a deterministic step (flow map or diffeqsolve), noise."""
    if solver in _FIXED_SOLVERS:
        flow = _FIXED_SOLVERS[solver](model, dt, substeps)

        def step(x, t):
            return flow(x, t), RESULTS.successful

    else:
        term = _ode_term(model)
        ode_solver = _ODE_SOLVERS[solver]()
        controller = diffrax.PIDController(rtol=rtol, atol=atol)

        def step(x, t):
            sol = diffrax.diffeqsolve(
                term,
                ode_solver,
                t,
                t + dt,
                dt,
                x,
                saveat=diffrax.SaveAt(t1=True),
                stepsize_controller=controller,
                max_steps=max_steps,
                throw=False,
            )
            return sol.ys[0], _from_diffrax(sol.result)

    # One scan over burn-in and output intervals, so the step (a whole `diffeqsolve`
    # for adaptive solvers) is traced and compiled once: the state after interval k is
    # written into row k - burn + 1 of the output buffer (row 0 while burning in, which
    # the last burn-in interval leaves holding the initial state of the output).
    total = n_steps + burn
    keys = None if key is None else jax.random.split(key, total)
    out = jnp.zeros((n_steps + 1,) + x0.shape, x0.dtype).at[0].set(x0)

    def body(carry, inputs):
        x, res, out = carry
        k, sub = inputs
        t = t0 + (k - burn).astype(x.dtype) * dt
        x, res_k = step(x, t)
        if sub is not None:
            x = x + sigma * jax.random.normal(sub, x.shape, dtype=x.dtype)
        out = jax.lax.dynamic_update_index_in_dim(
            out, x, jnp.maximum(k - burn + 1, 0), axis=0
        )
        # keep the first failure
        res = RESULTS.where(res == RESULTS.successful, res_k, res)
        return (x, res, out), None

    (_, res, out), _ = jax.lax.scan(
        body, (x0, RESULTS.successful, out), (jnp.arange(total), keys)
    )
    return out, res


def _simulate_sde(
    model, x0, dt, t0, key, sigma, n_steps, burn, solver, substeps, max_steps
):
    """Additive-noise SDE on a virtual Brownian tree, fixed step `dt / substeps`."""
    shape, size = x0.shape, x0.size
    ts = t0 + dt * jnp.arange(n_steps + 1, dtype=x0.dtype)
    start = t0 - burn * dt
    h = dt / substeps
    # ShARK needs space-time Levy areas, the others only increments (faster compile).
    levy_area = (
        diffrax.SpaceTimeLevyArea if solver == "shark" else diffrax.BrownianIncrement
    )
    brownian = diffrax.VirtualBrownianTree(
        start,
        ts[-1],
        tol=h / 16,
        shape=jax.ShapeDtypeStruct((size,), x0.dtype),
        key=key,
        levy_area=levy_area,
    )
    drift = diffrax.ODETerm(
        lambda t, y, args: model.vector_field(t, y.reshape(shape)).reshape(-1)
    )
    diffusion = diffrax.ControlTerm(
        lambda t, y, args: lx.DiagonalLinearOperator(jnp.full((size,), sigma)),
        brownian,
    )
    sol = diffrax.diffeqsolve(
        diffrax.MultiTerm(drift, diffusion),
        _SDE_SOLVERS[solver](),
        start,
        ts[-1],
        h,
        x0.reshape(-1),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=max_steps,
        throw=False,
    )
    xs = sol.ys.reshape(n_steps + 1, *shape)
    return xs, _from_diffrax(sol.result)


def _noise_and_solver(noise, solver, process_noise_std, key) -> tuple[bool, str]:
    """Whether the run is noisy (`process_noise_std` not a concrete 0) and its solver,
    after checking `noise`, `solver` and `key`."""
    check_choice("noise", noise, _NOISE_KINDS)
    noisy = not (_is_concrete(process_noise_std) and float(process_noise_std) == 0.0)
    sde = noisy and noise == "sde"
    if solver is None:
        solver = "shark" if sde else "tsit5"
    if sde:
        check_choice("solver", solver, tuple(_SDE_SOLVERS))
    else:
        check_choice("solver", solver, (*_ODE_SOLVERS, *_FIXED_SOLVERS))
    if noisy and key is None:
        raise ValueError(
            "`key` is required when `process_noise_std` may be > 0; got key=None and "
            f"process_noise_std={process_noise_std!r}."
        )
    if noisy:
        check_key("key", key)
    return noisy, solver


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_scalar(name: str, value) -> None:
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"`{name}` must be a scalar; got an array of shape "
            f"{tuple(jnp.shape(value))}."
        )
