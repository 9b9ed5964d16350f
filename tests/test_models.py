"""Dynamics: vector fields, `simulate`, flow maps, noise statistics, validation."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_grad
from scipy.integrate import solve_ivp

import jaxda
import jaxda.models as jm


# -- small test models


class OU(jm.AbstractDynamics):
    """dx/dt = -theta x: with additive noise an Ornstein-Uhlenbeck process.

    A (2, 3) state: checks that non-vector states work too.
    """

    theta: float = 2.0

    def vector_field(self, t, x):
        return -self.theta * x

    @property
    def state_shape(self):
        return (2, 3)


class Forced(jm.AbstractDynamics):
    """dx/dt = cos(t): x(t) = x(s) + sin(t) - sin(s), checks the time convention."""

    def vector_field(self, t, x):
        return jnp.cos(t) * jnp.ones_like(x)

    @property
    def state_shape(self):
        return (1,)


class BlowUp(jm.AbstractDynamics):
    """dx/dt = x^2: from x = 1 the solution 1 / (1 - t) is infinite at t = 1."""

    def vector_field(self, t, x):
        return x**2

    @property
    def state_shape(self):
        return (1,)


def _numpy_vector_field(model):
    """The equations written again in NumPy (independent of the library's code)."""
    if isinstance(model, jm.Lorenz63):
        s, r, b = model.sigma, model.rho, model.beta
        return lambda t, x: [s * (x[1] - x[0]), r * x[0] - x[1] - x[0] * x[2],
                             x[0] * x[1] - b * x[2]]  # fmt: skip
    n, forcing = model.n, model.forcing
    i = np.arange(n)
    return lambda t, x: (x[(i + 1) % n] - x[(i - 2) % n]) * x[(i - 1) % n] - x + forcing


def _reference(model, x0, dt, n_steps):
    """scipy DOP853 at tolerance 1e-12 in float64: an independent reference."""
    f = _numpy_vector_field(model)

    ts = dt * np.arange(n_steps + 1)
    sol = solve_ivp(
        f,
        (0.0, ts[-1]),
        np.asarray(x0, np.float64),
        "DOP853",
        ts,
        rtol=1e-12,
        atol=1e-12,
    )
    return sol.y.T


# -- trajectories against an independent reference


@pytest.mark.parametrize(
    "model, x0, dt, n_steps",
    [
        (jm.Lorenz63(), np.array([1.0, 2.0, 20.0]), 0.01, 100),
        (jm.Lorenz96(n=8), 8.0 + np.sin(np.arange(8.0)), 0.05, 20),
    ],
    ids=["L63", "L96-8"],
)
def test_simulate_matches_scipy(model, x0, dt, n_steps):
    ref = _reference(model, x0, dt, n_steps)
    x0 = jnp.asarray(x0)
    tight = jm.simulate(model, x0, dt=dt, n_steps=n_steps, rtol=1e-10, atol=1e-10).ys
    assert tight.shape == (n_steps + 1, *model.state_shape)
    np.testing.assert_allclose(tight[0], x0, rtol=0, atol=0)
    np.testing.assert_allclose(tight, ref, rtol=0, atol=1e-7)
    # Default tolerances: less accurate, not exact (the tolerances are used).
    default = jm.simulate(model, x0, dt=dt, n_steps=n_steps).ys
    assert 1e-9 < np.max(np.abs(default - ref)) < 1e-3
    if isinstance(model, jm.Lorenz63):
        dopri = jm.simulate(
            model, x0, dt=dt, n_steps=n_steps, solver="dopri5", rtol=1e-10, atol=1e-10
        ).ys
        np.testing.assert_allclose(dopri, ref, rtol=0, atol=1e-6)
    rk4 = jm.simulate(model, x0, dt=dt, n_steps=n_steps, solver="rk4", substeps=20).ys
    np.testing.assert_allclose(rk4, ref, rtol=0, atol=1e-5)


def test_lorenz96_fixed_point():
    model = jm.Lorenz96(n=8, forcing=8.0)
    x0 = jnp.full(8, 8.0)
    np.testing.assert_array_equal(model.vector_field(0.0, x0), jnp.zeros(8))
    xs = jm.simulate(model, x0, dt=0.05, n_steps=20).ys
    np.testing.assert_allclose(xs, 8.0, rtol=0, atol=1e-12)
    for method in ("rk4", "euler", "tsit5"):
        ys = jm.rollout(jm.flow_map(model, 0.05, method), x0, 20)
        np.testing.assert_allclose(ys, 8.0, rtol=0, atol=1e-12)
    # ... and is unstable: a 1e-6 nudge grows ~800x in one time unit, so the test
    # above is not vacuous.
    zs = jm.simulate(model, x0.at[0].add(1e-6), dt=0.05, n_steps=20).ys
    assert np.max(np.abs(zs[-1] - 8.0)) > 1e-4


def _pendulum_energy(model, xs):
    theta, omega = xs[..., 0], xs[..., 1]
    return 0.5 * omega**2 + model.omega0_sq * (1.0 - jnp.cos(theta))


def test_pendulum_energy():
    x0 = jnp.array([2.0, 0.0])  # large amplitude: nonlinear regime
    dt, n = 0.1, 100
    # Array parameters: both models share one compilation.
    free = jm.Pendulum(omega0_sq=jnp.array(2.0), damping=jnp.array(0.0))
    xs = jm.simulate(free, x0, dt=dt, n_steps=n, rtol=1e-10, atol=1e-10).ys
    energy = _pendulum_energy(free, xs)
    np.testing.assert_allclose(energy, energy[0], rtol=1e-8)
    assert np.ptp(np.asarray(xs[:, 0])) > 3.0  # it actually swings

    damped = jm.Pendulum(omega0_sq=jnp.array(2.0), damping=jnp.array(0.3))
    xs = jm.simulate(damped, x0, dt=dt, n_steps=n, rtol=1e-10, atol=1e-10).ys
    energy = np.asarray(_pendulum_energy(damped, xs))
    assert np.all(np.diff(energy) <= 1e-12)
    # dE/dt = -gamma omega^2: check the energy balance with a trapezoidal integral.
    omega2 = np.asarray(xs[:, 1]) ** 2
    dissipated = 0.3 * np.trapezoid(omega2, dx=dt)
    np.testing.assert_allclose(energy[0] - energy[-1], dissipated, rtol=2e-3)
    assert energy[-1] < 0.1 * energy[0]


def test_time_convention_t0_and_burn_in():
    model = Forced()
    x0 = jnp.array([0.5])
    t0, dt, n, burn = 1.0, 0.1, 10, 5
    ts = t0 + dt * np.arange(n + 1)
    xs = jm.simulate(model, x0, dt=dt, n_steps=n, t0=t0, solver="rk4").ys
    np.testing.assert_allclose(xs[:, 0], 0.5 + np.sin(ts) - np.sin(t0), atol=1e-8)
    for solver in ("tsit5", "rk4"):
        # Burn-in covers [t0 - burn dt, t0]: output still at the times ts.
        xb = jm.simulate(
            model, x0, dt=dt, n_steps=n, t0=t0, burn_in_steps=burn, solver=solver,
            rtol=1e-10, atol=1e-12,
        ).ys  # fmt: skip
        start = t0 - burn * dt
        np.testing.assert_allclose(
            xb[:, 0], 0.5 + np.sin(ts) - np.sin(start), atol=1e-8
        )
    ys = jm.rollout(jm.flow_map(model, dt, "rk4"), x0, n, t0=t0)
    np.testing.assert_allclose(ys[:, 0], 0.5 + np.sin(ts) - np.sin(t0), atol=1e-6)


# -- flow maps: agreement with simulate, convergence order


def _order_slope(method, model, x0, dts, horizon):
    ref = _reference(model, x0, horizon, 1)[-1]
    errors = []
    for dt in dts:
        n = round(horizon / dt)
        xs = jm.rollout(jm.flow_map(model, dt, method), x0, n)
        errors.append(float(jnp.max(jnp.abs(xs[-1] - ref))))
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize(
    "method, order, dts, upper",
    [
        ("rk4", 4, [0.02, 0.01, 0.005, 0.0025], 0.35),
        ("euler", 1, [0.004, 0.002, 0.001, 0.0005], 0.35),
        # Tsit5's tuned error coefficients make it converge faster than dt^5 over the
        # step sizes where its error is still above round-off (measured slope ~5.5).
        ("tsit5", 5, [0.02, 0.01, 0.005, 0.0025], 0.8),
    ],
)
def test_flow_map_convergence_order(method, order, dts, upper):
    model, x0 = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0])
    slope, errors = _order_slope(method, model, x0, dts, horizon=0.4)
    assert jm.flow_map(model, 0.01, method).order == order
    assert order - 0.35 < slope < order + upper, (slope, errors)


