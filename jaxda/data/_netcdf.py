"""Save and load a `Dataset` as netCDF through xarray (optional extra `jaxda[io]`).

File layout: dimensions `(sample, time, component)`; variables `truth` and `obs` (NaN
where unobserved), both in the dataset's dtype; a `time` coordinate ($k\\,dt$); when the
dataset is normalised, `normalisation_mean` and `normalisation_std` over `component`.
Attributes: `jaxda_format`, `name`, `split`, `dt`, `noise_std`, `process_noise_std`,
`seed`, `model` (class name in `jaxda.models`), `model_parameters` (JSON) and
`state_shape` (JSON; a state with several axes is flattened into `component` in C
order).

Files are written atomically: to a temporary file in the same folder, then `os.replace`.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..io import atomic_path
from ..obs import Observations
from ._dataset import Dataset
from ._normalise import Normalisation


_FORMAT = "jaxda.data.Dataset/1"


def _require_io():
    try:
        import h5netcdf  # noqa: F401
        import h5py  # noqa: F401  (h5netcdf >= 1.8 no longer installs it)
        import xarray as xr
    except ImportError as err:
        raise ImportError(
            "Saving and loading datasets needs xarray, h5netcdf and h5py: "
            "`pip install jaxda[io]` (or `pip install xarray h5netcdf h5py`)."
        ) from err
    return xr


def _model_parameters(model) -> dict:
    params = {}
    for f in dataclasses.fields(model) if model is not None else ():
        value = getattr(model, f.name)
        arr = np.asarray(value)
        params[f.name] = arr.item() if arr.ndim == 0 else arr.tolist()
    return params


def save_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write `ds` to the netCDF file `path` (atomically; an existing file is replaced).

    **Returns:** the path written.
    """
    xr = _require_io()
    if not isinstance(ds, Dataset):
        raise TypeError(f"`ds` must be a jaxda.data.Dataset; got {type(ds).__name__}.")
    path = Path(path)
    n, t = ds.n_windows, ds.n_times
    truth = np.asarray(ds.truth).reshape(n, t, -1)
    obs = np.asarray(ds.obs.to_nan()).reshape(n, t, -1)
    dims = ("sample", "time", "component")
    data_vars = {"truth": (dims, truth), "obs": (dims, obs)}
    if ds.normalisation is not None:
        data_vars["normalisation_mean"] = (
            ("component",),
            np.asarray(ds.normalisation.mean).reshape(-1),
        )
        data_vars["normalisation_std"] = (
            ("component",),
            np.asarray(ds.normalisation.std).reshape(-1),
        )
    attrs = {
        "jaxda_format": _FORMAT,
        "name": ds.name,
        "split": ds.split,
        "dt": float(ds.dt),
        "noise_std": float(ds.noise_std),
        "process_noise_std": float(ds.process_noise_std),
        "seed": -1 if ds.seed is None else int(ds.seed),
        "model": "" if ds.model is None else type(ds.model).__name__,
        "model_parameters": json.dumps(_model_parameters(ds.model)),
        "state_shape": json.dumps(list(ds.state_shape)),
        "normalised": int(ds.normalisation is not None),
    }
    coords = {
        "sample": np.arange(n),
        "time": np.asarray(ds.dt * np.arange(t), dtype=truth.dtype),
        "component": np.arange(truth.shape[-1]),
    }
    xds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    with atomic_path(path) as tmp:
        xds.to_netcdf(tmp, engine="h5netcdf")
    return path


_DIMS = ("sample", "time", "component")


def _attr(attrs, name: str, path):
    if name not in attrs:
        raise ValueError(
            f"`path` {str(path)!r}: the jaxda dataset file has no attribute {name!r} "
            f"(found {sorted(attrs)})."
        )
    return attrs[name]


def _number_attr(attrs, name: str, path, kind, default=None):
    """Attribute `name` as `kind` (`int` or `float`); `ValueError` naming it if not."""
    value = default if (name not in attrs and default is not None) else None
    if value is None:
        value = _attr(attrs, name, path)  # raises when missing
    try:
        return kind(np.asarray(value).item())
    except (TypeError, ValueError):
        raise ValueError(
            f"`path` {str(path)!r}: the attribute {name!r} must be a number; got "
            f"{value!r}."
        ) from None


def _json_attr(attrs, name: str, path):
    text = _attr(attrs, name, path)
    try:
        return json.loads(str(text))
    except json.JSONDecodeError:
        raise ValueError(
            f"`path` {str(path)!r}: the attribute {name!r} must be JSON; got {text!r}."
        ) from None


def _variable(xds, name: str, dims: tuple[str, ...], path) -> np.ndarray:
    """The values of variable `name`, transposed to `dims` (matched by name)."""
    if name not in xds.data_vars:
        raise ValueError(
            f"`path` {str(path)!r}: the jaxda dataset file has no variable {name!r} "
            f"(found {sorted(map(str, xds.data_vars))})."
        )
    var = xds[name]
    if sorted(map(str, var.dims)) != sorted(dims):
        raise ValueError(
            f"`path` {str(path)!r}: the variable {name!r} must have the dimensions "
            f"{dims} (in any order); got {tuple(var.dims)}."
        )
    return var.transpose(*dims).values


