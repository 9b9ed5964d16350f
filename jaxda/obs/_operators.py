r"""Observation operators $h_t$: what is observed of the state at time $t$.

Observations of a window are $y_t = h_t(x_t) + \varepsilon_t$, $\varepsilon_t \sim
\mathcal N(0, R_t)$ with diagonal $R_t$, $t = 0, \dots, T-1$ (the index in the
window): the observation model of [BF24] and [B24, eq. 2.1]; downscaling (block
averages) and deconvolution (blurs) [FLN] are linear cases. An operator maps one
state $x_t$ of shape `state_shape` to an observation vector of shape `obs_shape`;
`Observations(values, mask)` then have shape `(T, *obs_shape)`, the mask saying which
entries of $y_t$ are available at time $t$ (time-varying availability without
changing the operator).

- `IdentityOperator`: $h_t(x) = x$: with the observation mask this is the mask of the
  state, $H_t = $ the rows of the identity where `mask[t]` holds; every cost and MAP
  takes its fast path (the same numbers as with no operator at all).
- `SelectionOperator`: $h_t(x) = x_{[i_t]}$, index-based (sparse) selection of
  flattened state entries, shared `(m,)` or per time `(T, m)`.
- `MatrixOperator`: a dense linear $H$, shared `(m, n)` or per time `(T, m, n)`.
- `LinearFunctionOperator`: a matrix-free linear $H$ given as a function, with its
  transpose given or obtained by `jax.linear_transpose` (through lineax); a
  `lineax.AbstractLinearOperator` is accepted as the function.
- `NonlinearOperator`: a nonlinear $h$; Gauss-Newton linearises it with forward-mode
  derivatives ($H_t = \partial h / \partial x (x_t)$, one `jax.jvp` per state
  entry), the gradient solvers differentiate it in reverse mode.

The linear ones (`AbstractLinearObservationOperator`) expose `transpose`
($H_t^\top y$), `matrix` (the dense $H_t$, `(m, n)` over the flattened state) and
`gram` ($H_t^\top W H_t$, the observation contribution to a Gauss-Newton or
posterior-precision block). `IdentityOperator` and `SelectionOperator` select rows of
the identity (`AbstractSelectionOperator`): their $H_t^\top W H_t$ is diagonal
(`diagonal_gram`), which is what a banded precision can absorb.
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .._custom_types import Array, ArrayLike, Float, Int
from .._validation import check_finite, check_int, is_concrete
from ._observations import Observations


def _shape(name: str, shape) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        shape = (int(shape),)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"`{name}` must be a tuple of ints; got {shape!r}.") from None
    if any(s < 1 for s in out):
        raise ValueError(f"`{name}` must have positive sizes; got {out}.")
    return out


def _n_times(n_times) -> int | None:
    return None if n_times is None else check_int("n_times", n_times, minimum=1)


class AbstractObservationOperator(eqx.Module):
    r"""An observation operator $h_t$: `operator(x_t, t)` is the observation vector
    of the state `x_t` at window index `t`.

    **Fields:** `state_shape` (the shape of one state $x_t$), `obs_shape` (the shape
    of one observation vector $y_t$), `n_times` (`None` for an operator shared by
    every time, or the window length $T$ of a per-time operator, which must then be
    called with its time index).
    """

    state_shape: eqx.AbstractVar[tuple[int, ...]]
    obs_shape: eqx.AbstractVar[tuple[int, ...]]
    n_times: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def __call__(
        self, x_t: Float[Array, " *state"], t: Int[ArrayLike, ""] | None = None
    ) -> Float[Array, " *obs"]:
        r"""$h_t(x_t)$, shape `obs_shape`. `t` (an int, possibly traced) is required
        when `n_times` is not `None`."""

    @abc.abstractmethod
    def value_and_jacobian(
        self, x_t: Float[Array, " *state"], t: Int[ArrayLike, ""] | None = None
    ) -> tuple[Float[Array, " m"], Float[Array, "m n"]]:
        r"""$(h_t(x_t), H_t)$ over flattened vectors: $h$ of shape `(m,)` and the
        Jacobian $H_t = \partial h_t/\partial x\,(x_t)$ of shape `(m, n)`."""

    @property
    def state_size(self) -> int:
        """$n$, the number of entries of a state."""
        return math.prod(self.state_shape)

    @property
    def obs_size(self) -> int:
        """$m$, the number of entries of an observation vector."""
        return math.prod(self.obs_shape)

    def trajectory(self, x: Float[Array, " T *state"]) -> Float[Array, " T *obs"]:
        r"""$(h_t(x_t))_{t=0}^{T-1}$ for a trajectory `x` of shape `(T, *state)`."""
        x = jnp.asarray(x)
        if tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(
                f"`x` must have shape (T, {', '.join(map(str, self.state_shape))}) "
                f"for this operator; got {tuple(x.shape)}."
            )
        if self.n_times is not None and x.shape[0] != self.n_times:
            raise ValueError(
                f"this operator is defined for T = {self.n_times} times; got a "
                f"trajectory of {x.shape[0]} times."
            )
        return jax.vmap(self.__call__)(x, jnp.arange(x.shape[0]))

    def _time(self, t):
        if self.n_times is not None and t is None:
            raise ValueError(
                f"this operator varies in time (n_times = {self.n_times}): call it "
                "with the time index `t`."
            )
        return t


class AbstractLinearObservationOperator(AbstractObservationOperator):
    r"""A linear observation operator $h_t(x) = H_t x$."""

    @abc.abstractmethod
    def transpose(
        self, y_t: Float[Array, " *obs"], t: Int[ArrayLike, ""] | None = None
    ) -> Float[Array, " *state"]:
        r"""$H_t^\top y_t$, with the state shape."""

    @abc.abstractmethod
    def matrix(
        self, t: Int[ArrayLike, ""] | None = None, dtype=None
    ) -> Float[Array, "m n"]:
        r"""The dense $H_t$, `(m, n)` over the flattened observation and state (in
        `dtype` where the operator holds no numbers of its own)."""

    def value_and_jacobian(self, x_t, t=None):
        h = self.matrix(t, jnp.result_type(x_t))
        return h @ jnp.reshape(x_t, (-1,)), h

    def gram(
        self, weight: Float[Array, " *obs"], t: Int[ArrayLike, ""] | None = None
    ) -> Float[Array, "n n"]:
        r"""$H_t^\top \mathrm{diag}(w) H_t$, `(n, n)`, for the weights $w$ of shape
        `obs_shape` (e.g. $m_t / r_t$, zero where unobserved)."""
        w = jnp.reshape(weight, (-1,))
        h = self.matrix(t, w.dtype)
        return h.T @ (w[:, None] * h)


class AbstractSelectionOperator(AbstractLinearObservationOperator):
    r"""A linear operator whose rows are rows of the identity, so that
    $H_t^\top W H_t$ is diagonal for diagonal $W$."""

    @abc.abstractmethod
    def diagonal_gram(
        self, weight: Float[Array, " *obs"], t: Int[ArrayLike, ""] | None = None
    ) -> Float[Array, " n"]:
        r"""The diagonal of $H_t^\top \mathrm{diag}(w) H_t$ (flattened state), the
        whole of it."""


class IdentityOperator(AbstractSelectionOperator):
    r"""$h_t(x) = x$: observation space is state space.

    With `Observations(values, mask)` of the state's shape this is the mask of the
    state ($H_t$ = the rows of the identity where `mask[t]` is `True`): the costs and
    the Gaussian MAPs take the same fast path as with no operator, with the same
    numbers.

    **Arguments:** `state_shape` (a tuple of ints, or an int).
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: None = eqx.field(static=True)

    def __init__(self, state_shape: tuple[int, ...] | int):
        self.state_shape = _shape("state_shape", state_shape)
        self.obs_shape = self.state_shape
        self.n_times = None

    def __call__(self, x_t, t=None):
        return x_t

    def transpose(self, y_t, t=None):
        return y_t

    def matrix(self, t=None, dtype=None):
        return jnp.eye(self.state_size, dtype=dtype)

    def diagonal_gram(self, weight, t=None):
        return jnp.reshape(weight, (-1,))


