"""Use a `flax.nnx` module as a 4DVarNet prior or solver network (flax is optional).

`FlaxModule(nnx_module)` splits the module into its static graph definition and its
state
(`nnx.split`), stores them in an `equinox.Module` and rebuilds the flax module at each
call
(`nnx.merge`), so the flax parameters are ordinary pytree leaves: `jax.grad`,
`jax.vmap`,
`jaxda.train.fit` and checkpoints see them like any equinox parameter.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx


def _nnx():
    try:
        from flax import nnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FlaxModule needs flax (an optional extra): pip install 'flax>=0.10'."
        ) from e
    return nnx


class FlaxModule(eqx.Module):
    r"""An adapter: a `flax.nnx.Module` as a pure, differentiable equinox callable.

    `FlaxModule(m)(*args)` equals `m(*args)`, with the parameters held as pytree leaves.
    Use it as the `prior` of a `VariationalCost` (a map `(T, *state)` -> `(T, *state)`)
    or
    as the `network` of a `CNNSolver` (`(2 C, *spatial)` -> `(C, *spatial)`).
    Stateful flax layers (batch statistics, dropout RNG) are not supported: their
    updates
    made during a call are discarded.

    **Arguments:** `module`, a `flax.nnx.Module`.
    """

    graphdef: Any = eqx.field(static=True)
    state: Any

    def __init__(self, module):
        nnx = _nnx()
        if not isinstance(module, nnx.Module):
            raise TypeError(
                f"`module` must be a flax.nnx.Module; got {type(module).__name__}."
            )
        self.graphdef, self.state = nnx.split(module)

    def to_flax(self):
        """The wrapped flax module with the current parameters (`nnx.merge`)."""
        return _nnx().merge(self.graphdef, self.state)

    def __call__(self, *args, **kwargs):
        return self.to_flax()(*args, **kwargs)


__all__ = ["FlaxModule"]
