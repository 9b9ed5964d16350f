"""Observation patterns: boolean masks of shape `(T, *state)` for twin experiments."""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Int, Key
from .._validation import check_int, check_key, is_concrete


def _state_shape(state_shape) -> tuple[int, ...]:
    if isinstance(state_shape, int | np.integer):
        state_shape = (int(state_shape),)
    try:
        shape = tuple(int(s) for s in state_shape)
    except TypeError:
        raise TypeError(
            f"`state_shape` must be a tuple of ints; got {state_shape!r}."
        ) from None
    if any(s < 1 for s in shape):
        raise ValueError(f"`state_shape` must have positive sizes; got {shape}.")
    return shape


def _component_mask(components, state_shape) -> np.ndarray:
    """Flattened boolean mask of the chosen components (all if `components` is None)."""
    size = math.prod(state_shape)
    if components is None:
        return np.ones(size, bool)
    comps = np.atleast_1d(np.asarray(components))
    if comps.ndim != 1 or not np.issubdtype(comps.dtype, np.integer):
        raise TypeError(
            f"`components` must be a sequence of ints (flattened state indices); got "
            f"{components!r}."
        )
    if comps.size and (comps.min() < -size or comps.max() >= size):
        raise ValueError(
            f"`components` must be indices in [0, {size}); got {comps.tolist()}."
        )
    out = np.zeros(size, bool)
    out[comps] = True
    return out


def _time_mask(n_times: int, k: int, offset, start: int, stop: int | None):
    """Boolean `(T,)`: `t = offset + j k` (j >= 0), `start <= t < stop`."""
    stop = n_times if stop is None else stop
    t = jnp.arange(n_times)
    return (t >= start) & (t < stop) & (t >= offset) & ((t - offset) % k == 0)


def _every_k_mask(n_times, state_shape, k, components, offset, start, stop):
    """Boolean `(T, *state)`: `components` at `t = offset + j k`, start <= t < stop."""
    comp = jnp.asarray(_component_mask(components, state_shape)).reshape(state_shape)
    tm = _time_mask(n_times, k, offset, start, stop)
    return tm.reshape((n_times,) + (1,) * len(state_shape)) & comp


def _window(n_times, state_shape) -> tuple[int, tuple[int, ...]]:
    """The checked `(n_times, state_shape)` arguments of a pattern call."""
    return check_int("n_times", n_times, minimum=1), _state_shape(state_shape)


def _components(components) -> tuple[int, ...] | None:
    """`components` as a tuple of ints (a static field), or None (all)."""
    if components is None:
        return None
    comps = np.atleast_1d(np.asarray(components))
    if comps.ndim != 1 or not np.issubdtype(comps.dtype, np.integer):
        raise TypeError(
            f"`components` must be a sequence of ints (flattened state indices); got "
            f"{components!r}."
        )
    return tuple(int(c) for c in comps)


class AbstractPattern(eqx.Module):
    """An observation pattern: `pattern(key, n_times, state_shape) -> mask`.

    A pattern is data (static settings), so datasets built from it compile once; the
    mask of one window has shape `(n_times, *state_shape)` and vmaps over keys.
    Deterministic patterns ignore the key (pass `None`). Used by
    `jaxda.data.make_dataset` and the presets; components of a state with several
    axes are numbered in flattened (C) order.
    """

    @abc.abstractmethod
    def __call__(
        self, key: Key | None, n_times: int, state_shape: tuple[int, ...] | int
    ) -> Bool[Array, " T *state"]:
        """The mask of one window."""

    def max_count(self, n_times: int, state_shape: tuple[int, ...]) -> int:
        """The largest number of observed entries a window of this shape can have: the
        static buffer size `max_obs` of the observation-space Gaussian MAP
        (`jaxda.gaussian.map_covariance`).

        The default counts one mask, which is exact for the patterns whose count does
        not depend on the key (all of them here but `RandomPhasePattern`, which
        overrides it); a user pattern whose count varies must override it.
        """
        mask = self(jax.random.key(0), n_times, tuple(state_shape))
        return int(jnp.sum(mask))


class FullPattern(AbstractPattern):
    """Every component at every time: a mask of ones, shape `(T, *state_shape)`."""

    def __call__(self, key, n_times, state_shape):
        n_times, state_shape = _window(n_times, state_shape)
        return jnp.ones((n_times,) + state_shape, bool)


