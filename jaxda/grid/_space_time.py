r"""Separable space-time covariances: the operator `SpaceTimeCovariance`
($B = C_t \otimes B_s$ on `(T, *space)` fields) and the covariance function
`SpaceTimeKernel` of points $(t, y, x)$ (for observation-space OI).

The time correlation is Gaussian, $c_t(\Delta t) = e^{-\Delta t^2/(2\tau^2)}$, or
exponential, $e^{-|\Delta t|/\tau}$ (`time_correlation`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Float
from .._validation import check_choice, check_finite, check_positive
from ._covariance import AbstractCovariance, _float_array, _scale_pair


TIME_KERNELS = ("gaussian", "exponential")


def time_correlation(dt, time_scale, kind: str):
    r"""$c_t(\Delta t)$: $e^{-\Delta t^2/(2\tau^2)}$ (`"gaussian"`) or
    $e^{-|\Delta t|/\tau}$ (`"exponential"`)."""
    if kind == "gaussian":
        return jnp.exp(-0.5 * (dt / time_scale) ** 2)
    return jnp.exp(-jnp.abs(dt) / time_scale)


def _times(times) -> Array:
    t = _float_array("times", times)
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(f"`times` must have shape (T,) with T >= 1; got {t.shape}.")
    check_finite("times", t)
    return t


class SpaceTimeCovariance(AbstractCovariance):
    r"""A separable space-time covariance $B = C_t \otimes B_s$ on `(T, *space)`.

    $\mathrm{Cov}(x_a, x_b) = c_t(t_a - t_b)\, B_s$ with $c_t$ Gaussian
    $e^{-\Delta t^2/(2\tau^2)}$ or exponential $e^{-|\Delta t|/\tau}$ at the times
    `times`, $B_s$ any spatial `AbstractCovariance`. $U = S \otimes U_s$ with $S$
    the symmetric square root of the $T \times T$ matrix $C_t$ (eigenvalues below
    zero, rounding, set to zero), applied matrix-free: $U w$ = $U_s$ on every time,
    then $S$ across times. `variance` is $B_s$'s at every time.

    **Arguments:**

    - `space`: the spatial covariance (fields `space.field_shape`).
    - `times`: the $T$ times, shape `(T,)` (finite).
    - `time_scale`: $\tau > 0$.
    - `time_kernel`: `"gaussian"` (default) or `"exponential"`.
    """

    space: AbstractCovariance
    times: Float[Array, " T"]
    time_scale: Float[Array, ""]
    time_sqrt: Float[Array, "T T"]
    time_kernel: str = eqx.field(static=True)
    field_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        space: AbstractCovariance,
        times: Float[ArrayLike, " T"],
        time_scale: float | Float[ArrayLike, ""],
        *,
        time_kernel: str = "gaussian",
    ):
        if not isinstance(space, AbstractCovariance):
            raise TypeError(
                f"`space` must be an AbstractCovariance; got {type(space).__name__}."
            )
        check_choice("time_kernel", time_kernel, TIME_KERNELS)
        self.space = space
        self.times = _times(times)
        tau = _float_array("time_scale", time_scale)
        if tau.shape != ():
            raise ValueError(f"`time_scale` must be a scalar; got shape {tau.shape}.")
        check_positive("time_scale", tau)
        self.time_scale = tau
        self.time_kernel = time_kernel
        self.field_shape = (self.times.shape[0], *space.field_shape)
        dt = self.times[:, None] - self.times[None, :]
        ct = time_correlation(dt, tau, time_kernel)
        lam, vec = jnp.linalg.eigh(ct)
        self.time_sqrt = (vec * jnp.sqrt(jnp.clip(lam, 0.0))) @ vec.T

    def sqrt(self, w):
        u = jax.vmap(self.space.sqrt)(w)
        return jnp.tensordot(self.time_sqrt.astype(u.dtype), u, axes=1)

    def sqrt_transpose(self, v):
        u = jax.vmap(self.space.sqrt_transpose)(v)
        return jnp.tensordot(self.time_sqrt.T.astype(u.dtype), u, axes=1)

    def apply(self, v):
        r"""$B v = (S S^\top \otimes B_s) v$: `space.apply` at every time, then the
        time correlation."""
        u = jax.vmap(self.space.apply)(v)
        ct = self.time_sqrt @ self.time_sqrt.T  # C_t, to rounding
        return jnp.tensordot(ct.astype(u.dtype), u, axes=1)

    @property
    def variance(self):
        return jnp.broadcast_to(self.space.variance, self.field_shape)


class SpaceTimeKernel(eqx.Module):
    r"""A separable space-time covariance *function* of points $p = (t, y, x)$:

    $$k(p, p') = \sigma^2 \exp\!\Big(-\frac{(y - y')^2}{2\ell_y^2}
    - \frac{(x - x')^2}{2\ell_x^2}\Big)\, c_t(t - t'),$$

    $c_t$ Gaussian or exponential in time (as `SpaceTimeCovariance`), distances
    Euclidean (no periodic wrap). The product of three one-dimensional factors, which
    is what lets observation-space OI evaluate the analysis at $d$ grid points as
    matrix products without a $d \times m$ matrix
    (`jaxda.gaussian.map_kernel`).

    **Arguments:** `variance` ($\sigma^2 > 0$, scalar), `length_scale` ($\ell > 0$,
    a scalar or $(\ell_y, \ell_x)$), `time_scale` ($\tau > 0$), `time_kernel`
    (`"gaussian"` default, or `"exponential"`).
    """

    variance: Float[Array, ""]
    length_scale: Float[Array, "2"]
    time_scale: Float[Array, ""]
    time_kernel: str = eqx.field(static=True)

    def __init__(
        self,
        variance: float | Float[ArrayLike, ""],
        length_scale: float | Float[ArrayLike, " ..."],
        time_scale: float | Float[ArrayLike, ""],
        *,
        time_kernel: str = "gaussian",
    ):
        check_choice("time_kernel", time_kernel, TIME_KERNELS)
        for name, value in (("variance", variance), ("time_scale", time_scale)):
            arr = _float_array(name, value)
            if arr.shape != ():
                raise ValueError(f"`{name}` must be a scalar; got shape {arr.shape}.")
            check_positive(name, arr)
        self.variance = _float_array("variance", variance)
        self.time_scale = _float_array("time_scale", time_scale)
        self.length_scale = _scale_pair(
            "length_scale", length_scale, (1, 1), field=False
        )
        self.time_kernel = time_kernel

    def axis_factors(
        self,
        t: Float[Array, " T"],
        y: Float[Array, " ny"],
        x: Float[Array, " nx"],
        points: Float[Array, "m 3"],
    ) -> tuple[Float[Array, "T m"], Float[Array, "ny m"], Float[Array, "nx m"]]:
        r"""The one-dimensional factors between the coordinates of a grid (times `t`,
        rows `y`, columns `x`) and the points $(t_o, y_o, x_o)$: $c_t(t_a - t_o)$,
        $e^{-(y_j - y_o)^2/(2\ell_y^2)}$, $e^{-(x_i - x_o)^2/(2\ell_x^2)}$, so that
        $k((t_a, y_j, x_i), p_o) = \sigma^2 c_t[a, o]\, c_y[j, o]\, c_x[i, o]$."""
        ct = time_correlation(
            t[:, None] - points[None, :, 0], self.time_scale, self.time_kernel
        )
        cy = jnp.exp(
            -0.5 * ((y[:, None] - points[None, :, 1]) / self.length_scale[0]) ** 2
        )
        cx = jnp.exp(
            -0.5 * ((x[:, None] - points[None, :, 2]) / self.length_scale[1]) ** 2
        )
        return ct, cy, cx

    def __call__(
        self, a: Float[Array, "na 3"], b: Float[Array, "nb 3"]
    ) -> Float[Array, "na nb"]:
        r"""The cross-covariance matrix $k(a_i, b_j)$, `(na, nb)`."""
        a, b = jnp.asarray(a), jnp.asarray(b)
        d = a[:, None, :] - b[None, :, :]
        q = (d[..., 1] / self.length_scale[0]) ** 2 + (
            d[..., 2] / self.length_scale[1]
        ) ** 2
        ct = time_correlation(d[..., 0], self.time_scale, self.time_kernel)
        return self.variance * jnp.exp(-0.5 * q) * ct