class SelectionOperator(AbstractSelectionOperator):
    r"""$h_t(x) = (x_{i_{t,1}}, \dots, x_{i_{t,m}})$: index-based (sparse) selection
    of entries of the flattened (C-order) state.

    $H_t^\top y$ scatters (adds) $y$ back onto the selected entries, so
    $H_t^\top W H_t = \mathrm{diag}(\sum_{k: i_{t,k} = j} w_k)_j$ is diagonal, even
    with repeated indices. $O(m)$ per application, nothing dense is formed except by
    `matrix`.

    **Arguments:**

    - `indices`: integers in $[0, n)$, shape `(m,)` (the same entries at every time)
      or `(T, m)` (per time).
    - `state_shape`: the shape of one state (size $n$).
    """

    indices: Int[Array, "*T m"]
    state_shape: tuple[int, ...] = eqx.field(static=True)
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: int | None = eqx.field(static=True)

    def __init__(
        self, indices: Int[ArrayLike, "*T m"], state_shape: tuple[int, ...] | int
    ):
        self.state_shape = _shape("state_shape", state_shape)
        indices = jnp.asarray(indices)
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise TypeError(
                f"`indices` must be an integer array; got dtype {indices.dtype}."
            )
        if indices.ndim not in (1, 2):
            raise ValueError(
                f"`indices` must have shape (m,) or (T, m); got {indices.shape}."
            )
        n = math.prod(self.state_shape)
        if is_concrete(indices) and indices.size:
            lo, hi = int(np.min(indices)), int(np.max(indices))
            if lo < 0 or hi >= n:
                raise ValueError(
                    f"`indices` must lie in [0, {n}) (flattened entries of a state of "
                    f"shape {self.state_shape}); got values in [{lo}, {hi}]."
                )
        self.indices = indices
        self.obs_shape = (indices.shape[-1],)
        self.n_times = indices.shape[0] if indices.ndim == 2 else None

    def _index(self, t):
        t = self._time(t)
        return self.indices if self.n_times is None else self.indices[t]

    def __call__(self, x_t, t=None):
        return jnp.reshape(x_t, (-1,))[self._index(t)]

    def transpose(self, y_t, t=None):
        out = jnp.zeros(self.state_size, jnp.result_type(y_t))
        return out.at[self._index(t)].add(y_t).reshape(self.state_shape)

    def matrix(self, t=None, dtype=None):
        return jnp.eye(self.state_size, dtype=dtype)[self._index(t)]

    def diagonal_gram(self, weight, t=None):
        w = jnp.reshape(weight, (-1,))
        return jnp.zeros(self.state_size, w.dtype).at[self._index(t)].add(w)


