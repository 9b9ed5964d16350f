"""Save and load `NeuralBandPrior` models (architecture in the header, weights after
it)."""

import os

import jax

from ..train import load_checkpoint, read_checkpoint_header, save_checkpoint
from ._band_prior import NeuralBandPrior


_CLASS = "NeuralBandPrior"


def save_model(path: str | os.PathLike, model: NeuralBandPrior) -> None:
    """Save a `NeuralBandPrior` to one file, atomically (see
    `jaxda.train.save_checkpoint`).

    The header holds the class name and `model.hyperparameters`, so `load_model(path)`
    can rebuild the architecture without being told it.
    """
    if not isinstance(model, NeuralBandPrior):
        raise TypeError(
            f"`model` must be a NeuralBandPrior; got {type(model).__name__}."
        )
    header = {"class": _CLASS, "hyperparameters": model.hyperparameters}
    save_checkpoint(path, model, header)


def load_model(path: str | os.PathLike) -> NeuralBandPrior:
    """Load a model saved by `save_model` (bit-for-bit equal weights).

    Raises `ValueError` for a file that is not a jaxda model checkpoint or is corrupt or
    truncated.
    """
    header = read_checkpoint_header(path)
    if header.get("class") != _CLASS or "hyperparameters" not in header:
        raise ValueError(
            f"{os.fspath(path)!r} does not hold a NeuralBandPrior (header {header!r})."
        )
    hp = dict(header["hyperparameters"])
    hp["state_shape"] = tuple(hp["state_shape"])
    try:
        like = NeuralBandPrior(key=jax.random.key(0), **hp)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{os.fspath(path)!r} has invalid architecture hyperparameters: {e}"
        ) from e
    return load_checkpoint(path, like, header)
