r"""The observation pytree `Observations(values, mask)` and the noise of `observe`."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Bool, Float, Int, Key
from .._validation import check_positive, is_concrete


# ------------------------------------------------------------------------------
# The observation pytree
# ------------------------------------------------------------------------------


class Observations(eqx.Module):
    r"""Observations of a trajectory: zero-filled `values` and a boolean `mask`.

    Both have the shape of the trajectory, `(T, *state)` for one window or
    `(N, T, *state)` for a batch: the mask selects the observed entries of the state
    (an `IdentityOperator`). With an observation operator $h_t$ (`operator=` of the
    costs and Gaussian MAPs) they live in observation space instead, shape
    `(T, *operator.obs_shape)`, and `mask` says which entries of $y_t$ are available
    at each time. The constructor zero-fills `values` where `mask` is `False`, so
    $y = m \odot y$ always holds.

    **Arguments:**

    - `values`: floating array of observed values (anything where `mask` is `False`).
    - `mask`: boolean array of the same shape, `True` where observed.
    """

    values: Float[Array, " T *state"]
    mask: Bool[Array, " T *state"]

    def __init__(
        self, values: Float[ArrayLike, " T *state"], mask: Bool[ArrayLike, " T *state"]
    ):
        values = jnp.asarray(values)
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(
                f"`mask` must be a boolean array; got dtype {mask.dtype}. "
                "Use `mask != 0` to convert."
            )
        if not jnp.issubdtype(values.dtype, jnp.floating):
            raise TypeError(
                f"`values` must be a floating array; got dtype {values.dtype}."
            )
        if values.shape != mask.shape:
            raise ValueError(
                "`values` and `mask` must have the same shape; got "
                f"{values.shape} and {mask.shape}."
            )
        if is_concrete(values) and is_concrete(mask):
            v, m = np.asarray(values), np.asarray(mask)
            bad = m & ~np.isfinite(v)
            if bad.any():
                raise ValueError(
                    "`values` must be finite where `mask` is True; got "
                    f"{int(bad.sum())} "
                    "non-finite observed entries (use `Observations.from_nan` for "
                    "NaN-coded "
                    "missing values)."
                )
        self.values = jnp.where(mask, values, jnp.zeros((), values.dtype))
        self.mask = mask

    @classmethod
    def from_nan(cls, y: Float[ArrayLike, " T *state"]) -> "Observations":
        """Build from an array with NaN where nothing is observed.

        **Returns:** `Observations(values=nan_to_zero(y), mask=~isnan(y))`. Infinite
        entries are rejected (`ValueError`).
        """
        y = jnp.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.floating):
            raise TypeError(f"`y` must be a floating array; got dtype {y.dtype}.")
        mask = ~jnp.isnan(y)
        if is_concrete(y) and np.isinf(np.asarray(y)).any():
            raise ValueError(
                "`y` must hold finite values or NaN; got infinite entries."
            )
        return cls(jnp.where(mask, y, jnp.zeros((), y.dtype)), mask)

    def to_nan(self) -> Float[Array, " T *state"]:
        """The values with NaN where nothing is observed (the inverse of `from_nan`)."""
        return jnp.where(self.mask, self.values, jnp.array(jnp.nan, self.values.dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of `values` and `mask`."""
        return self.values.shape

    @property
    def dtype(self):
        """Floating dtype of `values`."""
        return self.values.dtype

    @property
    def n_observed(self) -> Int[Array, ""]:
        """Number of observed entries, $\\sum m$ (over every axis)."""
        return jnp.sum(self.mask)

    def __getitem__(self, index) -> "Observations":
        """Index the leading axes of `values` and `mask` (e.g. one window of a batch)"""
        return Observations(self.values[index], self.mask[index])

    def astype(self, dtype) -> "Observations":
        """The same observations with `values` cast to `dtype`."""
        return Observations(self.values.astype(dtype), self.mask)

    @classmethod
    def check(
        cls,
        obs,
        state_shape: Sequence[int] | None = None,
        *,
        n_times: int | None = None,
        batched: bool = False,
        name: str = "obs",
    ) -> "Observations":
        """Validate an argument that must be observations of windows of `state_shape`.

        The one observation validator of the library: every public entry point that
        takes observations calls it at its boundary.

        **Arguments:**

        - `obs`: the argument to check; must be an `Observations`.
        - `state_shape`: the shape of one state (`None`: any).
        - `n_times`: the required window length (`None`: any length >= 1).
        - `batched`: whether a leading batch axis `(N, T, *state)` is expected.
        - `name`: the argument's name, for the error messages.

        **Returns:** `obs`, unchanged.

        **Raises:** `TypeError` when `obs` is not `Observations`; `ValueError` when
        its shape does not match. (Non-finite observed values are refused by the
        `Observations` constructor on concrete arrays; under `jit` they surface as
        `RESULTS.nonfinite_input` / `RESULTS.invalid_input` in the caller's result.)
        """
        if not isinstance(obs, Observations):
            raise TypeError(
                f"`{name}` must be jaxda.obs.Observations(values, mask); got "
                f"{type(obs).__name__}."
            )
        shape = tuple(obs.values.shape)
        lead = 2 if batched else 1
        window = "(N, T, *state)" if batched else "(T, *state)"
        if state_shape is not None:
            state_shape = tuple(int(s) for s in state_shape)
            want_rank = lead + len(state_shape)
            if len(shape) != want_rank or shape[lead:] != state_shape:
                want = ("N, " if batched else "") + ", ".join(
                    ["T", *map(str, state_shape)]
                )
                raise ValueError(
                    f"`{name}` must have shape ({want}) to match the state shape "
                    f"{state_shape}; got {shape}."
                )
        elif len(shape) < lead + 1:
            raise ValueError(f"`{name}` must have shape {window}; got {shape}.")
        t = shape[lead - 1]
        if t < 1:
            raise ValueError(f"`{name}` must have at least one time step; got {shape}.")
        if n_times is not None and t != n_times:
            raise ValueError(
                f"`{name}` must have {n_times} time steps (shape {window} with "
                f"T = {n_times}); got {shape}."
            )
        return obs


