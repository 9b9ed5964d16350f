"""Gridded models: the cost of one step of `Advection2D` and `ShallowWater` through the
library's flow maps against a hand-written `lax.scan` of the same scheme.

Problems: `advection-128` (a tracer on a periodic 128 x 128 grid, a stationary smooth
velocity field of the model, van Leer limiter, `SSPRK3`) and `sw-64` (the closed
64 x 64 basin of `shallow_water_basin`, nonlinear, RK4, from the spun-up state).
Methods: `jaxda-step` (`jaxda.models.rollout` of the flow map) and `handwritten-scan`
(the same scheme written again with `jnp.roll` / `jnp.pad` in a plain `lax.scan`, no
Module). Both return the whole trajectory. Records: `time_per_step_s` (median run time
over `n_steps`), `compile_s`, `ratio_to_handwritten` (same run, interleaved rounds,
best of five per method) and `max_abs_diff` between the two trajectories (round-off
if both compute the same scheme).
"""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
from _common import record, time_call

import jaxda.models as jm
from jaxda.grid import Grid


# -- the hand-written baselines ------------------------------------------------


def _van_leer(a, b):
    ab = a * b
    same = ab > 0
    return jnp.where(same, 2 * ab / jnp.where(same, a + b, 1.0), 0.0)


def _advection_rhs(q, u, v, dx, dy):
    """Periodic flux-form MUSCL / van Leer; centre velocities averaged to the faces."""

    def flux_div(q, w, ax, h):
        face_w = (w + jnp.roll(w, -1, ax)) / 2
        s = _van_leer(q - jnp.roll(q, 1, ax), jnp.roll(q, -1, ax) - q)
        left, right = q + s / 2, jnp.roll(q - s / 2, -1, ax)
        flux = jnp.maximum(face_w, 0) * left + jnp.minimum(face_w, 0) * right
        return (flux - jnp.roll(flux, 1, ax)) / h

    return -(flux_div(q, u, 1, dx) + flux_div(q, v, 0, dy))


def _advection_scan(q0, u, v, dx, dy, dt, n_steps):
    def step(q, _):
        f = lambda q: _advection_rhs(q, u, v, dx, dy)  # noqa: E731
        q1 = q + dt * f(q)
        q2 = 0.75 * q + 0.25 * (q1 + dt * f(q1))
        q = q / 3 + (2 / 3) * (q2 + dt * f(q2))
        return q, q

    _, qs = jax.lax.scan(step, q0, None, length=n_steps)
    return jnp.concatenate([q0[None], qs])


def _sw_rhs(x, g, H, dx, dy):
    """Closed-basin nonlinear C-grid shallow water (energy-conserving, f = 0)."""
    eta, u, v = x[0], x[1], x[2]
    h = H + eta
    U = jnp.pad((h[:, :-1] + h[:, 1:]) / 2, ((0, 0), (0, 1))) * u
    V = jnp.pad((h[:-1] + h[1:]) / 2, ((0, 1), (0, 0))) * v
    Up = jnp.pad(U[:, :-1], ((0, 0), (1, 1)))  # both wall faces 0
    Vp = jnp.pad(V[:-1], ((1, 1), (0, 0)))
    deta = -((Up[:, 1:] - Up[:, :-1]) / dx + (Vp[1:] - Vp[:-1]) / dy)
    zeta = jnp.pad(
        (v[:-1, 1:] - v[:-1, :-1]) / dx - (u[1:, :-1] - u[:-1, :-1]) / dy,
        ((0, 1), (0, 1)),
    )
    hp = jnp.pad(h, ((0, 1), (0, 1)), mode="edge")
    q = zeta / ((hp[:-1, :-1] + hp[:-1, 1:] + hp[1:, :-1] + hp[1:, 1:]) / 4)
    u2 = jnp.pad(u[:, :-1] ** 2, ((0, 0), (1, 1)))
    v2 = jnp.pad(v[:-1] ** 2, ((1, 1), (0, 0)))
    B = g * eta + ((u2[:, 1:] + u2[:, :-1]) / 2 + (v2[1:] + v2[:-1]) / 2) / 2
    qV = q * jnp.pad((V[:, :-1] + V[:, 1:]) / 2, ((0, 0), (0, 1)))
    qU = q * jnp.pad((U[:-1] + U[1:]) / 2, ((0, 1), (0, 0)))
    qVp = jnp.pad(qV[:-1], ((1, 1), (0, 0)))
    qUp = jnp.pad(qU[:, :-1], ((0, 0), (1, 1)))
    du = (qVp[1:] + qVp[:-1]) / 2 - jnp.pad(
        (B[:, 1:] - B[:, :-1]) / dx, ((0, 0), (0, 1))
    )
    dv = -(qUp[:, 1:] + qUp[:, :-1]) / 2 - jnp.pad(
        (B[1:] - B[:-1]) / dy, ((0, 1), (0, 0))
    )
    return jnp.stack([deta, du, dv])