def test_flow_map_agrees_with_simulate():
    model, x0, dt = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0]), 0.01
    xs = jm.simulate(model, x0, dt=dt, n_steps=100, rtol=1e-12, atol=1e-12).ys
    ys = jm.rollout(jm.flow_map(model, dt), x0, 100)
    err = np.max(np.abs(xs - ys))
    assert 1e-8 < err < 1e-3  # RK4 error ~ C dt^4 over the horizon
    # Halving the step divides the error by 2^4.
    zs = jm.rollout(jm.flow_map(model, dt, substeps=2), x0, 100)
    np.testing.assert_allclose(np.max(np.abs(xs - zs)), err / 16, rtol=0.2)
    # simulate(solver="rk4") is the same flow map.
    np.testing.assert_allclose(
        jm.simulate(model, x0, dt=dt, n_steps=100, solver="rk4").ys, ys, atol=1e-12
    )


def test_diffrax_step_order_and_value():
    model, x0, dt = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0]), 0.01
    step = jm.DiffraxStep(model, dt, 1, diffrax.Heun())
    assert step.order == 2
    assert jm.DiffraxStep(model, dt).order == 5
    f = model.vector_field(0.0, x0)
    heun = x0 + dt / 2 * (f + model.vector_field(dt, x0 + dt * f))
    np.testing.assert_allclose(step(x0), heun, rtol=1e-14)


