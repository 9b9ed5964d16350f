"""Tests of the generic training loop `jaxda.train`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxda import RESULTS, io as jio, train


def _problem(n=64, n_in=3, n_out=2, seed=0):
    """Noisy linear regression: y = W x + 0.01 eps."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k1, (n, n_in), jnp.float32)
    w = jax.random.normal(k2, (n_out, n_in), jnp.float32)
    y = x @ w.T + 0.01 * jax.random.normal(k3, (n, n_out), jnp.float32)
    return {"x": x, "y": y}


def _loss(model, example, key):
    # The key is used (input noise) so that per-example keys matter for determinism.
    noise = 1e-3 * jax.random.normal(key, example["x"].shape, example["x"].dtype)
    return jnp.sum((model(example["x"] + noise) - example["y"]) ** 2)


def _model(seed=1, n_in=3, n_out=2):
    return eqx.nn.Linear(n_in, n_out, key=jax.random.key(seed))


def _same(a, b):
    return bool(eqx.tree_equal(a, b))


def test_fit_lowers_loss():
    data = _problem()
    res = train.fit(
        _model(),
        _loss,
        data,
        key=jax.random.key(2),
        n_steps=80,
        batch_size=16,
        optimizer=optax.adam(1e-1),
        progress=False,
    )
    assert res.losses.shape == (80,)
    assert res.losses[-10:].mean() < 0.02 * res.losses[:5].mean()
    assert int(res.state.step) == 80


def test_train_step_compiles_once():
    data = _problem()
    opt = optax.adam(1e-2)
    step = train.make_train_step(_loss, opt, max_traces=1)
    state = train.init_state(_model(), opt, jax.random.key(0))
    it = train.batches(data, 8, jax.random.key(1))
    for _ in range(5):
        state, loss = step(state, next(it))
    assert int(state.step) == 5 and np.isfinite(float(loss))
    # A second trace (another batch size) is refused by the guard.
    with pytest.raises(Exception, match="trace"):
        step(state, jax.tree_util.tree_map(lambda a: a[:3], data))


