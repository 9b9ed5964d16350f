r"""Priors $\Phi$ of 4DVarNet [F21, section 3]: trajectory -> trajectory maps.

A prior maps a window $x$ `(T, *state)` to a window of the same shape, and enters the
variational cost through $\|x - \Phi(x)\|^2$. Three families:

- `ODEPrior`: one step of a flow map of a (learnable) `jaxda.models` system, as a
  one-step-ahead prediction: $\Phi(x)_0 = x_0$, $\Phi(x)_t = \phi(x_{t-1})$ (eqs. 7-8).
- `GENN`: the two-scale constrained CNN of eq. 10,
  $\Phi(x) = \mathrm{Up}(\Phi_1(\mathrm{Dw}(x))) + \Phi_2(x)$.
- `UNetPrior`: a small 2-d UNet for gridded fields `(T, H, W)` (time as channels).

Any `equinox.Module` (or `jaxda.nn.FlaxModule`) with the same call signature works too.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key
from .._validation import check_int
from ..data import Normalisation
from ..models import AbstractDynamics, AbstractFlowMap, flow_map
from ..nn._conv import (
    Conv,
    Upsample2x,
    UpsampleTime,
    avg_pool_time,
    check_layout,
    conv_shape,
    from_conv,
    to_conv,
)


def _check_window(name: str, x, state_shape: tuple[int, ...], who: str) -> None:
    shape = tuple(jnp.shape(x))
    if len(shape) != 1 + len(state_shape) or shape[1:] != tuple(state_shape):
        raise ValueError(
            f"`{name}` must have shape (T, {', '.join(map(str, state_shape))}) for "
            "this "
            f"{who}; got {shape}."
        )


def _learnable(model: AbstractDynamics, dtype) -> AbstractDynamics:
    """Python-float parameters of `model` -> arrays (so optimisers train them)."""
    dtype = jnp.zeros(()).dtype if dtype is None else dtype  # not weakly typed
    return jax.tree_util.tree_map(
        lambda v: jnp.asarray(v, dtype) if isinstance(v, float) else v, model
    )


class ODEPrior(eqx.Module):
    r"""One-step-ahead prediction by a flow map: $\Phi(x)_0 = x_0$, $\Phi(x)_t =
    \phi(x_{t-1})$.

    With $\phi$ an RK4 step of a `jaxda.models` system, $\|x - \Phi(x)\|^2 =
    \sum_{t \ge 1}\|x_t - \phi(x_{t-1})\|^2$ is the dynamical term of weak-constraint
    4DVar. Array-valued model parameters (e.g. `Lorenz63(sigma=jnp.array(10.))`, or
    `ODEPrior.from_model(..., learnable=True)`) are trained with the rest of 4DVarNet.

    If the network works in normalised units $z = (x - \mu)/\sigma$, pass the
    `normalisation`: then $\Phi(z)_t = (\phi(\mu + \sigma z_{t-1}) - \mu)/\sigma$ (its
    statistics are constants: gradients are stopped).

    **Arguments:** `flow` (a `jaxda.models.AbstractFlowMap`); `normalisation`
    (optional).
    """

    flow: AbstractFlowMap
    normalisation: Normalisation | None = None

    def __check_init__(self):
        if not isinstance(self.flow, AbstractFlowMap):
            raise TypeError(
                "`flow` must be a jaxda.models flow map; got "
                f"{type(self.flow).__name__}."
            )
        if self.normalisation is not None and not isinstance(
            self.normalisation, Normalisation
        ):
            raise TypeError(
                "`normalisation` must be a jaxda.data.Normalisation or None; got "
                f"{type(self.normalisation).__name__}."
            )

    @classmethod
    def from_model(
        cls,
        model: AbstractDynamics,
        dt: float,
        *,
        method: str = "rk4",
        substeps: int = 1,
        normalisation: Normalisation | None = None,
        learnable: bool = True,
        dtype=None,
    ) -> ODEPrior:
        """Build from a dynamical system; `learnable=True` turns float parameters into
        arrays of `dtype` (default: JAX's default float)."""
        if learnable:
            model = _learnable(model, dtype)
        return cls(flow_map(model, dt, method, substeps), normalisation)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.flow.model.state_shape)

    def __call__(self, x: Float[Array, "T *state"]) -> Float[Array, "T *state"]:
        _check_window("x", x, self.state_shape, "ODEPrior")
        norm = self.normalisation
        if norm is not None:
            norm = jax.lax.stop_gradient(norm)
            z = norm.invert(x[:-1])
        else:
            z = x[:-1]
        dt = jnp.asarray(self.flow.dt, x.dtype)
        times = dt * jnp.arange(z.shape[0], dtype=x.dtype)
        pred = jax.vmap(self.flow)(z, times).astype(x.dtype)
        if norm is not None:
            pred = norm.apply(pred)
        return jnp.concatenate([x[:1], pred], axis=0)


