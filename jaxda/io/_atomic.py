"""Atomic file writing: an interrupted run never leaves a half-written file.

Every file jaxda writes (checkpoints, models, netCDF datasets, figures, JSON results)
goes through `atomic_path`: the content is written to a temporary file in the
destination's folder and moved over the destination with `os.replace`, which is atomic
on POSIX and Windows file systems. Either the old file or the complete new one is
there, whatever happens during the write.
"""

import contextlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Context manager: yields a temporary path to write in place of `path`.

    When the block ends normally the temporary file gets the permissions a new file
    would get (`mkstemp` makes it readable by its owner only) and replaces `path`;
    when it raises, the temporary file is removed and `path` is untouched. The folder
    of `path` is created if needed.

        with jaxda.io.atomic_path("out/fig.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_json(path: str | os.PathLike, obj, *, indent: int = 2) -> None:
    """Write `obj` as JSON to `path` atomically (see `atomic_path`), with a final
    newline. NumPy and JAX scalars become Python numbers (ints stay ints), arrays
    become nested lists, anything else (paths) its `str`."""

    def default(x):
        if hasattr(x, "tolist"):  # numpy / jax scalars and arrays
            return x.tolist()
        return str(x)

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=default)
        f.write("\n")


__all__ = ["atomic_path", "save_json"]
