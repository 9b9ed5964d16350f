r"""Twin-experiment datasets: N windows of a simulated truth and its noisy observations.

`make_dataset` draws N initial states, integrates the model over each window
(`jaxda.models.simulate`, optionally with burn-in and process noise), draws one
observation mask per window from a pattern and adds Gaussian noise -- all in one seeded,
vmapped, jit-compiled call. The result is a `Dataset` pytree.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float, Key
from .._results import RESULTS
from .._validation import (
    check_finite,
    check_int,
    check_key,
    check_positive,
    is_concrete,
)
from ..models import AbstractDynamics
from ..obs import Observations, observe
from ._normalise import Normalisation


# ------------------------------------------------------------------------------
# Initial-state samplers
# ------------------------------------------------------------------------------


class GaussianInitialState(eqx.Module):
    r"""$x_0 \sim \mathcal N(\text{mean}, \mathrm{diag}(\text{std}^2))$, state-shaped
    arrays or scalars."""

    mean: Float[ArrayLike, "*state"]
    std: Float[ArrayLike, "*state"] | float = 1.0

    def __check_init__(self):
        check_finite("mean", self.mean)
        check_positive("std", self.std, allow_zero=True)

    def __call__(
        self, key: Key, state_shape: tuple[int, ...], dtype
    ) -> Float[Array, "*state"]:
        eps = jax.random.normal(key, state_shape, dtype)
        return jnp.asarray(self.mean, dtype) + jnp.asarray(self.std, dtype) * eps


class UniformInitialState(eqx.Module):
    r"""$x_0 \sim \mathcal U([\text{low}, \text{high}])$ componentwise."""

    low: Float[ArrayLike, "*state"]
    high: Float[ArrayLike, "*state"]

    def __check_init__(self):
        check_finite("low", self.low)
        check_finite("high", self.high)
        if is_concrete(self.low) and is_concrete(self.high):
            if np.any(np.asarray(self.high) < np.asarray(self.low)):
                raise ValueError(
                    f"`high` must be >= `low`; got low={self.low}, high={self.high}."
                )

    def __call__(
        self, key: Key, state_shape: tuple[int, ...], dtype
    ) -> Float[Array, "*state"]:
        u = jax.random.uniform(key, state_shape, dtype)
        low, high = jnp.asarray(self.low, dtype), jnp.asarray(self.high, dtype)
        return low + (high - low) * u


# ------------------------------------------------------------------------------
# The dataset pytree
# ------------------------------------------------------------------------------


def window_index(index):
    """An index over windows with an int made a slice of length 1 (the window axis
    is kept)."""
    if isinstance(index, int | np.integer):
        return slice(int(index), int(index) + 1) if index != -1 else slice(-1, None)
    return index


class Dataset(eqx.Module):
    r"""N windows of a twin experiment: `truth (N, T, *state)` and batched `obs`.

    A pytree: slice it (`ds[:10]`, `ds[i]` keeps a window axis of 1), `jax.vmap` over
    its arrays, save it with `save_dataset`. When `normalisation` is set, `truth` and
    `obs` are in normalised units ($z = (x - \mu)/\sigma$) and `noise_std` is in those
    units; `original_truth()` maps back.

    **Fields:** `truth`; `obs` (`Observations` of shape `(N, T, *state)`); `model` (the
    dynamics that generated the truth, or None); `dt` (time between states);
    `normalisation` (or None); metadata: `name` (preset name or ""), `split` ("train",
    "test" or ""), `noise_std`, `process_noise_std`, `seed` (int or None).
    """

    truth: Float[Array, " N T *state"]
    obs: Observations
    model: AbstractDynamics | None
    dt: float = eqx.field(static=True)
    normalisation: Normalisation | None = None
    name: str = eqx.field(static=True, default="")
    split: str = eqx.field(static=True, default="")
    noise_std: float = eqx.field(static=True, default=0.0)
    process_noise_std: float = eqx.field(static=True, default=0.0)
    seed: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if jnp.ndim(self.truth) < 3:
            raise ValueError(
                f"`truth` must have shape (N, T, *state); got {jnp.shape(self.truth)}."
            )
        shape = jnp.shape(self.truth)
        Observations.check(
            self.obs, shape[2:], n_times=shape[1], batched=True, name="obs"
        )
        if self.obs.shape != shape:
            raise ValueError(
                f"`obs` must have the shape of `truth` {jnp.shape(self.truth)}; got "
                f"{self.obs.shape}."
            )
        if self.model is not None and not isinstance(self.model, AbstractDynamics):
            raise TypeError(
                "`model` must be a jaxda.models.AbstractDynamics or None; got "
                f"{type(self.model).__name__}."
            )
        check_positive("dt", self.dt)

    @property
    def n_windows(self) -> int:
        """N."""
        return self.truth.shape[0]

    @property
    def n_times(self) -> int:
        """T, the number of states per window."""
        return self.truth.shape[1]

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state."""
        return tuple(self.truth.shape[2:])

    @property
    def time(self) -> Float[Array, " T"]:
        """Times of the states of a window, $t_k = k\\,dt$."""
        return self.dt * jnp.arange(self.n_times, dtype=self.truth.dtype)

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, index) -> "Dataset":
        """Select windows (an int keeps a window axis of length 1)."""
        index = window_index(index)
        return eqx.tree_at(
            lambda d: (d.truth, d.obs), self, (self.truth[index], self.obs[index])
        )

    def original_truth(self) -> Float[Array, " N T *state"]:
        """The truth in original units (undoes `normalisation` when set)."""
        if self.normalisation is None:
            return self.truth
        return self.normalisation.invert(self.truth)


