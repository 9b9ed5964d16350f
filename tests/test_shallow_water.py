"""Shallow water on the C-grid: mass and energy conservation, the discrete dispersion
relation (eigenvalues and a propagating mode), the tangent-linear step and its adjoint;
the forward-backward step of Filoche et al.'s code against a NumPy transcription of it,
its mass, adjoint and gravity waves; the closed-basin preset, and bad input."""

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


def _bump(grid, height, width, centre):
    """`ShallowWater.gaussian_bump` in NumPy (no eager JAX ops)."""
    Y, X = np.meshgrid(np.asarray(grid.y), np.asarray(grid.x), indexing="ij")
    (ly, lx) = grid.extent
    yc = grid.y0 - grid.dy / 2 + centre[0] * ly
    xc = grid.x0 - grid.dx / 2 + centre[1] * lx
    eta = height * np.exp(
        -((X - xc) ** 2 + (Y - yc) ** 2) / (2 * (width * min(lx, ly)) ** 2)
    )
    return np.stack([eta, 0 * eta, 0 * eta])


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
    states = {name: _random_state(rng, m, scale=0.2) for name, m in models.items()}

    @jax.jit  # one compiled program for both models
    def checks(states):
        out = {}
        for name, model in models.items():
            x = states[name]
            f = model.vector_field(0.0, x)
            dE = jax.jvp(model.energy, (x,), (f,))[1]
            grad_norm = jnp.linalg.norm(jax.grad(model.energy)(x))
            dt = 0.5 * model.max_stable_dt(x)
            xs = jm.rollout(jm.RK4(model, dt), x, 40)
            dE_rel = dE / (grad_norm * jnp.linalg.norm(f))
            out[name] = (model.grid.integral(f[0]), dE_rel, f, model.mass(xs), xs[-1])
        return out

    for name, (dmass, dE_rel, f, mass, x_end) in checks(states).items():
        x = states[name]
        assert abs(float(dmass)) < 1e-13 * float(jnp.abs(f[0]).sum()), name
        assert abs(float(dE_rel)) < 1e-13, (name, float(dE_rel))
        if boundary == "closed":  # the wall faces stay at 0
            assert float(jnp.abs(f[1, :, -1]).max() + jnp.abs(f[2, -1]).max()) == 0
        # ... and over 40 RK4 steps the mass to round-off
        np.testing.assert_allclose(
            mass, mass[0], atol=1e-13 * float(jnp.abs(x[0]).sum())
        )
        assert float(jnp.abs(x_end - x).max()) > 1e-2  # it moved


def test_rk4_energy_drift_decreases_at_the_schemes_order():
    grid = Grid.square(12, 12.0, boundary="closed")
    model = jm.ShallowWater(grid, 1.0, 1.0, nonlinear=False)
    x0 = jnp.asarray(_bump(grid, 0.1, 0.2, (0.4, 0.6)))
    T = 12.0

    @jax.jit  # both step sizes in one compiled program
    def relative_drifts(x0):
        e0 = model.energy(x0)
        out = []
        for dt in (0.4, 0.2):
            n = int(round(T / dt))
            x = jax.lax.fori_loop(0, n, lambda i, x: jm.RK4(model, dt)(x), x0)
            out.append(jnp.abs(model.energy(x) - e0) / e0)
        return jnp.stack(out)

    drifts = [float(d) for d in relative_drifts(x0)]
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
    x_c = np.asarray(grid.x)[None, :] * np.ones((2, 1))

    def mode(t, omega):  # a wave travelling east: eta, u = sqrt(g / H) eta on faces
        eta = np.cos(k * x_c - omega * t)
        u = math.sqrt(g / H) * np.cos(k * (x_c + grid.dx / 2) - omega * t)
        return np.stack([eta, u, np.zeros_like(eta)])

    T = 2 * (2 * np.pi / omega_discrete)  # two periods
    n_steps = 400
    flow = jm.RK4(model, T / n_steps)
    x_T = np.asarray(jm.rollout(flow, jnp.asarray(mode(0.0, omega_discrete)), n_steps))
    np.testing.assert_allclose(x_T[-1], mode(T, omega_discrete), atol=1e-6)
    # the continuous phase speed is measurably wrong for this mode
    assert np.abs(x_T[-1] - mode(T, omega_continuous)).max() > 0.1


