r"""Banded Gaussian first guess: a band-precision (Gauss-Markov) fit of training
windows.

The first guess of [B24] is $z_0 = x_{\mathrm{MAP}}(y; \hat\mu, \hat P)$ with the
empirical mean and covariance of the training trajectories; the dense version is
`jaxda.data.gaussian_first_guess` ($O(d^3)$). Truncating $\hat P$ to a band is not sound
(a banded truncation of an SPD matrix need not be positive definite, and a banded
covariance cannot spread an observation beyond $b/n$ time steps). Here the banded
approximation is of the
**precision**: the Gaussian whose precision has bandwidth $b$ that best matches the
data, by a (reverse) modified Cholesky decomposition (Pourahmadi 1999; Bickel & Levina
2008, "banding the inverse"). Each entry of the flattened window is regressed on its $b$
successors,

$$x_i - \hat\mu_i = \sum_{k=1}^{b} a_{ik} (x_{i+k} - \hat\mu_{i+k}) + e_i,\qquad
  \operatorname{Var} e_i = D_i,$$

so that $(I - A)(x - \hat\mu) = e$ with $A$ strictly upper triangular of bandwidth $b$,
and $Q = (I - A)^\top D^{-1} (I - A) = L L^\top$ with $L_{i+k, i} = (\delta_{k0} -
a_{ik})/\sqrt{D_i}$. $Q$ is banded and symmetric positive definite by construction ($D_i
> 0$); it equals $\hat P^{-1}$ exactly when $\hat P^{-1}$ already has bandwidth $\le b$
(e.g. the prior of a linear-Gaussian model with $b \ge 2n - 1$). Only the band of $\hat
P$ is needed: $O(N d b)$ to estimate, $O(d b^3)$ to factor, $O(d b^2)$ per MAP.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import gaussian
from .._custom_types import Array, Float, ScalarLike
from .._validation import check_int, check_positive
from ..linalg import SymmetricBandMatrix
from ..linalg._band_kernels import lower_band_gram
from ..obs import Observations


def covariance_band(
    truth: Float[Array, "N T *state"], bandwidth: int
) -> tuple[Float[Array, "T *state"], Float[Array, "b1 d"]]:
    r"""Empirical mean and the band of the empirical covariance of flattened windows.

    $\hat\mu = \frac1N\sum_j x^{(j)}$, `band[k, i]` $= \frac1N \sum_j (x^{(j)}_{i+k} -
    \hat\mu_{i+k})(x^{(j)}_i - \hat\mu_i)$ for $i + k < d$ (zero otherwise), C order.

    **Returns:** `(mean, band)` with `mean` of shape `(T, *state)`, `band` `(b + 1, d)`.
    """
    x = jnp.asarray(truth)
    if x.ndim < 3:
        raise ValueError(f"`truth` must have shape (N, T, *state); got {x.shape}.")
    bandwidth = check_int("bandwidth", bandwidth, minimum=0)
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    if bandwidth >= d:
        raise ValueError(f"`bandwidth` must be < d = {d}; got {bandwidth}.")
    mu = jnp.mean(flat, axis=0)
    c = flat - mu
    cp = jnp.pad(c, ((0, 0), (0, bandwidth)))
    band = jnp.stack(
        [jnp.mean(c * cp[:, k : k + d], axis=0) for k in range(bandwidth + 1)]
    )
    return mu.reshape(x.shape[1:]), band


def _precision_factor(cov_band, ridge):
    """Band storage of L (reverse modified Cholesky), see the module docstring."""
    b1, d = cov_band.shape
    b = b1 - 1
    # Covariance band extended to d + b entries: padded ones independent, variance 1.
    ext = jnp.pad(cov_band, ((0, 0), (0, b)))
    ext = ext.at[0, d:].set(1.0)
    p = jnp.arange(b1)
    lag = jnp.abs(p[:, None] - p[None, :])
    first = jnp.minimum(p[:, None], p[None, :])

    def one(i):
        s = ext[lag, i + first]  # (b+1, b+1) covariance of x_i, ..., x_{i+b}
        s_rr = s[1:, 1:] + ridge * jnp.diag(jnp.diagonal(s)[1:])
        c_r = s[1:, 0]
        a = jnp.linalg.solve(s_rr, c_r) if b else jnp.zeros((0,), s.dtype)
        var = s[0, 0] - c_r @ a if b else s[0, 0]
        var = jnp.maximum(var, 1e-6 * s[0, 0])
        valid = (i + p[1:]) < d
        a = jnp.where(valid, a, 0)
        return jnp.concatenate([jnp.ones((1,), s.dtype), -a]) / jnp.sqrt(var)

    return jax.vmap(one)(jnp.arange(d)).T  # (b+1, d)


class BandedGaussian(eqx.Module):
    r"""A Gaussian $\mathcal N(\mu, Q^{-1})$ with a banded precision $Q$, fitted to
    windows.

    Build it with `BandedGaussian.fit(truth, bandwidth)` (from training
    trajectories) or `BandedGaussian.from_covariance(mean, cov_band)`; `map(obs,
    obs_var)` is the first guess $z_0 = x_{\mathrm{MAP}}(y; \mu, Q^{-1})$, solved in
    $O(d b^2)$ by `jaxda.gaussian.map_precision`. See the module docstring for the
    estimator.

    **Fields:** `mean` `(T, *state)`; `precision_band` `(b + 1, d)` (`[k, i]` $= Q_{i+k,
    i}$).
    """

    mean: Float[Array, "T *state"]
    precision_band: Float[Array, "b1 d"]

    @classmethod
    def from_covariance(
        cls,
        mean: Float[Array, "T *state"],
        cov_band: Float[Array, "b1 d"],
        *,
        ridge: float = 1e-6,
    ) -> "BandedGaussian":
        r"""Band-precision Gaussian matching the covariance band `cov_band` (see
        module).

        `ridge` adds $\lambda \operatorname{diag}$ to each local regression (a relative
        Tikhonov term for nearly collinear windows).
        """
        mean = jnp.asarray(mean)
        cov_band = jnp.asarray(cov_band, mean.dtype)
        if cov_band.ndim != 2 or cov_band.shape[1] != mean.size:
            raise ValueError(
                f"`cov_band` must have shape (b + 1, {mean.size}) for `mean` of shape "
                f"{mean.shape}; got {cov_band.shape}."
            )
        check_positive("ridge", ridge, allow_zero=True)
        factor = _precision_factor(cov_band, ridge)
        return cls(mean, lower_band_gram(factor))

    @classmethod
    def fit(
        cls, truth: Float[Array, "N T *state"], bandwidth: int, *, ridge: float = 1e-6
    ) -> "BandedGaussian":
        """Fit to training windows `(N, T, *state)` (mean and covariance band, then the
        band-precision estimate of `from_covariance`)."""
        mean, band = covariance_band(truth, bandwidth)
        return cls.from_covariance(mean, band, ridge=ridge)

    @property
    def bandwidth(self) -> int:
        """$b$."""
        return self.precision_band.shape[0] - 1

    def map(
        self, obs: Observations, obs_var: ScalarLike | Float[Array, "T *state"]
    ) -> Float[Array, "T *state"]:
        r"""$x_{\mathrm{MAP}} = (Q + H^\top R^{-1} H)^{-1}(Q\mu + H^\top R^{-1} y)$ for
        one window."""
        if not isinstance(obs, Observations):
            raise TypeError(
                f"`obs` must be jaxda.obs.Observations; got {type(obs).__name__}."
            )
        if obs.shape != self.mean.shape:
            raise ValueError(
                f"`obs` must have shape {self.mean.shape}; got {obs.shape}."
            )
        check_positive("obs_var", obs_var)
        out = gaussian.map_precision(
            self.mean.astype(obs.dtype),
            SymmetricBandMatrix(self.precision_band.astype(obs.dtype)),
            obs.values,
            obs.mask,
            obs_var,
        )
        return out.mean.reshape(self.mean.shape)

    def __call__(self, obs, obs_var):
        """Alias of `map`."""
        return self.map(obs, obs_var)