# -- noise, keys, vmap, jit, dtypes


def test_keys_determinism(getkey):
    model, x0 = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0])
    key = getkey()
    kw = dict(dt=0.01, n_steps=20, process_noise_std=0.1)
    a = jm.simulate(model, x0, key=key, **kw).ys
    b = jm.simulate(model, x0, key=key, **kw).ys
    c = jm.simulate(model, x0, key=getkey(), **kw).ys
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-3
    np.testing.assert_array_equal(a[0], c[0])  # no noise on the initial state
    # Zero noise: deterministic, key ignored.
    d = jm.simulate(model, x0, dt=0.01, n_steps=100, key=getkey()).ys
    np.testing.assert_array_equal(d, jm.simulate(model, x0, dt=0.01, n_steps=100).ys)


def _zscore_var(samples, var):
    """How many standard errors the sample variance is from `var` (Gaussian samples)."""
    n = samples.size
    return abs(float(np.mean(samples**2)) - var) / (var * np.sqrt(2.0 / n))


def test_increment_noise_variance(getkey):
    # Residuals x[k+1] - Phi(x[k]) are exactly the added noise: N(0, sigma^2 I).
    # (The noise code is shared by all deterministic steppers: RK4 makes Phi exact.)
    model, dt, sigma, n = jm.Lorenz63(), 0.025, np.sqrt(0.025), 32
    # 64 starting points along one trajectory on the attractor.
    x0s = jm.simulate(
        model, jnp.array([1.0, 2.0, 20.0]), dt=0.1, n_steps=80, solver="rk4", substeps=4
    ).ys[17:]
    keys = jax.random.split(getkey(), 64)
    sim = jax.vmap(
        lambda x, k: (
            jm.simulate(
                model, x, dt=dt, n_steps=n, key=k, process_noise_std=sigma, solver="rk4"
            ).ys
        )
    )
    xs = sim(x0s, keys)
    phi = jax.jit(jax.vmap(jax.vmap(jm.flow_map(model, dt))))
    resid = np.asarray(xs[:, 1:] - phi(xs[:, :-1]))
    assert _zscore_var(resid, sigma**2) < 4.5
    assert abs(resid.mean()) < 4.5 * sigma / np.sqrt(resid.size)
    # independent across time: lag-1 correlation ~ 0
    corr = np.mean(resid[:, 1:] * resid[:, :-1]) / sigma**2
    assert abs(corr) < 4.5 / np.sqrt(resid[:, 1:].size)


