"""Linear observation operators $H$ on the flattened trajectory (see `jaxda.obs`)."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, ArrayLike, Bool, Float, Int
from ._validation import check_int, is_concrete


# ------------------------------------------------------------------------------
# Linear observation operators on the flattened trajectory
# ------------------------------------------------------------------------------


class LinearObservationOperator(eqx.Module):
    r"""A linear map $H: \mathbb R^d \to \mathbb R^m$ on the flattened trajectory.

    `matvec(x)` accepts any array of `d` entries (e.g. `(T, *state)`) and flattens it;
    `rmatvec(y)` applies $H^\top$ and returns a flat `(d,)` vector.
    """

    @abc.abstractmethod
    def matvec(self, x: Float[Array, "..."]) -> Float[Array, " m"]:
        """$Hx$."""

    @abc.abstractmethod
    def rmatvec(self, y: Float[Array, " m"]) -> Float[Array, " d"]:
        """$H^\\top y$."""

    @abc.abstractmethod
    def as_dense(self) -> Float[Array, "m d"]:
        """$H$ as a dense matrix."""

    @abc.abstractmethod
    def gram_diagonal(self) -> Float[Array, " d"]:
        """The diagonal of $H^\\top H$."""

    @property
    @abc.abstractmethod
    def in_size(self) -> int:
        """d."""

    @property
    @abc.abstractmethod
    def out_size(self) -> int:
        """m."""

    def __call__(self, x):
        return self.matvec(x)


class DenseOperator(LinearObservationOperator):
    """$H$ given as a dense `(m, d)` matrix."""

    matrix: Float[Array, "m d"]

    def __check_init__(self):
        if jnp.ndim(self.matrix) != 2:
            raise ValueError(
                "`matrix` must be 2-dimensional (m, d); got shape "
                f"{jnp.shape(self.matrix)}."
            )

    def matvec(self, x):
        return self.matrix @ jnp.reshape(x, -1)

    def rmatvec(self, y):
        return self.matrix.T @ y

    def as_dense(self):
        return self.matrix

    def gram_diagonal(self):
        return jnp.sum(self.matrix**2, axis=0)

    @property
    def in_size(self) -> int:
        return self.matrix.shape[1]

    @property
    def out_size(self) -> int:
        return self.matrix.shape[0]


class SelectionOperator(LinearObservationOperator):
    r"""$H x = x_{\text{indices}}$: pick entries of the flattened trajectory of size
    `size`.

    $H^\top y$ scatters (adds) `y` back to `indices`. Build it from a mask with
    `SelectionOperator.from_mask(mask)` (concrete masks only: `m` must be static).
    """

    indices: Int[Array, " m"]
    size: int = eqx.field(static=True)

    def __check_init__(self):
        check_int("size", self.size, minimum=1)
        if jnp.ndim(self.indices) != 1:
            raise ValueError(
                f"`indices` must be 1-dimensional; got shape {jnp.shape(self.indices)}."
            )
        if is_concrete(self.indices) and np.size(self.indices):
            idx = np.asarray(self.indices)
            if idx.min() < 0 or idx.max() >= self.size:
                raise ValueError(
                    f"`indices` must lie in [0, {self.size}); got min {idx.min()}, "
                    f"max {idx.max()}."
                )

    @classmethod
    def from_mask(cls, mask: Bool[ArrayLike, " T *state"]) -> "SelectionOperator":
        """The selection of the `True` entries of `mask` (flattened C order)."""
        if not is_concrete(mask):
            raise TypeError(
                "`mask` must be concrete (not traced) in "
                "`SelectionOperator.from_mask`: the number of observations sets the "
                "output size."
            )
        m = np.asarray(mask)
        if m.dtype != bool:
            raise TypeError(f"`mask` must be a boolean array; got dtype {m.dtype}.")
        return cls(jnp.asarray(np.flatnonzero(m.reshape(-1))), int(m.size))

    def matvec(self, x):
        return jnp.reshape(x, -1)[self.indices]

    def rmatvec(self, y):
        return jnp.zeros(self.size, jnp.result_type(y)).at[self.indices].add(y)

    def as_dense(self):
        return jax.nn.one_hot(self.indices, self.size, dtype=jnp.result_type(float))

    def gram_diagonal(self):
        return jnp.zeros(self.size, jnp.result_type(float)).at[self.indices].add(1.0)

    @property
    def in_size(self) -> int:
        return self.size

    @property
    def out_size(self) -> int:
        return self.indices.shape[0]