class EveryKPattern(AbstractPattern):
    r"""Observe `components` at times $t = \text{offset} + jk$, $j \ge 0$, with
    $\text{start} \le t < T - \text{stop\_margin}$.

    [F21]'s Lorenz-63 setup is `EveryKPattern(8, (0,), start=10, stop_margin=10)` with
    `T = 200`: the first component every 8 steps (times 16, 24, ..., 184), the first
    and last 10 steps of the window unobserved.

    **Arguments:** `k` >= 1; `components` (flattened state indices, default all);
    `offset` >= 0; `start` >= 0; `stop_margin` >= 0 (all static ints).
    """

    k: int = eqx.field(static=True)
    components: tuple[int, ...] | None = eqx.field(
        static=True, default=None, converter=_components
    )
    offset: int = eqx.field(static=True, default=0)
    start: int = eqx.field(static=True, default=0)
    stop_margin: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        check_int("k", self.k, minimum=1)
        check_int("offset", self.offset, minimum=0)
        check_int("start", self.start, minimum=0)
        check_int("stop_margin", self.stop_margin, minimum=0)

    def __call__(self, key, n_times, state_shape):
        n_times, state_shape = _window(n_times, state_shape)
        stop = max(n_times - self.stop_margin, self.start)
        return _every_k_mask(
            n_times, state_shape, self.k, self.components, self.offset, self.start, stop
        )


class RandomComponentsPattern(AbstractPattern):
    r"""Every `every` steps, a fresh random subset of exactly `n_components`
    components.

    At each observed time ($t = 0, \text{every}, 2\,\text{every}, \dots$)
    `n_components` of the $d$ state components are drawn uniformly without
    replacement, independently across times. [F21]'s Lorenz-96 setup:
    `RandomComponentsPattern(20, every=4)` on `(40,)` states.

    **Arguments:** `n_components` in `[0, d]`; `every` >= 1 (static ints).
    """

    n_components: int = eqx.field(static=True)
    every: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_int("n_components", self.n_components, minimum=0)
        check_int("every", self.every, minimum=1)

    def __call__(self, key, n_times, state_shape):
        n_times, state_shape = _window(n_times, state_shape)
        check_key("key", key)
        size = math.prod(state_shape)
        if self.n_components > size:
            raise ValueError(
                f"`n_components` must be <= the state size {size}; got "
                f"{self.n_components}."
            )
        # Ranks of i.i.d. uniforms are a uniformly random permutation at each time.
        u = jax.random.uniform(key, (n_times, size))
        ranks = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
        chosen = ranks < self.n_components
        tm = _time_mask(n_times, self.every, 0, 0, None)
        return (chosen & tm[:, None]).reshape((n_times,) + state_shape)


class RandomTimesPattern(AbstractPattern):
    """Observe `components` at `n_observed_times` distinct times drawn at random.

    **Arguments:** `n_observed_times` in `[0, T]`; `components` (flattened state
    indices, default all).
    """

    n_observed_times: int = eqx.field(static=True)
    components: tuple[int, ...] | None = eqx.field(
        static=True, default=None, converter=_components
    )

    def __check_init__(self):
        check_int("n_observed_times", self.n_observed_times, minimum=0)

    def __call__(self, key, n_times, state_shape):
        n_times, state_shape = _window(n_times, state_shape)
        check_key("key", key)
        m = self.n_observed_times
        if m > n_times:
            raise ValueError(
                f"`n_observed_times` must be <= n_times ({n_times}); got {m}."
            )
        ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (n_times,))))
        comp = _component_mask(self.components, state_shape).reshape(state_shape)
        return (ranks < m).reshape((n_times,) + (1,) * len(state_shape)) & comp


class RandomPhasePattern(AbstractPattern):
    r"""Every `k` steps on `components`, starting at a phase drawn uniformly from
    `phases`.

    Each window gets its own observation process $t \in \{p, p + k, \dots\}$. Giving
    the training and test sets disjoint `phases` makes their observation times disjoint
    ([B24]'s setup: each training pair has its own observation process, tested on
    unseen ones).

    **Arguments:** `k` >= 1; `phases` (non-empty ints >= 0); `components`.
    """

    k: int = eqx.field(static=True)
    phases: Int[Array, " p"] = eqx.field(converter=jnp.asarray)
    components: tuple[int, ...] | None = eqx.field(
        static=True, default=None, converter=_components
    )

    def __check_init__(self):
        check_int("k", self.k, minimum=1)
        if jnp.ndim(self.phases) != 1 or jnp.size(self.phases) == 0:
            raise ValueError(
                f"`phases` must be a non-empty sequence of ints; got {self.phases!r}."
            )
        if not jnp.issubdtype(self.phases.dtype, jnp.integer):
            raise TypeError(f"`phases` must hold ints; got dtype {self.phases.dtype}.")
        if is_concrete(self.phases) and np.any(np.asarray(self.phases) < 0):
            raise ValueError(f"`phases` must be >= 0; got {self.phases}.")

    def max_count(self, n_times, state_shape):
        """The count of the phase with the most observations."""
        n_times, state_shape = _window(n_times, state_shape)
        return max(
            int(
                jnp.sum(
                    _every_k_mask(
                        n_times, state_shape, self.k, self.components, int(p), 0, None
                    )
                )
            )
            for p in np.unique(np.asarray(self.phases))
        )

    def __call__(self, key, n_times, state_shape):
        n_times, state_shape = _window(n_times, state_shape)
        check_key("key", key)
        phase = jax.random.choice(key, self.phases)
        return _every_k_mask(
            n_times, state_shape, self.k, self.components, phase, 0, None
        )
