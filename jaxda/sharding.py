r"""Scale-out: shard a batch of independent problems over devices.

Batches of assimilation windows, ensembles and training examples are embarrassingly
parallel. This module places the leading (batch) axis of every array of a pytree on a
one-dimensional device mesh with `jax.sharding.NamedSharding(mesh,
PartitionSpec("batch"))`, so that a `jax.vmap`-ed computation runs with each device
holding $B / D$ of the $B$ problems ($D$ devices). XLA partitions the vmapped program
along that axis without any communication (the problems are independent), and a batch
mean (a training loss) becomes one all-reduce.

- `batch_mesh(devices=None)`: the 1-D `Mesh` over all (or the given) devices.
- `shard_batch(tree, mesh)`: place the batch axis of every array leaf on the mesh.
- `replicate(tree, mesh)`: put a full copy of every array leaf on every device
  (parameters of a learned prior, a model).
- `sharded_vmap(fn, mesh)`: `jax.vmap(fn)` compiled with its batched inputs and its
  outputs sharded on the batch axis; batches that are not a multiple of the device
  count are padded (with copies of the last problem) and the padding is cut off.

The result of a sharded computation equals the one-device result: each problem is
computed by the same program on one device. Multi-host runs call
`jax.distributed.initialize()` first; `jax.devices()` then lists the devices of every
host and the same code runs unchanged (see the documentation page on scaling out).

Padding policy: `shard_batch` raises a `ValueError` when the batch size is not a
multiple of the device count unless `pad=True` (it then returns the padded pytree, whose
extra rows repeat the last problem); `sharded_vmap` always pads and removes the padding
from its outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._validation import check_int, is_concrete


__all__ = [
    "batch_mesh",
    "batch_sharding",
    "pad_batch",
    "replicate",
    "shard_batch",
    "sharded_vmap",
]


def batch_mesh(
    devices: Sequence[jax.Device] | None = None, *, axis_name: str = "batch"
) -> Mesh:
    """A one-dimensional device mesh whose single axis is the batch axis.

    **Arguments:**

    - `devices`: the devices to use, in order; default `jax.devices()` (every device of
      every process in a multi-host run).
    - `axis_name`: name of the mesh axis (default `"batch"`).

    **Returns:** a `jax.sharding.Mesh` of shape `(len(devices),)`.
    """
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 0:
        raise ValueError("`devices` must contain at least one device; got none.")
    if not isinstance(axis_name, str):
        raise TypeError(f"`axis_name` must be a str; got {type(axis_name).__name__}.")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def _mesh_axis(mesh: Mesh | None, axis_name: str | None) -> tuple[Mesh, str]:
    if mesh is None:
        mesh = batch_mesh(axis_name=axis_name or "batch")
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"`mesh` must be a jax.sharding.Mesh or None; got {type(mesh).__name__}."
        )
    if axis_name is None:
        axis_name = mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"`axis_name` must be an axis of `mesh` {tuple(mesh.axis_names)}; "
            f"got {axis_name!r}."
        )
    return mesh, axis_name


def batch_sharding(
    mesh: Mesh | None = None, *, axis_name: str | None = None
) -> NamedSharding:
    """`NamedSharding(mesh, PartitionSpec(axis_name))`: leading axis over the mesh.

    **Arguments:**

    - `mesh`: a mesh (default `batch_mesh()`).
    - `axis_name`: the mesh axis carrying the batch (default the mesh's first axis).

    **Returns:** the `jax.sharding.NamedSharding`.
    """
    mesh, axis_name = _mesh_axis(mesh, axis_name)
    return NamedSharding(mesh, PartitionSpec(axis_name))


def _batch_size(leaves: list, what: str = "tree") -> int:
    sizes = set()
    for leaf in leaves:
        if jnp.ndim(leaf) == 0:
            raise ValueError(
                f"every array of `{what}` must have a leading batch axis; got an array "
                f"of shape {tuple(jnp.shape(leaf))}."
            )
        sizes.add(int(jnp.shape(leaf)[0]))
    if len(sizes) > 1:
        shapes = [tuple(jnp.shape(leaf)) for leaf in leaves]
        raise ValueError(
            f"every array of `{what}` must share the leading batch size; got shapes "
            f"{shapes}."
        )
    if not sizes:
        raise ValueError(f"`{what}` must contain at least one array; got none.")
    return sizes.pop()


def _pad_leaf(x, n_pad: int):
    if n_pad == 0:
        return x
    last = jnp.repeat(jnp.asarray(x)[-1:], n_pad, axis=0)
    return jnp.concatenate([jnp.asarray(x), last], axis=0)


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad the leading axis of every array leaf up to a multiple of `multiple`.

    The padding repeats the last problem of the batch (so padded problems are valid
    inputs and produce no NaN); cut the results back with `out[:batch_size]`.

    **Arguments:**

    - `tree`: pytree whose array leaves share a leading batch size $B$.
    - `multiple`: e.g. the number of devices $D$.

    **Returns:** `(padded_tree, B)`; the padded leaves have $D\\lceil B/D\\rceil$
    rows.
    """
    multiple = check_int("multiple", multiple, minimum=1)
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array_like(x)]
    size = _batch_size(leaves)
    n_pad = -size % multiple
    padded = jax.tree_util.tree_map(
        lambda x: _pad_leaf(x, n_pad) if eqx.is_array_like(x) else x, tree
    )
    return padded, size