def test_nonlinear_terms_are_second_order_in_the_amplitude():
    rng = np.random.default_rng(0)
    grid = Grid.square(8, 8.0, boundary="closed")
    nl = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.2)
    lin = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.2, nonlinear=False)
    x = _random_state(rng, nl, scale=1.0)

    @jax.jit
    def gap(x):
        return jnp.linalg.norm(nl.vector_field(0.0, x) - lin.vector_field(0.0, x))

    gaps = [float(gap(eps * x)) for eps in (1e-2, 5e-3)]
    assert gaps[0] > 0 and 3.9 < gaps[0] / gaps[1] < 4.1, gaps


@pytest.mark.parametrize("boundary", ["closed", "periodic"])
def test_tangent_linear_step_and_adjoint(boundary):
    # closed: one RK4 step; periodic: the tendency alone (a third of the compile
    # time). The RK4 step's tangent and adjoint are sums of the tendency's, with
    # the same coefficients on both grids: together these check both steps.
    rng = np.random.default_rng(0)
    grid = Grid(8, 6, dy=1.0, dx=1.2, boundary=boundary)
    model = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.5, beta=0.1)
    x = _bump(grid, 0.3, 0.15, (0.4, 0.6)) + _random_state(rng, model)
    dx, y = _random_state(rng, model), _random_state(rng, model)

    @jax.jit
    def gaps(x, depth, dx, d_depth, y):
        dt = 0.5 * model.max_stable_dt(x)

        # a function of the state and of the (learnable) depth
        def step(x, depth):
            moved = eqx.tree_at(lambda m: m.depth, model, depth)
            if boundary == "periodic":
                return moved.vector_field(0.0, x)
            return jm.RK4(moved, dt)(x)

        _, tangent = jax.linearize(step, x, depth)
        jd = tangent(dx, d_depth)
        tx, t_depth = jax.linear_transpose(tangent, x, depth)(y)
        adjoint = jnp.abs(jnp.vdot(jd, y) - jnp.vdot(dx, tx) - d_depth * t_depth)
        eps = 1e-6
        signs = jnp.asarray([1.0, -1.0])  # both central-difference points at once
        ends = jax.vmap(lambda s: step(x + s * eps * dx, depth + s * eps * d_depth))(
            signs
        )
        fd = (ends[0] - ends[1]) / (2 * eps)
        return (
            adjoint / (jnp.linalg.norm(jd) * jnp.linalg.norm(y)),
            jnp.linalg.norm(fd - jd) / jnp.linalg.norm(jd),
        )

    depth, d_depth = jnp.asarray(1.0), jnp.asarray(0.7)
    adjoint, fd = map(float, gaps(x, depth, dx, d_depth, y))
    assert adjoint < 1e-13 and fd < 1e-8, (adjoint, fd)


# ------------------------------------------------------------------------------
# The forward-backward step of [FBC23]'s code
# ------------------------------------------------------------------------------


def _authors_step(eta, u, v, g, H, dt, dx, dy):
    """One step of the authors' scheme written in NumPy with THEIR layout (the first
    array axis is x, `u[i]` between cells i and i + 1, the last row of u / column of
    v the walls, never updated), with per-face upwind depth arrays east / west /
    north / south of each cell as their step has them."""
    eta, u, v = eta.copy(), u.copy(), v.copy()
    u[:-1, :] -= g * dt / dx * (eta[1:, :] - eta[:-1, :])
    v[:, :-1] -= g * dt / dy * (eta[:, 1:] - eta[:, :-1])
    h_e, h_w, h_n, h_s = (np.zeros_like(eta) for _ in range(4))
    h_e[:-1, :] = np.where(u[:-1, :] > 0, eta[:-1, :] + H, eta[1:, :] + H)
    h_e[-1, :] = eta[-1, :] + H
    h_w[0, :] = eta[0, :] + H
    h_w[1:, :] = np.where(u[:-1, :] > 0, eta[:-1, :] + H, eta[1:, :] + H)
    h_n[:, :-1] = np.where(v[:, :-1] > 0, eta[:, :-1] + H, eta[:, 1:] + H)
    h_n[:, -1] = eta[:, -1] + H
    h_s[:, 0] = eta[:, 0] + H
    h_s[:, 1:] = np.where(v[:, :-1] > 0, eta[:, :-1] + H, eta[:, 1:] + H)
    uhwe, vhns = np.zeros_like(eta), np.zeros_like(eta)
    uhwe[0, :] = u[0, :] * h_e[0, :]
    uhwe[1:, :] = u[1:, :] * h_e[1:, :] - u[:-1, :] * h_w[1:, :]
    vhns[:, 0] = v[:, 0] * h_n[:, 0]
    vhns[:, 1:] = v[:, 1:] * h_n[:, 1:] - v[:, :-1] * h_s[:, 1:]
    eta -= dt * (uhwe / dx + vhns / dy)
    return eta, u, v


