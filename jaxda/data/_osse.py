r"""Observing-system simulation experiments (OSSEs) on grids: simulated truths of a
gridded model, observed by a grid pattern with noise, in seeded splits.

`make_osse` draws N initial states $x_0^{(i)}$ (a sampler, or given states),
integrates a one-step map $\Phi$ (`jaxda.models.flow_map(model, dt)` by default, or
the model's own step) for `burn_in_steps` discarded steps and then $T - 1$ steps,
$x_{t+1} = \Phi(x_t)$, with `lax.scan` (vmapped over windows, one compiled call),
and observes each window with a grid pattern:

- the gridded observations (`OSSE.dataset.obs`, a `jaxda.data.Dataset` like every
  twin experiment of the library) are $y = m \odot (x + \sigma\varepsilon)$ on the
  pattern's mask $m$ (for a point pattern: the cells holding at least one point,
  the binned formulation of 4DVarNet);
- for a point pattern (`jaxda.obs.SatelliteTracks`, `jaxda.obs.RandomPointsPattern`)
  also the point observations (`OSSE.point_obs`, `(N, T, M)`)
  $y_{t,k} = h_{t,k}(x_t) + \sigma\varepsilon_{t,k}$ at the exact positions
  (`OSSE.points`), $h$ the bilinear interpolation of channel `channel`
  (`OSSE.operator(i)` is the `jaxda.obs.BilinearInterpolation` of window $i$).

`make_osse_splits` gives train / validation / test OSSEs from one key, with
independent sub-keys (`jax.random.fold_in(key, 0 / 1 / 2)`): independent initial
states, noise and (for random patterns) observation positions. For one long run cut
into training windows, make an OSSE of one long window and cut it with
`jaxda.data.PatchLayout`.
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float, Key
from .._validation import check_int, check_positive
from ..grid._covariance import AbstractCovariance
from ..grid._grid import Grid
from ..models import AbstractDynamics, AbstractFlowMap, flow_map
from ..obs import (
    AbstractGridPattern,
    AbstractPointPattern,
    BilinearInterpolation,
    GridPoints,
    Observations,
    observe,
)
from ._dataset import Dataset, _key_and_seed, window_index


class OSSE(eqx.Module):
    r"""A gridded twin experiment: the `Dataset` of truths and gridded observations,
    and for point patterns the point observations and their positions.

    **Fields:**

    - `dataset`: `jaxda.data.Dataset` with `truth` `(N, T, *state)` (`state` =
      `(ny, nx)` or `(C, ny, nx)`) and gridded `obs` of the same shape.
    - `grid`: the `jaxda.grid.Grid`.
    - `points`: `GridPoints` of shape `(N, T, M)`, or None (a mask pattern).
    - `point_obs`: `Observations` `(N, T, M)` at `points` (mask = `points.valid`),
      or None.
    - `channel`: the channel the point observations see.
    """

    dataset: Dataset
    grid: Grid
    points: GridPoints | None
    point_obs: Observations | None
    channel: int = eqx.field(static=True, default=0)

    @property
    def truth(self) -> Float[Array, " N T *state"]:
        return self.dataset.truth

    @property
    def obs(self) -> Observations:
        """The gridded observations, `(N, T, *state)`."""
        return self.dataset.obs

    @property
    def n_windows(self) -> int:
        return self.dataset.n_windows

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, index) -> "OSSE":
        """Select windows (an int keeps a window axis of length 1)."""
        index = window_index(index)
        points = (
            None
            if self.points is None
            else jax.tree.map(lambda a: a[index], self.points)
        )
        point_obs = None if self.point_obs is None else self.point_obs[index]
        return OSSE(self.dataset[index], self.grid, points, point_obs, self.channel)

    def time_slice(self, start: int, stop: int) -> "OSSE":
        """Steps `start <= t < stop` of every window (e.g. the training, validation
        and test periods of one long run)."""
        n_times = self.dataset.n_times
        start = check_int("start", start, minimum=0)
        stop = check_int("stop", stop, minimum=start + 1)
        if stop > n_times:
            raise ValueError(f"`stop` must be <= n_times = {n_times}; got {stop}.")
        s = (slice(None), slice(start, stop))
        ds = dataclasses.replace(
            self.dataset, truth=self.dataset.truth[s], obs=self.dataset.obs[s]
        )
        points = None
        if self.points is not None:
            points = jax.tree.map(lambda a: a[s], self.points)
        point_obs = None if self.point_obs is None else self.point_obs[s]
        return OSSE(ds, self.grid, points, point_obs, self.channel)

    def operator(self, window: int) -> BilinearInterpolation:
        """The interpolating operator of window `window` (per time, `(T, M)` slots)."""
        if self.points is None:
            raise ValueError("this OSSE has no point observations (a mask pattern).")
        window = check_int("window", window)
        p = jax.tree.map(lambda a: a[window], self.points)
        return BilinearInterpolation(
            self.grid, p, self.dataset.state_shape, self.channel
        )


class CovarianceInitialState(eqx.Module):
    r"""Gaussian initial states with a gridded covariance: $x_0 = \mu + U w$,
    $w \sim \mathcal N(0, I)$, so $x_0 \sim \mathcal N(\mu, B)$, $B = U U^\top$
    (a `jaxda.grid` covariance, e.g. `SpectralCovariance`: smooth random fields).

    **Arguments:** `covariance` (an `AbstractCovariance` whose `field_shape` is the
    state's); `mean` (a scalar or a state-shaped array, default 0).
    """

    covariance: AbstractCovariance
    mean: Float[ArrayLike, "*state"] | float = 0.0

    def __check_init__(self):
        if not isinstance(self.covariance, AbstractCovariance):
            raise TypeError(
                "`covariance` must be a jaxda.grid covariance (AbstractCovariance); "
                f"got {type(self.covariance).__name__}."
            )

    def __call__(self, key: Key, state_shape: tuple[int, ...], dtype):
        if tuple(state_shape) != tuple(self.covariance.field_shape):
            raise ValueError(
                f"`covariance` is on fields of shape {self.covariance.field_shape}; "
                f"the state has shape {tuple(state_shape)}."
            )
        w = jax.random.normal(key, tuple(self.covariance.control_shape), dtype)
        return jnp.asarray(self.mean, dtype) + self.covariance.sqrt(w).astype(dtype)


def _initial_states(key, initial_state, n_windows, state_shape, dtype):
    if callable(initial_state):
        keys = jax.random.split(key, n_windows)
        return jax.vmap(lambda k: initial_state(k, state_shape, dtype))(keys)
    x0 = jnp.asarray(initial_state, dtype)
    return jnp.broadcast_to(x0, (n_windows,) + state_shape)


@eqx.filter_jit
def _simulate_windows(step, x0, n_times, burn_in_steps, dt):
    # A flow map gets the time of each step (t = 0 after the burn-in), a plain
    # callable the state alone.
    timed = isinstance(step, AbstractFlowMap)

    def run(x):
        def body(x, t):
            x = step(x, t) if timed else step(x)
            return x, x

        dtype = x.dtype
        t_burn = dt * jnp.arange(-burn_in_steps, 0, dtype=dtype)
        x, _ = jax.lax.scan(body, x, t_burn)
        _, xs = jax.lax.scan(body, x, dt * jnp.arange(n_times - 1, dtype=dtype))
        return jnp.concatenate([x[None], xs], 0)

    return jax.vmap(run)(x0)


@eqx.filter_jit
def _observe_windows(key, truth, pattern, grid, noise_std, channel):
    n_windows, n_times = truth.shape[:2]
    state_shape = truth.shape[2:]
    k_pattern, k_grid, k_point = jax.random.split(key, 3)
    keys = jax.random.split(k_pattern, n_windows)
    mask = jax.vmap(lambda k: pattern(k, n_times, state_shape))(keys)
    std = jnp.asarray(noise_std, truth.dtype)
    noise_keys = jax.random.split(k_grid, n_windows)
    obs = jax.vmap(lambda k, x, m: observe(k, x, m, noise_std=std))(
        noise_keys, truth, mask
    )
    if not isinstance(pattern, AbstractPointPattern):
        return obs, None, None

    def at_points(k_pat, k_noise, x):
        points = pattern.points(k_pat, n_times)
        op = BilinearInterpolation(grid, points, state_shape, channel)
        values = op.trajectory(x)
        return points, observe(k_noise, values, points.valid, noise_std=std)

    points, point_obs = jax.vmap(at_points)(
        keys, jax.random.split(k_point, n_windows), truth
    )
    return obs, points, point_obs


def make_osse(
    key: Key | int,
    model: AbstractDynamics,
    grid: Grid,
    *,
    n_windows: int,
    n_times: int,
    dt: float,
    initial_state: Callable | Float[ArrayLike, "*state"] | Float[ArrayLike, "N *state"],
    pattern: AbstractGridPattern,
    noise_std: float,
    step: Callable | None = None,
    burn_in_steps: int = 0,
    channel: int = 0,
    dtype=None,
    name: str = "",
    split: str = "",
) -> OSSE:
    r"""Simulate and observe `n_windows` windows of a gridded model in one seeded,
    vmapped, compiled call.

    Each window: $x_0$ from `initial_state`; `burn_in_steps` discarded steps and
    $T - 1$ steps of $x_{t+1} = \Phi(x_t)$ (`step`, a `lax.scan`); a mask $m$ from
    `pattern` and gridded observations $y = m \odot (x + \sigma\varepsilon)$; for a
    point pattern also point observations $y_{t,k} = h_{t,k}(x_t) +
    \sigma\varepsilon_{t,k}$, $h$ the bilinear interpolation of channel `channel`
    at the pattern's positions. The same key gives the same OSSE.

    **Arguments:**

    - `key`: a PRNG key or an int seed.
    - `model`: a `jaxda.models.AbstractDynamics` with states `(ny, nx)` or
      `(C, ny, nx)` on `grid`.
    - `grid`: the `jaxda.grid.Grid`.
    - `n_windows` N >= 1; `n_times` T >= 2; `dt` > 0 (the time between states).
    - `initial_state`: a sampler `f(key, state_shape, dtype)` (e.g.
      `GaussianInitialState`), one state, or `(N, *state)` states.
    - `pattern`: a grid pattern (`jaxda.obs.AbstractGridPattern`).
    - `noise_std` >= 0: the observation noise, gridded and point observations.
    - `step`: the one-step map $x_t \mapsto x_{t+1}$ over `dt` (a
      `jaxda.models.AbstractFlowMap` or any callable of the state); default
      `flow_map(model, dt, "rk4")`.
    - `burn_in_steps` >= 0: steps integrated and discarded first (spin-up).
    - `channel`: the channel observed at the points.
    - `dtype`: floating dtype (default JAX's default float); `name`, `split`:
      metadata.

    **Returns:** an `OSSE`. **Raises:** `ValueError` / `TypeError` for bad
    arguments; `RuntimeError` naming the windows whose simulation became
    non-finite (an OSSE never holds a NaN truth).
    """
    key, seed = _key_and_seed(key)
    if not isinstance(model, AbstractDynamics):
        raise TypeError(
            "`model` must be a jaxda.models.AbstractDynamics; got "
            f"{type(model).__name__}."
        )
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    state_shape = tuple(model.state_shape)
    if len(state_shape) not in (2, 3) or state_shape[-2:] != grid.shape:
        raise ValueError(
            f"`model` must have states (ny, nx) = {grid.shape} or (C, {grid.ny}, "
            f"{grid.nx}) on `grid`; got state shape {state_shape}."
        )
    if not isinstance(pattern, AbstractGridPattern):
        raise TypeError(
            "`pattern` must be a jaxda.obs.AbstractGridPattern (RandomPointsPattern, "
            f"SatelliteTracks, CloudPattern); got {type(pattern).__name__}."
        )
    if pattern.grid != grid:
        raise ValueError(f"`pattern` is on {pattern.grid}, not on `grid` {grid}.")
    n_windows = check_int("n_windows", n_windows, minimum=1)
    n_times = check_int("n_times", n_times, minimum=2)
    burn_in_steps = check_int("burn_in_steps", burn_in_steps, minimum=0)
    channel = check_int("channel", channel, minimum=0)
    n_channels = state_shape[0] if len(state_shape) == 3 else 1
    if channel >= n_channels:
        raise ValueError(f"`channel` must be < {n_channels}; got {channel}.")
    check_positive("dt", dt)
    check_positive("noise_std", noise_std, allow_zero=True)
    if step is None:
        step = flow_map(model, float(dt), "rk4")
    elif not callable(step):
        raise TypeError(f"`step` must be callable; got {type(step).__name__}.")
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    if not callable(initial_state):
        x0 = jnp.asarray(initial_state)
        if x0.shape not in (state_shape, (n_windows,) + state_shape):
            raise ValueError(
                f"`initial_state` must be a sampler, a state of shape {state_shape} or "
                f"states of shape {(n_windows,) + state_shape}; got shape {x0.shape}."
            )
        model.check_state("initial_state", x0, leading=x0.ndim - len(state_shape))

    k_x0, k_obs = jax.random.split(key)
    x0 = _initial_states(k_x0, initial_state, n_windows, state_shape, dtype)
    truth = _simulate_windows(step, x0, n_times, burn_in_steps, float(dt)).astype(dtype)
    finite = np.asarray(jnp.all(jnp.isfinite(truth), axis=tuple(range(1, truth.ndim))))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RuntimeError(
            f"jaxda.data.make_osse: the simulation of {bad.size} of {n_windows} "
            f"windows became non-finite (windows {bad[:10].tolist()}"
            f"{', ...' if bad.size > 10 else ''}); reduce `dt` or check the model."
        )
    obs, points, point_obs = _observe_windows(
        k_obs, truth, pattern, grid, float(noise_std), channel
    )
    dataset = Dataset(
        truth,
        obs,
        model,
        float(dt),
        None,
        name=name,
        split=split,
        noise_std=float(noise_std),
        seed=seed,
    )
    return OSSE(dataset, grid, points, point_obs, channel)


SPLITS = ("train", "validation", "test")


def make_osse_splits(
    key: Key | int,
    model: AbstractDynamics,
    grid: Grid,
    *,
    n_train: int,
    n_validation: int,
    n_test: int,
    **kwargs,
) -> tuple[OSSE, OSSE, OSSE]:
    """Train, validation and test OSSEs from one key: `make_osse` with keys
    `jax.random.fold_in(key, 0)`, `(key, 1)`, `(key, 2)` and `split` set.

    **Arguments:** `key`, `model`, `grid`; the three sizes (>= 1); every other
    keyword of `make_osse`. **Returns:** `(train, validation, test)`.
    """
    key, seed = _key_and_seed(key)
    if "split" in kwargs or "n_windows" in kwargs:
        raise TypeError("`make_osse_splits` sets `split` and `n_windows` itself.")
    out = []
    for i, (split, n) in enumerate(zip(SPLITS, (n_train, n_validation, n_test))):
        n = check_int(f"n_{split}", n, minimum=1)
        osse = make_osse(
            jax.random.fold_in(key, i), model, grid, n_windows=n, split=split, **kwargs
        )
        if seed is not None:
            osse = dataclasses.replace(
                osse, dataset=dataclasses.replace(osse.dataset, seed=seed)
            )
        out.append(osse)
    return tuple(out)


__all__ = ["OSSE", "SPLITS", "CovarianceInitialState", "make_osse", "make_osse_splits"]
