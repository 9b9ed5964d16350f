"""jaxda.sharding: batch placement on a device mesh, sharded vmap, data-parallel steps.

The test process has one CPU device (JAX is initialised by conftest), so the
multi-device checks run in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`: they compare a 4DVar batch solve
and a training step on 4 devices with the same computation on one device, and check the
sharding of the outputs.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxda import sharding


def test_one_device_mesh_and_sharded_vmap_equal_vmap():
    mesh = sharding.batch_mesh()
    assert mesh.axis_names == ("batch",)
    assert mesh.devices.shape == (len(jax.devices()),)
    f = lambda x, w: jnp.tanh(x) @ w + jnp.sum(x**2)
    x = jnp.arange(5 * 3 * 4, dtype=jnp.float64).reshape(5, 3, 4) / 10
    w = jnp.ones((4, 2))
    out = sharding.sharded_vmap(f, in_axes=(0, None))(x, w)
    np.testing.assert_array_equal(out, jax.vmap(f, in_axes=(0, None))(x, w))
    placed = sharding.shard_batch({"a": x, "b": x[:, 0]})
    assert placed["a"].sharding.spec == PartitionSpec("batch")


def test_pad_batch_repeats_the_last_problem():
    tree = {"x": jnp.arange(10.0).reshape(5, 2), "m": jnp.array([1, 0, 1, 1, 0]) > 0}
    padded, size = sharding.pad_batch(tree, 4)
    assert size == 5
    assert padded["x"].shape == (8, 2) and padded["m"].shape == (8,)
    np.testing.assert_array_equal(padded["x"][:5], tree["x"])
    np.testing.assert_array_equal(padded["x"][5:], np.tile(tree["x"][-1], (3, 1)))
    np.testing.assert_array_equal(padded["m"][5:], [False] * 3)
    same, _ = sharding.pad_batch(tree, 5)
    assert same["x"].shape == (5, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="leading batch size"):
        sharding.shard_batch({"a": jnp.ones((4, 2)), "b": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match="leading batch axis"):
        sharding.shard_batch({"a": jnp.ones((4, 2)), "b": jnp.ones(())})
    with pytest.raises(ValueError, match="axis_name"):
        sharding.batch_sharding(sharding.batch_mesh(), axis_name="time")
    with pytest.raises(TypeError, match="mesh"):
        sharding.shard_batch(jnp.ones((4, 2)), mesh="cpu")
    with pytest.raises(ValueError, match="in_axes"):
        sharding.sharded_vmap(lambda a, b: a + b, in_axes=(0,))(
            jnp.ones((2, 1)), jnp.ones((2, 1))
        )
    with pytest.raises(ValueError, match="in_axes"):
        sharding.sharded_vmap(lambda a: a, in_axes=1)(jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="devices"):
        sharding.batch_mesh([])


MULTI_DEVICE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx, optax
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import PartitionSpec
    from jaxda import sharding
    from jaxda.models import Lorenz63, flow_map, rollout
    from jaxda.obs import Observations
    from jaxda.train import init_state, make_train_step
    from jaxda.var import Background, GaussNewton, WeakConstraint4DVar, solve

    assert len(jax.devices()) == 4, jax.devices()
    mesh = sharding.batch_mesh()

    # Batch 4DVar: B windows of Lorenz-63, one Gauss-Newton solve per window.
    T, B = 16, 8
    flow = flow_map(Lorenz63(), 0.01)
    x0s = jnp.array([1.0, 2.0, 20.0]) + jax.random.normal(jax.random.key(0), (B, 3))
    truth = jax.vmap(lambda x0: rollout(flow, x0, T - 1))(x0s)
    mask = jnp.zeros((T, 3), bool).at[::3, 0].set(True).at[::5, 2].set(True)
    ys = truth + jax.random.normal(jax.random.key(1), truth.shape) * mask

    def one(y, x_init):
        prob = WeakConstraint4DVar(
            flow, Observations(y * mask, mask), 2.0, 0.01,
            Background(x_init[0], 4.0))
        return solve(prob, GaussNewton(), x_init, max_steps=20)

    x_init = truth + 0.3
    ref = jax.jit(jax.vmap(one))(ys, x_init)
    assert ref.x.sharding.num_devices == 1
    run = sharding.sharded_vmap(one)
    out = run(ys, x_init)
    assert isinstance(out.x.sharding, jax.sharding.NamedSharding), out.x.sharding
    assert out.x.sharding.spec == PartitionSpec("batch"), out.x.sharding
    assert out.x.sharding.num_devices == 4
    assert {s.data.shape for s in out.x.addressable_shards} == {(2, T, 3)}
    assert bool(jnp.all(out.converged))
    np.testing.assert_allclose(out.x, ref.x, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out.n_steps, ref.n_steps)
    exact = bool(jnp.all(out.x == ref.x))

    # Batch not divisible by 4: padded, then cut back.
    out6 = run(ys[:6], x_init[:6])
    assert out6.x.shape == (6, T, 3)
    np.testing.assert_allclose(out6.x, ref.x[:6], rtol=1e-12, atol=1e-12)
    try:
        sharding.shard_batch(ys[:6], mesh)
    except ValueError as e:
        assert "multiple of the number of devices" in str(e)
    else:
        raise AssertionError("no ValueError for a batch of 6 on 4 devices")
    padded = sharding.shard_batch(ys[:6], mesh, pad=True)
    assert padded.shape == (8, T, 3) and padded.sharding.spec == PartitionSpec("batch")

    # Data-parallel training step: sharded batch, replicated state.
    model = {"w": jnp.array([0.5, -0.2, 0.1]), "b": jnp.array(0.3)}
    def loss_fn(m, ex, key):
        pred = jnp.tanh(ex["x"] @ m["w"] + m["b"])
        return (pred - ex["y"]) ** 2 + 0.0 * jax.random.normal(key)
    xs = jax.random.normal(jax.random.key(2), (12, 3))
    batch = {"x": xs, "y": jnp.sin(xs[:, 0])}
    state = init_state(model, optax.adam(1e-2), jax.random.key(3))
    step = make_train_step(loss_fn, optax.adam(1e-2))
    s1, l1 = step(state, batch)
    s4, l4 = step(sharding.replicate(state, mesh), sharding.shard_batch(batch, mesh))
    np.testing.assert_allclose(l4, l1, rtol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(s4.model),
                    jax.tree_util.tree_leaves(s1.model)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    print("OK exact=%s" % exact)
    """
)


@pytest.mark.timeout(240)
def test_four_simulated_devices_give_the_one_device_result():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_batch_sharding_is_a_named_sharding():
    s = sharding.batch_sharding()
    assert isinstance(s, NamedSharding)
    assert s.spec == PartitionSpec("batch")
