r"""Gridded trajectories as xarray Datasets and netCDF files (optional extra
`jaxda[io]`).

Layout: one data variable per channel (the names given), each with the dimensions
`(time, y, x)`; coordinates `time`, `y`, `x` (the `Grid`'s cell centres) with their CF
attributes (`axis`, `units`, `standard_name`, `long_name`); NaN where a value is
missing (unobserved). The grid's metadata not carried by the coordinates (the boundary,
the units) are global attributes `jaxda_grid_*`, so that `fields_from_xarray` rebuilds
the same `Grid`; a file from elsewhere gets its `Grid` from its coordinates.

Inside the library missing values are `(zero-filled values, mask)`
(`jaxda.obs.Observations`); NaN appears only here, at the file boundary.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float
from ..grid._grid import BOUNDARIES, Grid
from ..obs import Observations


_AXES = ("time", "y", "x")
_GRID_ATTRS = ("dy", "dx", "y0", "x0")


def _require_xarray():
    from ._netcdf import _require_io

    return _require_io()


class GriddedFields(NamedTuple):
    r"""Gridded trajectories read from a Dataset (`fields_from_xarray`, `load_fields`).

    **Fields:**

    - `fields`: shape `(T, C, ny, nx)`, zero where a value was missing (NaN in the
      file).
    - `mask`: boolean, same shape, `False` where a value was missing.
    - `grid`: the `Grid`.
    - `times`: the `time` coordinate, shape `(T,)` (NumPy: numbers or datetimes).
    - `names`: the `C` variable names, in channel order.
    """

    fields: Float[Array, "T C ny nx"]
    mask: Bool[Array, "T C ny nx"]
    grid: Grid
    times: np.ndarray
    names: tuple[str, ...]

    @property
    def observations(self):
        """The fields as `jaxda.obs.Observations(fields, mask)`."""
        return Observations(self.fields, self.mask)


def _per_name(arg: str, value, names: Sequence[str]) -> dict[str, str]:
    """`value` (None, one string, a sequence or a mapping) as a name -> string dict."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {n: value for n in names}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"`{arg}` names variables {unknown} that are not in `names` "
                f"{tuple(names)}."
            )
        return {str(k): str(v) for k, v in value.items() if v is not None}
    value = tuple(value)
    if len(value) != len(names):
        raise ValueError(
            f"`{arg}` must give one entry per name ({len(names)}: {tuple(names)}); "
            f"got {len(value)}."
        )
    return {n: str(v) for n, v in zip(names, value) if v is not None}


def _as_channels(fields, grid: Grid):
    """`fields`, an `Observations` or an array `(T, ny, nx)` / `(T, C, ny, nx)`, as a
    NumPy array `(T, C, ny, nx)` and a mask (or None)."""
    mask = None
    if isinstance(fields, Observations):
        values, mask = np.asarray(fields.values), np.asarray(fields.mask)
    else:
        values = np.asarray(fields)
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"`fields` must be a floating array; got dtype {values.dtype}.")
    if values.ndim == 3:
        values = values[:, None]
        mask = None if mask is None else mask[:, None]
    if values.ndim != 4 or values.shape[2:] != grid.shape:
        raise ValueError(
            f"`fields` must have shape (T, ny, nx) or (T, C, ny, nx) with (ny, nx) = "
            f"{grid.shape} (the grid's); got {tuple(np.shape(fields))}."
        )
    return values, mask