def test_sde_noise_ornstein_uhlenbeck(getkey):
    # dx = -theta x dt + sigma dW: x(t+dt) = e^{-theta dt} x(t) + N(0, s^2),
    # s^2 = sigma^2 (1 - e^{-2 theta dt}) / (2 theta).
    model, dt, sigma, n = OU(theta=2.0), 0.1, 0.5, 40
    s2 = sigma**2 * (1 - np.exp(-2 * 2.0 * dt)) / (2 * 2.0)
    keys = jax.random.split(getkey(), 64)
    x0s = jax.random.normal(getkey(), (64, 2, 3), dtype=jnp.float32)  # float32 path
    sim = jax.jit(
        jax.vmap(
            lambda x, k: (
                jm.simulate(
                    model,
                    x,
                    dt=dt,
                    n_steps=n,
                    key=k,
                    process_noise_std=sigma,
                    noise="sde",
                    substeps=4,
                ).ys
            )  # fmt: skip
        )
    )
    xs = sim(x0s, keys)
    assert xs.shape == (64, n + 1, 2, 3) and xs.dtype == jnp.float32
    np.testing.assert_array_equal(xs, sim(x0s, keys))  # same keys, same paths
    np.testing.assert_array_equal(xs[:, 0], x0s)
    xs = np.asarray(xs, dtype=np.float64)
    resid = xs[:, 1:] - np.exp(-2.0 * dt) * xs[:, :-1]
    assert _zscore_var(resid, s2) < 4.5
    assert abs(resid.mean()) < 4.5 * np.sqrt(s2 / resid.size)
    # Different keys give different paths.
    assert np.min(np.abs(resid[0] - resid[1])) > 0


def test_vmap_jit_match_single_calls(getkey):
    model = jm.Lorenz63()
    x0s = jnp.array([[1.0, 2.0, 20.0], [-3.0, 1.0, 15.0], [0.5, 0.5, 30.0]])
    keys = jax.random.split(getkey(), 3)

    def one(x, k):
        return jm.simulate(
            model, x, dt=0.01, n_steps=20, key=k, process_noise_std=0.1
        ).ys

    batched = jax.jit(jax.vmap(one))(x0s, keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], one(x0s[i], keys[i]), rtol=1e-12)
    # Deterministic: vmapped adaptive solve equals single solves to the tolerance.
    # (Deterministic vmapped solves: test_sample_initial_states.)


@pytest.mark.parametrize("kw", [{}, {"solver": "rk4"}], ids=["tsit5", "rk4"])
def test_dtypes(kw):
    # (float32 SDE: test_sde_noise_ornstein_uhlenbeck.)
    model = jm.Lorenz63()
    x32 = jnp.array([1.0, 2.0, 20.0], dtype=jnp.float32)
    xs32 = jm.simulate(model, x32, dt=0.01, n_steps=100, **kw).ys
    xs64 = jm.simulate(model, x32.astype(jnp.float64), dt=0.01, n_steps=100, **kw).ys
    assert xs32.dtype == jnp.float32 and xs64.dtype == jnp.float64
    np.testing.assert_allclose(xs32, xs64, rtol=1e-3, atol=1e-3)
    assert jm.rollout(jm.flow_map(model, 0.01), x32, 5).dtype == jnp.float32
    if kw:  # (the noise code is shared by all deterministic steppers)
        key = jax.random.key(1)
        noisy = jm.simulate(
            model, x32, dt=0.01, n_steps=20, key=key, process_noise_std=0.1, **kw
        ).ys
        assert noisy.dtype == jnp.float32 and np.all(np.isfinite(noisy))