def _is_number_tree(value) -> bool:
    """Whether `value` is a JSON number (not a bool) or a nested list of them."""
    if isinstance(value, list):
        return all(_is_number_tree(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rebuild_model(name: str, params, path):
    """The `jaxda.models` dynamics named by the file, checked before it is built."""
    if not name:
        return None
    import inspect

    from .. import models

    cls = getattr(models, name, None)
    if not (
        isinstance(cls, type)
        and issubclass(cls, models.AbstractDynamics)
        and not inspect.isabstract(cls)
    ):
        raise ValueError(
            f"`path` {str(path)!r}: the attribute 'model' must name a dynamical "
            f"system of jaxda.models (an AbstractDynamics subclass such as "
            f"'Lorenz63'); got {name!r}."
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(params, dict) or not set(params) <= fields:
        raise ValueError(
            f"`path` {str(path)!r}: the attribute 'model_parameters' must be a JSON "
            f"object with keys among the fields {sorted(fields)} of {name}; got "
            f"{params!r}."
        )
    bad = sorted(k for k, v in params.items() if not _is_number_tree(v))
    if bad:
        raise ValueError(
            f"`path` {str(path)!r}: the attribute 'model_parameters' must hold JSON "
            f"numbers (or lists of numbers); got {', '.join(bad)} = "
            f"{[params[k] for k in bad]!r}."
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`path` {str(path)!r}: the attributes 'model'={name!r} and "
            f"'model_parameters'={params!r} do not build a {name}: {err}"
        ) from None


def _state_shape(attrs, n_components: int, path) -> tuple[int, ...]:
    shape = _json_attr(attrs, "state_shape", path)
    ok = (
        isinstance(shape, list)
        and len(shape) >= 1
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    )
    if not ok or math.prod(shape) != n_components:
        raise ValueError(
            f"`path` {str(path)!r}: the attribute 'state_shape' must be a JSON list of "
            f"positive ints whose product is the size of the 'component' dimension "
            f"({n_components}); got {shape!r}."
        )
    return tuple(shape)


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a `Dataset` written by `save_dataset` (exact round trip, same dtype).

    Variables are matched to the dimensions `(sample, time, component)` by name (a file
    written with another dimension order is transposed). Nothing from the file is
    executed: the `model` attribute must name an `AbstractDynamics` class of
    `jaxda.models` and `model_parameters` must be JSON numbers.

    **Arguments:**

    - `path`: a netCDF file written by `save_dataset`.

    **Returns:** the `Dataset`.

    **Raises:** `FileNotFoundError` when `path` does not exist; `ValueError` naming
    the variable or attribute when the file is not a well-formed jaxda dataset.
    """
    xr = _require_io()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"`path` does not exist: {str(path)!r}.")
    xds = xr.load_dataset(path, engine="h5netcdf")
    attrs = xds.attrs
    if attrs.get("jaxda_format") != _FORMAT:
        raise ValueError(
            f"`path` is not a jaxda dataset file (attribute jaxda_format="
            f"{attrs.get('jaxda_format')!r}, expected {_FORMAT!r})."
        )
    truth = _variable(xds, "truth", _DIMS, path)
    obs = _variable(xds, "obs", _DIMS, path)
    if obs.shape != truth.shape:
        raise ValueError(
            f"`path` {str(path)!r}: the variables 'obs' and 'truth' must have the same "
            f"shape; got {obs.shape} and {truth.shape}."
        )
    n, t, c = truth.shape
    state_shape = _state_shape(attrs, c, path)
    truth = truth.reshape((n, t) + state_shape)
    obs = obs.reshape((n, t) + state_shape)
    stats = None
    if _number_attr(attrs, "normalised", path, int, 0):
        stats = Normalisation(
            jnp.asarray(
                _variable(xds, "normalisation_mean", ("component",), path).reshape(
                    state_shape
                )
            ),
            jnp.asarray(
                _variable(xds, "normalisation_std", ("component",), path).reshape(
                    state_shape
                )
            ),
        )
    model = _rebuild_model(
        str(_attr(attrs, "model", path)),
        _json_attr(attrs, "model_parameters", path),
        path,
    )
    seed = _number_attr(attrs, "seed", path, int)
    return Dataset(
        jnp.asarray(truth),
        Observations.from_nan(jnp.asarray(obs)),
        model,
        _number_attr(attrs, "dt", path, float),
        stats,
        name=str(attrs.get("name", "")),
        split=str(attrs.get("split", "")),
        noise_std=_number_attr(attrs, "noise_std", path, float),
        process_noise_std=_number_attr(attrs, "process_noise_std", path, float, 0.0),
        seed=None if seed < 0 else seed,
    )