def fields_to_xarray(
    fields,
    grid: Grid,
    *,
    names: Sequence[str] = ("q",),
    times: ArrayLike | None = None,
    mask: Bool[ArrayLike, "T *C ny nx"] | None = None,
    units: str | Sequence[str | None] | Mapping[str, str] | None = None,
    standard_names: str | Sequence[str | None] | Mapping[str, str] | None = None,
    long_names: str | Sequence[str | None] | Mapping[str, str] | None = None,
    time_units: str | None = None,
    attrs: Mapping[str, object] | None = None,
):
    r"""A gridded trajectory as an `xarray.Dataset` with dimensions `(time, y, x)`.

    **Arguments:**

    - `fields`: an array `(T, C, ny, nx)` (or `(T, ny, nx)` for one channel), or a
      `jaxda.obs.Observations` of that shape (written with NaN where not observed).
    - `grid`: the `Grid` (its cell centres become the `y` / `x` coordinates).
    - `names`: the `C` variable names (default `("q",)`).
    - `times`: the `T` times (numbers or `numpy.datetime64`; default `0 ... T-1`).
    - `mask`: boolean, shaped like `fields`: NaN where `False` (with an
      `Observations`, both masks apply).
    - `units`, `standard_names`, `long_names`: CF attributes of the variables: one
      string for all, one per name (`None` to skip one) or a mapping from names.
    - `time_units`: the `units` attribute of numeric times (e.g. `"days"`, or
      `"seconds since 2012-10-01"`).
    - `attrs`: extra global attributes.

    **Returns:** the `xarray.Dataset` (NumPy data, the dtype of `fields`): one
    variable per channel with the dimensions `(time, y, x)`; coordinates `time`, `y`,
    `x` (the cell centres) with `axis`, `units`, `standard_name` and `long_name`;
    global attributes `Conventions = "CF-1.8"` and `jaxda_grid_boundary`,
    `jaxda_grid_units`, `jaxda_grid_dy`, `jaxda_grid_dx`, `jaxda_grid_y0`,
    `jaxda_grid_x0`, from which `fields_from_xarray` rebuilds the same `Grid`.
    """
    xr = _require_xarray()
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    values, obs_mask = _as_channels(fields, grid)
    n_times, n_channels = values.shape[:2]
    names = (names,) if isinstance(names, str) else tuple(names)
    if len(names) != n_channels or len(set(names)) != len(names):
        raise ValueError(
            f"`names` must give {n_channels} distinct variable names (one per channel "
            f"of `fields`, shape {values.shape}); got {names}."
        )
    bad = [n for n in names if not isinstance(n, str) or n in _AXES or not n]
    if bad:
        raise ValueError(
            f"`names` must be non-empty strings other than {_AXES}; got {bad}."
        )
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"`mask` must be a boolean array; got dtype {mask.dtype}.")
        if mask.ndim == 3:
            mask = mask[:, None]
        if mask.shape != values.shape:
            raise ValueError(
                f"`mask` must have the shape of `fields` {values.shape}; got "
                f"{tuple(np.shape(mask))}."
            )
        obs_mask = mask if obs_mask is None else obs_mask & mask
    if obs_mask is not None:
        values = np.where(obs_mask, values, np.asarray(np.nan, values.dtype))
    if times is None:
        times = np.arange(n_times)
    times = np.asarray(times)
    if times.shape != (n_times,):
        raise ValueError(
            f"`times` must have shape ({n_times},), one per time of `fields`; got "
            f"{times.shape}."
        )
    var_attrs = {n: {} for n in names}
    for key, given in (
        ("units", units),
        ("standard_name", standard_names),
        ("long_name", long_names),
    ):
        arg = {"units": "units"}.get(key, key + "s")
        for name, text in _per_name(arg, given, names).items():
            var_attrs[name][key] = text
    data_vars = {n: (_AXES, values[:, c], var_attrs[n]) for c, n in enumerate(names)}
    time_attrs = {"axis": "T", "standard_name": "time", "long_name": "time"}
    if time_units is not None and not np.issubdtype(times.dtype, np.datetime64):
        time_attrs["units"] = str(time_units)
    coords = {
        "time": ("time", times, time_attrs),
        "y": (
            "y",
            np.asarray(grid.y),
            {
                "axis": "Y",
                "units": grid.units,
                "standard_name": "projection_y_coordinate",
                "long_name": "y coordinate of the cell centres",
            },
        ),
        "x": (
            "x",
            np.asarray(grid.x),
            {
                "axis": "X",
                "units": grid.units,
                "standard_name": "projection_x_coordinate",
                "long_name": "x coordinate of the cell centres",
            },
        ),
    }
    global_attrs = {
        "Conventions": "CF-1.8",
        "jaxda_grid_boundary": grid.boundary,
        "jaxda_grid_units": grid.units,
        **{f"jaxda_grid_{a}": float(getattr(grid, a)) for a in _GRID_ATTRS},
        **dict(attrs or {}),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=global_attrs)


def _axis_spacing(name: str, coord: np.ndarray) -> tuple[float, float]:
    """`(start, spacing)` of a regular coordinate; `ValueError` if it is not one."""
    if coord.ndim != 1 or coord.size < 2:
        raise ValueError(
            f"the dataset's `{name}` coordinate must be 1-D with >= 2 values; got "
            f"shape {coord.shape}."
        )
    steps = np.diff(coord.astype(np.float64))
    h = float(np.mean(steps))
    if not h > 0 or np.max(np.abs(steps - h)) > 1e-6 * abs(h):
        raise ValueError(
            f"the dataset's `{name}` coordinate must be increasing with a constant "
            f"spacing (a regular grid); got steps from {steps.min()} to {steps.max()}."
        )
    return float(coord[0]), h