def test_sample_initial_states(getkey):
    model = jm.Lorenz63()
    key = getkey()
    xs = jm.sample_initial_states(model, key, 64, burn_in_time=10.0)
    assert xs.shape == (64, 3)
    np.testing.assert_array_equal(
        xs, jm.sample_initial_states(model, key, 64, burn_in_time=10.0)
    )
    assert np.all(np.std(np.asarray(xs), axis=0) > 3.0)  # spread over the attractor
    # On the attractor: u3 mean ~ 23.5, and no sample near the origin.
    assert 19.0 < float(xs[:, 2].mean()) < 28.0
    assert np.all(np.linalg.norm(np.asarray(xs), axis=1) > 3.0)
    x = jm.sample_initial_states(jm.Lorenz96(n=8), key, 2, burn_in_time=0.0, spread=0.0)
    np.testing.assert_allclose(x, jm.Lorenz96(n=8).reference_state[None].repeat(2, 0))


# -- failure reporting


def test_failure_is_reported():
    model, x0 = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0])
    sim = jm.simulate(model, x0, dt=0.01, n_steps=100, throw=False)
    assert isinstance(sim, jm.Simulation) and sim.result == jaxda.RESULTS.successful
    assert sim.ys.shape == (101, 3)
    np.testing.assert_allclose(sim.ts, 0.01 * np.arange(101), rtol=1e-12)
    kw = dict(dt=0.5, n_steps=100, max_steps=20)
    sim = jm.simulate(model, x0, **kw, throw=False)
    assert sim.result == jaxda.RESULTS.max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        jax.block_until_ready(jm.simulate(model, x0, **kw))
    blow = BlowUp()
    kw = dict(dt=0.5, n_steps=10, solver="rk4")
    sim = jm.simulate(blow, jnp.ones(1), **kw, throw=False)
    assert sim.result == jaxda.RESULTS.nonfinite
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        jax.block_until_ready(jm.simulate(blow, jnp.ones(1), **kw))
    # inside jit and vmap, one failing member is flagged, the others are not
    f = jax.jit(
        jax.vmap(lambda x: jm.simulate(blow, x, **kw, throw=False).result._value)
    )
    np.testing.assert_array_equal(
        f(jnp.array([[1.0], [-1.0]])),
        [jaxda.RESULTS.nonfinite._value, jaxda.RESULTS.successful._value],
    )


_SLOW = pytest.mark.slow  # compile-heavy variants run with -m slow


@pytest.mark.parametrize("noise", ["increment", pytest.param("sde", marks=_SLOW)])
def test_noisy_paths_report_max_steps(noise):
    # The per-interval diffrax solves (increment noise, adaptive solver) and the SDE
    # solve map diffrax's max_steps_reached to jaxda's, with the trajectory kept.
    model, x0 = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0])
    kw = dict(dt=0.1, n_steps=4, key=jax.random.key(0), process_noise_std=0.1)
    kw |= dict(noise=noise, solver="tsit5" if noise == "increment" else "euler")
    ok = jm.simulate(model, x0, **kw, substeps=2, throw=False)
    assert ok.result == jaxda.RESULTS.successful and np.all(np.isfinite(ok.ys))
    bad = jm.simulate(model, x0, **kw, substeps=2, max_steps=3, throw=False)
    assert bad.result == jaxda.RESULTS.max_steps_reached