def shard_batch(
    tree: Any,
    mesh: Mesh | None = None,
    *,
    axis_name: str | None = None,
    pad: bool = False,
) -> Any:
    """Place the leading (batch) axis of every array leaf of `tree` on `mesh`.

    Each array leaf of shape $(B, \\dots)$ is `jax.device_put` with
    `NamedSharding(mesh, PartitionSpec(axis_name))`: device $i$ of the $D$ devices holds
    rows $iB/D, \\dots, (i+1)B/D - 1$. Non-array leaves (static fields of an
    `equinox.Module`) are left alone.

    **Arguments:**

    - `tree`: pytree whose array leaves share a leading batch size $B$.
    - `mesh`: the device mesh (default `batch_mesh()`, every device).
    - `axis_name`: mesh axis of the batch (default the mesh's first axis).
    - `pad`: when $B$ is not a multiple of $D$, pad with copies of the last problem
      (see `pad_batch`) instead of raising `ValueError`.

    **Returns:** the pytree with sharded (and, with `pad=True`, possibly padded) leaves.
    """
    mesh, axis_name = _mesh_axis(mesh, axis_name)
    n_dev = int(mesh.shape[axis_name])
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array_like(x)]
    size = _batch_size(leaves)
    if size % n_dev:
        if not pad:
            raise ValueError(
                f"the batch size must be a multiple of the number of devices on mesh "
                f"axis {axis_name!r} ({n_dev}); got batch size {size}. Pass pad=True "
                "or use sharded_vmap, which pads and unpads."
            )
        tree, _ = pad_batch(tree, n_dev)
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, sharding) if eqx.is_array_like(x) else x, tree
    )


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """Put a full copy of every array leaf of `tree` on every device of `mesh`.

    Use it for what every problem of a batch shares: model parameters, a learned prior,
    a training state.

    **Arguments:**

    - `tree`: any pytree.
    - `mesh`: the device mesh (default `batch_mesh()`).

    **Returns:** the pytree with its array leaves replicated
    (`NamedSharding(mesh, PartitionSpec())`).
    """
    mesh, _ = _mesh_axis(mesh, None)
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, sharding) if eqx.is_array_like(x) else x, tree
    )