class _ConstrainedBilinear(eqx.Module):
    r"""$\Phi_i$ of eq. 10: constrained conv, then 1x1 bilinear layers.

    $h = W_1 \star x$ (centre tap zero), $h = W_2\,\mathrm{relu}(h)$,
    $h = [A h, (B h) \odot (C h)]$, output $W_3 h$ with `out_channels` channels (all
    $W_2, A, B, C, W_3$ are 1x1). `kw`: `dtype` and `method` of the convolutions.
    """

    conv_in: Conv
    conv_mid: Conv
    conv_a: Conv
    conv_b: Conv
    conv_c: Conv
    conv_out: Conv

    def __init__(
        self, channels, width, out_channels, kernel_size, n_spatial, periodic, key, **kw
    ):
        k = jax.random.split(key, 6)
        one = (1,) * n_spatial
        kw = dict(n_spatial=n_spatial, periodic=periodic, **kw)
        self.conv_in = Conv(
            channels, 2 * width, kernel_size, key=k[0], centre_zero=True, **kw
        )
        self.conv_mid = Conv(2 * width, width, one, key=k[1], **kw)
        self.conv_a = Conv(width, width, one, key=k[2], **kw)
        self.conv_b = Conv(width, width, one, key=k[3], **kw)
        self.conv_c = Conv(width, width, one, key=k[4], **kw)
        self.conv_out = Conv(2 * width, out_channels, one, key=k[5], **kw)

    def __call__(self, z):
        h = self.conv_mid(jax.nn.relu(self.conv_in(z)))
        # A, B, C (1x1, no bias) as one matrix product: one larger contraction is
        # faster than three small ones, and its derivatives too
        convs = (self.conv_a, self.conv_b, self.conv_c)
        w = jnp.concatenate([c.weight.reshape(c.weight.shape[:2]) for c in convs])
        abc = jnp.einsum("oi,i...->o...", w.astype(h.dtype), h)
        a, b, c = jnp.split(abc, 3, axis=0)
        return self.conv_out(jnp.concatenate([a, b * c], axis=0))