def test_failure_under_jit_same_as_eager():
    # throw=True raises the same message under jit as eagerly (not a bare callback
    # error); throw=False returns the result instead.
    blow, kw = BlowUp(), dict(dt=0.5, n_steps=10, solver="rk4")
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(
            jax.jit(lambda x: jm.simulate(blow, x, **kw).ys)(jnp.ones(1))
        )
    res = jax.jit(lambda x: jm.simulate(blow, x, **kw, throw=False).result)(jnp.ones(1))
    assert res == jaxda.RESULTS.nonfinite


# Two cases in the default run (each compiles a simulation); all six with -m slow.
@pytest.mark.parametrize(
    "name, bad, good",
    [("dt", -0.01, 0.01), pytest.param("dt", np.nan, 0.01, marks=_SLOW),
     pytest.param("t0", np.inf, 0.0, marks=_SLOW),
     pytest.param("process_noise_std", -1.0, 0.0, marks=_SLOW),
     pytest.param("rtol", 0.0, 1e-6, marks=_SLOW), ("x0", np.nan, 1.0)],
)  # fmt: skip
def test_traced_invalid_input_is_reported(name, bad, good):
    # Eagerly these raise ValueError (test_simulate_validation); traced under jit they
    # are reported as invalid_input and nothing is integrated (dt < 0 used to run the
    # model backwards).
    model, x0 = jm.Lorenz63(), jnp.array([1.0, 2.0, 20.0])
    key = jax.random.key(0) if name == "process_noise_std" else None

    def run(v, throw):
        kw = {} if name == "x0" else {name: v}
        x = x0 * v if name == "x0" else x0
        return jm.simulate(
            model, x, n_steps=5, key=key, throw=throw, **{"dt": 0.01} | kw
        )

    sim = jax.jit(lambda v: run(v, False))(jnp.asarray(bad))
    assert sim.result == jaxda.RESULTS.invalid_input
    assert np.all(np.isnan(sim.ys))
    with pytest.raises(Exception, match="value check"):
        jax.block_until_ready(jax.jit(lambda v: run(v, True).ys)(jnp.asarray(bad)))
    # The same traced call with a valid value succeeds.
    sim = jax.jit(lambda v: run(v, False))(jnp.asarray(good))
    assert sim.result == jaxda.RESULTS.successful and np.all(np.isfinite(sim.ys))


# -- validation at the boundary


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(dt=0.0), ValueError, "dt"),
        (dict(dt=-0.1), ValueError, "dt"),
        (dict(dt=np.nan), ValueError, "dt"),
        (dict(dt=jnp.ones(2)), ValueError, "dt"),
        (dict(dt="0.1"), TypeError, "`dt` must be a real number"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(n_steps=2.5), TypeError, "n_steps"),
        (dict(x0=jnp.ones(4)), ValueError, "x0"),
        (dict(x0=jnp.ones((2, 3))), ValueError, "x0"),
        (dict(x0=jnp.array([1.0, np.nan, 0.0])), ValueError, "x0"),
        (
            dict(process_noise_std=-1.0, key=jax.random.key(0)),
            ValueError,
            "process_noise_std",
        ),
        (dict(process_noise_std=0.1), ValueError, "key"),
        (dict(process_noise_std=0.1, key=3), TypeError, "key"),
        (dict(noise="gaussian"), ValueError, "noise"),
        (dict(solver="rk45"), ValueError, "solver"),
        (
            dict(
                solver="tsit5",
                noise="sde",
                process_noise_std=0.1,
                key=jax.random.key(0),
            ),
            ValueError,
            "solver",
        ),  # fmt: skip
        (dict(burn_in_steps=-1), ValueError, "burn_in_steps"),
        (dict(substeps=0), ValueError, "substeps"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(max_steps=0), ValueError, "max_steps"),
        (dict(t0=np.inf), ValueError, "t0"),
        (dict(model=lambda t, x: x), TypeError, "model"),
    ],
)
def test_simulate_validation(kw, exc, match):
    args = dict(model=jm.Lorenz63(), x0=jnp.ones(3), dt=0.01, n_steps=5) | kw
    model, x0 = args.pop("model"), args.pop("x0")
    with pytest.raises(exc, match=match):
        jm.simulate(model, x0, **args)


