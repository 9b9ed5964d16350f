"""Dynamics: the one-step flow map against a hand-written `lax.scan` RK4, a per-step
`diffeqsolve`, and `simulate` (adaptive Tsit5).

Every method integrates the same batch of trajectories (vmapped over initial states) for
`n_steps` steps of `dt`; `time_per_window_s` is the run time divided by the batch size
and `ratio_to_scan` divides by the hand-written scan measured in the same run. The
`max_abs_diff_to_scan_20_steps` field checks that the methods compute the same
trajectories over the first 20 steps (RK4 methods: round-off; Tsit5: the RK4 truncation
error, since Tsit5 at its tolerance is the more accurate). The flow map compiles to
the same XLA program as the hand-written scan (same op counts): its ratio is 1 up to
timing noise.
"""

from collections.abc import Iterator

import diffrax
import jax
import jax.numpy as jnp
from _common import record, time_call

import jaxda.models as jm


def _l63_f(x, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    return jnp.stack(
        [
            sigma * (x[1] - x[0]),
            rho * x[0] - x[1] - x[0] * x[2],
            x[0] * x[1] - beta * x[2],
        ]
    )


def _l96_f(x, forcing=8.0):
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + forcing


def _handwritten_rk4_rollout(f, x0, dt, n_steps):
    """The baseline: a plain function, RK4 in a `lax.scan`, no Module."""

    def step(x, _):
        k1 = f(x)
        k2 = f(x + 0.5 * dt * k1)
        k3 = f(x + 0.5 * dt * k2)
        k4 = f(x + dt * k3)
        x = x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return x, x

    _, xs = jax.lax.scan(step, x0, None, length=n_steps)
    return jnp.concatenate([x0[None], xs], axis=0)


def _diffeqsolve_per_step_rollout(model, x0, dt, n_steps):
    """The pattern docs/performance.md warns about: one fixed-step `diffeqsolve` per
    time step."""
    term = diffrax.ODETerm(lambda t, y, args: model.vector_field(t, y))

    def step(x, _):
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), 0.0, dt, dt, x, saveat=diffrax.SaveAt(t1=True)
        )
        return sol.ys[0], sol.ys[0]

    _, xs = jax.lax.scan(step, x0, None, length=n_steps)
    return jnp.concatenate([x0[None], xs], axis=0)


def _problems(suite: str):
    quick = suite == "quick"
    batch = 1000 if quick else 4000
    yield "L63", jm.Lorenz63(), _l63_f, 0.01, batch, 200 if quick else 1000
    yield "L96-40", jm.Lorenz96(n=40), _l96_f, 0.05, 256 if quick else 1000, 200


def records(suite: str) -> Iterator[dict]:
    for problem, model, f, dt, batch, n_steps in _problems(suite):
        key = jax.random.key(0)
        x0 = jm.sample_initial_states(model, key, batch, burn_in_time=5.0)
        x0 = x0.astype(jnp.result_type(float))
        flow = jm.flow_map(model, dt, "rk4")
        methods = {
            "rk4-scan-handwritten": jax.jit(
                jax.vmap(lambda x: _handwritten_rk4_rollout(f, x, dt, n_steps))
            ),
            "rk4-flowmap": jax.jit(jax.vmap(lambda x: jm.rollout(flow, x, n_steps))),
            "diffeqsolve-per-step": jax.jit(
                jax.vmap(lambda x: _diffeqsolve_per_step_rollout(model, x, dt, n_steps))
            ),
            "simulate-tsit5": jax.jit(
                jax.vmap(lambda x: jm.simulate(model, x, dt=dt, n_steps=n_steps).ys)
            ),
        }
        # Interleaved rounds, best median per method: on a shared 2-core machine the
        # load changes during a run, and the ratio should compare like with like.
        results = {}
        for round_ in range(3):
            for name, fn in methods.items():
                compile_s, run_s = time_call(fn, x0)
                if round_ == 0:
                    results[name] = (compile_s, run_s, fn(x0))
                else:
                    c, r, xs = results[name]
                    results[name] = (c, min(r, run_s), xs)
        base_run = results["rk4-scan-handwritten"][1]
        base_xs = results["rk4-scan-handwritten"][2]
        for name, (compile_s, run_s, xs) in results.items():
            # Chaos amplifies round-off: compare the first 20 steps only.
            diff = float(jnp.max(jnp.abs(xs[:, :20] - base_xs[:, :20])))
            yield record(
                problem,
                name,
                batch=batch,
                n_steps=n_steps,
                dt=dt,
                time_per_window_s=run_s / batch,
                time_per_step_us=run_s / (batch * n_steps) * 1e6,
                compile_s=compile_s,
                ratio_to_scan=run_s / base_run,
                max_abs_diff_to_scan_20_steps=diff,
            )
