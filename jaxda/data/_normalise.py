r"""Per-component normalisation: $z = (x - \mu) / \sigma$, statistics fitted on training
data."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from .._validation import check_int, check_positive, is_concrete
from ..obs import Observations


class Normalisation(eqx.Module):
    r"""Affine normalisation of each state component: $z = (x - \mu)/\sigma$.

    `mean` and `std` have the state shape and broadcast against the trailing axes of the
    data, so `apply` works on one state, one window `(T, *state)` or a batch
    `(N, T, *state)`. Fit them with `Normalisation.fit` on a training set ([B24]
    normalises each Lorenz-63 component to zero mean and unit variance).

    **Arguments:** `mean`, `std` (> 0), arrays of the state shape.
    """

    mean: Float[Array, "*state"]
    std: Float[Array, "*state"]

    def __check_init__(self):
        if jnp.shape(self.mean) != jnp.shape(self.std):
            raise ValueError(
                "`mean` and `std` must have the same shape; got "
                f"{jnp.shape(self.mean)} and {jnp.shape(self.std)}."
            )
        check_positive("std", self.std)

    @classmethod
    def fit(
        cls, x: Float[ArrayLike, "*batch state"], state_ndim: int = 1
    ) -> "Normalisation":
        r"""Mean and standard deviation of each component over every leading axis.

        $\mu_i = \mathrm{mean}(x_{\dots, i})$, $\sigma_i = \mathrm{std}(x_{\dots, i})$
        (the population standard deviation), pooling samples and times. `state_ndim` is
        the number of trailing state axes (1 for a vector state).
        """
        state_ndim = check_int("state_ndim", state_ndim, minimum=0)
        x = jnp.asarray(x)
        if x.ndim <= state_ndim:
            raise ValueError(
                f"`x` needs a leading axis before its {state_ndim} state axes; "
                f"got shape {x.shape}."
            )
        axes = tuple(range(x.ndim - state_ndim))
        mean = jnp.mean(x, axis=axes)
        std = jnp.std(x, axis=axes)
        if is_concrete(std) and np.any(np.asarray(std) <= 0):
            raise ValueError(
                "`x` has a constant component: its standard deviation is 0."
            )
        return cls(mean, std)

    @classmethod
    def identity(cls, state_shape: tuple[int, ...], dtype=float) -> "Normalisation":
        """$\\mu = 0$, $\\sigma = 1$."""
        return cls(jnp.zeros(state_shape, dtype), jnp.ones(state_shape, dtype))

    def apply(
        self, x: Float[ArrayLike, "*batch state"]
    ) -> Float[Array, "*batch state"]:
        r"""$(x - \mu)/\sigma$."""
        x = jnp.asarray(x)
        return (x - self.mean.astype(x.dtype)) / self.std.astype(x.dtype)

    def invert(
        self, z: Float[ArrayLike, "*batch state"]
    ) -> Float[Array, "*batch state"]:
        r"""$\mu + \sigma z$."""
        z = jnp.asarray(z)
        return z * self.std.astype(z.dtype) + self.mean.astype(z.dtype)

    def apply_obs(self, obs: Observations) -> Observations:
        """Normalise observed values, keeping the mask (missing entries stay 0)."""
        return Observations(self.apply(obs.values), obs.mask)

    def invert_obs(self, obs: Observations) -> Observations:
        """Back to original units for observed values, keeping the mask."""
        return Observations(self.invert(obs.values), obs.mask)

    def scale_std(self, std: Float[ArrayLike, "..."]) -> Float[Array, "*state"]:
        """A noise standard deviation in original units, in normalised units."""
        return jnp.asarray(std) / self.std
