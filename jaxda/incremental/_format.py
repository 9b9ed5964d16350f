"""The `jaxda.io.save_model` format of a `NeuralBandGaussian`: its hyperparameters,
checked against the stored leaves before the model is built (abstractly)."""

from __future__ import annotations

import equinox as eqx
import jax

from ._band_gaussian import NeuralBandGaussian


_INTS = ("n_times", "bandwidth", "width", "depth", "embed_dim", "kernel_size")
_BOOLS = ("conditional", "residual")
_FLOATS = ("max_entry", "min_eig")
_STRS = ("architecture", "activation", "form", "dtype")


def _describe(model: NeuralBandGaussian) -> dict:
    return model.hyperparameters


def _skeleton(hp: dict, signature: list) -> NeuralBandGaussian:
    """Type checks, then the leaf count implied by `depth` against the file, then an
    abstract build (`eqx.filter_eval_shape`: nothing is allocated)."""
    want = set(_INTS + _BOOLS + _FLOATS + _STRS + ("state_shape",))
    if set(hp) != want:
        raise ValueError(f"hyperparameters must be {sorted(want)}; got {sorted(hp)}")
    for k in _INTS:
        if type(hp[k]) is not int or hp[k] < 0:
            raise TypeError(f"`{k}` must be a non-negative int; got {hp[k]!r}")
    for k in _BOOLS:
        if type(hp[k]) is not bool:
            raise TypeError(f"`{k}` must be a bool; got {hp[k]!r}")
    for k in _FLOATS:
        if type(hp[k]) not in (int, float):
            raise TypeError(f"`{k}` must be a number; got {hp[k]!r}")
    for k in _STRS:
        if type(hp[k]) is not str:
            raise TypeError(f"`{k}` must be a string; got {hp[k]!r}")
    shape = hp["state_shape"]
    if not (isinstance(shape, list) and all(type(s) is int for s in shape)):
        raise TypeError(f"`state_shape` must be a list of ints; got {shape!r}")
    # Every layer of each network stores a weight and a bias.
    n_leaves = 2 * (hp["depth"] + 1) * (2 if hp["conditional"] else 1)
    if n_leaves != len(signature):
        raise ValueError(
            f"`depth={hp['depth']}` and `conditional={hp['conditional']}` mean "
            f"{n_leaves} stored arrays; the file holds {len(signature)}"
        )
    kw = dict(hp, state_shape=tuple(shape))
    return eqx.filter_eval_shape(
        lambda: NeuralBandGaussian(key=jax.random.key(0), **kw)
    )


def register() -> None:
    from ..io._model import register_model

    register_model(
        NeuralBandGaussian,
        describe=_describe,
        skeleton=_skeleton,
        aliases=("NeuralBandPrior",),
    )
