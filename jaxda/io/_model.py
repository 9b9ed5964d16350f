"""One save/load format for trained models (architecture in the header, weights after).

A model class takes part by registering a format (`register_model`): a function
`describe(model) -> dict` of JSON hyperparameters and a function `skeleton(hp,
signature) -> model` that checks the hyperparameters (types, ranges, and sizes bounded
by the stored leaves) *before* building the structure abstractly (with
`jax.ShapeDtypeStruct` leaves: nothing is allocated). `jaxda.fourdvarnet` and
`jaxda.incremental` register theirs when imported (`import jaxda` imports both).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import numpy as np

from ._checkpoint import deserialise, read_checkpoint, save_checkpoint


@dataclasses.dataclass(frozen=True)
class _Format:
    cls: type
    describe: Callable[[object], dict]
    skeleton: Callable[[dict, list], object]


_FORMATS: dict[str, _Format] = {}
_ALIASES: dict[str, str] = {}
_SCALARS = {bool: "bool", int: "int", float: "float", complex: "complex"}


def register_model(
    cls: type,
    *,
    describe: Callable[[object], dict],
    skeleton: Callable[[dict, list], object],
    aliases: tuple[str, ...] = (),
) -> None:
    """Let `save_model` / `load_model` handle instances of `cls` (exact class).

    `describe(model)` returns the JSON hyperparameters; `skeleton(hp, signature)` must
    validate `hp` against `signature` (the stored `leaf_signature`) with cheap checks
    first and raise `ValueError`/`TypeError`/`KeyError` on a mismatch, then return the
    structure (abstract leaves are fine). `aliases`: older class names in files.
    """
    _FORMATS[cls.__name__] = _Format(cls, describe, skeleton)
    for a in aliases:
        _ALIASES[a] = cls.__name__


def _is_struct(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _serialised_leaves(tree) -> list:
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=_is_struct)
    return [
        x
        for x in leaves
        if _is_struct(x)
        or isinstance(x, (jax.Array, np.ndarray, np.generic))
        or type(x) in _SCALARS
    ]


def leaf_signature(tree) -> list:
    """`[[shape, dtype], ...]` of every leaf that `equinox.tree_serialise_leaves`
    writes, in flattening order (arrays: their shape and dtype; Python scalars: `[[],
    "float"]` etc.)."""
    out = []
    for x in _serialised_leaves(tree):
        if type(x) in _SCALARS:
            out.append([[], _SCALARS[type(x)]])
        else:
            out.append([[int(s) for s in np.shape(x)], str(np.dtype(x.dtype))])
    return out


def _check_signature(name: str, signature, nbytes: int) -> list:
    """The stored signature is well formed and its sizes fit in the payload."""
    if not isinstance(signature, list) or len(signature) > nbytes:
        raise ValueError(f"{name!r}: invalid leaf list in the header.")
    total = 0
    for item in signature:
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], list)
            and all(type(s) is int and s >= 0 for s in item[0])
            and isinstance(item[1], str)
        )
        if not ok:
            raise ValueError(f"{name!r}: invalid leaf entry {item!r} in the header.")
        shape, dtype = item
        if dtype in _SCALARS.values():
            itemsize = 1
        else:
            try:
                itemsize = np.dtype(dtype).itemsize
            except TypeError:
                raise ValueError(f"{name!r}: invalid leaf dtype {dtype!r}.") from None
        total += int(np.prod(shape, dtype=np.float64)) * itemsize
        if total > nbytes:
            raise ValueError(
                f"{name!r}: the header describes more data than the file holds "
                f"({nbytes} payload bytes)."
            )
    return signature


def _with_dtypes(like, signature: list):
    """`like` (abstract) after checking its leaves against `signature`, with the stored
    array dtypes."""
    got = leaf_signature(like)
    same = len(got) == len(signature) and all(
        g[0] == w[0] for g, w in zip(got, signature)
    )
    if not same:
        raise ValueError(
            f"the stored architecture builds {len(got)} leaves of shapes "
            f"{[g[0] for g in got][:20]}, but the file holds {len(signature)} of "
            f"shapes {[w[0] for w in signature][:20]}."
        )
    stored = iter(signature)
    leaves, treedef = jax.tree_util.tree_flatten(like, is_leaf=_is_struct)
    kept = {id(x) for x in _serialised_leaves(like)}
    out = []
    for x in leaves:
        if id(x) in kept:
            _, dtype = next(stored)
            if dtype not in _SCALARS.values() and (
                _is_struct(x) or isinstance(x, (jax.Array, np.ndarray))
            ):
                x = jax.ShapeDtypeStruct(np.shape(x), np.dtype(dtype))
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def _format_of(model) -> tuple[str, _Format]:
    name = type(model).__name__
    fmt = _FORMATS.get(name)
    if fmt is None or fmt.cls is not type(model):
        known = ", ".join(sorted(_FORMATS)) or "none registered"
        raise TypeError(f"`model` must be one of: {known}; got {type(model).__name__}.")
    return name, fmt


def _header(model) -> dict:
    name, fmt = _format_of(model)
    return {
        "class": name,
        "hyperparameters": fmt.describe(model),
        "leaves": leaf_signature(model),
    }


def save_model(path: str | os.PathLike, model) -> None:
    """Save a trained model (`jaxda.incremental.NeuralBandGaussian`,
    `jaxda.fourdvarnet.FourDVarNet`) to one file, atomically.

    The header holds the class name, the architecture hyperparameters and the shape and
    dtype of every stored leaf, under the checksum of `save_checkpoint`, so
    `load_model(path)` rebuilds the model without being told its architecture. A
    `FourDVarNet` whose prior or solver is a custom module (e.g. a `FlaxModule`) cannot
    be described: `TypeError` (save it with `save_checkpoint`).

    **Arguments:** `path` (destination file); `model`.
    """
    save_checkpoint(path, model, _header(model))


def _json(x):
    return json.loads(json.dumps(x, sort_keys=True))


def _diff(got: dict, want: dict) -> dict:
    return {
        k: (got.get(k), want.get(k))
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    }


def load_model(path: str | os.PathLike, like=None):
    """Load a model saved by `save_model` (bit-for-bit equal weights).

    The header is checked before anything is built: its checksum, the hyperparameters'
    types and ranges, and the number, shapes and total size of the stored leaves
    against the payload; the model structure is then built abstractly and compared
    with the stored leaves. Loading never executes code from the file.

    **Arguments:**

    - `path`: the file.
    - `like` (optional): a model of the expected architecture; the saved one must have
      the same class and hyperparameters.

    **Returns:** the model.

    Raises `ValueError` for a file that is not a jaxda model (e.g. a training
    checkpoint), is corrupt, truncated or edited, or holds another architecture than
    `like`.
    """
    name = os.fspath(path)
    meta, payload = read_checkpoint(path)
    header = meta["header"]
    cls = _ALIASES.get(header.get("class"), header.get("class"))
    if cls not in _FORMATS or not isinstance(header.get("hyperparameters"), dict):
        raise ValueError(
            f"{name!r} does not hold a model saved by jaxda.io.save_model (known "
            f"classes: {sorted(_FORMATS)}; header {str(header)[:300]})."
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
    signature = header.get("leaves")
    if signature is None or meta["version"] == 1:
        # files of jaxda <= 0.2: no leaf list (NeuralBandPrior) or arrays only
        signature = _v1_signature(payload)
    signature = _check_signature(name, signature, len(payload))
    try:
        skeleton = _with_dtypes(_FORMATS[cls].skeleton(hp, signature), signature)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{name!r} has invalid architecture hyperparameters for a {cls}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return deserialise(path, payload, skeleton)


def _v1_signature(payload: bytes) -> list:
    """The leaf list of a payload of `.npy` records (older files without one)."""
    import io

    f, out = io.BytesIO(payload), []
    while f.tell() < len(payload):
        try:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
        except Exception:
            raise ValueError("the payload is not a sequence of .npy records") from None
        size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if size > len(payload):
            raise ValueError("the payload is inconsistent")
        f.seek(size, 1)
        out.append([list(shape), str(dtype)])
    return out


__all__ = ["leaf_signature", "load_model", "register_model", "save_model"]