# ------------------------------------------------------------------------------
# Noise
# ------------------------------------------------------------------------------


def observe(
    key: Key,
    truth: Float[Array, " T *state"],
    mask: Bool[ArrayLike, " T *state"],
    *,
    noise_std: float | Float[ArrayLike, "..."] | None = None,
    noise_var: float | Float[ArrayLike, "..."] | None = None,
) -> Observations:
    r"""Noisy observations of `truth` where `mask` is set: $y = m \odot (x + \sigma
    \varepsilon)$.

    $\varepsilon \sim \mathcal N(0, I)$ in the dtype of `truth`; $\sigma$ is `noise_std`
    or $\sqrt{\texttt{noise\_var}}$ (exactly one of the two, >= 0; a scalar or an array
    broadcastable to `truth`, e.g. one value per component).

    **Returns:** `Observations(values, mask)`.
    """
    if (noise_std is None) == (noise_var is None):
        raise ValueError(
            "Give exactly one of `noise_std` and `noise_var`; got "
            f"noise_std={noise_std!r}, noise_var={noise_var!r}."
        )
    if noise_std is not None:
        check_positive("noise_std", noise_std, allow_zero=True)
        std = noise_std
    else:
        check_positive("noise_var", noise_var, allow_zero=True)
        std = jnp.sqrt(jnp.asarray(noise_var))
    truth = jnp.asarray(truth)
    if not jnp.issubdtype(truth.dtype, jnp.floating):
        raise TypeError(
            f"`truth` must be a floating array; got dtype {truth.dtype} (use "
            "`truth.astype(float)`)."
        )
    mask = jnp.asarray(mask)
    if mask.shape != truth.shape:
        raise ValueError(
            f"`mask` must have the shape of `truth` {truth.shape}; got {mask.shape}."
        )
    std = jnp.asarray(std, truth.dtype)
    try:
        jnp.broadcast_shapes(std.shape, truth.shape)
    except ValueError:
        raise ValueError(
            f"`noise_std`/`noise_var` must broadcast to {truth.shape}; got shape "
            f"{std.shape}."
        ) from None
    eps = jax.random.normal(key, truth.shape, truth.dtype)
    return Observations(truth + std * eps, mask)