def _sw_scan(x0, g, H, dx, dy, dt, n_steps):
    def step(x, _):
        f = lambda x: _sw_rhs(x, g, H, dx, dy)  # noqa: E731
        k1 = f(x)
        k2 = f(x + dt / 2 * k1)
        k3 = f(x + dt / 2 * k2)
        k4 = f(x + dt * k3)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x, x

    _, xs = jax.lax.scan(step, x0, None, length=n_steps)
    return jnp.concatenate([x0[None], xs])


# -- the problems --------------------------------------------------------------


def _advection_problem(n_steps):
    grid = Grid.square(128, 1.0)
    Y, X = grid.meshgrid()
    u = 1.0 + 0.5 * jnp.sin(2 * jnp.pi * Y)
    v = 0.5 * jnp.cos(2 * jnp.pi * X)
    model = jm.Advection2D(grid, jnp.stack([u, v]))
    x0 = model.reference_state
    dt = float(model.max_stable_dt())
    flow = jm.SSPRK3(model, dt)
    methods = {
        "jaxda-step": jax.jit(lambda x: jm.rollout(flow, x, n_steps)),
        "handwritten-scan": jax.jit(
            lambda x: _advection_scan(x[0], u, v, grid.dx, grid.dy, dt, n_steps)[
                :, None
            ]
        ),
    }
    return "advection-128", grid, x0, methods


def _sw_problem(n_steps):
    preset = jm.shallow_water_basin()
    grid, model, dt = preset.grid, preset.model, preset.dt
    g, H = float(model.gravity), float(model.depth)
    flow = jm.RK4(model, dt)
    methods = {
        "jaxda-step": jax.jit(lambda x: jm.rollout(flow, x, n_steps)),
        "handwritten-scan": jax.jit(
            lambda x: _sw_scan(x, g, H, grid.dx, grid.dy, dt, n_steps)
        ),
    }
    return "sw-64", grid, preset.state, methods


def records(suite: str) -> Iterator[dict]:
    n_steps = 100 if suite == "quick" else 1000
    for make in (_advection_problem, _sw_problem):
        problem, grid, x0, methods = make(n_steps)
        results = {}
        for round_ in range(5):  # interleaved rounds: like with like on a busy machine
            for name, fn in methods.items():
                compile_s, run_s = time_call(fn, x0)
                if round_ == 0:
                    results[name] = (compile_s, run_s, fn(x0))
                else:
                    c, r, xs = results[name]
                    results[name] = (c, min(r, run_s), xs)
        base_run, base_xs = (
            results["handwritten-scan"][1],
            results["handwritten-scan"][2],
        )
        for name, (compile_s, run_s, xs) in results.items():
            yield record(
                problem,
                name,
                grid=f"{grid.ny}x{grid.nx}-{grid.boundary}",
                batch=1,
                n_steps=n_steps,
                time_per_step_s=run_s / n_steps,
                compile_s=compile_s,
                ratio_to_handwritten=run_s / base_run,
                max_abs_diff=float(jnp.max(jnp.abs(xs - base_xs))),
            )


if __name__ == "__main__":
    import json
    import sys

    for rec in records(sys.argv[1] if len(sys.argv) > 1 else "quick"):
        print(json.dumps(rec))