def test_forward_backward_equals_the_authors_numpy_step():
    rng = np.random.default_rng(7)
    grid = Grid(7, 9, dy=0.8, dx=1.1, boundary="closed")
    g, H, dt = 1.3, 2.0, 0.2
    model = jm.ShallowWater(grid, g, H)
    x = np.asarray(_random_state(rng, model, scale=0.3))
    assert (x[1] > 0).any() and (x[1] < 0).any()  # both upwind sides are used
    got = jax.jit(jm.ForwardBackward(model, dt, substeps=2))(jnp.asarray(x))
    # ours [j, i] is theirs [i, j]: transpose in, two steps of dt / 2, transpose out
    state = (x[0].T, x[1].T, x[2].T)
    for _ in range(2):
        state = _authors_step(*state, g, H, dt / 2, grid.dx, grid.dy)
    ref = np.stack([a.T for a in state])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert np.abs(ref - x).max() > 1e-2  # it moved


def test_forward_backward_mass_tangent_linear_and_adjoint():
    rng = np.random.default_rng(1)
    grid = Grid(8, 6, dy=1.0, dx=1.2, boundary="closed")
    model = jm.ShallowWater(grid, 1.0, 1.0, coriolis=0.5, beta=0.1)
    x = _random_state(rng, model, scale=0.3)
    dx, y = _random_state(rng, model), _random_state(rng, model)
    dt = 0.4 * min(grid.dx, grid.dy)  # Courant 0.4 for c = 1

    @jax.jit
    def checks(x, depth, dx, d_depth, y):
        def step(x, depth):
            return jm.ForwardBackward(eqx.tree_at(lambda m: m.depth, model, depth), dt)(
                x
            )

        _, tangent = jax.linearize(step, x, depth)
        jd = tangent(dx, d_depth)
        tx, t_depth = jax.linear_transpose(tangent, x, depth)(y)
        adjoint = jnp.abs(jnp.vdot(jd, y) - jnp.vdot(dx, tx) - d_depth * t_depth)
        eps = 1e-6
        fd = (
            step(x + eps * dx, depth + eps * d_depth)
            - step(x - eps * dx, depth - eps * d_depth)
        ) / (2 * eps)
        xs = jm.rollout(jm.ForwardBackward(model, dt), x, 60)
        return (
            adjoint / (jnp.linalg.norm(jd) * jnp.linalg.norm(y)),
            jnp.linalg.norm(fd - jd) / jnp.linalg.norm(jd),
            model.mass(xs),
            xs,
        )

    adjoint, fd, mass, xs = checks(x, jnp.asarray(1.0), dx, jnp.asarray(0.7), y)
    assert float(adjoint) < 1e-12 and float(fd) < 1e-7, (adjoint, fd)
    np.testing.assert_allclose(
        mass, mass[0], rtol=0, atol=1e-13 * float(jnp.abs(x[0]).sum())
    )
    assert float(jnp.abs(xs[1:, 1, :, -1]).max() + jnp.abs(xs[1:, 2, -1]).max()) == 0
    assert float(jnp.abs(xs[-1] - x).max()) > 0.05  # it moved