# ------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------


def _key_and_seed(key) -> tuple[Key, int | None]:
    """`(key, seed)` from a PRNG key (`seed=None`) or an int seed; `TypeError` else."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key)), int(key)
    check_key("key", key, int_seed=True)
    return key, None


def _raise_if_simulation_failed(results: RESULTS) -> None:
    """Raise `RuntimeError` if any window's simulation result is not successful."""
    codes = np.asarray(results._value)
    failed = np.flatnonzero(codes != np.asarray(RESULTS.successful._value))
    if failed.size:
        first = int(failed[0])
        message = RESULTS[jax.tree.map(lambda v: v[first], results)]
        shown = failed[:10].tolist()
        raise RuntimeError(
            f"jaxda.data.make_dataset: the simulation of {failed.size} of "
            f"{codes.size} windows failed (windows {shown}"
            f"{', ...' if failed.size > 10 else ''}); window {first}: {message} "
            "Reduce `dt`, change `solver`, or check the model and initial states."
        )


def _simulate(model, x0, key, *, dt, n_steps, burn_in_steps, process_noise_std, solver):
    from ..models import simulate

    return simulate(
        model,
        x0,
        dt=dt,
        n_steps=n_steps,
        key=key,
        process_noise_std=process_noise_std,
        burn_in_steps=burn_in_steps,
        solver=solver,
        throw=False,
    )


@eqx.filter_jit
def _generate(
    key,
    model,
    initial_state,
    pattern,
    *,
    n_windows,
    n_times,
    dt,
    burn_in_steps,
    process_noise_std,
    solver,
    dtype,
):
    """Initial states, truth, masks and simulation results of all windows (the
    expensive, compiled part)."""
    state_shape = model.state_shape
    k_x0, k_sim, k_mask = jax.random.split(key, 3)

    if callable(initial_state):
        x0 = jax.vmap(lambda k: initial_state(k, state_shape, dtype))(
            jax.random.split(k_x0, n_windows)
        )
    else:
        x0 = jnp.broadcast_to(
            jnp.asarray(initial_state, dtype), (n_windows,) + state_shape
        )

    def sim(x0, k):
        return _simulate(
            model,
            x0,
            k,
            dt=dt,
            n_steps=n_times - 1,
            burn_in_steps=burn_in_steps,
            process_noise_std=process_noise_std,
            solver=solver,
        )

    sims = jax.vmap(sim)(x0, jax.random.split(k_sim, n_windows))
    truth = sims.ys.astype(dtype)

    if callable(pattern):
        mask = jax.vmap(lambda k: pattern(k, n_times, state_shape))(
            jax.random.split(k_mask, n_windows)
        )
    else:
        mask = jnp.broadcast_to(
            jnp.asarray(pattern), (n_windows, n_times) + state_shape
        )

    return truth, mask, sims.result


@eqx.filter_jit
def _observe_all(key, truth, mask, std, stats):
    """Normalise (when `stats` is given) and observe every window with noise `std`."""
    if stats is not None:
        truth = stats.apply(truth)
    keys = jax.random.split(key, truth.shape[0])
    obs = jax.vmap(lambda k, x, m: observe(k, x, m, noise_std=std))(keys, truth, mask)
    return truth, obs


def _noise_std(noise_std, noise_var) -> float:
    """The observation noise std from exactly one of `noise_std` and `noise_var`."""
    if (noise_std is None) == (noise_var is None):
        raise ValueError(
            "Give exactly one of `noise_std` and `noise_var`; got "
            f"noise_std={noise_std!r}, noise_var={noise_var!r}."
        )
    if noise_std is not None:
        check_positive("noise_std", noise_std, allow_zero=True)
        return float(noise_std)
    check_positive("noise_var", noise_var, allow_zero=True)
    return float(np.sqrt(noise_var))


def _check_fixed_inputs(initial_state, pattern, n_windows, n_times, state_shape):
    """Shape, dtype and value checks of an array `initial_state` / mask `pattern`."""
    if not callable(initial_state):
        x0 = jnp.asarray(initial_state)
        if x0.shape not in (state_shape, (n_windows,) + state_shape):
            raise ValueError(
                f"`initial_state` must be a sampler, a state of shape {state_shape} or "
                f"states of shape {(n_windows,) + state_shape}; got shape {x0.shape}."
            )
        check_finite("initial_state", x0)
    if not callable(pattern):
        m = jnp.asarray(pattern)
        if m.dtype != jnp.bool_:
            raise TypeError(f"`pattern` mask must be boolean; got dtype {m.dtype}.")
        full_shape = (n_times,) + state_shape
        if m.shape not in (full_shape, (n_windows,) + full_shape):
            raise ValueError(
                f"`pattern` must be a pattern callable or a mask of shape {full_shape} "
                f"or {(n_windows,) + full_shape}; got shape {m.shape}."
            )