def _grid_of(ds, y_dim: str, x_dim: str, boundary: str | None) -> Grid:
    attrs = ds.attrs
    for dim in (y_dim, x_dim):
        if dim not in ds.coords:
            raise ValueError(
                f"the dataset has no `{dim}` coordinate (coordinates: "
                f"{sorted(map(str, ds.coords))})."
            )
    y0, dy = _axis_spacing(y_dim, np.asarray(ds[y_dim].values))
    x0, dx = _axis_spacing(x_dim, np.asarray(ds[x_dim].values))
    stored = [f"jaxda_grid_{a}" for a in _GRID_ATTRS]
    if all(k in attrs for k in stored):  # exact values, not rounded from coordinates
        dy, dx, y0, x0 = (float(np.asarray(attrs[k]).item()) for k in stored)
    if boundary is None:
        boundary = str(attrs.get("jaxda_grid_boundary", "closed"))
    if boundary not in BOUNDARIES:
        raise ValueError(
            f"`boundary` must be one of {BOUNDARIES} (or given by the dataset's "
            f"`jaxda_grid_boundary` attribute); got {boundary!r}."
        )
    units = attrs.get("jaxda_grid_units", ds[x_dim].attrs.get("units", "m"))
    return Grid(
        ds.sizes[y_dim], ds.sizes[x_dim], dy, dx, boundary, y0, x0, units=str(units)
    )


def fields_from_xarray(
    ds,
    names: Sequence[str] | None = None,
    *,
    boundary: str | None = None,
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
    dtype=None,
) -> GriddedFields:
    r"""Read gridded trajectories from an `xarray.Dataset` (the inverse of
    `fields_to_xarray`).

    The `Grid` comes from the `jaxda_grid_*` attributes where `fields_to_xarray` wrote
    them, otherwise from the coordinates (which must be regular). NaN entries become
    `mask == False` and zeros in `fields`.

    **Arguments:**

    - `ds`: the Dataset.
    - `names`: the variables to read, in channel order (default: every data variable
      with the dimensions `(time, y, x)`, in the dataset's order).
    - `boundary`: `"periodic"` or `"closed"`; default the dataset's
      `jaxda_grid_boundary` attribute, else `"closed"` (no wrap-around).
    - `time_dim`, `y_dim`, `x_dim`: the dimension names (e.g. `"lat"`, `"lon"`).
    - `dtype`: the floating dtype of `fields` (default the variables').

    **Returns:** a `GriddedFields(fields, mask, grid, times, names)`.
    """
    xr = _require_xarray()
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"`ds` must be an xarray.Dataset; got {type(ds).__name__}.")
    dims = (time_dim, y_dim, x_dim)
    if names is None:
        names = tuple(
            str(n) for n, v in ds.data_vars.items() if set(v.dims) == set(dims)
        )
        if not names:
            raise ValueError(
                f"the dataset has no data variable with the dimensions {dims} "
                f"(variables: {sorted(map(str, ds.data_vars))})."
            )
    names = (names,) if isinstance(names, str) else tuple(names)
    for n in names:
        if n not in ds.data_vars:
            raise ValueError(
                f"`names`: the dataset has no variable {n!r} (variables: "
                f"{sorted(map(str, ds.data_vars))})."
            )
        if set(ds[n].dims) != set(dims):
            raise ValueError(
                f"`names`: the variable {n!r} must have the dimensions {dims} (in any "
                f"order); got {tuple(ds[n].dims)}."
            )
    grid = _grid_of(ds, y_dim, x_dim, boundary)
    values = np.stack([ds[n].transpose(*dims).values for n in names], axis=1)
    if dtype is not None:
        values = values.astype(dtype)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    mask = ~np.isnan(values)
    if np.isinf(values).any():
        raise ValueError(
            f"the variables {names} must hold finite values or NaN (missing); got "
            f"{int(np.isinf(values).sum())} infinite entries."
        )
    times = np.asarray(ds[time_dim].values) if time_dim in ds.coords else None
    if times is None:
        times = np.arange(values.shape[0])
    fields = np.where(mask, values, np.zeros((), values.dtype))
    return GriddedFields(jnp.asarray(fields), jnp.asarray(mask), grid, times, names)


def save_fields(path: str | os.PathLike, fields, grid: Grid, **kwargs) -> Path:
    """Write gridded trajectories to the netCDF file `path`, atomically.

    `fields_to_xarray(fields, grid, **kwargs)` written with the `h5netcdf` engine
    through `jaxda.io.atomic_path` (an existing file is replaced only once the new one
    is complete).

    **Returns:** the path written.
    """
    from ..io import atomic_path

    ds = fields_to_xarray(fields, grid, **kwargs)
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return path


def load_fields(
    path: str | os.PathLike, names: Sequence[str] | None = None, **kwargs
) -> GriddedFields:
    """Read gridded trajectories from a netCDF file (`fields_from_xarray` of its
    content).

    **Arguments:** `path`; `names` and the keywords of `fields_from_xarray`.

    **Returns:** a `GriddedFields`.

    **Raises:** `FileNotFoundError` when `path` does not exist.
    """
    xr = _require_xarray()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"`path` does not exist: {str(path)!r}.")
    ds = xr.load_dataset(path, engine="h5netcdf")
    return fields_from_xarray(ds, names, **kwargs)


__all__ = [
    "GriddedFields",
    "fields_from_xarray",
    "load_fields",
    "save_fields",
    "fields_to_xarray",
]
