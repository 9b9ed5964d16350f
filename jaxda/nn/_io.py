"""Save and load trained `NeuralBandPrior` and `FourDVarNet` models (architecture in the
header, weights after it)."""

import json
import os

import jax

from ..train import load_checkpoint, read_checkpoint_header, save_checkpoint
from ._band_prior import NeuralBandPrior
from ._fourdvarnet import FourDVarNet
from ._fourdvarnet_io import abstract_model, describe, leaf_signature


_CLASSES = ("NeuralBandPrior", "FourDVarNet")


def _header(model) -> dict:
    if isinstance(model, NeuralBandPrior):
        return {"class": "NeuralBandPrior", "hyperparameters": model.hyperparameters}
    if isinstance(model, FourDVarNet):
        return {
            "class": "FourDVarNet",
            "hyperparameters": describe(model),
            "leaves": leaf_signature(model),
        }
    raise TypeError(
        "`model` must be a NeuralBandPrior or a FourDVarNet; got "
        f"{type(model).__name__}."
    )


def save_model(path: str | os.PathLike, model: NeuralBandPrior | FourDVarNet) -> None:
    """Save a `NeuralBandPrior` or a `FourDVarNet` to one file, atomically (see
    `jaxda.train.save_checkpoint`).

    The header holds the class name and the architecture hyperparameters
    (`NeuralBandPrior.hyperparameters`; for a `FourDVarNet` its configuration, prior and
    solver, and the shape and dtype of every array), so `load_model(path)` rebuilds the
    model without being told its architecture. A `FourDVarNet` whose prior or solver
    is a custom module (e.g. a `FlaxModule`) cannot be described: `TypeError`.
    """
    save_checkpoint(path, model, _header(model))


def _json(x):
    return json.loads(json.dumps(x, sort_keys=True))


def load_model(
    path: str | os.PathLike, like: NeuralBandPrior | FourDVarNet | None = None
) -> NeuralBandPrior | FourDVarNet:
    """Load a model saved by `save_model` (bit-for-bit equal weights).

    **Arguments:** `path`; `like` (optional): a model of the expected architecture: the
    saved one must have the same class and hyperparameters.

    Raises `ValueError` for a file that is not a jaxda model checkpoint (e.g. a training
    checkpoint), is corrupt or truncated, or holds another architecture than `like`.
    """
    name = os.fspath(path)
    header = read_checkpoint_header(path)
    cls = header.get("class")
    if cls not in _CLASSES or "hyperparameters" not in header:
        raise ValueError(
            f"{name!r} does not hold a NeuralBandPrior or a FourDVarNet saved by "
            f"jaxda.nn.save_model (header {header!r})."
        )
    hp = header["hyperparameters"]
    if like is not None:
        want = _json(_header(like))
        if want["class"] != cls or want["hyperparameters"] != hp:
            diff = _diff(
                {"class": cls, **hp},
                {"class": want["class"], **want["hyperparameters"]},
            )
            raise ValueError(
                f"{name!r} was saved from another architecture; differences (saved, "
                f"expected): {diff}."
            )
    try:
        if cls == "NeuralBandPrior":
            hp = dict(hp)
            hp["state_shape"] = tuple(hp["state_shape"])
            skeleton = NeuralBandPrior(key=jax.random.key(0), **hp)
        else:
            skeleton = abstract_model(hp, header["leaves"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{name!r} has invalid architecture hyperparameters for a {cls}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return load_checkpoint(path, skeleton)


def _diff(got: dict, want: dict) -> dict:
    return {
        k: (got.get(k), want.get(k))
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    }