class MatrixOperator(AbstractLinearObservationOperator):
    r"""A dense linear operator $h_t(x) = H_t\,\mathrm{vec}(x)$.

    `H` is the matrix of shape `(m, n)` (shared by every time) or `(T, m, n)` (per
    time), acting on the flattened (C-order) state. $O(m n)$ per application. Its
    entries may depend on parameters (a blur width, a block size): derivatives flow
    through every cost and MAP that accepts it.

    **Arguments:**

    - `H`: floating array `(m, n)` or `(T, m, n)` (finite).
    - `state_shape`: the shape of one state, of size $n$ (default `(n,)`).
    """

    H: Float[Array, "*T m n"]
    state_shape: tuple[int, ...] = eqx.field(static=True)
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: int | None = eqx.field(static=True)

    def __init__(
        self,
        H: Float[ArrayLike, "*T m n"],
        state_shape: tuple[int, ...] | int | None = None,
    ):
        h = jnp.asarray(H)
        if h.ndim not in (2, 3):
            raise ValueError(f"`H` must have shape (m, n) or (T, m, n); got {h.shape}.")
        if not jnp.issubdtype(h.dtype, jnp.floating):
            h = h.astype(jnp.result_type(float))
        check_finite("H", h)
        n = h.shape[-1]
        shape = (n,) if state_shape is None else _shape("state_shape", state_shape)
        if math.prod(shape) != n:
            raise ValueError(
                f"`state_shape` {shape} has {math.prod(shape)} entries but `H` "
                f"has {n} columns (shape {h.shape})."
            )
        self.H = h
        self.state_shape = shape
        self.obs_shape = (h.shape[-2],)
        self.n_times = h.shape[0] if h.ndim == 3 else None

    def _h(self, t):
        t = self._time(t)
        return self.H if self.n_times is None else self.H[t]

    def __call__(self, x_t, t=None):
        return self._h(t) @ jnp.reshape(x_t, (-1,))

    def transpose(self, y_t, t=None):
        return jnp.reshape(self._h(t).T @ y_t, self.state_shape)

    def matrix(self, t=None, dtype=None):
        h = self._h(t)
        return h if dtype is None else h.astype(jnp.result_type(h.dtype, dtype))


