"""Argument checks used at the public API boundary.

Every public function validates its inputs *before* tracing, with messages that name the
argument, what was given and what was expected. The value checks here look at concrete
values only; on traced values (inside `jit`) the entry points that can afford it repeat
them with `jaxda._results.value_result` and report `RESULTS.invalid_input`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """Whether `x` holds a value Python can look at (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def _numeric(name: str, value) -> np.ndarray:
    """`value` as a NumPy array of numbers; `TypeError` naming `name` if it is not."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        arr = None
    numeric = arr is not None and (
        arr.dtype.kind in "biufc" or jnp.issubdtype(arr.dtype, jnp.floating)
    )  # (bfloat16 and the float8 types have kind "V")
    if not numeric:
        raise TypeError(
            f"`{name}` must be a real number or an array of them; got "
            f"{type(value).__name__} ({value!r})."
        )
    return arr


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """Raise `ValueError` unless every entry of `value` is finite and > 0 (>= 0)."""
    if not is_concrete(value):
        return
    arr = _numeric(name, value)
    bad = ~np.isfinite(arr) | ((arr < 0) if allow_zero else (arr <= 0))
    if np.any(bad):
        want = "finite and >= 0" if allow_zero else "finite and > 0"
        shown = arr if arr.size <= 6 else f"array with {int(bad.sum())} bad entries"
        raise ValueError(f"`{name}` must be {want}; got {shown}.")


def check_finite(name: str, value) -> None:
    """Raise `ValueError` if a concrete array has NaN or infinite entries."""
    if not is_concrete(value):
        return
    arr = _numeric(name, value)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise ValueError(
            f"`{name}` must be finite; got {n_bad} non-finite entries "
            f"(shape {arr.shape})."
        )


def check_real(name: str, value) -> None:
    """Raise unless `value` is a finite real number or an array of them.

    Accepted: Python / NumPy ints and floats, and (possibly traced) arrays of an
    integer or floating dtype. `TypeError` for anything else (a string, None, a bool,
    a complex number); `ValueError` for a concrete non-finite value.
    """
    if isinstance(value, bool | np.bool_):
        ok = False
    elif isinstance(value, int | float | np.integer | np.floating):
        ok = True
    elif isinstance(value, jax.Array | np.ndarray | jax.core.Tracer):
        dtype = value.dtype
        ok = dtype != np.bool_ and (
            jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        )
    else:
        ok = False
    if not ok:
        shown = getattr(value, "dtype", None)
        raise TypeError(
            f"`{name}` must be a real number (a float, or an array of a floating "
            f"dtype); got {type(value).__name__} "
            f"({f'dtype {shown}' if shown is not None else repr(value)})."
        )
    check_finite(name, value)


def check_key(name: str, key, *, int_seed: bool = False) -> None:
    """Raise `TypeError` unless `key` is a `jax.random` key (typed or legacy uint32).

    `int_seed`: whether the caller also accepts an int seed (said in the message).
    """
    if isinstance(key, jax.core.Tracer | jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return
        if key.dtype == jnp.uint32 and key.shape[-1:] in ((2,), (4,)):
            return
    raise TypeError(
        f"`{name}` must be a jax.random key (jax.random.key(seed))"
        f"{' or an int seed' if int_seed else ''}; got {type(key).__name__} "
        f"({key!r})."
    )


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """Return `value` as an `int`; `TypeError`/`ValueError` when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"`{name}` must be an int; got {type(value).__name__} ({value!r})."
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


def check_shape(name: str, x, expected: Sequence[int | None]) -> None:
    """Raise `ValueError` unless `x.shape` matches `expected` (None = any size)."""
    shape = tuple(jnp.shape(x))
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected)
    )
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"`{name}` must have shape {want}; got {shape}.")


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    """Raise `ValueError` unless `a` and `b` have the same shape."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape; got "
            f"{tuple(jnp.shape(a))} and {tuple(jnp.shape(b))}."
        )


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )
