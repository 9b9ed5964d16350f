"""The checkpoint file format: a JSON header line under a checksum, then the leaves.

A checkpoint is one file: a JSON line `{"format": "jaxda-checkpoint", "version",
"header", "nbytes", "sha256"}` followed by the bytes of
`equinox.tree_serialise_leaves(tree)` (`nbytes` of them). In version 2 the SHA-256
covers the canonical JSON of the header line (every key but `sha256`, sorted) and the
payload, so an edited header is detected like a corrupted payload. Version 1 files
(checksum over the payload only) are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import equinox as eqx
import jax

from ._atomic import atomic_path


_MAGIC = "jaxda-checkpoint"
_VERSION = 2
_READABLE = (1, 2)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _unwrap_keys(tree):
    """Typed PRNG keys -> their raw uint32 data (serialisable)."""
    return jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if _is_key(x) else x, tree
    )


def _rewrap_keys(loaded, like):
    """Inverse of `_unwrap_keys`, with the key implementation of `like`."""
    return jax.tree_util.tree_map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
            if _is_key(ref)
            else x
        ),
        loaded,
        like,
    )


def _jsonable(header: dict | None) -> dict:
    header = {} if header is None else dict(header)
    try:
        return json.loads(json.dumps(header, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`header` must be JSON-serialisable with finite numbers; got {header!r}."
        ) from e


def _canonical(meta: dict) -> bytes:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True).encode()


def _digest(meta: dict, payload: bytes) -> str:
    if meta.get("version") == 1:
        return hashlib.sha256(payload).hexdigest()
    return hashlib.sha256(_canonical(meta) + b"\n" + payload).hexdigest()


def save_checkpoint(path: str | os.PathLike, tree, header: dict | None = None) -> None:
    """Save a pytree (e.g. a `TrainState` or a model) to `path` atomically.

    The file holds one JSON line `{"format", "version", "header", "nbytes", "sha256"}`
    followed by the bytes of `equinox.tree_serialise_leaves(tree)`; the SHA-256 covers
    the header line and the payload. It is written to a temporary file in the same
    folder, flushed, then moved with `os.replace` (`jaxda.io.atomic_path`), so an
    interrupted save never leaves a half-written checkpoint at `path`.

    **Arguments:**

    - `path`: destination file.
    - `tree`: pytree to save (array leaves are saved; the structure must be rebuilt by
      the loader, e.g. from the architecture stored in `header`).
    - `header`: JSON-serialisable dict (finite numbers only), e.g. the architecture
      hyperparameters.
    """
    path = os.fspath(path)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, _unwrap_keys(tree))
    payload = buf.getvalue()
    meta = {
        "format": _MAGIC,
        "version": _VERSION,
        "header": _jsonable(header),
        "nbytes": len(payload),
    }
    meta["sha256"] = _digest(meta, payload)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(json.dumps(meta, sort_keys=True).encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, bytes]:
    """`(meta, payload)` of a checkpoint after the format, version and checksum checks
    (the library's reader; `meta["header"]` is the user header)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    with open(path, "rb") as f:
        raw = f.read()
    line, sep, payload = raw.partition(b"\n")
    try:
        meta = json.loads(line.decode()) if sep else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != _MAGIC:
        raise ValueError(f"{path!r} is not a jaxda checkpoint (bad or missing header).")
    if meta.get("version") not in _READABLE:
        raise ValueError(
            f"{path!r} has checkpoint format version {meta.get('version')!r}; this "
            f"jaxda reads versions {list(_READABLE)}."
        )
    if (
        len(payload) != meta.get("nbytes")
        or not isinstance(meta.get("header"), dict)
        or _digest(meta, payload) != meta.get("sha256")
    ):
        raise ValueError(
            f"{path!r} is corrupt, truncated or edited: expected {meta.get('nbytes')} "
            f"payload bytes and a header matching the stored checksum, got "
            f"{len(payload)} bytes that do not match."
        )
    return meta, payload


def read_checkpoint_header(path: str | os.PathLike) -> dict:
    """The user `header` stored in a checkpoint (validates format and checksum).

    Raises `ValueError` for a file that is not a jaxda checkpoint, or is
    corrupt/truncated/edited.
    """
    return read_checkpoint(path)[0]["header"]


def deserialise(path, payload: bytes, like):
    """The pytree of `payload` with the structure of `like` (`ValueError` on a
    mismatch)."""
    try:
        loaded = eqx.tree_deserialise_leaves(io.BytesIO(payload), _unwrap_keys(like))
    except Exception as e:  # equinox/numpy raise various errors on mismatch
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} does not match the given structure "
            f"(another architecture or optimiser?): {type(e).__name__}: {e}"
        ) from e
    return _rewrap_keys(loaded, like)


def load_checkpoint(path: str | os.PathLike, like, header: dict | None = None):
    """Load a pytree saved by `save_checkpoint`.

    **Arguments:**

    - `path`: checkpoint file.
    - `like`: a pytree with the same structure, shapes and dtypes as the saved one (e.g.
      a freshly initialised model or `TrainState`); its array leaves are replaced.
    - `header`: if given, must equal the stored header (e.g. the architecture),
      otherwise a `ValueError` lists the differences.

    **Returns:** the loaded pytree, bit-for-bit equal to the saved one.

    Raises `ValueError` if the file is not a jaxda checkpoint, is corrupt, truncated or
    edited, or was saved from another architecture (header or leaf shapes differ).
    """
    meta, payload = read_checkpoint(path)
    if header is not None:
        want = _jsonable(header)
        got = meta["header"]
        if want != got:
            diff = {
                k: (got.get(k), want.get(k))
                for k in sorted(set(want) | set(got))
                if got.get(k) != want.get(k)
            }
            raise ValueError(
                f"Checkpoint {os.fspath(path)!r} was saved from another architecture; "
                f"differences (saved, expected): {diff}."
            )
    return deserialise(path, payload, like)


__all__ = [
    "load_checkpoint",
    "read_checkpoint",
    "read_checkpoint_header",
    "save_checkpoint",
]