class GENN(eqx.Module):
    r"""Two-scale Gibbs-energy NN prior [F21, eq. 10]:
    $\Phi(x) = \mathrm{Up}(\Phi_1(\mathrm{Dw}(x))) + \Phi_2(x)$.

    $\mathrm{Dw}$ is an average pooling over time by `pool`, $\mathrm{Up}$ a transposed
    convolution over time (kernel = stride = `pool`), and $\Phi_{1,2}$ are constrained
    bilinear blocks: a first convolution whose **centre tap is zero in every forward
    pass** (so $\Phi_i(x)(s)$ does not depend on $x(s)$ and $\Phi$ cannot learn the
    identity), followed by 1x1 layers with a bilinear product $[A h, (B h)\odot(C h)]$.
    $\Phi_1$ has `coarse_channels` outputs, which $\mathrm{Up}$ maps to the state
    channels; $\Phi_2$ maps to the state channels directly.

    The authors' Lorenz-63 prior (their `flagAEType = 4`, "30 channels, about 15,000
    parameters") is `GENN((3,), width=30, kernel_size=11, pool=4, key=...)`: 15,300
    parameters. Their Lorenz-96 prior (about 50,000) has `width=50`, an 11x11 kernel
    and a pooling of 4 in time; `GENN((40,), layout="field", width=50,
    kernel_size=11, pool=4, periodic_space=True, key=...)` has 54,500 parameters in
    this structure (theirs sums both branches in 50 channels before a last 1x1
    convolution and leaves the centre tap free: 52,150).

    **Arguments:**

    - `state_shape`: shape of one state, e.g. `(3,)` (Lorenz-63) or `(40,)` (Lorenz-96).
    - `key`: initialisation key.
    - `layout`: `"channels"` (components as channels, convolution over time; default
      for vector states) or `"field"` (a one-channel image over (time, space)).
    - `width`: hidden channels $d$ of each block (the first conv has $2d$).
    - `kernel_size`: size of the constrained convolution (odd; int or tuple).
    - `pool`: time down-sampling factor of the coarse branch.
    - `coarse_channels`: output channels of $\Phi_1$ (default `width`, as the
      authors; the models saved by jaxda 0.2.0 have the state channels).
    - `periodic_space`: wrap-around padding along space (`"field"` layout; Lorenz-96).
    - `dtype`; `conv_method` (see `jaxda.nn.Conv`).
    """

    coarse: _ConstrainedBilinear
    fine: _ConstrainedBilinear
    up: UpsampleTime
    state_shape: tuple[int, ...] = eqx.field(static=True)
    layout: str = eqx.field(static=True)
    pool: int = eqx.field(static=True)

    def __init__(
        self,
        state_shape,
        *,
        key: Key,
        layout: str = "channels",
        width: int = 10,
        kernel_size=5,
        pool: int = 4,
        coarse_channels: int | None = None,
        periodic_space: bool = False,
        dtype=None,
        conv_method: str = "im2col",
    ):
        state_shape = (
            (state_shape,) if isinstance(state_shape, int) else tuple(state_shape)
        )
        check_layout(layout, len(state_shape))
        width = check_int("width", width, minimum=1)
        coarse_channels = (
            width
            if coarse_channels is None
            else check_int("coarse_channels", coarse_channels, minimum=1)
        )
        self.pool = check_int("pool", pool, minimum=1)
        channels, nd = conv_shape(state_shape, layout)
        periodic = (False,) + (bool(periodic_space),) * (nd - 1)
        k1, k2, k3 = jax.random.split(key, 3)
        kw = dict(dtype=dtype, method=conv_method)
        self.coarse = _ConstrainedBilinear(
            channels, width, coarse_channels, kernel_size, nd, periodic, k1, **kw
        )
        self.fine = _ConstrainedBilinear(
            channels, width, channels, kernel_size, nd, periodic, k2, **kw
        )
        self.up = UpsampleTime(
            coarse_channels, channels, self.pool, key=k3, dtype=dtype
        )
        self.state_shape = state_shape
        self.layout = layout

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable; `GENN(**hp, key=...)` rebuilds
        the architecture)."""
        conv = self.fine.conv_in
        return {
            "state_shape": list(self.state_shape),
            "layout": self.layout,
            "width": int(self.fine.conv_mid.weight.shape[0]),
            "kernel_size": list(conv.kernel_size),
            "pool": self.pool,
            "coarse_channels": int(self.coarse.conv_out.out_channels),
            "periodic_space": bool(self.layout == "field" and conv.periodic[-1]),
        }

    @property
    def constrained_convs(self) -> tuple[Conv, Conv]:
        """The two convolutions whose centre tap is forced to zero."""
        return self.coarse.conv_in, self.fine.conv_in

    def __call__(self, x: Float[Array, "T *state"]) -> Float[Array, "T *state"]:
        _check_window("x", x, self.state_shape, "GENN")
        z = to_conv(x, self.layout)
        coarse = self.up(self.coarse(avg_pool_time(z, self.pool)), z.shape[1])
        return from_conv(coarse + self.fine(z), self.layout)


class UNetPrior(eqx.Module):
    r"""A small two-level 2-d UNet for gridded fields `(T, H, W)`, time as channels.

    $h_1 = c_{1b}(\mathrm{relu}(c_{1a}(x)))$, $h_2 = c_{2b}(\mathrm{relu}(c_{2a}(
    \mathrm{Dw}(h_1))))$, output $c_o(\mathrm{relu}(c_d([h_1, \mathrm{Up}(h_2)])))$ with
    3x3 convolutions (ReLU after each), 2x2 average pooling and a 2x2 transposed
    convolution. `H` and `W` must be even. Fields with channels `(T, C, H, W)` are
    treated
    as `T C` input channels.

    **Arguments:** `state_shape` (`(H, W)` or `(C, H, W)`); `n_times` $T$; `key`;
    `width`
    (channels of the first level, default 16); `periodic` (wrap-around padding in
    (y, x), default `(False, False)`).
    """

    enc1a: Conv
    enc1b: Conv
    enc2a: Conv
    enc2b: Conv
    up: Upsample2x
    dec: Conv
    out: Conv
    state_shape: tuple[int, ...] = eqx.field(static=True)
    n_times: int = eqx.field(static=True)

    def __init__(
        self,
        state_shape,
        n_times: int,
        *,
        key: Key,
        width: int = 16,
        periodic=(False, False),
        dtype=None,
    ):
        state_shape = tuple(state_shape)
        if len(state_shape) not in (2, 3):
            raise ValueError(
                f"`state_shape` must be (H, W) or (C, H, W); got {state_shape}."
            )
        h, w = state_shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"UNetPrior needs even H and W; got {state_shape}.")
        self.n_times = check_int("n_times", n_times, minimum=1)
        width = check_int("width", width, minimum=1)
        c = self.n_times * (state_shape[0] if len(state_shape) == 3 else 1)
        k = jax.random.split(key, 7)
        kw = dict(n_spatial=2, periodic=tuple(periodic), dtype=dtype, use_bias=True)
        self.enc1a = Conv(c, width, 3, key=k[0], **kw)
        self.enc1b = Conv(width, width, 3, key=k[1], **kw)
        self.enc2a = Conv(width, 2 * width, 3, key=k[2], **kw)
        self.enc2b = Conv(2 * width, 2 * width, 3, key=k[3], **kw)
        self.up = Upsample2x(2 * width, width, key=k[4], dtype=dtype)
        self.dec = Conv(2 * width, width, 3, key=k[5], **kw)
        self.out = Conv(width, c, 1, key=k[6], **kw)
        self.state_shape = state_shape

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable; `UNetPrior(**hp, key=...)`
        rebuilds the architecture)."""
        return {
            "state_shape": list(self.state_shape),
            "n_times": self.n_times,
            "width": int(self.enc1a.weight.shape[0]),
            "periodic": [bool(p) for p in self.enc1a.periodic],
        }

    def __call__(self, x: Float[Array, "T *state"]) -> Float[Array, "T *state"]:
        _check_window("x", x, self.state_shape, "UNetPrior")
        if x.shape[0] != self.n_times:
            raise ValueError(
                f"UNetPrior was built for T={self.n_times} time steps; got "
                f"{x.shape[0]}."
            )
        h, w = self.state_shape[-2:]
        z = x.reshape(-1, h, w)
        relu = jax.nn.relu
        h1 = relu(self.enc1b(relu(self.enc1a(z))))
        p = h1.reshape(h1.shape[0], h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        h2 = relu(self.enc2b(relu(self.enc2a(p))))
        d = relu(self.dec(jnp.concatenate([h1, self.up(h2)], axis=0)))
        return self.out(d).reshape(x.shape)


__all__ = ["GENN", "ODEPrior", "UNetPrior"]