def _normalise_in_axes(in_axes, n_args: int) -> tuple:
    if in_axes is None or in_axes == 0:
        return (in_axes,) * n_args
    if isinstance(in_axes, list | tuple):
        if len(in_axes) != n_args:
            raise ValueError(
                f"`in_axes` must have one entry per positional argument ({n_args}); "
                f"got {tuple(in_axes)}."
            )
        for a in in_axes:
            if a is not None and a != 0:
                raise ValueError(
                    "`in_axes` entries must be 0 (batched) or None (shared); "
                    f"got {a!r}."
                )
        return tuple(in_axes)
    raise ValueError(
        "`in_axes` must be 0, None or a tuple of 0/None per positional argument; "
        f"got {in_axes!r}."
    )


def sharded_vmap(
    fn: Callable,
    mesh: Mesh | None = None,
    *,
    in_axes: int | None | Sequence[int | None] = 0,
    axis_name: str | None = None,
) -> Callable:
    """`jax.vmap(fn)`, compiled with the batch axis sharded over the devices of `mesh`.

    The returned function takes the same positional arguments as `jax.vmap(fn,
    in_axes)`: arguments with in-axis `0` carry a leading batch axis of size $B$ and are
    split over the $D$ devices (`shard_batch`), arguments with in-axis `None` are shared
    by every problem and replicated (`replicate`). The vmapped computation is compiled
    once with `equinox.filter_jit` (so non-array fields of modules are static) and its
    outputs are constrained to the same batch sharding. When $D$ does not divide $B$,
    the batch is padded with copies of its last problem and the outputs are cut back
    to $B$ rows (they are then no longer evenly sharded).

    Each problem is computed independently, so the result equals `jax.vmap(fn)` on one
    device. Call the returned function outside `jax.jit` (it places its inputs).

    **Arguments:**

    - `fn`: function of ONE problem (e.g. a `jaxda.var` solve, a neural incremental
      assimilation), returning a pytree.
    - `mesh`: device mesh (default `batch_mesh()` built at the first call).
    - `in_axes`: `0`, `None` or a tuple with one `0`/`None` per positional argument.
    - `axis_name`: mesh axis of the batch (default the mesh's first axis).

    **Returns:** the sharded batched function; its array outputs have a leading batch
    axis of size $B$.

    **Example:**

    ```python
    solve_batch = jaxda.sharding.sharded_vmap(lambda y, m: solve(y, m))
    xs = solve_batch(values, masks)  # values, masks: (B, T, n)
    ```
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable; got {type(fn).__name__}.")

    @functools.cache
    def _setup():
        mesh_, axis_ = _mesh_axis(mesh, axis_name)
        sharding = NamedSharding(mesh_, PartitionSpec(axis_))

        def constrain(x):
            if eqx.is_array(x) and x.ndim >= 1:
                return jax.lax.with_sharding_constraint(x, sharding)
            return x

        @eqx.filter_jit
        def run(args, axes):
            out = jax.vmap(fn, in_axes=axes)(*args)
            return jax.tree_util.tree_map(constrain, out)

        return mesh_, axis_, run

    @functools.wraps(fn)
    def batched(*args):
        mesh_, axis_, run = _setup()
        axes = _normalise_in_axes(in_axes, len(args))
        batched_leaves = [
            x
            for a, arg in zip(axes, args)
            if a == 0
            for x in jax.tree_util.tree_leaves(arg)
            if eqx.is_array_like(x)
        ]
        size = _batch_size(batched_leaves, "batched arguments")
        n_dev = int(mesh_.shape[axis_])
        placed = []
        for a, arg in zip(axes, args):
            if a == 0:
                if all(is_concrete(x) for x in jax.tree_util.tree_leaves(arg)):
                    arg = shard_batch(arg, mesh_, axis_name=axis_, pad=True)
                else:
                    arg, _ = pad_batch(arg, n_dev)
            elif all(is_concrete(x) for x in jax.tree_util.tree_leaves(arg)):
                arg = replicate(arg, mesh_)
            placed.append(arg)
        out = run(tuple(placed), axes)
        if size % n_dev:
            out = jax.tree_util.tree_map(
                lambda x: x[:size] if eqx.is_array(x) and x.ndim >= 1 else x, out
            )
        return out

    return batched