def test_forward_backward_gravity_waves_in_the_linear_limit():
    # a closed-basin C-grid mode eta = cos(k x) cos(l y) at rest turns by theta per
    # step, sin^2(theta / 2) = dt^2 g H (k^2 + l^2)^ / 4 (hatted wavenumbers):
    # eta_n = a cos((n + 1/2) theta) / cos(theta / 2),
    # u_n = a g dt k^ sin(n theta) / sin(theta) sin(k x_(i+1/2)) cos(l y), v alike
    grid = Grid(8, 12, dy=0.9, dx=1.0, boundary="closed")
    g, H, n_steps = 1.0, 1.0, 60
    dt = 0.5 * min(grid.dx, grid.dy) / math.sqrt(g * H)
    Y, X = np.meshgrid(grid.y, grid.x, indexing="ij")
    k, l_ = 3 * np.pi / grid.extent[1], np.pi / grid.extent[0]
    kh = 2 * np.sin(k * grid.dx / 2) / grid.dx
    lh = 2 * np.sin(l_ * grid.dy / 2) / grid.dy
    cx, cy = np.cos(k * X), np.cos(l_ * Y)
    sx, sy = np.sin(k * (X + grid.dx / 2)), np.sin(l_ * (Y + grid.dy / 2))

    def exact(a, n, theta):
        eta = a * np.cos((n + 0.5) * theta) / np.cos(theta / 2) * cx * cy
        s = a * g * dt * np.sin(n * theta) / np.sin(theta)
        return np.stack([eta, s * kh * sx * cy, s * lh * cx * sy])

    theta = 2 * np.arcsin(dt * math.sqrt(g * H * (kh**2 + lh**2)) / 2)
    x0 = jnp.asarray(exact(1.0, 0, theta))
    linear = jm.ShallowWater(grid, g, H, nonlinear=False)
    nonlinear = jm.ShallowWater(grid, g, H)
    rotating = jm.ShallowWater(Grid(4, 5, boundary="closed"), g, H, 0.8, 0.2)

    @jax.jit
    def run(x0):
        lin = jm.rollout(jm.ForwardBackward(linear, dt), x0, n_steps)[-1]
        big, small = (
            jm.rollout(jm.ForwardBackward(nonlinear, dt), eps * x0, n_steps)[-1] / eps
            for eps in (1e-3, 1e-4)
        )
        # the linearised rotating step at rest: neutral (|lambda| = 1)
        step = jm.ForwardBackward(rotating, 0.3)
        zero = jnp.zeros(rotating.state_shape)
        flat = lambda z: step(z.reshape(zero.shape)).reshape(-1)  # noqa: E731
        return lin, big, small, jax.jacfwd(flat)(zero.reshape(-1))

    lin, big, small, jac = run(x0)
    ref = exact(1.0, n_steps, theta)
    np.testing.assert_allclose(lin, ref, rtol=0, atol=1e-12)
    # the nonlinear step tends to it at first order in the amplitude
    gaps = [float(np.abs(z - ref).max()) for z in (big, small)]
    assert gaps[0] < 2e-2 and 8 < gaps[0] / gaps[1] < 12, gaps
    # the continuous dispersion relation is measurably wrong for this mode
    theta_continuous = dt * math.sqrt(g * H * (k**2 + l_**2))
    assert np.abs(exact(1.0, n_steps, theta_continuous) - ref).max() > 0.1
    eig = np.linalg.eigvals(np.asarray(jac))
    np.testing.assert_allclose(np.abs(eig), 1.0, rtol=0, atol=1e-10)
    assert np.abs(eig.imag).max() > 0.1  # and it does oscillate


# ------------------------------------------------------------------------------
# The closed-basin preset of [FBC23]
# ------------------------------------------------------------------------------


