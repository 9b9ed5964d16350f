"""Tests of neural incremental data assimilation (`jaxda.incremental`, [B24])."""

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import jaxda.incremental as inc
import jaxda.io as jio
from jaxda import RESULTS, train
from jaxda.data import BandedGaussian
from jaxda.linalg import SymmetricBandMatrix
from jaxda.obs import Observations, RandomComponentsPattern


T, N = 6, 2  # small windows: d = 12


def _dense_map(mean, cov, obs, obs_var):
    """Reference MAP with the real selection H (covariance form, dense solves)."""
    idx = np.flatnonzero(np.asarray(obs.mask).reshape(-1))
    mu = mean.reshape(-1)
    h = jnp.eye(mu.size, dtype=mu.dtype)[idx]
    y = obs.values.reshape(-1)[idx]
    s = h @ cov @ h.T + obs_var * jnp.eye(idx.size, dtype=mu.dtype)
    x = mu + cov @ h.T @ jnp.linalg.solve(s, y - h @ mu)
    return x.reshape(mean.shape)


def _dense_prior_cov(model, z, s):
    a = SymmetricBandMatrix(model.band(z, s)).to_dense()
    return jnp.linalg.inv(a) if model.form == "precision" else a


def _obs(key, shape=(T, N), dtype=jnp.float64):
    k1, k2 = jax.random.split(key)
    mask = jax.random.bernoulli(k1, 0.4, shape).at[0, 0].set(True)
    return Observations(jax.random.normal(k2, shape, dtype), mask)


def _linear_gaussian(n_times=T, n=N, seed=0):
    """Exact moments of x_{t+1} = F x_t + w_t, w ~ N(0, q I), x_0 ~ N(m0, I)."""
    rng = np.random.default_rng(seed)
    th = 0.3
    f = 0.95 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])[:n, :n]
    q = 0.1
    m = [rng.normal(size=n)]
    covs = {(0, 0): np.eye(n)}
    for t in range(1, n_times):
        m.append(f @ m[-1])
        covs[(t, t)] = f @ covs[(t - 1, t - 1)] @ f.T + q * np.eye(n)
    d = n_times * n
    c = np.zeros((d, d))
    for t in range(n_times):
        for u in range(t, n_times):
            blk = np.linalg.matrix_power(f, u - t) @ covs[(t, t)]  # Cov(x_u, x_t)
            c[u * n : (u + 1) * n, t * n : (t + 1) * n] = blk
            c[t * n : (t + 1) * n, u * n : (u + 1) * n] = blk.T
    return jnp.asarray(np.stack(m)), jnp.asarray(c), f, q


def _lower_dense(factor):
    """Dense lower-triangular L from band storage `factor[k, i] = L[i + k, i]`."""
    b1, d = factor.shape
    return sum(np.diag(factor[k, : d - k], -k) for k in range(min(b1, d)))


def _model(key, **kw):
    kw.setdefault("width", 8)
    kw.setdefault("depth", 2)
    kw.setdefault("dtype", jnp.float64)
    return inc.NeuralBandGaussian(T, N, key=key, **kw)


# -- structure ------------------------------------------------------------------------


_BASE = {}


def _base_model(arch):
    if arch not in _BASE:
        _BASE[arch] = _model(jax.random.key(0), architecture=arch, kernel_size=3)
    return _BASE[arch]


@eqx.filter_jit
def _random_band(model, key, s, scale):
    """Band and factor of `model` with randomised weights at a random input."""
    kw, kz = jax.random.split(key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    flat = flat + 0.5 * jax.random.normal(kw, flat.shape, flat.dtype)
    m = eqx.combine(unravel(flat), static)
    z = scale * jax.random.normal(kz, (T, N))
    return m.band(z, s), m.factor(z, s)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    s=st.floats(0.0, 1.0),
    scale=st.floats(0.1, 30.0),
    arch=st.sampled_from(["mlp", "conv"]),
)
def test_band_matrix_is_spd_for_random_weights_and_inputs(seed, s, scale, arch):
    band, factor = _random_band(
        _base_model(arch), jax.random.key(seed), jnp.asarray(s), jnp.asarray(scale)
    )
    assert band.shape == (2 * N + 1, T * N)
    a = np.asarray(SymmetricBandMatrix(band).to_dense())
    lf = _lower_dense(np.asarray(factor))
    eps = _base_model(arch).min_eig
    np.testing.assert_allclose(
        a, lf @ lf.T + eps * np.eye(T * N), rtol=1e-12, atol=1e-9
    )
    assert np.all(np.diag(lf) > 0)
    i, j = np.indices(a.shape)
    assert np.all(a[np.abs(i - j) > 2 * N] == 0)  # banded, bandwidth 2n
    assert np.linalg.eigvalsh(a).min() > 0.99 * eps
    assert SymmetricBandMatrix(band).cholesky().result == RESULTS.successful


