"""4DVarNet on 2-d gridded windows (T, ny, nx): the tasks of a window (the loss on
chosen steps, the forecast mask), the variational cost's gradient, periodicity."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_jvp

import jaxda.fourdvarnet as fdn
from jaxda.obs import Observations


N, T = 16, 9


def _window(key, dtype=jnp.float64):
    """A smooth periodic field translating one cell per step, 20 % observed."""
    k1, k2, k3 = jax.random.split(key, 3)
    k = jnp.fft.fftfreq(N)
    filt = jnp.exp(-(k[:, None] ** 2 + k[None, :] ** 2) * 40.0)
    white = jax.random.normal(k1, (N, N), dtype)
    base = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(white) * filt))
    base = base / jnp.std(base)
    truth = jnp.stack([jnp.roll(base, t, axis=-1) for t in range(T)])
    mask = jax.random.uniform(k2, truth.shape) < 0.2
    noise = 0.1 * jax.random.normal(k3, truth.shape, dtype)
    return truth, Observations(jnp.where(mask, truth + noise, 0.0), mask)


@pytest.fixture(scope="module")
def model():
    k1, k2 = jax.random.split(jax.random.key(3))
    prior = fdn.UNetPrior((N, N), T, key=k1, width=2, periodic=(True, True))
    solver = fdn.ConvLSTMSolver(
        (N, N), key=k2, layout="field", hidden=2, periodic_space=True
    )
    cost = fdn.VariationalCost(prior, reduction="mean", dtype=jnp.float64)
    return fdn.FourDVarNet(cost, solver, n_iter=2)


_forward = eqx.filter_jit(lambda model, obs: model(obs))


@eqx.filter_jit
def _losses(model, obs, truth, other, key):
    per_example = fdn.make_fourdvarnet_loss(steps=-1)
    return (
        fdn.supervised_loss(model, obs, other, steps=4),
        fdn.supervised_loss(model, obs, truth, steps=(4, -1)),
        per_example(model, {"obs": obs, "truth": truth}, key),
    )


def _time_smoothing(x):
    """A cheap linear prior: the mean of the neighbouring steps (periodic)."""
    return 0.5 * (jnp.roll(x, 1, axis=0) + jnp.roll(x, -1, axis=0))


def test_step_loss_is_the_mse_of_those_steps(getkey):
    truth, obs = _window(getkey())
    cost = fdn.VariationalCost(_time_smoothing, reduction="mean", dtype=jnp.float64)
    model = fdn.FourDVarNet(cost, fdn.TrainableStepGradient(0.3), n_iter=3)
    # `other` differs from the truth at every step but 4: the loss on step 4 is
    # the MSE of step 4 against the truth
    other = truth.at[:4].set(0.0).at[5:].set(7.0)
    step4, steps_4_8, last = _losses(model, obs, truth, other, getkey())
    sq = np.asarray((_forward(model, obs) - truth) ** 2)
    np.testing.assert_allclose(step4, sq[4].mean(), rtol=1e-12)
    np.testing.assert_allclose(steps_4_8, sq[[4, 8]].mean(), rtol=1e-12)
    np.testing.assert_allclose(last, sq[8].mean(), rtol=1e-12)
    assert abs(float(step4) - sq.mean()) > 1e-3 * sq.mean()


def test_window_steps_and_bad_steps(model, getkey):
    assert fdn.window_steps(None, 3) == (0, 1, 2)
    assert fdn.window_steps(-1, 9) == (8,)
    assert fdn.window_steps((4, np.int64(-2)), 9) == (4, 7)
    with pytest.raises(ValueError, match=r"\[-9, 9\).*got 9"):
        fdn.window_steps(9, 9)
    with pytest.raises(ValueError, match="repeat"):
        fdn.window_steps((8, -1), 9)
    with pytest.raises(ValueError, match="at least one"):
        fdn.window_steps((), 9)
    with pytest.raises(TypeError, match="`steps` must be an int"):
        fdn.window_steps(4.0, 9)
    with pytest.raises(ValueError, match="mode='unsupervised'"):
        fdn.make_fourdvarnet_loss("unsupervised", steps=4)
    truth, obs = _window(getkey())
    batch = jax.tree.map(lambda a: a[None], (obs, truth))
    data = fdn.make_training_data(*batch)
    stage = fdn.CurriculumStage(2, 1)
    with pytest.raises(ValueError, match=r"`steps` must be in \[-9, 9\)"):
        fdn.fit_fourdvarnet(
            model, data, key=getkey(), batch_size=1, stages=[stage], steps=12
        )


def test_forecast_observations(model, getkey):
    truth, obs = _window(getkey())
    fc = fdn.forecast_observations(obs, 2)
    assert not bool(fc.mask[7:].any())
    assert bool(jnp.all(fc.values[7:] == 0.0))
    np.testing.assert_array_equal(fc.mask[:7], obs.mask[:7])
    np.testing.assert_array_equal(fc.values[:7], obs.values[:7])
    assert fdn.forecast_observations(obs, 0) is obs
    # a batch with the time axis second is the per-window removal
    batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), obs, fc)
    out = fdn.forecast_observations(batch, 4, time_axis=1)
    for i, o in enumerate((obs, fc)):
        want = fdn.forecast_observations(o, 4)
        np.testing.assert_array_equal(out.mask[i], want.mask)
        np.testing.assert_array_equal(out.values[i], want.values)
    # the network's forecast does not see the removed steps' values
    changed = Observations(obs.values.at[7:].add(3.0), obs.mask)
    run = eqx.filter_jit(model)
    np.testing.assert_array_equal(run(fdn.forecast_observations(changed, 2)), run(fc))
    with pytest.raises(ValueError, match="`lead` must be < the window's 9"):
        fdn.forecast_observations(obs, 9)
    with pytest.raises(ValueError, match="`lead` must be >= 0"):
        fdn.forecast_observations(obs, -1)
    with pytest.raises(ValueError, match="`time_axis`"):
        fdn.forecast_observations(obs, 1, time_axis=3)
    with pytest.raises(TypeError, match="Observations"):
        fdn.forecast_observations(obs.values, 1)


def test_cost_gradient_matches_finite_differences(model, getkey):
    """The gradient the unroll feeds the solver, jax.grad of U(x) = lam_o / |Omega|
    sum_Omega (x - y)^2 + lam_p / |x| sum (x - Phi(x))^2 with the periodic UNet, is
    the cost's directional derivative (central differences, float64)."""
    truth, obs = _window(getkey())
    cost = model.cost
    x = truth + 0.3 * jax.random.normal(getkey(), truth.shape)
    v = jax.random.normal(getkey(), truth.shape)
    g = eqx.filter_jit(jax.grad(lambda x: cost(x, obs)))(x)
    fd = finite_difference_jvp(lambda x: cost(x, obs), x, v, eps=1e-5)
    np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=1e-7)
    # the definition, term by term
    o = jnp.sum(jnp.where(obs.mask, x - obs.values, 0.0) ** 2) / jnp.sum(obs.mask)
    p = jnp.mean((x - cost.prior(x)) ** 2)
    np.testing.assert_allclose(
        cost(x, obs), cost.lam_obs * o + cost.lam_prior * p, rtol=1e-12
    )


def test_periodic_model_commutes_with_even_shifts(model, getkey):
    """Periodic UNet (2x2 pooling) and periodic ConvLSTM: shifting the observations
    by an even number of cells shifts the estimate by the same."""
    truth, obs = _window(getkey())
    shifted = jax.tree.map(lambda a: jnp.roll(a, (2, -4), axis=(-2, -1)), obs)
    x, x_shifted = _forward(model, obs), _forward(model, shifted)
    np.testing.assert_allclose(
        x_shifted, jnp.roll(x, (2, -4), axis=(-2, -1)), rtol=1e-10, atol=1e-12
    )
    # and the zero padding of a non-periodic UNet does not
    k = jax.random.key(3)
    flat = eqx.tree_at(
        lambda m: m.cost.prior,
        model,
        fdn.UNetPrior((N, N), T, key=jax.random.split(k)[0], width=2),
    )
    y, y_shifted = _forward(flat, obs), _forward(flat, shifted)
    assert float(jnp.max(jnp.abs(y_shifted - jnp.roll(y, (2, -4), (-2, -1))))) > 1e-3
