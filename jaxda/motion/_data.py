r"""Data sets for motion estimation: shallow-water basins [FBC23] and advected tracers.

A motion sample is one assimilation window whose state carries the velocity
$\mathbf w = (u, v)$ in channels 1 and 2 and something the velocity moves in channel
0 (the surface height $\eta$ of a shallow-water basin, or a tracer image $q$). Only
channel 0 is observed, at some times, with Gaussian noise; the velocity never is. The
task is to recover the initial velocity $\mathbf w_0$ from the observed sequence.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Key
from .._validation import check_int, check_key, check_positive
from ..grid._covariance import SpectralCovariance
from ..grid._grid import Grid
from ..models._flow import AbstractFlowMap, rollout
from ..models.advection import SSPRK3, Advection2D, velocity_from_streamfunction
from ..models.shallow_water import (
    basin_bump,
    basin_observations,
    shallow_water_basin,
    spin_up,
)
from ..obs._observations import Observations, observe


class MotionSamples(eqx.Module):
    r"""A batch of motion-estimation windows: true initial states and observations.

    **Fields:**

    - `initial`: the true initial states `(N, C, ny, nx)`, channels `(eta, u, v)`
      (shallow water) or `(q, u, v)` (tracer advection).
    - `obs`: a `jaxda.obs.Observations` with `values` / `mask` `(N, T, C, ny, nx)`;
      the mask is `True` only on the observed channel (0) at the observed times.
    - `flow`: the one-step `jaxda.models.AbstractFlowMap` that generated the windows.
    - `grid`: the `jaxda.grid.Grid`.
    - `noise_std`: the standard deviation $\sigma$ of the observation noise.

    `velocity` is `initial[:, 1:3]` `(N, 2, ny, nx)` (the quantity to recover);
    `sample(i)` gives `(initial[i], obs[i])` for one window; `len(samples)` is `N`.
    """

    initial: Float[Array, "N C ny nx"]
    obs: Observations
    flow: AbstractFlowMap
    grid: Grid
    noise_std: float = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.obs, Observations):
            raise TypeError(
                "`obs` must be a jaxda.obs.Observations; got "
                f"{type(self.obs).__name__}."
            )
        shape = tuple(jnp.shape(self.initial))
        if len(shape) != 4 or shape[1] < 3 or shape[2:] != self.grid.shape:
            raise ValueError(
                "`initial` must have shape (N, C >= 3, "
                f"{self.grid.ny}, {self.grid.nx}); got {shape}."
            )
        obs_shape = tuple(jnp.shape(self.obs.values))
        if len(obs_shape) != 5 or (obs_shape[0], *obs_shape[2:]) != shape:
            raise ValueError(
                f"`obs.values` must have shape (N, T, *{shape[1:]}) with N = "
                f"{shape[0]}; got {obs_shape}."
            )

    @property
    def velocity(self) -> Float[Array, "N 2 ny nx"]:
        """The true initial velocities `initial[:, 1:3]`."""
        return self.initial[:, 1:3]

    def __len__(self) -> int:
        return int(jnp.shape(self.initial)[0])

    def sample(self, i: int) -> tuple[Float[Array, "C ny nx"], Observations]:
        """`(initial[i], Observations(values[i], mask[i]))`: one window."""
        i = check_int("i", i, minimum=-len(self))
        if i >= len(self):
            raise ValueError(
                f"`i` must be < {len(self)} (the number of samples); got {i}."
            )
        return self.initial[i], jax.tree_util.tree_map(lambda a: a[i], self.obs)


def _split(key, n_samples):
    keys = jax.random.split(key, 2 * n_samples)
    return keys[:n_samples], keys[n_samples:]


@eqx.filter_jit
def _basin_windows(
    flow, key, n_samples, spinup_steps, n_times, every, noise_std, dtype
):
    """The spun-up states and observed windows of `basin_motion_samples`, as one
    compiled program (not one dispatch per operation)."""
    grid = flow.model.grid
    bump_keys, obs_keys = _split(key, n_samples)
    bumps = jax.vmap(lambda k: basin_bump(k, grid).astype(dtype))(bump_keys)
    initial = jax.vmap(lambda x: spin_up(flow, x, spinup_steps))(bumps)
    _, obs = jax.vmap(
        lambda k, x: basin_observations(
            k, flow, x, n_times=n_times, every=every, noise_std=noise_std
        )
    )(obs_keys, initial)
    return initial, obs


def basin_motion_samples(
    key: Key,
    n_samples: int,
    *,
    n: int = 64,
    n_times: int = 10,
    every: int = 3,
    noise_std: float = 0.05,
    spinup_steps: int = 1000,
    dtype=None,
) -> MotionSamples:
    r"""[FBC23]'s shallow-water motion data set: `n_samples` random basins.

    Each sample draws a Gaussian bump at rest (`jaxda.models.basin_bump`: height 5 m,
    random centre and width), spins it up `spinup_steps` steps of the forward-backward
    scheme (`jaxda.models.shallow_water_basin`'s flow: 64 x 64 closed basin of
    1000 km, $H$ = 100 m, $\Delta t = 0.5\,\Delta x/\sqrt{gH}$), and observes the window
    of `n_times` states from there: the height $\eta$ at $t = 0, k, 2k, \dots$
    (`every` $k$) with noise $\sigma$ = `noise_std` (`basin_observations`). The
    velocity is never observed. Independent keys give independent data sets (use
    different keys for training, validation and test sets).

    **Arguments:** `key` a `jax.random` key; `n_samples` >= 1; the set-up (keywords,
    [FBC23]'s values by default); `dtype` of the states (default JAX's float).

    **Returns:** a `MotionSamples` (`initial` the spun-up states `(N, 3, n, n)`).
    """
    check_key("key", key)
    n_samples = check_int("n_samples", n_samples, minimum=1)
    spinup_steps = check_int("spinup_steps", spinup_steps, minimum=0)
    check_positive("noise_std", noise_std, allow_zero=True)
    preset = shallow_water_basin(None, n, spinup_steps=0, dtype=dtype)
    flow, grid = preset.flow, preset.grid
    dtype = preset.state.dtype
    initial, obs = _basin_windows(
        flow, key, n_samples, spinup_steps, n_times, every, float(noise_std), dtype
    )
    return MotionSamples(initial, obs, flow, grid, float(noise_std))


def _smooth_field(key, grid: Grid, length_scale: float, shape) -> Float[Array, "..."]:
    """A smooth random field of unit variance (Gaussian correlation of
    `length_scale`, periodic; on a closed grid the periodic field of the same grid)."""
    periodic = Grid(grid.ny, grid.nx, grid.dy, grid.dx, "periodic")
    cov = SpectralCovariance(periodic, length_scale)
    return cov.sqrt(jax.random.normal(key, (*shape, *grid.shape)))


def _observed_mask(
    key, n_times, shape, every, gap_fraction
) -> Bool[Array, "T C ny nx"]:
    """Channel 0 at $t = 0, k, 2k, \\dots$, each pixel missing with probability
    `gap_fraction` (independently per time)."""
    C, ny, nx = shape
    times = (jnp.arange(n_times) % every) == 0
    kept = jax.random.uniform(key, (n_times, ny, nx)) >= gap_fraction
    mask = jnp.zeros((n_times, C, ny, nx), bool)
    return mask.at[:, 0].set(times[:, None, None] & kept)


def advection_motion_samples(
    key: Key,
    n_samples: int,
    grid: Grid,
    *,
    n_times: int = 10,
    every: int = 1,
    noise_std: float = 0.02,
    gap_fraction: float = 0.0,
    max_speed: float = 1.0,
    courant: float = 0.2,
    velocity_length_scale: float | None = None,
    tracer_length_scale: float | None = None,
    limiter: str = "van_leer",
    dtype=None,
) -> MotionSamples:
    r"""Tracer images advected by random smooth, stationary, divergence-free motions.

    Each sample draws a streamfunction $\psi$ and a tracer $q_0$, smooth Gaussian
    random fields (correlation lengths `velocity_length_scale` and
    `tracer_length_scale`, default a quarter and a tenth of the domain side; on a
    closed grid $\psi$ is tapered by $\sin(\pi s)\sin(\pi t)$ to vanish on the walls),
    and the C-grid velocity $\mathbf w = (-\partial_y\psi, \partial_x\psi)$
    (`velocity_from_streamfunction`, discretely divergence-free) scaled to
    $\max|\mathbf w|$ = `max_speed`. The state $(q, u, v)$ is advected by
    `jaxda.models.Advection2D` (the velocity in the state, constant, staggered,
    `limiter`) with `SSPRK3` steps of
    $\Delta t$ = `courant` $\cdot \min(\Delta x, \Delta y)$ / `max_speed`
    (`courant` <= 0.25 keeps the limited scheme positive). The tracer is observed at
    $t = 0, k, 2k, \dots$ (`every` $k$) with noise $\sigma$ = `noise_std`, each pixel
    missing with probability `gap_fraction` (independently per image); the velocity
    never is.

    **Arguments:** `key`; `n_samples` >= 1; `grid` (periodic or closed); the options
    above (keywords); `dtype` (default JAX's float).

    **Returns:** a `MotionSamples` with `initial` `(N, 3, ny, nx)`.
    """
    check_key("key", key)
    n_samples = check_int("n_samples", n_samples, minimum=1)
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    n_times = check_int("n_times", n_times, minimum=1)
    every = check_int("every", every, minimum=1)
    check_positive("noise_std", noise_std, allow_zero=True)
    check_positive("max_speed", max_speed)
    check_positive("courant", courant)
    if not 0.0 <= float(gap_fraction) < 1.0:
        raise ValueError(f"`gap_fraction` must be in [0, 1); got {gap_fraction!r}.")
    side = min(grid.ny * grid.dy, grid.nx * grid.dx)
    velocity_length_scale = velocity_length_scale or side / 4
    tracer_length_scale = tracer_length_scale or side / 10
    check_positive("velocity_length_scale", velocity_length_scale)
    check_positive("tracer_length_scale", tracer_length_scale)
    dtype = dtype or jnp.result_type(float)
    model = Advection2D(grid, limiter=limiter, staggered=True)
    dt = float(courant) * min(grid.dx, grid.dy) / float(max_speed)
    flow = SSPRK3(model, dt)
    if grid.periodic:
        taper = jnp.ones(grid.shape)
    else:
        Y, X = grid.meshgrid()
        s = (X - grid.x0 + grid.dx / 2) / (grid.nx * grid.dx)
        t = (Y - grid.y0 + grid.dy / 2) / (grid.ny * grid.dy)
        taper = jnp.sin(np.pi * s) * jnp.sin(np.pi * t)

    initial, obs = _advection_windows(
        jax.random.split(key, n_samples), flow, taper, n_times, every,
        float(noise_std), float(gap_fraction), float(max_speed),
        float(velocity_length_scale), float(tracer_length_scale), jnp.dtype(dtype),
    )  # fmt: skip
    return MotionSamples(initial, obs, flow, grid, float(noise_std))


@eqx.filter_jit
def _advection_windows(
    keys, flow, taper, n_times, every, noise_std, gap_fraction, max_speed,
    velocity_length_scale, tracer_length_scale, dtype,
):  # fmt: skip
    """The windows of `advection_motion_samples`, one compiled program per set of
    options (module level, so that repeated calls reuse it)."""
    grid = flow.model.grid

    def one(k):
        k_psi, k_q, k_mask, k_noise = jax.random.split(k, 4)
        psi = taper * _smooth_field(k_psi, grid, velocity_length_scale, ())
        w = velocity_from_streamfunction(psi, grid)
        w = w * (max_speed / jnp.max(jnp.abs(w)))
        q = _smooth_field(k_q, grid, tracer_length_scale, (1,))
        x0 = jnp.concatenate([q, w]).astype(dtype)
        truth = rollout(flow, x0, n_times - 1)
        mask = _observed_mask(k_mask, n_times, x0.shape, every, gap_fraction)
        return x0, observe(k_noise, truth, mask, noise_std=noise_std)

    return jax.vmap(one)(keys)