def test_default_bandwidth_and_hyperparameters():
    model = inc.NeuralBandGaussian(8, 3, key=jax.random.key(0))
    assert model.bandwidth == 6 and model.width == 32 and model.depth == 4
    z = jnp.zeros((8, 3), jnp.float32)
    mean, band = eqx.filter_jit(lambda m, z: m.moments(z, 0.5))(model, z)
    assert band.shape == (7, 24) and band.dtype == jnp.float32
    assert mean.shape == (8, 3) and mean.dtype == jnp.float32
    assert model.hyperparameters["state_shape"] == [3]


def test_conv_is_translation_equivariant_in_time():
    key = jax.random.key(3)
    t_len = 12
    model = inc.NeuralBandGaussian(
        t_len, N, key=key, architecture="conv", kernel_size=3, depth=1, width=8
    )
    z = jax.random.normal(jax.random.key(4), (t_len, N))
    zs = jnp.roll(z, 1, axis=0)
    f = eqx.filter_jit(lambda m, z: (m.mean(z, 0.3), m.factor(z, 0.3)))
    (m, fb), (ms, fbs) = f(model, z), f(model, zs)
    r = 2  # receptive radius of two convolutions of width 3
    np.testing.assert_allclose(ms[r + 1 : t_len - r], m[r : t_len - r - 1], atol=1e-6)
    fb = fb.reshape(-1, t_len, N)
    fbs = fbs.reshape(-1, t_len, N)
    np.testing.assert_allclose(
        fbs[:, r + 1 : t_len - r - 2], fb[:, r : t_len - r - 3], atol=1e-6
    )


# -- the MAP --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["precision", "covariance"])
def test_assimilate_matches_dense_map(form, getkey):
    model = _model(getkey(), form=form)
    z = jax.random.normal(getkey(), (T, N))
    obs = _obs(getkey())
    x = eqx.filter_jit(inc.assimilate)(model, z, obs, 0.4, 0.05).x
    ref = _dense_map(model.mean(z, 0.4), _dense_prior_cov(model, z, 0.4), obs, 0.05)
    np.testing.assert_allclose(x, ref, rtol=1e-8, atol=1e-10)
    y = eqx.filter_jit(lambda m, z, o: m(z, o, 0.4, 0.05))(model, z, obs)
    np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", ["precision", "covariance"])