@pytest.mark.parametrize(
    "make, name",
    [(lambda v: jm.Lorenz63(rho=v), "rho"), (lambda v: jm.Lorenz63(sigma=v), "sigma"),
     (lambda v: jm.Lorenz96(8, v), "forcing"),
     (lambda v: jm.Pendulum(damping=v), "damping")],
)  # fmt: skip
def test_model_parameters_must_be_real_numbers(make, name):
    # reliability probe, defects 13 and 15: Lorenz63(rho="a") was accepted and failed
    # later with "Only integer scalar arrays ..."; now the parameter is named.
    for bad in ("a", None, True, 1j, [1.0, 2.0]):
        with pytest.raises(TypeError, match=f"`{name}` must be a real number"):
            make(bad)
    with pytest.raises(ValueError, match=f"`{name}` must be finite"):
        make(np.nan)
    # Real numbers, integer or floating arrays, and traced values are accepted, and
    # the parameter is used: the vector field depends on it.
    x = jnp.array([1.0, 2.0, 20.0]) if name != "forcing" else jnp.ones(8)
    x = x[:2] if name == "damping" else x
    f1, f2 = make(1.5).vector_field(0.0, x), make(jnp.array(2.5)).vector_field(0.0, x)
    assert np.max(np.abs(f1 - f2)) > 0.1
    assert make(3).vector_field(0.0, x).shape == x.shape
    g = jax.jit(lambda v: make(v).vector_field(0.0, x))(jnp.asarray(1.5))
    np.testing.assert_allclose(g, f1, rtol=1e-12)


def test_other_validation():
    model = jm.Lorenz63()
    with pytest.raises(ValueError, match="dt"):
        jm.flow_map(model, 0.0)
    with pytest.raises(ValueError, match="method"):
        jm.flow_map(model, 0.1, "rk5")
    with pytest.raises(TypeError, match="model"):
        jm.flow_map(object(), 0.1)
    with pytest.raises(ValueError, match="x0"):
        jm.rollout(jm.flow_map(model, 0.1), jnp.ones(4), 3)
    with pytest.raises(ValueError, match="n_steps"):
        jm.rollout(jm.flow_map(model, 0.1), jnp.ones(3), -1)
    with pytest.raises(ValueError, match="n"):
        jm.Lorenz96(n=3)
    with pytest.raises(ValueError, match="burn_in_time"):
        jm.sample_initial_states(model, jax.random.key(0), 3, burn_in_time=-1.0)
    with pytest.raises(ValueError, match="spread"):
        jm.sample_initial_states(
            model, jax.random.key(0), 3, burn_in_time=1.0, spread=-1
        )


# -- learnable parameters


def test_grad_wrt_rho_matches_finite_differences():
    x0 = jnp.array([1.0, 2.0, 20.0])
    target = jm.rollout(jm.flow_map(jm.Lorenz63(rho=28.0), 0.01), x0, 50)

    def loss(rho):
        flow = jm.flow_map(jm.Lorenz63(rho=rho), 0.01)
        return jnp.mean((jm.rollout(flow, x0, 50) - target) ** 2)

    rho = jnp.array(27.0)
    g = jax.jit(jax.grad(loss))(rho)
    fd = finite_difference_grad(loss, rho, eps=1e-5)
    assert abs(float(g)) > 1e-2
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    # Module fields are learnable as a pytree: filter_grad sees sigma, rho, beta.
    grads = eqx.filter_grad(
        lambda m: jnp.sum(jm.rollout(jm.flow_map(m, 0.01), x0, 10) ** 2)
    )(jm.Lorenz63(sigma=jnp.array(10.0), rho=jnp.array(28.0), beta=jnp.array(8 / 3)))
    assert all(
        np.isfinite(float(v)) and float(v) != 0
        for v in (grads.sigma, grads.rho, grads.beta)
    )
