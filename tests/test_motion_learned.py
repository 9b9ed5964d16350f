"""Learning over 4DVar for motion fields: the learned estimator, hybrid, deep prior.

Small shallow-water basins (16 x 16, 4-state windows, the height observed at steps 0
and 3), tiny networks, float64. Every network call is compiled (eager dispatch of a
UNet costs more than compiling it), and each test compiles one or two programs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxda
from jaxda.models import rollout
from jaxda.motion import (
    MotionNet,
    basin_motion_samples,
    deep_prior_4dvar,
    first_guess,
    fourdvar_loss,
    hybrid_4dvar,
    mean_loss,
    motion_4dvar,
    supervised_loss,
    train_motion_net,
)
from jaxda.obs import Observations
from jaxda.var import LBFGS


N, T, EVERY, SIGMA = 16, 4, 3, 0.05


@pytest.fixture(scope="module")
def samples():
    return basin_motion_samples(
        jax.random.key(7), 24, n=N, n_times=T, every=EVERY, noise_std=SIGMA,
        spinup_steps=40,
    )  # fmt: skip


@pytest.fixture(scope="module")
def net():
    return MotionNet((T, 3, N, N), key=jax.random.key(3), width=4, depth=1)


@pytest.fixture(scope="module")
def random_net(net):
    """The net with a random (not zero) output layer, so every weight acts."""
    w = 0.1 * jax.random.normal(jax.random.key(1), net.head.weight.shape)
    return eqx.tree_at(lambda m: m.head.weight, net, w)


def _subset(samples, lo, hi):
    return samples.initial[lo:hi], jax.tree_util.tree_map(
        lambda a: a[lo:hi], samples.obs
    )


def _loss_fn(samples):
    return fourdvar_loss(lambda obs: motion_4dvar(samples.flow, obs, SIGMA))


@eqx.filter_jit
def _apply(net, obs):
    return net(obs), first_guess(obs)


def test_untrained_net_is_the_first_guess(samples, net):
    pred, guess = _apply(net, samples.sample(0)[1])
    np.testing.assert_array_equal(pred, guess)


def test_fourdvar_loss_is_the_mean_4dvar_cost_and_its_gradient(samples, random_net):
    initial, obs = _subset(samples, 0, 3)
    loss_fn = _loss_fn(samples)
    keys = jax.random.split(jax.random.key(2), 3)

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def batch_loss(model):  # the batch mean `jaxda.train` minimises
        losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(model, (initial, obs), keys)
        return jnp.mean(losses)

    @eqx.filter_jit
    def trajectories(model):
        return jax.vmap(lambda o: rollout(samples.flow, model(o), T - 1))(obs)

    # Reference: J = sum over the observed entries of (x_t - y_t)^2 / (2 sigma^2)
    # along the model trajectory of each prediction, in NumPy.
    res = np.where(obs.mask, np.asarray(trajectories(random_net)) - obs.values, 0.0)
    expected = np.mean(0.5 * np.sum(res**2, axis=(1, 2, 3, 4)) / SIGMA**2)
    value, grads = batch_loss(random_net)
    np.testing.assert_allclose(float(value), expected, rtol=1e-10)

    # The gradient w.r.t. the three weights of the first convolution with the
    # largest derivatives, against float64 central differences of the same loss.
    weight = random_net.encoders[0].a.weight
    auto = np.asarray(grads.encoders[0].a.weight).reshape(-1)
    top = np.argsort(-np.abs(auto))[:3]
    eps, fd = 1e-6, np.zeros(3)
    for i, flat in enumerate(top):
        shift = np.zeros(weight.size)
        shift[flat] = eps
        shift = shift.reshape(weight.shape)
        plus, minus = (
            float(
                batch_loss(
                    eqx.tree_at(lambda m: m.encoders[0].a.weight, random_net, w)
                )[0]
            )
            for w in (weight + shift, weight - shift)
        )
        fd[i] = (plus - minus) / (2 * eps)
    assert np.all(np.abs(fd) > 1.0)  # the entries do act on the loss
    np.testing.assert_allclose(auto[top], fd, rtol=1e-5)


# A training run (60 steps): with the slow tests; the loss and its gradient are
# checked by default.
@pytest.mark.slow
def test_training_lowers_the_heldout_4dvar_cost_below_the_first_guess(samples, net):
    loss_fn = _loss_fn(samples)
    heldout = _subset(samples, 16, 24)
    first = mean_loss(loss_fn, net, heldout)  # the untrained net is the first guess
    trained, result = train_motion_net(
        net, _subset(samples, 0, 16), loss_fn, key=jax.random.key(4), n_steps=60,
        batch_size=8, learning_rate=1e-2, progress=False,
    )  # fmt: skip
    assert result.result == jaxda.RESULTS.successful
    assert len(result.losses) == 60 and np.all(np.isfinite(result.losses))
    # Measured: held-out cost 0.53 of the first guess's (60 steps); asserted <= 0.7.
    assert mean_loss(loss_fn, trained, heldout) <= 0.7 * first


def test_supervised_loss_is_the_normalised_mse(samples, random_net):
    initial, obs = samples.sample(1)
    pred, _ = _apply(random_net, obs)
    scale = np.array([1.0, 0.1, 0.1])[:, None, None]
    expected = np.mean(((np.asarray(pred) - np.asarray(initial)) / scale) ** 2)
    value = eqx.filter_jit(supervised_loss)(random_net, (initial, obs))
    np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_hybrid_does_not_increase_the_cost_of_the_net(samples, random_net):
    _, obs = samples.sample(2)
    problem = motion_4dvar(samples.flow, obs, SIGMA)
    x_net, _ = _apply(random_net, obs)
    start = float(eqx.filter_jit(problem.cost)(x_net))
    sol = hybrid_4dvar(random_net, problem, LBFGS(), max_steps=5, throw=False)
    np.testing.assert_allclose(sol.stats["initial_cost"], start, rtol=1e-12)
    assert sol.cost <= start
    assert sol.cost < 0.9 * start  # five L-BFGS steps do decrease this cost
    np.testing.assert_allclose(eqx.filter_jit(problem.cost)(sol.x), sol.cost, 1e-12)


def test_deep_prior_fits_and_reports_nonfinite_values(samples):
    initial, obs = samples.sample(3)
    fg = first_guess(obs)

    @jax.jit
    @jax.vmap
    def run(values, background):  # traced values: the checks happen in the result
        problem = motion_4dvar(samples.flow, Observations(values, obs.mask), SIGMA)
        sol = deep_prior_4dvar(
            problem, jax.random.key(8), steps=40, background=background, width=4,
            n_levels=1, latent_size=4, throw=False,
        )  # fmt: skip
        return sol, problem.cost(sol.x)

    bad_obs = obs.values.at[0, 0, 2, 2].set(jnp.nan)  # a NaN observation
    bad_start = fg.at[1, 0, 0].set(jnp.inf)  # a non-finite control
    sol, recomputed = run(
        jnp.stack([obs.values, bad_obs, obs.values]), jnp.stack([fg, fg, bad_start])
    )
    # A clean window: the fitted cost is below the cost at the initialisation.
    codes = jaxda.RESULTS
    ok, invalid, nonfinite = (
        np.asarray(sol.result == c)
        for c in (codes.successful, codes.invalid_input, codes.nonfinite_loss)
    )
    assert ok[0] and int(sol.n_steps[0]) == 40
    np.testing.assert_allclose(recomputed[0], sol.cost[0], rtol=1e-10)
    np.testing.assert_allclose(sol.losses[0, 0], sol.initial_cost[0], rtol=1e-12)
    assert sol.cost[0] <= np.min(sol.losses[0]) * (1 + 1e-12)
    assert sol.cost[0] < 0.9 * sol.initial_cost[0]
    # A NaN observation (seen only under jit) and a non-finite start: reported.
    assert invalid[1] and nonfinite[2]
    assert int(sol.n_steps[2]) == 0 and not np.isfinite(sol.cost[2])
    problem = motion_4dvar(samples.flow, obs, SIGMA)
    with pytest.raises(ValueError, match="`background` must be finite"):
        deep_prior_4dvar(problem, jax.random.key(0), steps=1, background=bad_start)


def test_bad_inputs(samples, net):
    initial, obs = samples.sample(0)
    with pytest.raises(ValueError, match=r"built for, \(4, 3, 16, 16\).*got \(2,"):
        net(Observations(obs.values[:2], obs.mask[:2]))
    with pytest.raises(ValueError, match="vmap the net"):
        net(samples.obs)
    with pytest.raises(TypeError, match="Observations"):
        net(obs.values)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth"):
        MotionNet((T, 3, 18, 18), key=jax.random.key(0), depth=2)
    with pytest.raises(ValueError, match="control_scale"):
        MotionNet((T, 3, N, N), key=jax.random.key(0), control_scale=(1.0, 0.1))
    with pytest.raises(ValueError, match="observed_channels"):
        MotionNet((T, 3, N, N), key=jax.random.key(0), observed_channels=(3,))
    loss_fn = _loss_fn(samples)
    _, obs4 = _subset(samples, 0, 4)
    with pytest.raises(ValueError, match=r"samples.initial.*\(4, 3, 16, 16\)"):
        train_motion_net(
            net, (samples.initial[:4, :, :8], obs4), loss_fn, key=jax.random.key(0),
            n_steps=1,
        )  # fmt: skip
    small = Observations(jnp.zeros((2, T, 3, 8, 8)), jnp.ones((2, T, 3, 8, 8), bool))
    with pytest.raises(ValueError, match=r"samples.obs.*\(N, 4, 3, 16, 16\)"):
        train_motion_net(
            net, (jnp.zeros((2, 3, 8, 8)), small), loss_fn, key=jax.random.key(0),
            n_steps=1,
        )  # fmt: skip
    weak = motion_4dvar(samples.flow, obs, SIGMA, weak=True, model_var=1e-4)
    with pytest.raises(ValueError, match="strong-constraint"):
        hybrid_4dvar(net, weak, LBFGS())
    with pytest.raises(ValueError, match="strong-constraint"):
        deep_prior_4dvar(weak, jax.random.key(0), steps=1)
    with pytest.raises(TypeError, match="`net`"):
        hybrid_4dvar(None, motion_4dvar(samples.flow, obs, SIGMA))
    with pytest.raises(TypeError, match="problem_fn"):
        fourdvar_loss(3)
