"""Atomic file writing: an interrupted run never leaves a half-written file.

Every file jaxda writes (checkpoints, models, netCDF datasets, figures, JSON results)
goes through `atomic_path`: the content is written to a temporary file in the
destination's folder and moved over the destination with `os.replace`, which is atomic
on POSIX and Windows file systems. Either the old file or the complete new one is
there, whatever happens during the write. A process killed mid-write leaves its
temporary file behind (`.<name>.<pid>.<random>.tmp`); the next save to the same
destination removes the temporary files of processes that no longer run.
"""

import contextlib
import json
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Iterator


_STALE_S = 3600.0  # temporary files without a pid in their name: stale after an hour


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(path: pathlib.Path) -> None:
    """Remove temporary files of earlier saves to `path` whose writer is gone."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        tmp = path.parent / name
        try:
            stale = (
                not _alive(int(pid))
                if pid.isdigit()
                else time.time() - tmp.stat().st_mtime > _STALE_S
            )
            if stale:
                tmp.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Context manager: yields a temporary path to write in place of `path`.

    When the block ends normally the temporary file gets the permissions a new file
    would get (`mkstemp` makes it readable by its owner only) and replaces `path`;
    when it raises, the temporary file is removed and `path` is untouched. The folder
    of `path` is created if needed, and the temporary files that killed earlier saves
    to `path` left behind are removed.

        with jaxda.io.atomic_path("out/fig.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _plain(x):
    """`x` with JSON types only: non-finite floats -> None, arrays -> lists."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, bool | int | str) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "tolist"):  # numpy / jax scalars and arrays
        return _plain(x.tolist())
    return str(x)


def save_json(path: str | os.PathLike, obj, *, indent: int = 2) -> None:
    """Write `obj` as strict JSON to `path` atomically (see `atomic_path`), with a
    final newline.

    NumPy and JAX scalars become Python numbers (ints stay ints), arrays become nested
    lists, anything else (paths) its `str`. NaN and infinite numbers, which JSON
    cannot represent (Python's `json` would write the invalid tokens `NaN` /
    `Infinity`), are written as `null`.

    **Arguments:** `path` (destination); `obj` (a dict / list of such values);
    `indent`.
    """
    text = json.dumps(_plain(obj), indent=indent, allow_nan=False)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text + "\n")


__all__ = ["atomic_path", "save_json"]
