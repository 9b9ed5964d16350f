r"""Background-error covariances on grids, as operators (never dense matrices).

A background covariance $B$ on fields of shape `field_shape` (`(ny, nx)`, or
`(C, ny, nx)` for several channels) is given by a square root $U$ with
$B = U U^\top$. Incremental 4DVar and the OI solvers use it through the
control-variable transform [WC01]

$$x = x_b + U w, \qquad J_b = \tfrac12 \|w\|^2 = \tfrac12 (x - x_b)^\top B^{-1}
(x - x_b),$$

so that $B^{-1}$ is never needed; OI needs only products $B v$.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float


class AbstractCovariance(eqx.Module):
    r"""A symmetric positive semi-definite covariance $B = U U^\top$ on gridded fields.

    **Fields:**

    - `field_shape`: the shape of one field $x$ (e.g. `(ny, nx)` or `(C, ny, nx)`).

    **Methods** (every vector is an array of its own shape, not flattened; all are
    linear, traceable, `jax.vmap`-able and differentiable):

    - `apply(v)`: $B v$, `v` and the result of shape `field_shape`;
    - `sqrt(w)`: $U w$, from control space (`control_shape`) to `field_shape`;
    - `sqrt_transpose(v)`: $U^\top v$, from `field_shape` to `control_shape`;
    - `variance`: the pointwise variance field $\mathrm{diag}(B)$, shape
      `field_shape`;
    - `matrix()`: the dense $B$, `(d, d)` over the C-order flattened field, $d$ =
      `prod(field_shape)`: for tests and small grids only.

    `control_shape` is the shape of the control vector $w$; for every covariance in
    `jaxda.grid` it equals `field_shape` ($U$ square). The control-variable transform
    of incremental 4DVar is $x = x_b + U w$ with $J_b = \|w\|^2/2$.
    """

    field_shape: eqx.AbstractVar[tuple[int, ...]]

    @property
    def control_shape(self) -> tuple[int, ...]:
        """The shape of a control vector $w$ (here always `field_shape`)."""
        return self.field_shape

    @property
    def size(self) -> int:
        """$d$, the number of entries of a field."""
        n = 1
        for s in self.field_shape:
            n *= s
        return n

    @abc.abstractmethod
    def sqrt(self, w: Float[Array, " *control"]) -> Float[Array, " *field"]:
        r"""$U w$: a control vector mapped to a field increment."""

    @abc.abstractmethod
    def sqrt_transpose(self, v: Float[Array, " *field"]) -> Float[Array, " *control"]:
        r"""$U^\top v$: the adjoint of `sqrt`."""

    @property
    @abc.abstractmethod
    def variance(self) -> Float[Array, " *field"]:
        r"""$\mathrm{diag}(B)$, the pointwise variance field."""

    def apply(self, v: Float[Array, " *field"]) -> Float[Array, " *field"]:
        r"""$B v = U (U^\top v)$."""
        return self.sqrt(self.sqrt_transpose(v))

    def matrix(self, dtype=None) -> Float[Array, "d d"]:
        r"""The dense $B$, `(d, d)` over the C-order flattened field (small grids
        only: it costs $d$ products $B e_i$)."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        eye = jnp.eye(self.size, dtype=dtype)
        cols = jax.vmap(lambda e: self.apply(e.reshape(self.field_shape)).ravel())(eye)
        return cols.T