def _gaussian_parameters(eta, grid):
    """`(height, yc, xc, s_y, s_x)` of an exactly Gaussian field, from the quadratic
    log eta at its maximum and the neighbours (exact for a Gaussian)."""
    j, i = np.unravel_index(np.argmax(eta), eta.shape)
    L = np.full(eta.shape, np.nan)
    L[j - 1 : j + 2, i - 1 : i + 2] = np.log(eta[j - 1 : j + 2, i - 1 : i + 2])
    y, x = np.asarray(grid.y)[j], np.asarray(grid.x)[i]
    s2x = -(grid.dx**2) / (L[j, i + 1] - 2 * L[j, i] + L[j, i - 1])
    s2y = -(grid.dy**2) / (L[j + 1, i] - 2 * L[j, i] + L[j - 1, i])
    xc = x + s2x * (L[j, i + 1] - L[j, i - 1]) / (2 * grid.dx)
    yc = y + s2y * (L[j + 1, i] - L[j - 1, i]) / (2 * grid.dy)
    height = eta[j, i] * np.exp((x - xc) ** 2 / (2 * s2x) + (y - yc) ** 2 / (2 * s2y))
    return height, yc, xc, math.sqrt(s2y), math.sqrt(s2x)


def test_basin_bumps_are_drawn_as_the_authors():
    grid = jm.basin_grid()
    L = 1.0e6
    assert (grid.ny, grid.nx, grid.boundary) == (64, 64, "closed")
    assert grid.dx == grid.dy == L / 63
    np.testing.assert_allclose(np.asarray(grid.x)[[0, -1]], [-L / 2, L / 2], rtol=1e-14)
    keys = jax.random.split(jax.random.key(3), 128)
    bumps = np.asarray(jax.jit(jax.vmap(lambda k: jm.basin_bump(k, grid)))(keys))
    assert np.all(bumps[:, 1:] == 0)  # at rest
    p = np.array([_gaussian_parameters(b[0], grid) for b in bumps])
    np.testing.assert_allclose(p[:, 0], 5.0, rtol=1e-9)  # the height
    np.testing.assert_allclose(p[:, 3], p[:, 4], rtol=1e-9)  # isotropic
    width, divisor = p[:, 4], L / p[:, 1:3]  # centre L / xi from the middle
    assert width.min() >= 2e4 and width.max() <= 1e5
    assert width.min() < 3e4 and width.max() > 9e4  # spread over U(2, 10) 1e4
    assert np.abs(divisor).min() >= 3 - 1e-9 and np.abs(divisor).max() <= 7 + 1e-9
    assert np.abs(divisor).min() < 3.5 and np.abs(divisor).max() > 6.5
    for axis in (0, 1):  # random signs, each side about half of the time
        assert 0.3 < np.mean(divisor[:, axis] > 0) < 0.7


def test_closed_basin_preset_is_the_authors_setup_and_window():
    p = jm.shallow_water_basin(jax.random.key(0))
    g = p.grid
    assert g == jm.basin_grid(64, 1.0e6)
    assert p.dt == pytest.approx(0.5 * g.dx / math.sqrt(9.81 * 100.0), rel=1e-14)
    assert isinstance(p.flow, jm.ForwardBackward) and p.flow.dt == p.dt
    assert p.spinup_steps == 1000 and p.state.shape == (3, 64, 64)
    assert float(p.model.depth) == 100.0 and not p.model.rotating
    assert p.model.nonlinear and p.model.channel_names == ("eta", "u", "v")
    assert _gaussian_parameters(np.asarray(p.initial_state[0]), g)[0] == (
        pytest.approx(5.0, rel=1e-9)
    )
    truth, obs = jm.basin_observations(jax.random.key(1), p.flow, p.state)

    @jax.jit
    def diagnostics(p):
        m, x0, x = p.model, p.initial_state, p.state
        walls = jnp.abs(x[1, :, -1]).max() + jnp.abs(x[2, -1]).max()
        speed = jnp.abs(m.velocity_at_centres(x)).max()
        return m.mass(x0), m.mass(x), speed, walls

    mass0, mass1, speed, walls = map(float, diagnostics(p))
    # spun up: the mass of the bump is kept, the waves move, the walls are closed
    np.testing.assert_allclose(mass1, mass0, rtol=1e-12)
    assert speed > 1e-2 and walls == 0
    # the window: 10 states from the spun-up one, the height every 3rd step
    assert truth.shape == obs.values.shape == (10, 3, 64, 64)
    np.testing.assert_array_equal(truth[0], p.state)
    mask = np.asarray(obs.mask)
    assert not mask[:, 1:].any() and mask[:, 0].all(axis=(1, 2)).tolist() == [
        t % 3 == 0 for t in range(10)
    ]
    noise = np.asarray(obs.values - truth)[mask]
    assert noise.size == 4 * 64 * 64
    assert abs(noise.std() / 0.05 - 1) < 0.03 and abs(noise.mean()) < 2e-3