def test_weakly_typed_parameters_compile_once():
    # `jnp.full(2, 0.0)` is weakly typed; one Adam update returns a strongly typed
    # array, so without `init_state` strengthening it the step would trace twice.
    data = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), _problem())
    model = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, _model()
    )
    model = eqx.tree_at(lambda m: m.bias, model, jnp.full(2, 0.5))
    assert model.bias.weak_type
    opt = optax.adam(1e-2)
    state = train.init_state(model, opt, jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(state)
    assert not any(getattr(a, "weak_type", False) for a in leaves)
    assert state.model.bias.dtype == jnp.float64
    np.testing.assert_array_equal(state.model.bias, model.bias)
    step = train.make_train_step(_loss, opt, max_traces=1)
    it = train.batches(data, 8, jax.random.key(1))
    for _ in range(3):
        state, loss = step(state, next(it))
    assert int(state.step) == 3 and np.isfinite(float(loss))
    assert not jnp.all(state.model.bias == 0.5)  # the weak leaf was trained
    res = train.fit(
        model,
        _loss,
        data,
        key=jax.random.key(2),
        n_steps=3,
        batch_size=8,
        progress=False,
    )  # fit's guard (max_traces=1) would raise on a retrace
    assert res.model.bias.dtype == jnp.float64 and not res.model.bias.weak_type


def test_deterministic_for_a_seed():
    data = _problem()
    kw = dict(n_steps=12, batch_size=16, progress=False)
    a = train.fit(_model(), _loss, data, key=jax.random.key(5), **kw)
    b = train.fit(_model(), _loss, data, key=jax.random.key(5), **kw)
    c = train.fit(_model(), _loss, data, key=jax.random.key(6), **kw)
    assert _same(a.model, b.model)
    assert not _same(a.model, c.model)


def test_batches_cover_each_epoch_once():
    data = {"i": jnp.arange(10)}
    it = train.batches(data, 3, jax.random.key(0))
    epoch = np.concatenate([np.asarray(next(it)["i"]) for _ in range(3)])
    assert (
        len(set(epoch.tolist())) == 9
    )  # 3 batches of 3, last incomplete batch dropped
    nxt = np.concatenate([np.asarray(next(it)["i"]) for _ in range(3)])
    assert not np.array_equal(epoch, nxt)  # reshuffled


def test_checkpoint_round_trip_exact(tmp_path):
    data = _problem()
    opt = optax.adam(1e-2)
    res = train.fit(
        _model(),
        _loss,
        data,
        key=jax.random.key(0),
        n_steps=7,
        batch_size=8,
        optimizer=opt,
        progress=False,
    )
    path = tmp_path / "ck.eqx"
    header = {"arch": "linear", "n_in": 3}
    jio.save_checkpoint(path, res.state, header)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    like = train.init_state(_model(seed=9), opt, jax.random.key(42))
    loaded = jio.load_checkpoint(path, like, header)
    assert _same(loaded, res.state)
    assert int(loaded.step) == 7
    assert jio.read_checkpoint_header(path) == header


def test_resume_equals_uninterrupted(tmp_path):
    data = _problem()
    kw = dict(
        key=jax.random.key(3),
        batch_size=16,
        progress=False,
        optimizer=optax.adam(1e-2),
        header={"arch": "linear"},
    )
    full = train.fit(_model(), _loss, data, n_steps=10, **kw)
    path = tmp_path / "run.ckpt"
    # Interrupted after 6 steps (mid-epoch: 4 batches per epoch), then resumed to 10.
    first = train.fit(_model(), _loss, data, n_steps=6, checkpoint_path=path, **kw)
    assert int(first.state.step) == 6
    resumed = train.fit(
        _model(seed=7), _loss, data, n_steps=10, checkpoint_path=path, **kw
    )
    assert int(resumed.state.step) == 10
    assert resumed.losses.shape == (4,)
    np.testing.assert_array_equal(resumed.losses, full.losses[6:])
    assert _same(resumed.state, full.state)


def test_periodic_eval_and_checkpoints(tmp_path):
    data = _problem()
    calls = []

    def eval_fn(model, step):
        calls.append(step)
        return {"w": jnp.sum(model.weight)}

    path = tmp_path / "c.ckpt"
    res = train.fit(
        _model(),
        _loss,
        data,
        key=jax.random.key(0),
        n_steps=9,
        batch_size=8,
        eval_fn=eval_fn,
        eval_every=4,
        checkpoint_path=path,
        checkpoint_every=4,
        progress=False,
    )
    assert calls == [4, 8, 9]
    assert [h[0] for h in res.history] == [4, 8, 9]
    assert path.exists()


def test_corrupt_and_foreign_checkpoints(tmp_path):
    opt = optax.adam(1e-2)
    state = train.init_state(_model(), opt, jax.random.key(0))
    path = tmp_path / "ck"
    jio.save_checkpoint(path, state, {"arch": "linear", "n_in": 3})
    raw = path.read_bytes()

    trunc = tmp_path / "trunc"
    trunc.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        jio.load_checkpoint(trunc, state)

    flipped = tmp_path / "flip"
    flipped.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(ValueError, match="corrupt, truncated"):
        jio.load_checkpoint(flipped, state)

    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(ValueError, match="not a jaxda checkpoint"):
        jio.load_checkpoint(junk, state)

    with pytest.raises(ValueError, match="another architecture"):
        jio.load_checkpoint(path, state, {"arch": "linear", "n_in": 4})

    other = train.init_state(_model(n_in=4), opt, jax.random.key(0))
    with pytest.raises(ValueError, match="does not match"):
        jio.load_checkpoint(path, other)

    with pytest.raises(FileNotFoundError):
        jio.load_checkpoint(tmp_path / "missing", state)


def test_bad_inputs():
    data = _problem(n=8)
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(
            _model(),
            _loss,
            data,
            key=jax.random.key(0),
            n_steps=1,
            batch_size=9,
            progress=False,
        )
    bad = {"x": data["x"], "y": data["y"][:5]}
    with pytest.raises(ValueError, match="leading sample axis"):
        train.fit(
            _model(),
            _loss,
            bad,
            key=jax.random.key(0),
            n_steps=1,
            batch_size=2,
            progress=False,
        )
    with pytest.raises(TypeError, match="n_steps"):
        train.fit(
            _model(),
            _loss,
            data,
            key=jax.random.key(0),
            n_steps=1.5,
            batch_size=2,
            progress=False,
        )
    with pytest.raises(TypeError, match="JSON"):
        jio.save_checkpoint("/tmp/never", _model(), {"f": object()})


def test_nonfinite_loss_stops_and_keeps_last_finite_state(tmp_path):
    # Regression (probe defect 1): with optax.sgd(1e3) training went on through NaN
    # and replaced the last good checkpoint with NaN weights.
    data = _problem()
    path = tmp_path / "ck"
    kw = dict(
        key=jax.random.key(3),
        batch_size=16,
        optimizer=optax.sgd(1e3),
        checkpoint_path=path,
        checkpoint_every=2,
        progress=False,
    )
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = train.fit(_model(), _loss, data, n_steps=60, **kw)
    assert res.result == RESULTS.nonfinite_loss
    losses = res.losses
    assert 2 <= len(losses) < 60 and not np.isfinite(losses[-1])
    assert np.all(np.isfinite(losses[:-1]))
    # the kept state is the one whose (finite) loss is losses[-2]
    step = int(res.state.step)
    assert step == len(losses) - 2
    key_data, _ = jax.random.split(kw["key"])
    batch = jax.tree_util.tree_map(
        lambda a: a[train.batch_indices(key_data, step, 64, 16)], data
    )
    _, loss = train.make_train_step(_loss, kw["optimizer"])(res.state, batch)
    np.testing.assert_allclose(float(loss), losses[-2], rtol=1e-6)
    params = jax.tree_util.tree_leaves(eqx.filter(res.model, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in params)
    # on disk: that state, not a diverged one
    like = train.init_state(_model(), kw["optimizer"], jax.random.key(0))
    assert _same(jio.load_checkpoint(path, like), res.state)
    # resuming a good checkpoint with a loss that is NaN leaves the file untouched
    before = path.read_bytes()

    def nan_loss(model, example, key):
        return jnp.nan * _loss(model, example, key)

    with pytest.warns(RuntimeWarning, match="non-finite"):
        again = train.fit(_model(), nan_loss, data, n_steps=60, **kw)
    assert again.result == RESULTS.nonfinite_loss and len(again.losses) == 1
    assert _same(again.state, res.state) and path.read_bytes() == before
    with pytest.warns(RuntimeWarning), pytest.raises(eqx.EquinoxRuntimeError):
        train.fit(_model(), nan_loss, data, n_steps=60, throw=True, **kw)
    ok = train.fit(
        _model(),
        _loss,
        data,
        n_steps=3,
        key=jax.random.key(0),
        batch_size=16,
        progress=False,
    )
    assert ok.result == RESULTS.successful


def test_key_argument():
    # Regression (probe defect 15): fit(key=0) failed with an error about key data.
    data = _problem(n=16)
    kw = dict(n_steps=2, batch_size=8, progress=False)
    a = train.fit(_model(), _loss, data, key=0, **kw)
    b = train.fit(_model(), _loss, data, key=jax.random.key(0), **kw)
    np.testing.assert_array_equal(a.losses, b.losses)
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        train.fit(_model(), _loss, data, key="0", **kw)
