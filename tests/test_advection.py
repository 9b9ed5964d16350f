"""Tracer advection: the flux-form limited scheme against a NumPy MUSCL reference,
mass conservation, positivity and the maximum principle, the order of accuracy on an
exactly translated field, and the adjoint of the tangent-linear step."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxda.models as jm
from jaxda.grid import Grid, divergence
from jaxda.models import velocity_from_streamfunction


def _smooth_random(rng, shape, grid, scale=1.0):
    """A smooth random field: a few low Fourier modes (NumPy: no eager JAX ops)."""
    X, Y = np.meshgrid(np.asarray(grid.x), np.asarray(grid.y))
    (ly, lx) = grid.extent
    c = rng.normal(size=(*shape, 3, 3, 2))
    out = 0.0
    for a in range(3):
        for b in range(3):
            phase = 2 * np.pi * (a * X / lx + b * Y / ly)
            out = out + c[..., a, b, 0, None, None] * np.cos(phase)
            out = out + c[..., a, b, 1, None, None] * np.sin(phase)
    return scale * out / 3  # NumPy


# ------------------------------------------------------------------------------
# The scheme against an independent NumPy reference
# ------------------------------------------------------------------------------


def _numpy_muscl_tendency(q, u, v, dx, dy, limiter):
    """dq/dt of the periodic MUSCL scheme, constant (u, v), written again in NumPy."""

    def phi(a, b):
        if limiter == "minmod":
            return np.where(a * b > 0, np.sign(a) * np.minimum(abs(a), abs(b)), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a * b > 0, 2 * a * b / (a + b), 0.0)

    def flux(q, speed, ax):
        s = phi(q - np.roll(q, 1, ax), np.roll(q, -1, ax) - q)
        face = q + s / 2 if speed > 0 else np.roll(q - s / 2, -1, ax)
        return speed * face

    fx, fy = flux(q, u, 1), flux(q, v, 0)
    return -(fx - np.roll(fx, 1, 1)) / dx - (fy - np.roll(fy, 1, 0)) / dy


@pytest.mark.parametrize("limiter", ["van_leer", "minmod"])
def test_tendency_matches_numpy_muscl(limiter):
    grid = Grid(6, 7, dy=0.5, dx=0.3)
    q = np.random.default_rng(3).normal(size=grid.shape)
    u, v = 0.7, -1.3  # both upwind directions
    velocity = jnp.stack([jnp.full(grid.shape, u), jnp.full(grid.shape, v)])
    model = jm.Advection2D(grid, velocity, limiter=limiter)
    got = model.vector_field(0.0, jnp.asarray(q)[None])[0]
    ref = _numpy_muscl_tendency(q, u, v, grid.dx, grid.dy, limiter)
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_upwind_euler_step_is_the_textbook_scheme():
    grid = Grid(5, 8, dx=0.25, boundary="closed")
    q = np.random.default_rng(4).uniform(size=grid.shape)
    velocity = jnp.stack([jnp.full(grid.shape, 2.0), jnp.zeros(grid.shape)])
    model = jm.Advection2D(grid, velocity, limiter="upwind")
    dt = 0.05
    got = jm.Euler(model, dt)(jnp.asarray(q)[None])[0]
    nu = 2.0 * dt / grid.dx
    ref = q.copy()
    ref[:, 1:-1] -= nu * (q[:, 1:-1] - q[:, :-2])
    ref[:, 0] -= nu * q[:, 0]  # inflow wall: nothing comes in
    ref[:, -1] += nu * q[:, -2]  # outflow wall: nothing goes out
    np.testing.assert_allclose(got, ref, atol=1e-14)


# ------------------------------------------------------------------------------
# Conservation, positivity, maximum principle
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_mass_is_conserved_to_round_off(boundary):
    rng = np.random.default_rng(0)
    grid = Grid(12, 16, dy=0.5, dx=0.4, boundary=boundary)
    # a divergent velocity, carried in the state and advected by itself
    model = jm.Advection2D(grid, velocity_dynamics="advected")
    q = 1.0 + 0.5 * np.tanh(_smooth_random(rng, (), grid))
    w = _smooth_random(rng, (2,), grid)
    x0 = jnp.asarray(np.concatenate([q[None], w]))

    @jax.jit  # one compiled program
    def run(x0):
        dt = 0.8 * model.max_stable_dt(x0)
        xs = jm.rollout(jm.SSPRK3(model, dt), x0, 30)
        divergence_max = jnp.abs(divergence(x0[1:], grid, "centred")).max()
        return grid.integral(xs[:, 0]), xs[-1, 0], divergence_max

    mass, q_end, divergence_max = run(x0)
    assert float(divergence_max) > 0.1
    np.testing.assert_allclose(mass, mass[0], rtol=1e-13)
    assert float(jnp.abs(q_end - q).max()) > 0.05  # it did move


def _gyre(grid):
    """A discretely divergence-free clockwise gyre on the closed grid (face values)."""
    Y, X = grid.meshgrid()
    (ly, lx) = grid.extent
    yc, xc = (Y + grid.dy / 2) / ly, (X + grid.dx / 2) / lx
    psi = lx / np.pi * jnp.sin(np.pi * xc) * jnp.sin(np.pi * yc)
    return velocity_from_streamfunction(psi, grid)


def test_limited_schemes_keep_the_maximum_principle():
    grid = Grid.square(20, 1.0, boundary="closed")
    limiters = ("van_leer", "mc", "fromm")

    @jax.jit  # the three limiters in one compiled program
    def run():
        w = _gyre(grid)
        Y, X = grid.meshgrid()
        block = ((X > 0.2) & (X < 0.5) & (Y > 0.3) & (Y < 0.6)).astype(jnp.float64)
        out = {}
        for limiter in limiters:
            model = jm.Advection2D(grid, w, limiter=limiter, staggered=True)
            xs = jm.rollout(jm.SSPRK3(model, model.max_stable_dt()), block[None], 40)
            mass = grid.integral(xs[-1, 0]), grid.integral(block)
            out[limiter] = (xs.min(), xs.max(), *mass)
        return divergence(w, grid), out

    div, out = run()
    np.testing.assert_allclose(div, 0.0, atol=1e-12)
    extremes = {}
    for limiter, (lo, hi, mass, mass0) in out.items():
        extremes[limiter] = float(lo), float(hi)
        np.testing.assert_allclose(mass, mass0)
    for limiter in ("van_leer", "mc"):
        lo, hi = extremes[limiter]
        assert lo >= -1e-14 and hi <= 1 + 1e-14, (limiter, lo, hi)
    lo, hi = extremes["fromm"]  # the unlimited scheme over- and undershoots
    assert lo < -1e-2 and hi > 1 + 1e-2


def test_positivity_in_a_divergent_flow():
    rng = np.random.default_rng(1)
    grid = Grid.square(16, 1.0)
    w = jnp.asarray(_smooth_random(rng, (2,), grid))
    q = jnp.asarray(np.where(_smooth_random(rng, (), grid) > 0, 1.0, 0.0))
    model = jm.Advection2D(grid, w)

    @jax.jit
    def extremes(q):
        xs = jm.rollout(jm.SSPRK3(model, model.max_stable_dt()), q[None], 40)
        return xs.min(), xs.max()

    lo, hi = extremes(q)
    assert float(lo) >= -1e-14
    # ... while the divergent flow does create new maxima (no maximum principle)
    assert float(hi) > 1.01


# ------------------------------------------------------------------------------
# Order of accuracy
# ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _translation_errors(n, u=1.0, v=0.5, T=0.5, limiters=("fromm", "van_leer")):
    """Mean absolute error of SSPRK3 at the Courant limit after translating a smooth
    periodic field by (u T, v T), for each limiter (one compiled program per n)."""
    grid = Grid.square(n, 1.0)
    Y, X = grid.meshgrid()

    def exact(t):
        return jnp.sin(2 * np.pi * (X - u * t)) * jnp.cos(2 * np.pi * (Y - v * t))

    velocity = jnp.stack([jnp.full(grid.shape, u), jnp.full(grid.shape, v)])
    models = [jm.Advection2D(grid, velocity, limiter=lim) for lim in limiters]
    # the Courant limit 1/2 of these limiters: dt_max = 0.5 / (u / dx + v / dy)
    n_steps = int(np.ceil(T / (0.5 / (u / grid.dx + v / grid.dy))))
    flows = [jm.SSPRK3(m, T / n_steps) for m in models]
    q0 = exact(0.0)[None]
    qs = [jax.lax.fori_loop(0, n_steps, lambda i, q: f(q), q0) for f in flows]
    return jnp.stack([jnp.mean(jnp.abs(q[0] - exact(T))) for q in qs])


def _translation_rates(sizes):
    errors = np.stack([np.asarray(_translation_errors(n)) for n in sizes])
    return errors, np.log2(errors[:-1] / errors[1:])


def test_order_of_accuracy_on_a_translated_field():
    errors, rate = _translation_rates((16, 32))
    assert np.all(rate[:, 0] > 1.9), errors  # unlimited (Fromm): second order
    assert np.all(rate[:, 1] > 1.6), errors  # van Leer: clipped at the extrema


@pytest.mark.slow
def test_order_of_accuracy_on_a_translated_field_sweep():
    errors, rate = _translation_rates((16, 32, 64, 128))
    assert np.all(rate[:, 0] > 1.9), errors
    assert np.all(rate[:, 1] > 1.6), errors


# ------------------------------------------------------------------------------
# Tangent linear and adjoint
# ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _adjoint_and_fd_gaps(whole_step, model, q, dq, dw, y):
    """For one SSPRK3 step (`whole_step`) or the tendency alone, as a function of the
    state and the velocity field jointly: the adjoint gap
    |<J d, y> - <d, J^T y>| / (|J d| |y|) with d = (dq, dw), and the relative
    distance of the tangent-linear J d to central differences."""
    dt = 0.5 * model.max_stable_dt()

    def step(q, velocity):
        moved = eqx.tree_at(lambda m: m.velocity, model, velocity)
        if whole_step:
            return jm.SSPRK3(moved, dt)(q)
        return moved.vector_field(0.0, q)

    w = model.velocity
    _, tangent = jax.linearize(step, q, w)
    jd = tangent(dq, dw)
    tq, tw = jax.linear_transpose(tangent, q, w)(y)
    adjoint = jnp.abs(jnp.vdot(jd, y) - jnp.vdot(dq, tq) - jnp.vdot(dw, tw))
    eps = 1e-6
    signs = jnp.asarray([1.0, -1.0])  # both central-difference points at once
    ends = jax.vmap(lambda s: step(q + s * eps * dq, w + s * eps * dw))(signs)
    fd = (ends[0] - ends[1]) / (2 * eps)
    return jnp.stack(
        [
            adjoint / (jnp.linalg.norm(jd) * jnp.linalg.norm(y)),
            jnp.linalg.norm(fd - jd) / jnp.linalg.norm(jd),
        ]
    )


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_tangent_linear_step_adjoint_and_finite_differences(boundary):
    # closed: one SSPRK3 step; periodic: the tendency alone (a third of the compile
    # time). The step's tangent and adjoint are sums of the tendency's with the same
    # coefficients on both grids: together these check both steps.
    rng = np.random.default_rng(2)
    grid = Grid(8, 10, dy=0.5, dx=0.4, boundary=boundary)
    w = jnp.asarray(_smooth_random(rng, (2,), grid))
    model = jm.Advection2D(grid, w)
    q = jnp.asarray(1.0 + _smooth_random(rng, (1,), grid))
    dq, dw, y = (jnp.asarray(rng.normal(size=s.shape)) for s in (q, w, q))
    whole_step = boundary == "closed"
    adjoint, fd = np.asarray(_adjoint_and_fd_gaps(whole_step, model, q, dq, dw, y))
    assert adjoint < 1e-13, adjoint
    # the tangent-linear model is the derivative (central differences, float64)
    assert fd < 1e-7, fd


# ------------------------------------------------------------------------------
# Construction and bad input
# ------------------------------------------------------------------------------


def test_shapes_and_reference_states():
    grid = Grid(6, 8, boundary="closed")
    m1 = jm.Advection2D(grid, jnp.zeros((2, 6, 8)))
    m3 = jm.Advection2D(grid)
    assert m1.state_shape == (1, 6, 8) and m1.channel_names == ("q",)
    assert m3.state_shape == (3, 6, 8) and m3.channel_names == ("q", "u", "v")
    staggered = jm.Advection2D(grid, staggered=True)

    @jax.jit  # the three models' reference states and time steps, compiled once
    def states_and_steps():
        xs = {"m3": m3.reference_state, "staggered": staggered.reference_state}
        dts = {"m3": m3.max_stable_dt(xs["m3"])}
        dts["staggered"] = staggered.max_stable_dt(xs["staggered"])
        divergence_staggered = divergence(xs["staggered"][1:], grid)
        return m1.reference_state, m1.max_stable_dt(), xs, dts, divergence_staggered

    x1, dt1, xs, dts, divergence_staggered = states_and_steps()
    assert x1.shape == (1, 6, 8)
    for name, x in xs.items():
        assert x.shape == (3, 6, 8) and float(x[0].max()) <= 1.0
        assert np.isfinite(float(dts[name]))
    np.testing.assert_allclose(divergence_staggered, 0.0, atol=1e-12)
    assert float(dt1) == np.inf  # no motion, no limit
    assert jm.SSPRK3(m1, 0.1).order == 3


def test_bad_input():
    grid = Grid(6, 8)
    with pytest.raises(TypeError, match="`grid` must be a jaxda.grid.Grid"):
        jm.Advection2D((6, 8))
    with pytest.raises(ValueError, match=r"`velocity` must have shape \(2, 6, 8\)"):
        jm.Advection2D(grid, jnp.zeros((2, 8, 6)))
    with pytest.raises(ValueError, match="`velocity` must be finite"):
        jm.Advection2D(grid, jnp.full((2, 6, 8), jnp.nan))
    with pytest.raises(ValueError, match="`limiter` must be one of 'van_leer'"):
        jm.Advection2D(grid, limiter="superbee")
    with pytest.raises(ValueError, match="`velocity_dynamics` applies to a velocity"):
        jm.Advection2D(grid, jnp.zeros((2, 6, 8)), velocity_dynamics="advected")
    with pytest.raises(ValueError, match="needs cell-centre velocities"):
        jm.Advection2D(grid, staggered=True, velocity_dynamics="advected")
    with pytest.raises(ValueError, match="`x` is needed"):
        jm.Advection2D(grid).max_stable_dt()
    with pytest.raises(ValueError, match=r"`x0` must have shape \(3, 6, 8\)"):
        jm.rollout(jm.SSPRK3(jm.Advection2D(grid), 0.1), jnp.zeros((6, 8)), 2)


def test_float32_state_stays_float32():
    grid = Grid(8, 10, boundary="closed")
    rng = np.random.default_rng(6)
    model = jm.Advection2D(grid, jnp.asarray(_smooth_random(rng, (2,), grid)))
    # (a float64 velocity field) and its reference state, compiled once
    q64, dt_max = jax.jit(lambda: (model.reference_state, model.max_stable_dt()))()
    flow = jm.SSPRK3(model, 0.5 * float(dt_max))
    xs32 = jm.rollout(flow, q64.astype(jnp.float32), 5)
    assert xs32.dtype == jnp.float32
    np.testing.assert_allclose(xs32, jm.rollout(flow, q64, 5), atol=1e-5)
