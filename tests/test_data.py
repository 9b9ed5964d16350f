"""Datasets, presets, first guesses, normalisation and netCDF I/O."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxda import data as D, obs as O
from jaxda.models import Lorenz63, Lorenz96, Pendulum, simulate


def _small(key=0, **kw):
    args = dict(
        n_windows=3,
        n_times=12,
        dt=0.01,
        initial_state=D.GaussianInitialState(jnp.array([0.0, 0.0, 25.0]), 5.0),
        pattern=O.EveryKPattern(3, (0,)),
        noise_std=0.5,
        solver="rk4",
    )
    args.update(kw)
    return D.make_dataset(key, Lorenz63(), **args)


@pytest.fixture(scope="module")
def small():
    return _small()


# ------------------------------------------------------------------------------
# make_dataset
# ------------------------------------------------------------------------------


def test_make_dataset_shapes_truth_and_observations(small):
    ds = small
    assert ds.truth.shape == (3, 12, 3) and ds.obs.shape == (3, 12, 3)
    assert (ds.n_windows, ds.n_times, ds.state_shape) == (3, 12, (3,))
    assert ds.seed == 0 and ds.noise_std == 0.5
    np.testing.assert_allclose(ds.time, 0.01 * np.arange(12))
    # The truth is the model's trajectory from its first state.
    for i in range(3):
        ref = simulate(Lorenz63(), ds.truth[i, 0], dt=0.01, n_steps=11, solver="rk4").ys
        np.testing.assert_allclose(ds.truth[i], ref, rtol=1e-10, atol=1e-10)
    mask = np.asarray(ds.obs.mask)
    np.testing.assert_array_equal(mask[0], O.EveryKPattern(3, (0,))(None, 12, (3,)))
    assert (mask == mask[:1]).all()
    err = np.asarray(ds.obs.values - ds.truth)[mask]
    assert 0 < np.abs(err).max() < 5 * 0.5


def test_same_key_same_data_different_keys_differ(small):
    again = _small(0)
    np.testing.assert_array_equal(again.truth, small.truth)
    np.testing.assert_array_equal(again.obs.values, small.obs.values)
    other = _small(1)
    assert (np.asarray(other.truth) != np.asarray(small.truth)).any()
    # Windows are independent draws.
    assert (np.asarray(small.truth[0]) != np.asarray(small.truth[1])).any()


def test_make_dataset_float32_and_fixed_inputs():
    x0 = jnp.array([[1.0, 1.0, 20.0], [2.0, 0.0, 25.0]])
    mask = O.FullPattern()(None, 6, (3,))
    ds = _small(
        jax.random.key(3),
        n_windows=2,
        n_times=6,
        initial_state=x0,
        pattern=mask,
        dtype=jnp.float32,
    )
    assert ds.truth.dtype == jnp.float32 and ds.obs.values.dtype == jnp.float32
    assert ds.seed is None
    np.testing.assert_allclose(ds.truth[:, 0], x0, rtol=1e-6)
    assert ds.obs.mask.all()


def test_dataset_checks_its_fields(small):
    with pytest.raises(TypeError, match="`model` must be a jaxda.models"):
        D.Dataset(small.truth, small.obs, "Lorenz63", 0.01)
    with pytest.raises(TypeError, match="`obs` must be jaxda.obs.Observations"):
        D.Dataset(small.truth, small.obs.values, None, 0.01)
    with pytest.raises(ValueError, match="`obs` must have 11 time steps"):
        D.Dataset(small.truth[:, :11], small.obs, None, 0.01)
    with pytest.raises(ValueError, match="`dt` must be finite and > 0"):
        D.Dataset(small.truth, small.obs, None, -0.01)
    assert D.Dataset(small.truth, small.obs, None, 0.01).model is None


def test_dataset_slicing(small):
    sub = small[1:]
    assert sub.n_windows == 2
    np.testing.assert_array_equal(sub.obs.values, small.obs.values[1:])
    assert small[0].truth.shape == (1, 12, 3)


def test_bad_dataset_input():
    with pytest.raises(ValueError, match="`dt` must be finite and > 0"):
        _small(dt=0.0)
    with pytest.raises(ValueError, match="`n_times` must be >= 2"):
        _small(n_times=1)
    with pytest.raises(ValueError, match="`n_windows` must be >= 1"):
        _small(n_windows=0)
    with pytest.raises(ValueError, match="one of `noise_std` and `noise_var`"):
        _small(noise_var=1.0)
    with pytest.raises(ValueError, match="`noise_std` must be finite and >= 0"):
        _small(noise_std=-1.0)
    with pytest.raises(TypeError, match="`mean` must be a real number"):
        D.GaussianInitialState("zero")
    with pytest.raises(ValueError, match="`initial_state` must be finite"):
        _small(initial_state=jnp.array([jnp.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="`initial_state` must be a sampler"):
        _small(initial_state=jnp.zeros(4))
    with pytest.raises(
        ValueError, match="`pattern` must be a pattern callable or a mask"
    ):
        _small(pattern=jnp.ones((11, 3), bool))
    with pytest.raises(TypeError, match="`model` must be a jaxda.models"):
        D.make_dataset(
            0,
            "lorenz",
            n_windows=1,
            n_times=3,
            dt=0.1,
            initial_state=jnp.zeros(3),
            pattern=O.FullPattern(),
            noise_std=1.0,
        )


# ------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------


def test_normalisation_fit_apply_invert(small):
    stats = D.Normalisation.fit(small.truth)
    z = stats.apply(small.truth)
    np.testing.assert_allclose(z.mean(axis=(0, 1)), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.std(axis=(0, 1)), 1.0, rtol=1e-10)
    np.testing.assert_allclose(stats.invert(z), small.truth, rtol=1e-12)
    o = stats.apply_obs(small.obs)
    np.testing.assert_array_equal(o.mask, small.obs.mask)
    np.testing.assert_allclose(stats.invert_obs(o).values, small.obs.values, atol=1e-12)
    with pytest.raises(ValueError, match="`std` must be finite and > 0"):
        D.Normalisation(jnp.zeros(3), jnp.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="constant component"):
        D.Normalisation.fit(jnp.ones((4, 3)))


# ------------------------------------------------------------------------------
# First guesses
# ------------------------------------------------------------------------------


def test_interpolation_exact_on_piecewise_linear_signal():
    t = np.arange(30.0)
    knots = np.array([4, 9, 17, 25])
    signal = np.interp(t, knots, [1.0, -2.0, 3.0, 0.5])  # linear between knots
    y = np.full((30, 2), np.nan)
    y[knots, 0] = signal[knots]
    x = np.asarray(D.interpolate_observations(O.Observations.from_nan(y), fill=7.0))
    np.testing.assert_allclose(x[4:26, 0], signal[4:26], atol=1e-12)
    np.testing.assert_allclose(x[:4, 0], 1.0)  # constant before the first observation
    np.testing.assert_allclose(x[26:, 0], 0.5)  # constant after the last one
    np.testing.assert_allclose(x[:, 1], 7.0)  # never observed: the fill value


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.0, 0.6))
def test_interpolation_matches_numpy_interp(seed, density):
    rng = np.random.default_rng(seed)
    n_times = 25
    y = rng.normal(size=(n_times, 3))
    mask = rng.random((n_times, 3)) < density
    x = np.asarray(D.interpolate_observations(O.Observations(jnp.asarray(y), mask)))
    for c in range(3):
        obs_t = np.flatnonzero(mask[:, c])
        if obs_t.size == 0:
            np.testing.assert_array_equal(x[:, c], 0.0)
        else:
            want = np.interp(np.arange(n_times), obs_t, y[obs_t, c])
            np.testing.assert_allclose(x[:, c], want, rtol=1e-12, atol=1e-12)


def test_interpolation_vmap_jit_float32(small):
    f = jax.jit(jax.vmap(D.interpolate_observations))
    x = f(small.obs.astype(jnp.float32))
    assert x.shape == small.truth.shape and x.dtype == jnp.float32
    np.testing.assert_allclose(
        x[1], D.interpolate_observations(small.obs[1]), rtol=1e-5, atol=1e-4
    )


def test_gaussian_first_guess_matches_dense_formula():
    rng = np.random.default_rng(0)
    n, t, c = 200, 6, 2
    train = rng.normal(size=(n, t, c)).cumsum(axis=1)
    mu, cov = D.empirical_moments(train)
    np.testing.assert_allclose(
        cov, np.cov(train.reshape(n, -1).T, bias=True), atol=1e-12
    )
    truth = train[0]
    mask = rng.random((t, c)) < 0.4
    mask[2, 0] = True
    y = truth + 0.1 * rng.normal(size=truth.shape)
    x = D.gaussian_first_guess(O.Observations(jnp.asarray(y), mask), mu, cov, 0.01)
    H = np.eye(t * c)[mask.reshape(-1)]
    mu_, cov_ = np.asarray(mu), np.asarray(cov)
    gain = cov_ @ H.T @ np.linalg.inv(H @ cov_ @ H.T + 0.01 * np.eye(H.shape[0]))
    want = mu_ + gain @ (y.reshape(-1)[mask.reshape(-1)] - H @ mu_)
    np.testing.assert_allclose(np.asarray(x).reshape(-1), want, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="`noise_var` must be finite and > 0"):
        D.gaussian_first_guess(O.Observations(jnp.asarray(y), mask), mu, cov, 0.0)


# ------------------------------------------------------------------------------
# Presets (reduced sizes, fixed-step RK4 to keep compile times short)
# ------------------------------------------------------------------------------


def test_preset_f21_l63():
    ds = D.make_preset_dataset("F21-L63", 0, n_windows=2, solver="rk4")
    assert ds.truth.shape == (2, 200, 3) and ds.name == "F21-L63"
    assert isinstance(ds.model, Lorenz63) and ds.dt == 0.01
    mask = np.asarray(ds.obs.mask)
    for m in mask:
        np.testing.assert_array_equal(np.flatnonzero(m[:, 0]), np.arange(16, 185, 8))
        assert not m[:, 1:].any()
    np.testing.assert_allclose(ds.noise_std, np.sqrt(2.0))
    # On the attractor after burn-in: z stays positive and |x| bounded.
    assert float(ds.truth[..., 2].min()) > 0 and float(jnp.abs(ds.truth).max()) < 60


def test_preset_f21_l96_density_and_noise():
    ds = D.make_preset_dataset("F21-L96", 1, n_windows=2, solver="rk4")
    assert ds.truth.shape == (2, 200, 40) and isinstance(ds.model, Lorenz96)
    per_time = np.asarray(ds.obs.mask).sum(axis=2)
    np.testing.assert_array_equal(per_time[:, ::4], 20)
    assert per_time[:, np.arange(200) % 4 != 0].sum() == 0
    err = np.asarray(ds.obs.values - ds.truth)[np.asarray(ds.obs.mask)]
    assert abs(err.std() - np.sqrt(2.0)) < 5 * np.sqrt(2.0) / np.sqrt(2 * err.size)


def test_preset_b24_l63_splits_normalised_and_disjoint():
    train, test = D.make_preset_splits("B24-L63", 0, n_train=8, n_test=8, solver="rk4")
    assert train.truth.shape == (8, 32, 3) and test.truth.shape == (8, 32, 3)
    assert (train.split, test.split) == ("train", "test")
    # Train statistics: zero mean, unit variance per component; reused for the test set.
    np.testing.assert_allclose(train.truth.mean(axis=(0, 1)), 0.0, atol=1e-10)
    np.testing.assert_allclose(train.truth.std(axis=(0, 1)), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(test.normalisation.mean, train.normalisation.mean)
    np.testing.assert_allclose(
        train.original_truth(), train.normalisation.invert(train.truth)
    )
    # Four observations of u1 per window; even phases in train, odd in test.
    for ds, parity in ((train, 0), (test, 1)):
        m = np.asarray(ds.obs.mask)
        assert (m.sum(axis=(1, 2)) == 4).all() and not m[..., 1:].any()
        times = {int(t) for t in np.nonzero(m[..., 0])[1]}
        assert all(t % 2 == parity for t in times)
    assert train.process_noise_std == pytest.approx(np.sqrt(0.025))


def test_preset_b24_pendulum_disjoint_observation_times():
    train, test = D.make_preset_splits(
        "B24-pendulum", 0, n_train=12, n_test=12, solver="rk4"
    )
    assert isinstance(train.model, Pendulum) and train.truth.shape == (12, 100, 2)
    assert train.normalisation is None
    t_train = set(np.nonzero(np.asarray(train.obs.mask)[..., 0])[1])
    t_test = set(np.nonzero(np.asarray(test.obs.mask)[..., 0])[1])
    assert t_train and t_test and not t_train & t_test
    assert (np.asarray(train.obs.mask).sum(axis=(1, 2)) == 5).all()
    x0 = np.asarray(train.truth[:, 0])
    assert (np.abs(x0[:, 0]) <= 0.75 * np.pi).all() and (np.abs(x0[:, 1]) <= 1).all()


def test_preset_configuration_and_bad_names():
    p = D.get_preset("F21-L63", n_times=50, noise_var=0.5)
    assert p.n_times == 50 and p.noise_std == pytest.approx(np.sqrt(0.5))
    assert D.get_preset("F21-L96").n_train == 2000
    assert set(D.PRESET_NAMES) == {"F21-L63", "F21-L96", "B24-L63", "B24-pendulum"}
    with pytest.raises(ValueError, match="`name` must be one of 'F21-L63'"):
        D.get_preset("L63")
    with pytest.raises(ValueError, match="`name` must be one of"):
        D.make_preset_dataset("nope", 0)
    with pytest.raises(TypeError, match="Unknown preset field"):
        D.get_preset("F21-L63", window=3)
    with pytest.raises(ValueError, match="`split` must be one of"):
        D.make_preset_dataset("F21-L63", 0, split="val")


# ------------------------------------------------------------------------------
# netCDF I/O
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_netcdf_round_trip_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 7, 40)).astype(dtype)
    y = truth + rng.normal(size=truth.shape).astype(dtype)
    y[rng.random(y.shape) < 0.6] = np.nan
    stats = D.Normalisation(
        jnp.asarray(rng.normal(size=40).astype(dtype)),
        jnp.asarray(rng.random(40).astype(dtype) + 0.5),
    )
    ds = D.Dataset(
        jnp.asarray(truth),
        O.Observations.from_nan(jnp.asarray(y)),
        Lorenz96(40, 7.5),
        0.05,
        stats,
        name="F21-L96",
        split="test",
        noise_std=1.25,
        seed=11,
    )
    path = D.save_dataset(ds, tmp_path / "sub" / "ds.nc")
    assert os.listdir(tmp_path / "sub") == ["ds.nc"]  # no temporary file left
    back = D.load_dataset(path)
    assert back.truth.dtype == dtype and back.obs.values.dtype == dtype
    np.testing.assert_array_equal(back.truth, truth)
    np.testing.assert_array_equal(back.obs.mask, ~np.isnan(y))
    np.testing.assert_array_equal(back.obs.to_nan(), y)
    np.testing.assert_array_equal(back.normalisation.std, stats.std)
    assert back.model == Lorenz96(40, 7.5)
    assert (back.name, back.split, back.dt, back.noise_std, back.seed) == (
        "F21-L96",
        "test",
        0.05,
        1.25,
        11,
    )
    import xarray as xr

    xds = xr.load_dataset(path, engine="h5netcdf")
    assert xds["truth"].dims == ("sample", "time", "component")
    assert xds.attrs["model"] == "Lorenz96"


def test_netcdf_round_trip_generated_dataset(tmp_path, small):
    path = D.save_dataset(small, tmp_path / "ds.nc")
    D.save_dataset(small, path)  # overwriting is atomic too
    back = D.load_dataset(path)
    np.testing.assert_array_equal(back.truth, small.truth)
    np.testing.assert_array_equal(back.obs.values, small.obs.values)
    assert back.model == small.model and back.normalisation is None and back.seed == 0


def test_netcdf_missing_extra_gives_clear_error(tmp_path, small, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"pip install jaxda\[io\]"):
        D.save_dataset(small, tmp_path / "x.nc")
    with pytest.raises(ImportError, match=r"pip install jaxda\[io\]"):
        D.load_dataset(tmp_path / "x.nc")


def test_load_rejects_foreign_files(tmp_path):
    import xarray as xr

    xr.Dataset({"a": ("x", np.zeros(3))}).to_netcdf(
        tmp_path / "f.nc", engine="h5netcdf"
    )
    with pytest.raises(ValueError, match="not a jaxda dataset file"):
        D.load_dataset(tmp_path / "f.nc")
    with pytest.raises(FileNotFoundError, match="`path` does not exist"):
        D.load_dataset(tmp_path / "none.nc")


# ------------------------------------------------------------------------------
# Failed simulations, keys, untrusted or malformed files (reliability probe)
# ------------------------------------------------------------------------------


def test_make_dataset_refuses_failed_simulations():
    # One window starts far off the attractor: RK4 with dt = 0.01 diverges there. The
    # dataset must not silently hold its NaN truth.
    x0 = jnp.array([[1.0, 1.0, 20.0], [1e5, 1e5, 1e5]])
    with pytest.raises(RuntimeError, match=r"1 of 2 windows failed \(windows \[1\]\)"):
        _small(n_windows=2, initial_state=x0)
    # the same call from finite starting points works and is finite
    ds = _small(n_windows=2, initial_state=x0.at[1].set(jnp.array([2.0, 0.0, 25.0])))
    assert np.all(np.isfinite(np.asarray(ds.truth)))


def test_bad_keys_are_named():
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        D.make_preset_dataset("B24-pendulum", 1.5, n_windows=2, n_times=5)
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        _small("seed")
    # an int seed and the equivalent key give the same data
    np.testing.assert_array_equal(_small(3).truth, _small(jax.random.key(3)).truth)


def test_load_matches_dimensions_by_name(tmp_path, small):
    # A file with variables (time, sample, component) used to load as (12, 3, 3)
    # with time and sample swapped; now it is transposed by dimension name.
    import xarray as xr

    path = D.save_dataset(small, tmp_path / "ds.nc")
    xds = xr.load_dataset(path, engine="h5netcdf")
    other = xds.transpose("time", "sample", "component")
    assert other["truth"].shape == (12, 3, 3)
    other.to_netcdf(tmp_path / "t.nc", engine="h5netcdf")
    back = D.load_dataset(tmp_path / "t.nc")
    assert back.truth.shape == (3, 12, 3)
    np.testing.assert_array_equal(back.truth, small.truth)
    np.testing.assert_array_equal(back.obs.mask, small.obs.mask)
    # other dimension names are refused, naming the variable
    renamed = xds.rename({"sample": "window"})
    renamed.to_netcdf(tmp_path / "r.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="variable 'truth' must have the dimensions"):
        D.load_dataset(tmp_path / "r.nc")


@pytest.mark.parametrize(
    "model, params",
    [("__class__", {"name": "x"}), ("simulate", {}), ("AbstractDynamics", {}),
     ("Observations", {}), ("os", {})],
)  # fmt: skip
def test_load_refuses_model_attributes_that_are_not_dynamics(
    tmp_path, small, model, params
):
    import json

    import xarray as xr

    path = D.save_dataset(small, tmp_path / "ds.nc")
    xds = xr.load_dataset(path, engine="h5netcdf")
    xds.attrs.update(model=model, model_parameters=json.dumps(params))
    xds.to_netcdf(tmp_path / "m.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="attribute 'model' must name a dynamical"):
        D.load_dataset(tmp_path / "m.nc")


@pytest.mark.parametrize(
    "params, match",
    [({"rho": "evil"}, "must hold JSON numbers"), ({"rho": None}, "JSON numbers"),
     ({"rho": True}, "JSON numbers"), ({"__init__": 1.0}, "keys among the fields"),
     ([1.0], "JSON object"), ({"rho": float("nan")}, "`rho` must be finite")],
)  # fmt: skip
def test_load_refuses_model_parameters_that_are_not_numbers(
    tmp_path, small, params, match
):
    import json

    import xarray as xr

    path = D.save_dataset(small, tmp_path / "ds.nc")
    xds = xr.load_dataset(path, engine="h5netcdf")
    xds.attrs["model_parameters"] = json.dumps(params)
    xds.to_netcdf(tmp_path / "p.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=match):
        D.load_dataset(tmp_path / "p.nc")
    # and the unedited parameters load the model that made the data
    assert D.load_dataset(path).model == Lorenz63()


def test_load_malformed_files_name_what_is_missing(tmp_path, small):
    import xarray as xr

    path = D.save_dataset(small, tmp_path / "ds.nc")
    xds = xr.load_dataset(path, engine="h5netcdf")
    cases = {
        "no_obs": (xds.drop_vars("obs"), "no variable 'obs'"),
        "no_truth": (xds.drop_vars("truth"), "no variable 'truth'"),
        "no_shape": (xds.drop_attrs().assign_attrs(
            {k: v for k, v in xds.attrs.items() if k != "state_shape"}),
            "no attribute 'state_shape'"),
        "bad_shape": (xds.assign_attrs(state_shape="[4]"),
                      r"'state_shape' must be a JSON list .* \(3\); got \[4\]"),
        "not_json": (xds.assign_attrs(state_shape="[3"), "'state_shape' must be JSON"),
        "float_shape": (xds.assign_attrs(state_shape="[3.0]"), "'state_shape'"),
        "bad_dt": (xds.assign_attrs(dt="fast"), "attribute 'dt' must be a number"),
        "no_seed": (xds.drop_attrs().assign_attrs(
            {k: v for k, v in xds.attrs.items() if k != "seed"}),
            "no attribute 'seed'"),
    }  # fmt: skip
    for name, (edited, match) in cases.items():
        edited.to_netcdf(tmp_path / f"{name}.nc", engine="h5netcdf")
        with pytest.raises(ValueError, match=match):
            D.load_dataset(tmp_path / f"{name}.nc")
    # a state with several axes: state_shape [3] -> [3, 1] is a valid reshape
    xds.assign_attrs(state_shape="[3, 1]").to_netcdf(
        tmp_path / "ok.nc", engine="h5netcdf"
    )
    assert D.load_dataset(tmp_path / "ok.nc").truth.shape == (3, 12, 3, 1)
