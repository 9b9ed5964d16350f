"""xarray / netCDF I/O of gridded trajectories: round trips (values, NaN-coded masks,
the Grid, dtypes, times), CF attributes, files from elsewhere, bad input."""

import numpy as np
import pytest

from jaxda.data import fields_from_xarray, fields_to_xarray, load_fields, save_fields
from jaxda.grid import Grid
from jaxda.obs import Observations


xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")


@pytest.fixture
def trajectory():
    grid = Grid(6, 8, dy=2.5, dx=1.25, boundary="closed", y0=10.0, x0=-3.0, units="km")
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(4, 2, *grid.shape))
    mask = rng.random(fields.shape) < 0.3
    return grid, fields, mask


def test_dataset_layout_and_cf_attributes(trajectory):
    grid, fields, mask = trajectory
    ds = fields_to_xarray(
        fields, grid, names=("ssh", "sst"), times=np.arange(4) * 0.5, mask=mask,
        units=("m", "K"), standard_names={"ssh": "sea_surface_height"},
        long_names="a field", time_units="days", attrs={"experiment": "osse"},
    )  # fmt: skip
    assert list(ds.data_vars) == ["ssh", "sst"]
    assert ds["ssh"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(ds["y"].values, 10.0 + 2.5 * np.arange(6))
    np.testing.assert_array_equal(ds["x"].values, -3.0 + 1.25 * np.arange(8))
    assert ds["y"].attrs["axis"] == "Y" and ds["x"].attrs["units"] == "km"
    assert ds["time"].attrs["units"] == "days" and ds["time"].attrs["axis"] == "T"
    assert ds["ssh"].attrs == {
        "units": "m", "standard_name": "sea_surface_height", "long_name": "a field",
    }  # fmt: skip
    assert "standard_name" not in ds["sst"].attrs and ds["sst"].attrs["units"] == "K"
    assert ds.attrs["experiment"] == "osse" and ds.attrs["Conventions"] == "CF-1.8"
    values = ds["sst"].values
    np.testing.assert_array_equal(np.isnan(values), ~mask[:, 1])
    np.testing.assert_array_equal(values[mask[:, 1]], fields[:, 1][mask[:, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_netcdf_round_trip(tmp_path, trajectory, dtype):
    grid, fields, mask = trajectory
    fields = fields.astype(dtype)
    obs = Observations(fields, mask)
    path = save_fields(tmp_path / "out" / "obs.nc", obs, grid, names=("a", "b"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["obs.nc"]
    back = load_fields(path)
    assert back.grid == grid and back.names == ("a", "b")
    assert back.fields.dtype == dtype
    np.testing.assert_array_equal(np.asarray(back.mask), mask)
    np.testing.assert_array_equal(np.asarray(back.fields), np.asarray(obs.values))
    np.testing.assert_array_equal(back.times, np.arange(4))
    again = back.observations
    np.testing.assert_array_equal(np.asarray(again.values), np.asarray(obs.values))
    # a complete trajectory: every entry observed, one channel given as (T, ny, nx)
    full = load_fields(save_fields(tmp_path / "truth.nc", fields[:, 0], grid))
    assert full.fields.shape == (4, 1, *grid.shape) and bool(full.mask.all())
    np.testing.assert_array_equal(np.asarray(full.fields[:, 0]), fields[:, 0])
    assert full.names == ("q",)


def test_dataset_from_elsewhere_gets_its_grid_from_the_coordinates():
    times = np.array(["2012-10-01", "2012-10-02", "2012-10-03"], dtype="datetime64[ns]")
    lat = 30.0 + 0.25 * np.arange(5)
    lon = -60.0 + 0.5 * np.arange(7)
    ssh = np.random.default_rng(1).normal(size=(7, 3, 5))  # (lon, time, lat)
    ssh[0, 1, 2] = np.nan
    ds = xr.Dataset(
        {"ssh": (("lon", "time", "lat"), ssh), "other": (("time",), np.zeros(3))},
        coords={"time": times, "lat": lat, "lon": lon},
    )
    out = fields_from_xarray(ds, time_dim="time", y_dim="lat", x_dim="lon")
    assert out.names == ("ssh",)
    assert out.grid == Grid(5, 7, 0.25, 0.5, "closed", 30.0, -60.0, units="m")
    np.testing.assert_array_equal(np.asarray(out.fields[:, 0]), np.nan_to_num(
        ssh.transpose(1, 2, 0)))  # fmt: skip
    assert int((~out.mask).sum()) == 1 and not bool(out.mask[1, 0, 2, 0])
    np.testing.assert_array_equal(out.times, times)
    periodic = fields_from_xarray(
        ds, "ssh", boundary="periodic", y_dim="lat", x_dim="lon"
    )
    assert periodic.grid.periodic
    # with datetimes, the file round trip keeps them
    ds2 = fields_to_xarray(
        out.fields, out.grid, names=("ssh",), times=times, mask=out.mask
    )
    np.testing.assert_array_equal(fields_from_xarray(ds2).times, times)


def test_bad_input_is_refused_with_named_arguments(trajectory, tmp_path):
    grid, fields, mask = trajectory
    with pytest.raises(ValueError, match="`fields` must have shape"):
        fields_to_xarray(fields[:, :, :3], grid)
    with pytest.raises(ValueError, match="`names` must give 2 distinct"):
        fields_to_xarray(fields, grid, names=("q",))
    with pytest.raises(ValueError, match="`names` must be non-empty strings"):
        fields_to_xarray(fields, grid, names=("q", "time"))
    with pytest.raises(ValueError, match="`times` must have shape"):
        fields_to_xarray(fields, grid, names=("a", "b"), times=np.arange(3))
    with pytest.raises(ValueError, match="`units` must give one entry per name"):
        fields_to_xarray(fields, grid, names=("a", "b"), units=("m",))
    with pytest.raises(TypeError, match="`mask` must be a boolean"):
        fields_to_xarray(fields, grid, names=("a", "b"), mask=mask.astype(int))
    ds = fields_to_xarray(fields, grid, names=("a", "b"))
    with pytest.raises(ValueError, match="no variable 'c'"):
        fields_from_xarray(ds, ("a", "c"))
    irregular = ds.assign_coords(x=ds["x"].values ** 2).drop_attrs()
    with pytest.raises(ValueError, match="constant spacing"):
        fields_from_xarray(irregular)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fields(tmp_path / "missing.nc")