def make_dataset(
    key: Key | int,
    model: AbstractDynamics,
    *,
    n_windows: int,
    n_times: int,
    dt: float,
    initial_state: Callable
    | Float[ArrayLike, "*state"]
    | Float[ArrayLike, " N *state"],
    pattern: Callable | Bool[ArrayLike, " T *state"] | Bool[ArrayLike, " N T *state"],
    noise_std: float | None = None,
    noise_var: float | None = None,
    burn_in_steps: int = 0,
    process_noise_std: float = 0.0,
    solver: str = "tsit5",
    normalise: bool | Normalisation = False,
    dtype=None,
    name: str = "",
    split: str = "",
) -> Dataset:
    r"""Generate `n_windows` twin-experiment windows in one seeded, vmapped, jitted
    call.

    For each window $i$: $x_0^{(i)}$ from `initial_state`; the truth
    $x^{(i)} = (x_0, \dots, x_{T-1})$ from `jaxda.models.simulate(model, x_0, dt=dt,
    n_steps=T-1, burn_in_steps, process_noise_std, solver)`; optionally normalised
    per component; a mask $m^{(i)}$ from `pattern`; observations
    $y^{(i)} = m^{(i)} \odot (x^{(i)} + \sigma\varepsilon)$.

    The same key gives the same dataset; windows use independent sub-keys.

    **Arguments:**

    - `key`: a PRNG key, or an int seed (recorded in `Dataset.seed`).
    - `model`: the dynamics (`jaxda.models.AbstractDynamics`).
    - `n_windows` N >= 1; `n_times` T >= 2 states per window; `dt` > 0 between states.
    - `initial_state`: a sampler `f(key, state_shape, dtype) -> x0` (e.g.
      `GaussianInitialState`), one state (shared), or `(N, *state)` states.
    - `pattern`: an `jaxda.obs.AbstractPattern` or any `f(key, T, state_shape) -> mask`,
      or a fixed boolean mask `(T, *state)` / `(N, T, *state)`.
    - `noise_std` / `noise_var`: observation noise (exactly one, >= 0), in the units of
      the stored data (normalised units when normalising).
    - `burn_in_steps`, `process_noise_std`, `solver`: passed to `simulate`.
    - `normalise`: False; True to fit per-component statistics on this truth; or a
      `Normalisation` (e.g. the training set's) to apply.
    - `dtype`: floating dtype of the data (default: JAX's default float).
    - `name`, `split`: metadata.

    **Returns:** a `Dataset`.

    **Raises:** `RuntimeError` naming the failed windows and the `jaxda.RESULTS`
    message when the simulation of any window failed (e.g. a diverging
    trajectory): a dataset never holds a failed (NaN) truth.
    """
    key, seed = _key_and_seed(key)
    if not isinstance(model, AbstractDynamics):
        raise TypeError(
            "`model` must be a jaxda.models.AbstractDynamics; got "
            f"{type(model).__name__}."
        )
    n_windows = check_int("n_windows", n_windows, minimum=1)
    n_times = check_int("n_times", n_times, minimum=2)
    check_positive("dt", dt)
    burn_in_steps = check_int("burn_in_steps", burn_in_steps, minimum=0)
    check_positive("process_noise_std", process_noise_std, allow_zero=True)
    std = _noise_std(noise_std, noise_var)
    if not (isinstance(normalise, bool) or isinstance(normalise, Normalisation)):
        raise TypeError(
            "`normalise` must be a bool or a Normalisation; got "
            f"{type(normalise).__name__}."
        )
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    state_shape = model.state_shape

    _check_fixed_inputs(initial_state, pattern, n_windows, n_times, state_shape)

    k_gen, k_noise = jax.random.split(key)
    truth, mask, results = _generate(
        k_gen,
        model,
        initial_state,
        pattern,
        n_windows=n_windows,
        n_times=n_times,
        dt=float(dt),
        burn_in_steps=burn_in_steps,
        process_noise_std=float(process_noise_std),
        solver=solver,
        dtype=dtype,
    )
    _raise_if_simulation_failed(results)
    if normalise is True:
        stats = Normalisation.fit(truth, state_ndim=len(state_shape))
    else:
        stats = normalise if isinstance(normalise, Normalisation) else None
    truth, obs = _observe_all(k_noise, truth, mask, jnp.asarray(std, dtype), stats)
    return Dataset(
        truth,
        obs,
        model,
        float(dt),
        stats,
        name=name,
        split=split,
        noise_std=std,
        process_noise_std=float(process_noise_std),
        seed=seed,
    )