def _eval_obs_shape(fn, state_shape, n_times, name) -> tuple[int, ...]:
    struct = jax.ShapeDtypeStruct(state_shape, jnp.result_type(float))
    args = (struct,) if n_times is None else (struct, jax.ShapeDtypeStruct((), int))
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # any failure to apply fn to such a state
        call = "fn(x_t)" if n_times is None else "fn(x_t, t)"
        raise ValueError(
            f"`{name}` could not be applied as {call} to a state of shape "
            f"{state_shape}: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"`{name}` must return one array (the observation vector); got "
            f"{jax.tree_util.tree_structure(out)}."
        )
    return tuple(out.shape)


class LinearFunctionOperator(AbstractLinearObservationOperator):
    r"""A matrix-free linear operator $h_t(x) = H_t x$ given as a function.

    `fn(x_t)` (or `fn(x_t, t)` for a per-time operator, `n_times = T`) must be linear
    in `x_t`. Its transpose is `transpose(y_t)` (or `transpose(y_t, t)`) when given,
    else `jax.linear_transpose` of `fn` (through `lineax.FunctionLinearOperator`);
    `matrix` materialises $H_t$ (`lineax`, one application per state entry). Give a
    `lineax.AbstractLinearOperator` (e.g. `lineax.MatrixLinearOperator`, a
    composition) as `fn` to use its `mv` and `transpose`. Parameters to
    differentiate with respect to should be array fields of an `equinox.Module`
    passed as `fn` (or closed over inside the function being differentiated).

    **Arguments:**

    - `fn`: the linear map (a callable or a lineax operator).
    - `state_shape`: the shape of one state (default: the lineax operator's input).
    - `transpose`: optional callable $y \mapsto H_t^\top y$.
    - `n_times`: `None` (default; `fn(x_t)`) or $T$ (`fn(x_t, t)`).
    """

    fn: Callable
    transpose_fn: Callable | None
    state_shape: tuple[int, ...] = eqx.field(static=True)
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: int | None = eqx.field(static=True)

    def __init__(
        self,
        fn: Callable | lx.AbstractLinearOperator,
        state_shape: tuple[int, ...] | int | None = None,
        transpose: Callable | None = None,
        *,
        n_times: int | None = None,
    ):
        self.n_times = _n_times(n_times)
        if isinstance(fn, lx.AbstractLinearOperator):
            if self.n_times is not None:
                raise ValueError(
                    "a lineax operator is shared by every time: give `n_times=None`."
                )
            struct = fn.in_structure()
            if not isinstance(struct, jax.ShapeDtypeStruct):
                raise TypeError(
                    "`fn` must be a lineax operator on one array (not a pytree)."
                )
            if state_shape is None:
                state_shape = struct.shape
            elif _shape("state_shape", state_shape) != tuple(struct.shape):
                raise ValueError(
                    f"`state_shape` {tuple(state_shape)} does not match the input "
                    f"shape {tuple(struct.shape)} of the lineax operator `fn`."
                )
            if transpose is None:
                transpose = fn.transpose().mv
            fn = fn.mv
        elif not callable(fn):
            raise TypeError(
                f"`fn` must be callable or a lineax operator; got {type(fn).__name__}."
            )
        if state_shape is None:
            raise ValueError("`state_shape` is required for a function `fn`.")
        if transpose is not None and not callable(transpose):
            raise TypeError(
                f"`transpose` must be callable or None; got {type(transpose).__name__}."
            )
        self.state_shape = _shape("state_shape", state_shape)
        self.obs_shape = _eval_obs_shape(fn, self.state_shape, self.n_times, "fn")
        self.fn = fn
        self.transpose_fn = transpose

    def _at(self, f, t):
        t = self._time(t)
        return f if self.n_times is None else (lambda v: f(v, t))

    def _lineax(self, t, dtype) -> lx.FunctionLinearOperator:
        struct = jax.ShapeDtypeStruct(self.state_shape, dtype)
        return lx.FunctionLinearOperator(
            self._at(self.fn, t), struct, closure_convert=False
        )

    def __call__(self, x_t, t=None):
        return self._at(self.fn, t)(x_t)

    def transpose(self, y_t, t=None):
        if self.transpose_fn is not None:
            return self._at(self.transpose_fn, t)(y_t)
        return self._lineax(t, jnp.result_type(y_t)).transpose().mv(y_t)

    def matrix(self, t=None, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        h = self._lineax(t, dtype).as_matrix()
        return jnp.reshape(h, (self.obs_size, self.state_size))


class NonlinearOperator(AbstractObservationOperator):
    r"""A nonlinear observation operator $h_t$ given as a function.

    `fn(x_t)` (or `fn(x_t, t)` with `n_times = T`). Gauss-Newton linearises it at the
    current iterate, $H_t = \partial h_t / \partial x\,(x_t)$, by forward-mode
    differentiation (`jax.jacfwd`: one `jax.jvp` per state entry); the gradient
    solvers differentiate the cost in reverse mode. Not accepted by the Gaussian
    MAPs, which need a linear $H$.

    **Arguments:** `fn`; `state_shape` (the shape of one state); `n_times` (`None`
    or $T$).
    """

    fn: Callable
    state_shape: tuple[int, ...] = eqx.field(static=True)
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: int | None = eqx.field(static=True)

    def __init__(
        self,
        fn: Callable,
        state_shape: tuple[int, ...] | int,
        *,
        n_times: int | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"`fn` must be callable; got {type(fn).__name__}.")
        self.n_times = _n_times(n_times)
        self.state_shape = _shape("state_shape", state_shape)
        self.obs_shape = _eval_obs_shape(fn, self.state_shape, self.n_times, "fn")
        self.fn = fn

    def __call__(self, x_t, t=None):
        t = self._time(t)
        return self.fn(x_t) if self.n_times is None else self.fn(x_t, t)

    def value_and_jacobian(self, x_t, t=None):
        def flat(z):
            h = self(jnp.reshape(z, self.state_shape), t)
            h = jnp.reshape(h, (-1,))
            return h, h

        jac, h = jax.jacfwd(flat, has_aux=True)(jnp.reshape(x_t, (-1,)))
        return h, jac


# ------------------------------------------------------------------------------
# Helpers shared by the costs, the Gaussian MAPs and the learned costs
# ------------------------------------------------------------------------------


def is_state_mask(operator) -> bool:
    """Whether `operator` is the mask of the state: `None` or an `IdentityOperator`
    (the fast path of every cost and MAP)."""
    return operator is None or isinstance(operator, IdentityOperator)


def check_operator(
    operator,
    state_shape,
    *,
    n_times: int | None = None,
    linear: bool = False,
    name: str = "operator",
) -> AbstractObservationOperator:
    """Validate an observation operator for states of `state_shape`.

    **Arguments:** `operator`; `state_shape` (the state's shape); `n_times` (the
    window length, checked against a per-time operator); `linear` (whether a linear
    operator is required); `name` (for the messages).

    **Returns:** `operator`. **Raises:** `TypeError` for a non-operator (or a
    nonlinear one where `linear`); `ValueError` for a state shape or window length
    that does not match.
    """
    cls = AbstractLinearObservationOperator if linear else AbstractObservationOperator
    if not isinstance(operator, cls):
        want = "a linear observation operator" if linear else "an observation operator"
        raise TypeError(
            f"`{name}` must be {want} (jaxda.obs.{cls.__name__}: IdentityOperator, "
            "SelectionOperator, MatrixOperator, LinearFunctionOperator"
            f"{'' if linear else ', NonlinearOperator'}); got "
            f"{type(operator).__name__}."
        )
    state_shape = tuple(int(s) for s in state_shape)
    if tuple(operator.state_shape) != state_shape:
        raise ValueError(
            f"`{name}` acts on states of shape {tuple(operator.state_shape)} but the "
            f"state has shape {state_shape}."
        )
    if n_times is not None and operator.n_times not in (None, n_times):
        raise ValueError(
            f"`{name}` is defined for T = {operator.n_times} times but the window has "
            f"T = {n_times}."
        )
    return operator


def check_operator_observations(
    obs, operator: AbstractObservationOperator, *, name: str = "obs"
) -> Observations:
    """Validate observations in the observation space of `operator`: an
    `Observations` of shape `(T, *operator.obs_shape)`, with `T` equal to a
    per-time operator's `n_times`. **Returns:** `obs`."""
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`{name}` must be jaxda.obs.Observations(values, mask); got "
            f"{type(obs).__name__}."
        )
    shape = tuple(obs.values.shape)
    want = tuple(operator.obs_shape)
    if len(shape) != 1 + len(want) or shape[1:] != want or shape[0] < 1:
        dims = ", ".join(["T", *map(str, want)])
        raise ValueError(
            f"`{name}` must have shape ({dims}): T times of the observation vector "
            f"of shape {want} of `operator`; got {shape}."
        )
    if operator.n_times is not None and shape[0] != operator.n_times:
        raise ValueError(
            f"`{name}` has {shape[0]} times but `operator` is defined for "
            f"T = {operator.n_times}."
        )
    return obs


def misfit(
    x: Float[Array, " T *state"],
    obs: Observations,
    operator: AbstractObservationOperator | None = None,
) -> Float[Array, " T *obs"]:
    r"""The observation misfit $m_t \odot (h_t(x_t) - y_t)$, zero where unobserved.

    With `operator=None` (the mask of the state) this is `where(mask, x - y, 0)`,
    shape `(T, *state)`; otherwise shape `(T, *operator.obs_shape)`. The
    observation term of a cost is $\tfrac12 \sum \text{misfit}^2 / r$.
    """
    hx = x if operator is None else operator.trajectory(x)
    return jnp.where(obs.mask, hx - obs.values, jnp.zeros((), jnp.result_type(hx)))


__all__ = [
    "AbstractLinearObservationOperator",
    "AbstractObservationOperator",
    "AbstractSelectionOperator",
    "IdentityOperator",
    "LinearFunctionOperator",
    "MatrixOperator",
    "NonlinearOperator",
    "SelectionOperator",
    "check_operator",
    "check_operator_observations",
    "is_state_mask",
    "misfit",
]