def test_closed_basin_preset_options():
    # a fixed centred bump, RK4 on the Sadourny tendency, float32
    p = jm.shallow_water_basin(
        None, 16, scheme="rk4", spinup_steps=20, dtype=jnp.float32
    )
    assert isinstance(p.flow, jm.RK4) and p.state.dtype == jnp.float32
    eta0 = np.asarray(p.initial_state[0], dtype=np.float64)
    np.testing.assert_allclose(eta0, eta0[::-1], rtol=1e-6)  # centred: symmetric
    np.testing.assert_allclose(eta0, eta0[:, ::-1], rtol=1e-6)
    x = np.asarray(p.grid.x, dtype=np.float64)[-8]  # the node nearest the middle
    peak = 5.0 * math.exp(-2 * x**2 / (2 * (0.05e6) ** 2))
    np.testing.assert_allclose(eta0.max(), peak, rtol=1e-6)
    ref = jm.spin_up(p.model, p.dt, p.initial_state, 20)  # the older signature
    np.testing.assert_array_equal(p.state, ref)
    assert float(jnp.abs(p.state - p.initial_state).max()) > 1e-2


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
    with pytest.raises(TypeError, match="`model` must be a jaxda.models.ShallowWater"):
        jm.ForwardBackward(jm.Lorenz63(), 0.1)
    with pytest.raises(ValueError, match="`dt` must be finite and > 0"):
        jm.ForwardBackward(model, -0.1)
    with pytest.raises(ValueError, match="`spinup_steps` must be >= 0"):
        jm.shallow_water_basin(None, 8, spinup_steps=-1)
    with pytest.raises(ValueError, match="`courant` must be finite and > 0"):
        jm.shallow_water_basin(None, 8, courant=0.0)
    with pytest.raises(ValueError, match="`scheme` must be one of 'forward_backward'"):
        jm.shallow_water_basin(None, 8, scheme="euler")
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        jm.shallow_water_basin(8)
    with pytest.raises(ValueError, match="`n` must be >= 2; got 1"):
        jm.basin_grid(1)
    with pytest.raises(TypeError, match="`grid` must be a jaxda.grid.Grid"):
        jm.basin_bump(jax.random.key(0), (8, 8))
    flow = jm.ForwardBackward(model, 0.1)
    with pytest.raises(TypeError, match=r"Call `spin_up\(flow, x0, n_steps\)`"):
        jm.spin_up(flow, jnp.zeros((3, 6, 8)))
    with pytest.raises(ValueError, match=r"`x0` must have shape \(3, 6, 8\)"):
        jm.spin_up(flow, jnp.zeros((6, 8)), 3)
    with pytest.raises(
        TypeError, match="`flow` must be a jaxda.models.AbstractFlowMap"
    ):
        jm.basin_observations(jax.random.key(0), model, jnp.zeros((3, 6, 8)))
    with pytest.raises(ValueError, match="`every` must be >= 1"):
        jm.basin_observations(jax.random.key(0), flow, jnp.zeros((3, 6, 8)), every=0)


def test_float32_state_stays_float32():
    grid = Grid(8, 10, boundary="closed")
    model = jm.ShallowWater(grid, jnp.asarray(1.0), 1.0, coriolis=0.3, beta=0.05)
    x64 = jnp.asarray(_bump(grid, 0.2, 0.15, (0.5, 0.5)))
    for flow, atol in (
        (jm.RK4(model, 0.4), 1e-6),  # max_stable_dt() is 0.99 here (c = 1, dx = 1)
        (jm.ForwardBackward(model, 0.4), 1e-6),
    ):
        xs32 = jm.rollout(flow, x64.astype(jnp.float32), 5)
        assert xs32.dtype == jnp.float32
        np.testing.assert_allclose(xs32, jm.rollout(flow, x64, 5), atol=atol)
