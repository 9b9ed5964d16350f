"""The generative motion estimator: noise-input UNet, fair-CRPS loss, training.

Small shallow-water basins (16 x 16, 4-state windows, the height observed at steps 0
and 3), a tiny net (width 4, one level), float64. Every network call is compiled.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_grad
from scipy.stats import norm

import jaxda
from jaxda.motion import (
    GaussianMotionNet,
    GenerativeMotionNet,
    MotionNet,
    basin_motion_samples,
    ensemble_crps_loss,
    first_guess,
    gaussian_crps_loss,
    mean_ensemble_loss,
    sample_ensembles,
    train_generative_motion_net,
)


N, T, EVERY, SIGMA = 16, 4, 3, 0.05
M = 5  # members


@pytest.fixture(scope="module")
def samples():
    return basin_motion_samples(
        jax.random.key(7), 12, n=N, n_times=T, every=EVERY, noise_std=SIGMA,
        spinup_steps=40, dtype=jnp.float64,
    )  # fmt: skip


def _net(input_noise=2, bottleneck_noise=2, seed=3):
    return GenerativeMotionNet(
        (T, 3, N, N), key=jax.random.key(seed), width=4, depth=1,
        input_noise=input_noise, bottleneck_noise=bottleneck_noise,
        dtype=jnp.float64,
    )  # fmt: skip


def _randomised(net, seed=1):
    """The net with a random (not zero) output layer, so every weight acts."""
    w = 0.3 * jax.random.normal(jax.random.key(seed), net.backbone.head.weight.shape)
    return eqx.tree_at(lambda m: m.backbone.head.weight, net, w)


@pytest.fixture(scope="module")
def net():
    return _randomised(_net())


@eqx.filter_jit
def _members(net, obs, key):
    """`net.sample` and the same members one call at a time."""
    ens = net.sample(obs, key, M)
    one = jax.lax.map(lambda k: net(obs, k), jax.random.split(key, M))
    return ens, one


def _pairwise_fair_crps(ens, y):
    """NumPy transcription of the fair CRPS, per point, averaged."""
    ens, y = np.asarray(ens, np.float64), np.asarray(y, np.float64)
    m = ens.shape[0]
    skill = np.mean(np.abs(ens - y), axis=0)
    spread = np.abs(ens[:, None] - ens[None]).sum(axis=(0, 1)) / (2 * m * (m - 1))
    return float(np.mean(skill - spread))


def test_members_are_draws_of_the_key(samples, net):
    obs = samples.sample(0)[1]
    ens, one = _members(net, obs, jax.random.key(0))
    again, _ = _members(net, obs, jax.random.key(0))
    other, _ = _members(net, obs, jax.random.key(1))
    assert ens.shape == (M, 3, N, N) and ens.dtype == jnp.float64
    np.testing.assert_array_equal(ens, again)  # same key, same members
    np.testing.assert_allclose(ens, one, rtol=1e-12, atol=1e-14)  # member i = key i
    assert np.min(np.abs(ens - other).max(axis=(1, 2, 3))) > 1e-3  # other key
    gaps = [np.abs(ens[i] - ens[j]).max() for i in range(M) for j in range(i)]
    assert min(gaps) > 1e-3  # the members differ from one another


def test_bottleneck_noise_only_shares_the_encoder(samples):
    """With `input_noise = 0`, `sample` encodes once: the same members as one call
    per draw."""
    net = _randomised(_net(input_noise=0, bottleneck_noise=3))
    ens, one = _members(net, samples.sample(1)[1], jax.random.key(2))
    np.testing.assert_allclose(ens, one, rtol=1e-12, atol=1e-14)
    assert np.abs(ens[0] - ens[1]).max() > 1e-3


def test_untrained_members_are_the_first_guess(samples):
    obs = samples.sample(0)[1]
    ens, _ = _members(_net(), obs, jax.random.key(0))
    guess = first_guess(obs)
    for member in ens:
        np.testing.assert_array_equal(member, guess)


@eqx.filter_jit
def _loss_and_members(net, example, key):
    return ensemble_crps_loss(M)(net, example, key), net.sample(example[1], key, M)


def test_loss_is_the_fair_crps_in_normalised_units(samples, net):
    x0, obs = samples.sample(2)
    loss, ens = _loss_and_members(net, (x0, obs), jax.random.key(5))
    scale = np.asarray(net.control_scale)[:, None, None]
    expected = _pairwise_fair_crps(np.asarray(ens) / scale, np.asarray(x0) / scale)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
    # the spread term counts (far above the tolerance): not the mean absolute error
    mae = float(np.mean(np.abs(np.asarray(ens) - np.asarray(x0)) / scale))
    assert abs(expected - mae) > 1e-6 * mae


@jax.jit
def _scores_of_draws(key, y):
    """Fair and empirical ("nrg") CRPS of 4-member N(0, 1) ensembles at `y`, one
    pair of scores per draw."""

    def one(k):
        ens = jax.random.normal(k, (4, *y.shape), jnp.float64)
        fair = jaxda.metrics.crps_ensemble(ens, y)
        return fair, jaxda.metrics.crps_ensemble(ens, y, estimator="nrg")

    return jax.lax.map(one, jax.random.split(key, 4000), batch_size=500)


def test_fair_crps_is_unbiased_for_the_truths_distribution():
    """E[CRPS_fair] over ensembles drawn from N(0, 1) is the CRPS of N(0, 1):
    y (2 Phi(y) - 1) + 2 phi(y) - 1 / sqrt(pi) [GR07], within 4 standard errors;
    the empirical-distribution form is biased by E|X - X'| / (2 m) = 1 / (4 sqrt(pi))
    and fails the same test."""
    y = np.random.default_rng(0).normal(size=32)
    exact = float(np.mean(y * (2 * norm.cdf(y) - 1) + 2 * norm.pdf(y) - np.pi**-0.5))
    fair, nrg = (np.asarray(s) for s in _scores_of_draws(jax.random.key(0), y))
    se = fair.std(ddof=1) / np.sqrt(fair.size)
    assert abs(fair.mean() - exact) < 4 * se
    assert abs(nrg.mean() - exact) > 20 * se
    np.testing.assert_allclose(nrg.mean() - exact, 0.25 / np.sqrt(np.pi), atol=6 * se)


def test_loss_gradient_matches_finite_differences(samples, net):
    """d loss / d (scales of the noise-input and the bottom convolutions), float64."""
    x0, obs = samples.sample(3)
    key = jax.random.key(9)
    loss_fn = ensemble_crps_loss(M)

    def loss(t):
        m = eqx.tree_at(
            lambda n: (n.backbone.encoders[0].a.weight, n.backbone.bottom.a.weight),
            net,
            (
                (1 + t[0]) * net.backbone.encoders[0].a.weight,
                (1 + t[1]) * net.backbone.bottom.a.weight,
            ),
        )
        return loss_fn(m, (x0, obs), key)

    t = jnp.zeros(2, jnp.float64)
    grad = eqx.filter_jit(jax.grad(loss))(t)
    fd = finite_difference_grad(loss, t, eps=1e-6)
    assert np.all(np.abs(fd) > 1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


def test_training_steps_and_batched_ensembles(samples):
    net0 = _net()
    train = (samples.initial[:8], jax.tree_util.tree_map(lambda a: a[:8], samples.obs))
    net, result = train_generative_motion_net(
        net0, train, key=jax.random.key(0), n_steps=3, n_members=3, batch_size=4,
        progress=False,
    )  # fmt: skip
    assert isinstance(net, GenerativeMotionNet)
    assert result.result == jaxda.RESULTS.successful
    assert result.losses.shape == (3,) and np.all(np.isfinite(result.losses))
    assert not eqx.tree_equal(net, net0)
    ens = sample_ensembles(net, samples.obs, jax.random.key(4), M, chunk_size=5)
    assert ens.shape == (12, M, 3, N, N)
    window_6, _ = _members(
        net, samples.sample(6)[1], jax.random.fold_in(jax.random.key(4), 6)
    )
    np.testing.assert_allclose(ens[6], window_6, rtol=1e-12, atol=1e-14)


def test_bad_input_is_reported(samples, net):
    obs = samples.sample(0)[1]
    with pytest.raises(ValueError, match="n_members"):
        net.sample(obs, jax.random.key(0), 1)
    with pytest.raises(ValueError, match="n_members"):
        ensemble_crps_loss(1)
    with pytest.raises(ValueError, match=r"shape the MotionNet was built for"):
        net.sample(samples.obs, jax.random.key(0), 3)  # a batch, not one window
    with pytest.raises(TypeError, match="key"):
        net.sample(obs, 0, 3)
    with pytest.raises(ValueError, match="both 0"):
        GenerativeMotionNet((T, 3, N, N), key=jax.random.key(0), input_noise=0,
                            bottleneck_noise=0)  # fmt: skip
    with pytest.raises(ValueError, match="input_noise"):
        GenerativeMotionNet((T, 3, N, N), key=jax.random.key(0), input_noise=-1)
    with pytest.raises(ValueError, match=r"`obs` must be a batch"):
        sample_ensembles(net, obs, jax.random.key(0), 3)
    mnet = MotionNet((T, 3, N, N), key=jax.random.key(0), width=4, depth=1)
    with pytest.raises(TypeError, match="GenerativeMotionNet"):
        train_generative_motion_net(mnet, samples, key=jax.random.key(0), n_steps=1)
    with pytest.raises(ValueError, match=r"samples.obs"):
        mean_ensemble_loss(
            ensemble_crps_loss(), net, (samples.initial[0], obs), key=jax.random.key(0)
        )


@pytest.fixture(scope="module")
def gaussian_net():
    net = GaussianMotionNet(
        (T, 3, N, N), key=jax.random.key(4), width=4, depth=1, init_std=0.2,
        dtype=jnp.float64,
    )  # fmt: skip
    w = 0.3 * jax.random.normal(jax.random.key(6), net.backbone.head.weight.shape)
    return eqx.tree_at(lambda m: m.backbone.head.weight, net, w)


@eqx.filter_jit
def _gaussian(net, example, key):
    mean, std = net(example[1])
    return mean, std, gaussian_crps_loss(net, example), net.sample(example[1], key, 200)


def test_untrained_gaussian_net_is_the_first_guess_at_init_std(samples):
    net = GaussianMotionNet(
        (T, 3, N, N), key=jax.random.key(4), width=4, depth=1, init_std=0.2,
        dtype=jnp.float64,
    )  # fmt: skip
    x0, obs = samples.sample(0)
    mean, std, _, _ = _gaussian(net, (x0, obs), jax.random.key(0))
    np.testing.assert_array_equal(mean, first_guess(obs))
    scale = np.asarray(net.control_scale)[:, None, None]
    np.testing.assert_allclose(std, np.broadcast_to(0.2 * scale, std.shape), rtol=1e-12)


def test_gaussian_loss_and_draws(samples, gaussian_net):
    """The loss is the closed-form Gaussian CRPS (scipy transcription) in normalised
    units; the draws, standardised by the net's mean and std, are N(0, 1) (pooled
    mean and variance within 4 standard errors) and fixed by the key."""
    x0, obs = samples.sample(1)
    mean, std, loss, draws = _gaussian(gaussian_net, (x0, obs), jax.random.key(3))
    scale = np.asarray(gaussian_net.control_scale)[:, None, None]
    mu, sd, y = (
        np.asarray(mean) / scale,
        np.asarray(std) / scale,
        np.asarray(x0) / scale,
    )
    z = (y - mu) / sd
    exact = np.mean(sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - np.pi**-0.5))
    np.testing.assert_allclose(float(loss), exact, rtol=1e-12)
    assert np.ptp(sd) > 1e-2 * np.mean(sd)  # the std varies (the head acts)
    e = ((np.asarray(draws) - np.asarray(mean)) / np.asarray(std)).ravel()
    assert abs(e.mean()) < 4 / np.sqrt(e.size)
    assert abs(e.var() - 1) < 4 * np.sqrt(2 / e.size)
    again = _gaussian(gaussian_net, (x0, obs), jax.random.key(3))[3]
    np.testing.assert_array_equal(draws, again)


def test_gaussian_loss_gradient_matches_finite_differences(samples, gaussian_net):
    x0, obs = samples.sample(2)

    def loss(t):
        m = eqx.tree_at(
            lambda n: (n.backbone.head.weight, n.backbone.bottom.a.weight),
            gaussian_net,
            (
                (1 + t[0]) * gaussian_net.backbone.head.weight,
                (1 + t[1]) * gaussian_net.backbone.bottom.a.weight,
            ),
        )
        return gaussian_crps_loss(m, (x0, obs))

    t = jnp.zeros(2, jnp.float64)
    grad = eqx.filter_jit(jax.grad(loss))(t)
    fd = finite_difference_grad(loss, t, eps=1e-6)
    assert np.all(np.abs(fd) > 1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


def test_gaussian_bad_input(samples, gaussian_net):
    with pytest.raises(ValueError, match="init_std"):
        GaussianMotionNet((T, 3, N, N), key=jax.random.key(0), init_std=1e-3)
    with pytest.raises(ValueError, match="min_std"):
        GaussianMotionNet((T, 3, N, N), key=jax.random.key(0), min_std=0.0)
    with pytest.raises(ValueError, match="n_members"):
        gaussian_net.sample(samples.sample(0)[1], jax.random.key(0), 1)
    with pytest.raises(TypeError, match="initial"):
        gaussian_crps_loss(gaussian_net, samples.sample(0)[1])


@pytest.mark.slow
def test_training_sharpens_and_spreads_the_ensemble():
    """100 steps on 32 windows: the held-out fair CRPS falls below 90 % of the
    untrained net's (the first guess, a point mass), and the members spread."""
    data = basin_motion_samples(
        jax.random.key(11), 48, n=N, n_times=T, every=EVERY, noise_std=SIGMA,
        spinup_steps=40,
    )  # fmt: skip
    train = (data.initial[:32], jax.tree_util.tree_map(lambda a: a[:32], data.obs))
    test = (data.initial[32:], jax.tree_util.tree_map(lambda a: a[32:], data.obs))
    net0 = GenerativeMotionNet((T, 3, N, N), key=jax.random.key(0), width=4, depth=1)
    loss_fn = ensemble_crps_loss(4)
    before = mean_ensemble_loss(loss_fn, net0, test, key=jax.random.key(1))
    net, result = train_generative_motion_net(
        net0, train, key=jax.random.key(2), n_steps=100, n_members=4, batch_size=4,
        learning_rate=3e-3, progress=False,
    )  # fmt: skip
    after = mean_ensemble_loss(loss_fn, net, test, key=jax.random.key(1))
    assert result.result == jaxda.RESULTS.successful
    assert after < 0.9 * before
    ens = sample_ensembles(net, test[1], jax.random.key(3), 4)
    assert float(jnp.mean(jnp.std(ens[:, :, 1:3], axis=1))) > 1e-4
