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


def _rebuild_model(name: str, params: dict):
    if not name:
        return None
    from .. import models

    cls = getattr(models, name, None)
    if cls is None:
        raise ValueError(
            f"The file's `model` attribute {name!r} is not a class of jaxda.models."
        )
    return cls(**params)


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a `Dataset` written by `save_dataset` (exact round trip, same dtype)."""
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
    state_shape = tuple(json.loads(attrs["state_shape"]))
    truth = xds["truth"].values
    obs = xds["obs"].values
    n, t = truth.shape[:2]
    truth = truth.reshape((n, t) + state_shape)
    obs = obs.reshape((n, t) + state_shape)
    stats = None
    if int(attrs.get("normalised", 0)):
        stats = Normalisation(
            jnp.asarray(xds["normalisation_mean"].values.reshape(state_shape)),
            jnp.asarray(xds["normalisation_std"].values.reshape(state_shape)),
        )
    model = _rebuild_model(str(attrs["model"]), json.loads(attrs["model_parameters"]))
    seed = int(attrs["seed"])
    return Dataset(
        jnp.asarray(truth),
        Observations.from_nan(jnp.asarray(obs)),
        model,
        float(attrs["dt"]),
        stats,
        name=str(attrs["name"]),
        split=str(attrs["split"]),
        noise_std=float(attrs["noise_std"]),
        process_noise_std=float(attrs["process_noise_std"]),
        seed=None if seed < 0 else seed,
    )
