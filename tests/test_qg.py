"""The pseudo-spectral QG model: exact energy / enstrophy budget of the advection and
beta terms, Rossby-wave dispersion (1.5-layer, two-layer barotropic and baroclinic
modes), adjoint and finite-difference tests of the tangent-linear step, inversions,
diagnostics, float32, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda.grid import Grid
from jaxda.models import QG, QGStep, qg_turbulence


GRID = Grid.square(16, 1.0e6)


def _band_limited(key, shape, n):
    """A random real field with no power at |m| or |n| >= n / 3 (index units)."""
    f = jax.random.normal(key, shape)
    m = np.fft.fftfreq(n, 1 / n)
    keep = (np.abs(m)[:, None] < n / 3) & (np.abs(m)[None, :] < n / 3)
    return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(f) * keep))


@pytest.mark.parametrize("layers", [1, 2])
def test_advection_and_beta_conserve_energy_and_enstrophy(getkey, layers):
    model = QG(GRID, layers=layers, drag=0.0, upper_flow=0.0)
    q = 1e-5 * _band_limited(getkey(), model.state_shape, GRID.nx)
    qdot = jax.jit(model.vector_field)(0.0, q)
    _, de = jax.jit(lambda q, v: jax.jvp(model.energy, (q,), (v,)))(q, qdot)
    psi = model.streamfunction(q)
    scale = jnp.sqrt(jnp.mean(psi**2) * jnp.mean(qdot**2))
    assert abs(float(de / scale)) < 1e-12
    # the layer-weighted enstrophy; each layer's alone without beta (with beta, the
    # layers exchange enstrophy through the coupling terms F_i psi_j)
    w = jnp.asarray(model.layer_weights)
    dz = jnp.sum(w * jnp.mean(q * qdot, axis=(-2, -1)))
    assert abs(float(dz / jnp.sqrt(jnp.mean(q**2) * jnp.mean(qdot**2)))) < 1e-12
    no_beta = QG(GRID, layers=layers, beta=0.0, drag=0.0, upper_flow=0.0)
    qdot0 = jax.jit(no_beta.vector_field)(0.0, q)
    dz = jnp.mean(q * qdot0, axis=(-2, -1))
    assert np.all(np.abs(dz / jnp.sqrt(jnp.mean(q**2) * jnp.mean(qdot0**2))) < 1e-12)
    # the tendency is not trivially orthogonal: bottom drag removes energy
    damped = QG(GRID, layers=layers, drag=1e-6, upper_flow=0.0)
    de_drag = jnp.sum(
        jnp.asarray(damped.layer_weights)[:, None, None]
        * psi
        * jax.jit(damped.vector_field)(0.0, q)
    )
    assert float(-de_drag / psi.size / scale) < -1e-6


def _mode(grid, m, n):
    y, x = (np.asarray(a) for a in grid.meshgrid())
    kx, ky = 2 * np.pi * m / grid.extent[1], 2 * np.pi * n / grid.extent[0]
    return kx, ky, (lambda phase: np.cos(kx * x + ky * y - phase))


def _rk4_mode(omega, dt, n_steps):
    """Amplitude and phase of a mode c' = -i omega c after n RK4 steps (c_0 = 1)."""
    z = -1j * omega * dt
    c = (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** n_steps
    return abs(c), -np.angle(c)


def test_rossby_waves_propagate_at_the_dispersion_relation():
    beta, ld, dt, n_steps = 1.5e-11, 1.0e5, 86400.0, 60
    kx, ky, wave = _mode(GRID, 2, 1)
    k2, kd2 = kx**2 + ky**2, ld**-2
    # 1.5-layer: q = -(k^2 + Ld^-2) psi, omega = -beta k / (k^2 + Ld^-2); a single
    # mode is an exact solution, so the step is RK4 on one linear mode, to round-off
    model = QG(GRID, beta=beta, deformation_radius=ld, drag=0.0)
    q0 = -(k2 + kd2) * 1e3 * wave(0.0)[None]
    q = QGStep(model, dt).advance(jnp.asarray(q0), n_steps)
    omega = -beta * kx / (k2 + kd2)
    amp, phase = _rk4_mode(omega, dt, n_steps)
    # RK4 is close to the continuous wave (phases modulo 2 pi)
    assert abs(np.angle(np.exp(1j * (phase - omega * dt * n_steps)))) < 1e-5
    expected = -(k2 + kd2) * 1e3 * amp * wave(phase)
    err = np.max(np.abs(q[0] - expected)) / np.max(np.abs(expected))
    assert err < 1e-10
    wrong = -(k2 + kd2) * 1e3 * wave(-beta * kx / k2 * dt * n_steps)  # barotropic
    assert np.max(np.abs(q[0] - wrong)) / np.max(np.abs(expected)) > 0.1
    # two layers at rest: barotropic mode (psi1 = psi2), omega = -beta k / k^2, and
    # baroclinic mode (psi1, psi2) = (F1, -F2), omega = -beta k / (k^2 + F1 + F2)
    delta = 0.25
    two = QG(GRID, layers=2, beta=beta, deformation_radius=ld, drag=0.0,
             upper_flow=0.0, layer_ratio=delta)  # fmt: skip
    f1 = kd2 / (1 + delta)
    f2 = delta * f1
    for vector, denom in (((1.0, 1.0), k2), ((f1, -f2), k2 + f1 + f2)):
        v = np.asarray(vector) / np.max(np.abs(vector))
        psi0 = 1e3 * v[:, None, None] * wave(0.0)[None]
        q = QGStep(two, dt).advance(two.potential_vorticity(jnp.asarray(psi0)), n_steps)
        amp, phase = _rk4_mode(-beta * kx / denom, dt, n_steps)
        psi_t = 1e3 * amp * v[:, None, None] * wave(phase)[None]
        err = np.max(np.abs(two.streamfunction(q) - psi_t)) / 1e3
        assert err < 1e-10


@pytest.mark.parametrize("layers", [1, 2])
def test_tangent_linear_step_adjoint_and_finite_differences(getkey, layers):
    model = QG(GRID, layers=layers)
    q = model.random_state(getkey(), speed=0.2)
    step = QGStep(model, 7200.0)
    dq = model.random_state(getkey())
    w = jax.random.normal(getkey(), q.shape)

    @jax.jit
    def tangent_and_adjoint(q, dq, w):
        out, tl = jax.linearize(step, q)
        (atw,) = jax.linear_transpose(tl, q)(w)
        eps = 1e-4
        fd = (step(q + eps * dq) - step(q - eps * dq)) / (2 * eps)
        return tl(dq), atw, fd

    mdq, atw, fd = tangent_and_adjoint(q, dq, w)
    lhs, rhs = jnp.vdot(mdq, w), jnp.vdot(dq, atw)
    assert abs(float(lhs - rhs)) <= 1e-12 * abs(float(lhs))
    # the tangent-linear model is the derivative of the step
    np.testing.assert_allclose(mdq, fd, rtol=0, atol=1e-7 * float(jnp.max(abs(fd))))


def test_inversions_velocity_ssh_and_filter():
    model = QG(GRID, layers=1, deformation_radius=3.0e4, coriolis=8e-5, gravity=9.8)
    kx, ky, wave = _mode(GRID, 3, 0)
    psi = wave(0.0)[None]
    q = model.potential_vorticity(jnp.asarray(psi))
    np.testing.assert_allclose(q, -(kx**2 + 3.0e4**-2) * psi, atol=1e-18)
    np.testing.assert_allclose(model.streamfunction(q), psi, atol=1e-12)
    vel = model.velocity(q)  # u = -psi_y = 0, v = psi_x = -kx sin(kx x)
    y, x = (np.asarray(a) for a in GRID.meshgrid())
    np.testing.assert_allclose(vel[0, 0], 0, atol=1e-18)
    np.testing.assert_allclose(vel[0, 1], -kx * np.sin(kx * x), atol=1e-18)
    np.testing.assert_allclose(model.ssh(q), 8e-5 * psi[0] / 9.8, atol=1e-15)
    np.testing.assert_allclose(model.ssh_to_pv(model.ssh(q)), q[0], rtol=1e-12)
    filt = np.asarray(model.spectral_filter())
    assert filt[0, 0] == 1 and filt[0, 3] == 1 and filt[8, 8] < 1e-14
    # batched diagnostics
    qs = jnp.stack([q, 2 * q])
    np.testing.assert_allclose(model.energy(qs), model.energy(q) * jnp.array([1, 4]))


def test_float32_step_and_jit(getkey):
    model = QG(GRID, layers=2)
    q = model.random_state(getkey(), dtype=jnp.float32)
    assert q.dtype == jnp.float32
    step = QGStep(model, 3600.0)
    q1 = jax.jit(step)(q)
    assert q1.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(q1)))
    q64 = jax.jit(step)(q.astype(jnp.float64))
    np.testing.assert_allclose(q1, q64, rtol=0, atol=1e-5 * float(jnp.max(abs(q64))))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="`grid` must be periodic"):
        QG(Grid.square(16, 1.0, boundary="closed"))
    with pytest.raises(ValueError, match="`layers` must be 1 or 2"):
        QG(GRID, layers=3)
    with pytest.raises(ValueError, match="`upper_flow` is a two-layer parameter"):
        QG(GRID, upper_flow=0.1)
    with pytest.raises(ValueError, match="`deformation_radius` must be"):
        QG(GRID, deformation_radius=-1.0)
    with pytest.raises(ValueError, match="`deformation_radius` must be a number"):
        QG(GRID, layers=2, deformation_radius=None)
    with pytest.raises(ValueError, match="`drag` must be finite and >= 0"):
        QG(GRID, drag=-1.0)
    model = QG(GRID)
    with pytest.raises(ValueError, match=r"`q` must have shape \(\*, 1, 16, 16\)"):
        model.streamfunction(jnp.zeros((2, 16, 16)))
    with pytest.raises(TypeError, match="`model` must be a jaxda.models.QG"):
        QGStep(object(), 1.0)
    with pytest.raises(ValueError, match="`q` must have shape"):
        QGStep(model, 1.0).advance(jnp.zeros((2, 16, 16)), 3)


def test_turbulence_preset(getkey):
    preset = qg_turbulence(getkey(), 16, spinup_steps=40, wavelength=5e5)
    model, q0 = preset.model, preset.initial_state
    assert preset.dt == pytest.approx(0.5 * float(model.max_stable_dt(q0)))
    assert preset.flow.dt == preset.dt and preset.state.shape == (1, 16, 16)
    np.testing.assert_allclose(preset.state, preset.flow.advance(q0, 40), rtol=1e-12)
    e0, e1 = model.energy(q0), model.energy(preset.state)
    assert 0.8 < float(e1 / e0) <= 1.0  # no drag: only the filter takes energy
    assert float(model.enstrophy(preset.state)[0]) < float(model.enstrophy(q0)[0])
    with pytest.raises(ValueError, match="`courant` must be in"):
        qg_turbulence(getkey(), 16, courant=2.0)