def test_gradients_through_map_equal_dense_autodiff(form, getkey):
    model = _model(getkey(), form=form)
    x_true = jax.random.normal(getkey(), (T, N))
    z0 = x_true + 0.5 * jax.random.normal(getkey(), (T, N))
    obs = _obs(getkey())
    levels = inc.default_levels(2, jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def banded(p):
        return inc.incremental_loss(
            eqx.combine(p, static), x_true, z0, obs, 0.05, levels
        )

    def dense(p):
        m = eqx.combine(p, static)

        def one(s):
            z = s * z0 + (1 - s) * x_true
            xh = _dense_map(m.mean(z, s), _dense_prior_cov(m, z, s), obs, 0.05)
            return jnp.mean((xh - x_true) ** 2)

        return jnp.mean(jnp.stack([one(s) for s in levels]))

    def obs_space(p):  # the m x m observed block only (covariance form)
        return inc.incremental_loss(
            eqx.combine(p, static), x_true, z0, obs, 0.05, levels, max_obs=T * N
        )

    ld, gd = jax.jit(jax.value_and_grad(dense))(params)
    for fn in (banded, obs_space) if form == "covariance" else (banded,):
        lb, gb = jax.jit(jax.value_and_grad(fn))(params)
        np.testing.assert_allclose(lb, ld, rtol=1e-9)
        for a, b in zip(jax.tree_util.tree_leaves(gb), jax.tree_util.tree_leaves(gd)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def _oracle_model(mean, prec, key):
    """A NeuralBandGaussian whose output is the constant N(mean, prec^{-1})."""
    b = 2 * N
    model = _model(key, residual=False, bandwidth=b, form="precision")
    lf = np.linalg.cholesky(np.asarray(prec) - model.min_eig * np.eye(T * N))
    fac = np.asarray(SymmetricBandMatrix.from_dense(lf, b).band)
    c = model.max_entry
    raw = c * np.arctanh(fac / c)
    raw[0] = np.log(np.expm1(raw[0]))  # inverse softplus
    out_m = jnp.asarray(mean.reshape(-1))
    out_f = jnp.asarray(raw.reshape(-1))

    def zero_last(net, bias):
        net = eqx.tree_at(
            lambda n: n.mlp.layers[-1].weight,
            net,
            jnp.zeros_like(net.mlp.layers[-1].weight),
        )
        return eqx.tree_at(lambda n: n.mlp.layers[-1].bias, net, bias)

    model = eqx.tree_at(lambda m: m.mean_net, model, zero_last(model.mean_net, out_m))
    return eqx.tree_at(
        lambda m: m.factor_net, model, zero_last(model.factor_net, out_f)
    )


def test_oracle_prior_gives_exact_posterior_mean(getkey):
    mean, cov, _, _ = _linear_gaussian()
    prec = jnp.linalg.inv(cov)
    i, j = np.indices(prec.shape)
    assert np.abs(np.asarray(prec)[np.abs(i - j) > 2 * N]).max() < 1e-10  # banded
    model = _oracle_model(mean, prec, getkey())
    obs = _obs(getkey())
    exact = _dense_map(mean, cov, obs, 0.01)
    z0 = jax.random.normal(getkey(), (T, N))
    x = eqx.filter_jit(inc.assimilate)(model, z0, obs, 1.0, 0.01).x
    np.testing.assert_allclose(x, exact, rtol=1e-8, atol=1e-9)
    # Algorithm 2 with a perfect operator walks the path (3.4) to the posterior mean.
    levels = inc.default_levels(4, jnp.float64)
    sol = inc.incremental_assimilation(model, z0, obs, 0.01, levels)
    np.testing.assert_allclose(sol.x, exact, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(sol.z, exact, rtol=1e-8, atol=1e-9)
    path = levels[:, None, None] * z0 + (1 - levels[:, None, None]) * exact
    np.testing.assert_allclose(sol.iterates, path, rtol=1e-8, atol=1e-9)
    assert sol.result == RESULTS.successful and sol.estimates.shape == (5, T, N)


def test_banded_first_guess_oracle_and_fit(getkey):
    mean, cov, f, q = _linear_gaussian()
    prior = BandedGaussian.from_covariance(
        mean, SymmetricBandMatrix.from_dense(cov, 2 * N).band, ridge=0.0
    )
    # Exact: the precision of a linear-Gaussian trajectory is banded (b = 2n - 1 <= 2n).
    np.testing.assert_allclose(
        SymmetricBandMatrix(prior.precision_band).to_dense(),
        jnp.linalg.inv(cov),
        atol=1e-8,
    )
    obs = _obs(getkey())
    np.testing.assert_allclose(
        prior.map(obs, 0.02), _dense_map(mean, cov, obs, 0.02), atol=1e-8
    )
    # From samples: SPD band precision, close to the truth for many samples.
    lf = jnp.linalg.cholesky(cov)
    xs = mean.reshape(-1) + jax.random.normal(getkey(), (20000, T * N)) @ lf.T
    fitted = BandedGaussian.fit(xs.reshape(-1, T, N), 2 * N)
    qd = np.asarray(SymmetricBandMatrix(fitted.precision_band).to_dense())
    assert np.linalg.eigvalsh(qd).min() > 0
    np.testing.assert_allclose(fitted.mean, mean, atol=0.05)
    np.testing.assert_allclose(
        fitted.map(obs, 0.02), _dense_map(mean, cov, obs, 0.02), atol=0.1
    )


def test_unconditional_ignores_observations(getkey):
    model = _model(getkey(), conditional=False)
    assert model.factor_net is None
    z = jax.random.normal(getkey(), (T, N))
    a = inc.assimilate(model, z, _obs(getkey()), 0.5, 0.1).x
    b = inc.assimilate(model, z, _obs(getkey()), 0.5, 0.1).x
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, model.mean(z, 0.5))


# -- training -------------------------------------------------------------------------


def _training_setup(n_samples=64):
    mean, cov, _, _ = _linear_gaussian()
    lf = jnp.linalg.cholesky(cov)
    xs = (
        mean.reshape(-1)
        + jax.random.normal(jax.random.key(0), (n_samples, T * N)) @ lf.T
    )
    xs = xs.reshape(-1, T, N)
    prior = BandedGaussian.fit(xs, 2 * N)
    pattern = RandomComponentsPattern(n_components=1, every=2)
    loss_fn = inc.make_incremental_loss(
        lambda obs: prior.map(obs, 0.01), pattern, 0.1, inc.default_levels(2)
    )
    return xs, loss_fn


def test_training_lowers_loss_and_compiles_once():
    xs, loss_fn = _training_setup()
    model = _model(jax.random.key(1))
    keys = jax.random.split(jax.random.key(9), xs.shape[0])

    @eqx.filter_jit
    def _eval(m):
        return jnp.mean(jax.vmap(loss_fn, (None, 0, 0))(m, xs, keys))

    def eval_loss(m):
        return float(_eval(m))

    opt = optax.adam(3e-3)
    step = train.make_train_step(loss_fn, opt, max_traces=1)
    state = train.init_state(model, opt, jax.random.key(2))
    batches = train.batches(xs, 16, jax.random.key(3))
    before = eval_loss(model)
    for _ in range(60):
        state, _ = step(state, next(batches))
    after = eval_loss(state.model)
    assert after < 0.8 * before


def test_save_load_model_round_trip(tmp_path, getkey):
    model = _model(getkey(), architecture="conv", kernel_size=3)
    path = tmp_path / "model.eqx"
    jio.save_model(path, model)
    loaded = jio.load_model(path)
    assert bool(eqx.tree_equal(loaded, model))
    raw = path.read_bytes()
    (tmp_path / "bad").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        jio.load_model(tmp_path / "bad")
    jio.save_checkpoint(tmp_path / "other", model, {"class": "Something"})
    with pytest.raises(ValueError, match="does not hold a model saved by"):
        jio.load_model(tmp_path / "other")
    other = _model(getkey(), architecture="mlp")
    with pytest.raises(ValueError, match="another architecture"):
        jio.load_checkpoint(
            path,
            other,
            {"class": "NeuralBandGaussian", "hyperparameters": other.hyperparameters},
        )


# -- bad input ------------------------------------------------------------------------


def test_bad_inputs(getkey):
    model = _model(getkey())
    z = jnp.zeros((T, N))
    obs = _obs(getkey())
    with pytest.raises(ValueError, match="`z` must have shape"):
        model.mean(jnp.zeros((T + 1, N)), 0.5)
    with pytest.raises(ValueError, match="`obs` must have shape"):
        inc.assimilate(model, z, _obs(getkey(), (T, N + 1)), 0.5, 0.1)
    with pytest.raises(TypeError, match="Observations"):
        inc.assimilate(model, z, obs.values, 0.5, 0.1)
    with pytest.raises(ValueError, match="obs_var"):
        inc.assimilate(model, z, obs, 0.5, -1.0)
    with pytest.raises(ValueError, match="levels"):
        inc.incremental_assimilation(model, z, obs, 0.1, jnp.array([0.5, 0.8]))
    with pytest.raises(ValueError, match="bandwidth"):
        inc.NeuralBandGaussian(T, N, key=getkey(), bandwidth=T * N)
    with pytest.raises(ValueError, match="architecture"):
        inc.NeuralBandGaussian(T, N, key=getkey(), architecture="transformer")
    with pytest.raises(ValueError, match="`s` must be a scalar"):
        model.mean(z, jnp.ones(2))


def test_assimilation_result_codes_and_value_checks(getkey):
    # Regression (probe defects 10 and 15): NaN inputs gave NaN estimates with no
    # error, and bad constructor arguments gave errors that did not name them.
    model = _model(getkey())
    z = jax.random.normal(getkey(), (T, N))
    obs = _obs(getkey())
    sol = inc.assimilate(model, z, obs, 0.5, 0.1)
    assert sol.result == RESULTS.successful
    np.testing.assert_allclose(sol.x, model(z, obs, 0.5, 0.1), rtol=1e-12)
    nan_z = z.at[2, 1].set(jnp.nan)
    with pytest.raises(ValueError, match="`z` must be finite"):
        inc.assimilate(model, nan_z, obs, 0.5, 0.1)
    with pytest.raises(ValueError, match="`z` must be finite"):
        model(nan_z, obs, 0.5, 0.1)
    with pytest.raises(ValueError, match="`z0` must be finite"):
        inc.incremental_assimilation(model, nan_z, obs, 0.1)
    # under jit: `invalid_input`, and `throw=True` raises there too
    run = jax.jit(
        lambda z: inc.incremental_assimilation(model, z, obs, 0.1, throw=False).result
    )
    assert run(z) == RESULTS.successful
    assert run(nan_z) == RESULTS.invalid_input
    bad_var = jax.jit(lambda r: inc.assimilate(model, z, obs, 0.5, r, throw=False))
    assert bad_var(-1.0).result == RESULTS.invalid_input
    with pytest.raises(eqx.EquinoxRuntimeError, match="value check"):
        eqx.filter_jit(lambda z: inc.incremental_assimilation(model, z, obs, 0.1).x)(
            nan_z
        )
    # a finite first guess whose estimate overflows float32: `nonfinite`
    m32 = _model(getkey(), dtype="float32")
    o32 = Observations(obs.values.astype(jnp.float32), obs.mask)
    huge = jnp.full((T, N), 3e38, jnp.float32)
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        inc.incremental_assimilation(m32, huge, o32, 0.1)
    sol = inc.incremental_assimilation(m32, huge, o32, 0.1, throw=False)
    assert sol.result == RESULTS.nonfinite and not jnp.all(jnp.isfinite(sol.x))
    # constructor errors name the argument
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        inc.NeuralBandGaussian(T, N, key=getkey(), dtype="int32")
    with pytest.raises(TypeError, match="`state_shape` must be an int or a tuple"):
        inc.NeuralBandGaussian(T, 3.0, key=getkey())
