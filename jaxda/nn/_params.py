"""Parameter counts of a model."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _is_parameter(leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return (
        (
            isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct))
            or hasattr(leaf, "__array__")
        )
        and dtype is not None
        and jnp.issubdtype(dtype, jnp.inexact)
    )


def count_parameters(tree) -> int:
    """Number of scalars in the floating-point array leaves of `tree` (an
    `equinox.Module` or any pytree), trained or frozen; abstract leaves
    (`jax.ShapeDtypeStruct`, e.g. from `equinox.filter_eval_shape`) count too."""
    leaves = jax.tree_util.tree_leaves(tree)
    return int(sum(leaf.size for leaf in leaves if _is_parameter(leaf)))


__all__ = ["count_parameters"]
