"""Shallow water on the C-grid: mass and energy conservation, the discrete dispersion
relation (eigenvalues and a propagating mode), the tangent-linear step and its adjoint,
the closed-basin preset, and bad input."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxda.models as jm
from jaxda.grid import Grid


def _random_state(rng, model, scale=0.1):
    """A smooth-ish random state with the wall faces of a closed grid at 0 (NumPy:
    no eager JAX ops)."""
    x = scale * rng.normal(size=model.state_shape)
    x = (x + np.roll(x, 1, -1) + np.roll(x, 1, -2)) / 3
    if not model.grid.periodic:
        x[1, :, -1] = 0
        x[2, -1, :] = 0
    return jnp.asarray(x)


def _numpy_closed_basin_tendency(x, g, H, f, dx, dy):
    """The nonlinear closed-basin C-grid tendency written again in NumPy, with
    explicit zero padding for the walls (the layout of the module docstring)."""
    eta, u, v = x
    h = H + eta
    pad = np.pad
    U = pad((h[:, :-1] + h[:, 1:]) / 2, ((0, 0), (0, 1))) * u
    V = pad((h[:-1] + h[1:]) / 2, ((0, 1), (0, 0))) * v
    Up, Vp = pad(U[:, :-1], ((0, 0), (1, 1))), pad(V[:-1], ((1, 1), (0, 0)))
    deta = -((Up[:, 1:] - Up[:, :-1]) / dx + (Vp[1:] - Vp[:-1]) / dy)
    zeta = (v[:-1, 1:] - v[:-1, :-1]) / dx - (u[1:, :-1] - u[:-1, :-1]) / dy
    hp = pad(h, ((0, 1), (0, 1)), mode="edge")
    h_corner = (hp[:-1, :-1] + hp[:-1, 1:] + hp[1:, :-1] + hp[1:, 1:]) / 4
    q = (f + pad(zeta, ((0, 1), (0, 1)))) / h_corner
    u2, v2 = pad(u[:, :-1] ** 2, ((0, 0), (1, 1))), pad(v[:-1] ** 2, ((1, 1), (0, 0)))
    B = g * eta + ((u2[:, 1:] + u2[:, :-1]) / 2 + (v2[1:] + v2[:-1]) / 2) / 2
    qV = pad(q[:-1, :-1] * (V[:-1, :-1] + V[:-1, 1:]) / 2, ((1, 1), (0, 1)))
    qU = pad(q[:-1, :-1] * (U[:-1, :-1] + U[1:, :-1]) / 2, ((0, 1), (1, 1)))
    du = (qV[1:] + qV[:-1]) / 2 - pad((B[:, 1:] - B[:, :-1]) / dx, ((0, 0), (0, 1)))
    dv = -(qU[:, 1:] + qU[:, :-1]) / 2 - pad((B[1:] - B[:-1]) / dy, ((0, 1), (0, 0)))
    du[:, -1], dv[-1] = 0, 0
    return np.stack([deta, du, dv])


def test_tendency_matches_a_numpy_closed_basin_scheme():
    rng = np.random.default_rng(5)
    grid = Grid(7, 9, dy=0.8, dx=1.1, boundary="closed")
    model = jm.ShallowWater(grid, 1.3, 2.0, coriolis=0.4)
    x = _random_state(rng, model, scale=0.3)
    ref = _numpy_closed_basin_tendency(np.asarray(x), 1.3, 2.0, 0.4, 1.1, 0.8)
    np.testing.assert_allclose(jax.jit(model.vector_field)(0.0, x), ref, atol=1e-13)


@pytest.mark.parametrize("boundary", ["closed", "periodic"])
def test_mass_conserved_and_energy_conserved_semi_discretely(boundary):
    rng = np.random.default_rng(0)
    grid = Grid(10, 12, dy=0.9, dx=1.1, boundary=boundary)
    models = {
        "nonlinear": jm.ShallowWater(grid, 1.0, 2.0, coriolis=0.3, beta=0.05),
        "linear": jm.ShallowWater(grid, 1.0, 2.0, coriolis=0.3, nonlinear=False),
    }
    for name, model in models.items():
        x = _random_state(rng, model, scale=0.2)

        @jax.jit
        def rates(x):
            f = model.vector_field(0.0, x)
            dE = jax.jvp(model.energy, (x,), (f,))[1]
            grad_norm = jnp.linalg.norm(jax.grad(model.energy)(x))
            return model.grid.integral(f[0]), dE / (grad_norm * jnp.linalg.norm(f)), f

        dmass, dE_rel, f = rates(x)
        assert abs(float(dmass)) < 1e-13 * float(jnp.abs(f[0]).sum()), name
        assert abs(float(dE_rel)) < 1e-13, (name, float(dE_rel))
        if boundary == "closed":  # the wall faces stay at 0
            assert float(jnp.abs(f[1, :, -1]).max() + jnp.abs(f[2, -1]).max()) == 0
        # ... and over 40 RK4 steps the mass to round-off
        dt = 0.5 * float(model.max_stable_dt(x))
        xs = jm.rollout(jm.RK4(model, dt), x, 40)
        mass = np.asarray(model.mass(xs))
        np.testing.assert_allclose(
            mass, mass[0], atol=1e-13 * float(jnp.abs(x[0]).sum())
        )
        assert float(jnp.abs(xs[-1] - x).max()) > 1e-2  # it moved


def test_rk4_energy_drift_decreases_at_the_schemes_order():
    grid = Grid.square(12, 12.0, boundary="closed")
    model = jm.ShallowWater(grid, 1.0, 1.0, nonlinear=False)
    x0 = model.gaussian_bump(0.1, 0.2, (0.4, 0.6))
    T = 12.0
    e0 = float(model.energy(x0))
    drifts = []
    for dt in (0.4, 0.2):
        n = int(round(T / dt))

        @jax.jit
        def final(x0):
            return jax.lax.fori_loop(0, n, lambda i, x: jm.RK4(model, dt)(x), x0)

        drifts.append(abs(float(model.energy(final(x0))) - e0) / e0)
    # RK4 on a skew-symmetric system loses (omega dt)^6 / 72 per step: drift ~ dt^5
    ratio = drifts[0] / drifts[1]
    assert drifts[0] < 1e-3 and ratio > 2**4, (drifts, ratio)


def _discrete_frequencies(grid, g, H, f):
    """omega for every wave-vector of a periodic grid: 0 (geostrophic) and +-omega."""
    k = 2 * np.pi * np.fft.fftfreq(grid.nx, grid.dx)
    l_ = 2 * np.pi * np.fft.fftfreq(grid.ny, grid.dy)
    K, L = np.meshgrid(k, l_)
    sx, sy = np.sin(K * grid.dx / 2), np.sin(L * grid.dy / 2)
    cx, cy = np.cos(K * grid.dx / 2), np.cos(L * grid.dy / 2)
    w2 = f**2 * (cx * cy) ** 2 + g * H * (
        4 * sx**2 / grid.dx**2 + 4 * sy**2 / grid.dy**2
    )
    w = np.sqrt(w2).reshape(-1)
    return np.sort(np.concatenate([w, -w, np.zeros_like(w)]))


def test_linear_waves_follow_the_discrete_cgrid_dispersion_relation():
    grid = Grid(6, 8, dy=0.8, dx=1.0)
    g, H, f = 2.0, 1.5, 0.7
    model = jm.ShallowWater(grid, g, H, coriolis=f, nonlinear=False)
    n = 3 * grid.size

    @jax.jit
    def jacobian():
        flat = lambda z: model.vector_field(0.0, z.reshape(model.state_shape))  # noqa: E731
        return jax.jacfwd(lambda z: flat(z).reshape(-1))(jnp.zeros(n))

    eig = np.linalg.eigvals(np.asarray(jacobian()))
    assert np.abs(eig.real).max() < 1e-10  # neutral: no growth, no damping
    ref = _discrete_frequencies(grid, g, H, f)
    np.testing.assert_allclose(np.sort(eig.imag), ref, atol=1e-10)
    # ... which tends to the continuous Poincare frequency f^2 + g H |k|^2
    k1 = 2 * np.pi / grid.extent[1]
    w_disc = np.sqrt(f**2 * np.cos(k1 / 2) ** 2 + g * H * (2 * np.sin(k1 / 2)) ** 2)
    w_cont = np.sqrt(f**2 + g * H * k1**2)
    assert abs(w_disc - w_cont) / w_cont < (k1 * grid.dx) ** 2 / 4
    assert np.min(np.abs(eig.imag - w_disc)) < 1e-10


def test_a_single_mode_propagates_at_the_discrete_phase_speed():
    grid = Grid(2, 32, dy=1.0, dx=1.0)
    g, H = 1.0, 1.0
    model = jm.ShallowWater(grid, g, H, nonlinear=False)
    k = 2 * np.pi * 3 / grid.extent[1]
    c = math.sqrt(g * H)
    omega_discrete = c * 2 * math.sin(k * grid.dx / 2) / grid.dx
    omega_continuous = c * k
    x_c = grid.x[None, :] * jnp.ones((2, 1))

    def mode(t, omega):  # a wave travelling east: eta, u = sqrt(g / H) eta on faces
        eta = jnp.cos(k * x_c - omega * t)
        u = math.sqrt(g / H) * jnp.cos(k * (x_c + grid.dx / 2) - omega * t)
        return jnp.stack([eta, u, jnp.zeros_like(eta)])

    T = 2 * (2 * np.pi / omega_discrete)  # two periods
    n_steps = 400
    flow = jm.RK4(model, T / n_steps)
    x_T = jm.rollout(flow, mode(0.0, omega_discrete), n_steps)[-1]
    np.testing.assert_allclose(x_T, mode(T, omega_discrete), atol=1e-6)
    # the continuous phase speed is measurably wrong for this mode
    assert float(jnp.abs(x_T - mode(T, omega_continuous)).max()) > 0.1


def test_nonlinear_terms_are_second_order_in_the_amplitude():
    rng = np.random.default_rng(0)
    grid = Grid.square(8, 8.0, boundary="closed")
    nl = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.2)
    lin = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.2, nonlinear=False)
    x = _random_state(rng, nl, scale=1.0)
    gaps = []
    for eps in (1e-2, 5e-3):
        d = nl.vector_field(0.0, eps * x) - lin.vector_field(0.0, eps * x)
        gaps.append(float(jnp.linalg.norm(d)))
    assert gaps[0] > 0 and 3.9 < gaps[0] / gaps[1] < 4.1, gaps


@pytest.mark.parametrize("boundary", ["closed", "periodic"])
def test_tangent_linear_step_and_adjoint(boundary):
    rng = np.random.default_rng(0)
    grid = Grid(8, 6, dy=1.0, dx=1.2, boundary=boundary)
    model = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.5, beta=0.1)
    x = model.gaussian_bump(0.3, 0.15, (0.4, 0.6)) + _random_state(rng, model)
    dx, y = _random_state(rng, model), _random_state(rng, model)
    dt = 0.5 * float(model.max_stable_dt(x))

    @jax.jit
    def gaps(x, depth, dx, d_depth, y):
        # one RK4 step as a function of the state and of the (learnable) depth
        def step(x, depth):
            return jm.RK4(eqx.tree_at(lambda m: m.depth, model, depth), dt)(x)

        _, tangent = jax.linearize(step, x, depth)
        jd = tangent(dx, d_depth)
        tx, t_depth = jax.linear_transpose(tangent, x, depth)(y)
        adjoint = jnp.abs(jnp.vdot(jd, y) - jnp.vdot(dx, tx) - d_depth * t_depth)
        eps = 1e-6
        plus = step(x + eps * dx, depth + eps * d_depth)
        minus = step(x - eps * dx, depth - eps * d_depth)
        fd = (plus - minus) / (2 * eps)
        return (
            adjoint / (jnp.linalg.norm(jd) * jnp.linalg.norm(y)),
            jnp.linalg.norm(fd - jd) / jnp.linalg.norm(jd),
        )

    depth, d_depth = jnp.asarray(1.0), jnp.asarray(0.7)
    adjoint, fd = map(float, gaps(x, depth, dx, d_depth, y))
    assert adjoint < 1e-13 and fd < 1e-8, (adjoint, fd)


def test_closed_basin_preset():
    p = jm.shallow_water_basin()
    g = p.grid
    assert (g.ny, g.nx, g.boundary) == (64, 64, "closed")
    assert g.extent == (1.0e6, 1.0e6)
    assert p.dt == pytest.approx(0.5 * g.dx / math.sqrt(9.81 * 100.0))
    assert p.spinup_steps == 1000 and p.state.shape == (3, 64, 64)
    assert float(p.model.depth) == 100.0 and float(p.model.coriolis) == 0.0
    assert p.model.channel_names == ("eta", "u", "v")
    # a bump of 1 m, standard deviation 3.2 cells, centred on a cell corner
    peak = math.exp(-(0.5**2 + 0.5**2) / (2 * 3.2**2))
    np.testing.assert_allclose(float(p.initial_state[0].max()), peak, rtol=1e-12)

    @jax.jit
    def diagnostics(p):
        m, x0, x = p.model, p.initial_state, p.state
        walls = jnp.abs(x[1, :, -1]).max() + jnp.abs(x[2, -1]).max()
        speed = jnp.abs(m.velocity_at_centres(x)).max()
        return m.mass(x0), m.mass(x), m.energy(x0), m.energy(x), speed, walls

    mass0, mass1, e0, e1, speed, walls = map(float, diagnostics(p))
    # spun up: the mass of the bump is kept, the energy nearly, and it moved
    np.testing.assert_allclose(mass1, mass0, rtol=1e-10)
    assert abs(e1 - e0) / e0 < 1e-3 and speed > 1e-3 and walls == 0
    assert p.dt < float(p.model.max_stable_dt(p.state))
    assert p.model.vorticity(p.state).shape == (64, 64)
    assert p.model.velocity_at_centres(p.state).shape == (2, 64, 64)


def test_bad_input():
    grid = Grid(6, 8, boundary="closed")
    with pytest.raises(TypeError, match="`grid` must be a jaxda.grid.Grid"):
        jm.ShallowWater((6, 8))
    with pytest.raises(ValueError, match="`depth` must be finite and > 0; got -1.0"):
        jm.ShallowWater(grid, depth=-1.0)
    with pytest.raises(ValueError, match="`gravity` must be finite"):
        jm.ShallowWater(grid, gravity=float("nan"))
    with pytest.raises(TypeError, match="`coriolis` must be a real number"):
        jm.ShallowWater(grid, coriolis="f")
    with pytest.raises(TypeError, match="`nonlinear` must be a bool"):
        jm.ShallowWater(grid, nonlinear=1)
    model = jm.ShallowWater(grid)
    with pytest.raises(ValueError, match=r"`x` must have shape \(3, 6, 8\)"):
        model.max_stable_dt(jnp.zeros((2, 6, 8)))
    with pytest.raises(ValueError, match="`spinup_steps` must be >= 0"):
        jm.shallow_water_basin(8, spinup_steps=-1)
    with pytest.raises(ValueError, match="`courant` must be finite and > 0"):
        jm.shallow_water_basin(8, courant=0.0)


def test_float32_state_stays_float32():
    grid = Grid(8, 10, boundary="closed")
    model = jm.ShallowWater(grid, jnp.asarray(1.0), 1.0, coriolis=0.3, beta=0.05)
    x64 = model.gaussian_bump(0.2, 0.15)
    flow = jm.RK4(model, 0.5 * float(model.max_stable_dt()))
    xs32 = jm.rollout(flow, x64.astype(jnp.float32), 5)
    assert xs32.dtype == jnp.float32
    np.testing.assert_allclose(xs32, jm.rollout(flow, x64, 5), atol=1e-6)
