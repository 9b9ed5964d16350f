r"""Networks of the learned motion estimators: a UNet on the observation sequence
(`MotionNet`) and a DCGAN-like generator for the deep prior (`MotionGenerator`).

Both are composed of `jaxda.nn.Conv` (zero "same" padding on the closed basin) and
`jaxda.nn`'s transposed 2x2 convolution, and give their output in the physical units
of the 4DVar control: a per-channel `control_scale` $s_c$ multiplies the network's
normalised output, so a unit output is a typical amplitude of channel $c$ (on
[FBC23]'s basin the height after spin-up is $O(1)$ m and the velocities
$O(0.1)$ m/s: the default scales are $(1, 0.1, 0.1)$).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Key
from .._validation import check_choice, check_int, check_positive
from ..nn import Conv
from ..nn._conv import CONV_METHODS, Upsample2x
from ..obs import Observations
from ._fourdvar import first_guess


DEFAULT_CONTROL_SCALE = (1.0, 0.1, 0.1)


def _check_scale(name: str, scale, n_channels: int) -> tuple[float, ...]:
    scale = tuple(float(s) for s in np.atleast_1d(np.asarray(scale, dtype=float)))
    if len(scale) != n_channels:
        raise ValueError(
            f"`{name}` must have one entry per control channel ({n_channels}); got "
            f"{len(scale)} entries {scale}."
        )
    check_positive(name, np.asarray(scale))
    return scale


def _check_channels(observed, n_channels: int) -> tuple[int, ...]:
    observed = tuple(int(c) for c in observed)
    if not observed or any(c < 0 or c >= n_channels for c in observed):
        raise ValueError(
            f"`observed_channels` must be a non-empty tuple of channels in "
            f"[0, {n_channels}); got {observed}."
        )
    return observed


def _pool2(x: Array) -> Array:
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


class _DoubleConv(eqx.Module):
    a: Conv
    b: Conv

    def __init__(self, c_in, c_out, *, key, dtype, method):
        ka, kb = jax.random.split(key)
        kw = dict(
            n_spatial=2, periodic=(False, False), use_bias=True, dtype=dtype,
            method=method,
        )  # fmt: skip
        self.a = Conv(c_in, c_out, 3, key=ka, **kw)
        self.b = Conv(c_out, c_out, 3, key=kb, **kw)

    def __call__(self, x):
        return jax.nn.relu(self.b(jax.nn.relu(self.a(x))))


class MotionNet(eqx.Module):
    r"""A UNet [RFB15] $f_\theta$ from the observations of one window to its 4DVar
    control.

    The input is the observed channels of the window, values and mask, stacked as
    $2\,T\,C_o$ image channels ($C_o$ = `len(observed_channels)`, values divided by
    `obs_scale`); the output is the control $x_0$ `(C, ny, nx)` as an increment to
    [FBC23]'s first guess $x^{fg}$ (`jaxda.motion.first_guess`: the first observed
    frame, zero velocity):
    $$f_\theta(y) = x^{fg}(y) + s \odot U_\theta\big(y / s_y,\ m\big),$$
    with $s$ = `control_scale` per channel. $U_\theta$ has `depth` levels: at each,
    two 3x3 convolutions with ReLU, then 2x2 average pooling; the bottom level doubles
    the width; the decoder upsamples by a transposed 2x2 convolution, concatenates the
    skip connection and applies two 3x3 convolutions; a 1x1 convolution gives the $C$
    output channels. The 1x1 output layer starts at zero, so an untrained net returns
    the first guess. Zero padding everywhere (closed basin).

    **Arguments:**

    - `obs_shape`: `(T, C, ny, nx)` of one window's observations (`ny`, `nx`
      divisible by `2**depth`).
    - `key`: initialisation key.
    - `observed_channels`: the channels that carry observations (default `(0,)`: the
      height or the tracer image).
    - `width`: channels of the first level (default 16); level $l$ has
      `width * 2**l`.
    - `depth`: number of pooling levels (default 2).
    - `obs_scale`: $s_y$, the scale of the observed values (default 1).
    - `control_scale`: $s$, one positive scale per control channel (default
      `(1, 0.1, 0.1)` for $(\eta, u, v)$ or $(q, u, v)$).
    - `conv_method`: the `jaxda.nn.Conv` implementation, `"xla"` (default: XLA's
      convolution, several times faster than `"im2col"` for 64 x 64 images on the
      2-core CPU, see `benchmarks/bench_motion_learned.py`) or `"im2col"`.
    - `dtype`: of the parameters (default: JAX's default float).

    **Call:** `net(obs)` with `obs` a `jaxda.obs.Observations` of shape `obs_shape`
    returns the control `(C, ny, nx)`; vmap it over a batch of windows.
    """

    encoders: tuple[_DoubleConv, ...]
    bottom: _DoubleConv
    ups: tuple[Upsample2x, ...]
    decoders: tuple[_DoubleConv, ...]
    head: Conv
    obs_shape: tuple[int, int, int, int] = eqx.field(static=True)
    observed_channels: tuple[int, ...] = eqx.field(static=True)
    obs_scale: float = eqx.field(static=True)
    control_scale: tuple[float, ...] = eqx.field(static=True)

    def __init__(
        self,
        obs_shape,
        *,
        key: Key,
        observed_channels=(0,),
        width: int = 16,
        depth: int = 2,
        obs_scale: float = 1.0,
        control_scale=DEFAULT_CONTROL_SCALE,
        conv_method: str = "xla",
        dtype=None,
    ):
        obs_shape = tuple(int(s) for s in obs_shape)
        if len(obs_shape) != 4:
            raise ValueError(
                f"`obs_shape` must be (T, C, ny, nx); got {obs_shape} "
                f"({len(obs_shape)} axes)."
            )
        n_times, n_channels, ny, nx = obs_shape
        width = check_int("width", width, minimum=1)
        depth = check_int("depth", depth, minimum=0)
        if ny % 2**depth or nx % 2**depth:
            raise ValueError(
                f"`obs_shape` grid ({ny}, {nx}) must be divisible by 2**depth = "
                f"{2**depth}."
            )
        check_positive("obs_scale", obs_scale)
        check_choice("conv_method", conv_method, CONV_METHODS)
        conv = dict(dtype=dtype, method=conv_method)
        self.obs_shape = obs_shape
        self.observed_channels = _check_channels(observed_channels, n_channels)
        self.obs_scale = float(obs_scale)
        self.control_scale = _check_scale("control_scale", control_scale, n_channels)
        keys = iter(jax.random.split(key, 3 * depth + 2))
        c_in = 2 * n_times * len(self.observed_channels)
        widths = [width * 2**level for level in range(depth + 1)]
        enc, c = [], c_in
        for level in range(depth):
            enc.append(_DoubleConv(c, widths[level], key=next(keys), **conv))
            c = widths[level]
        self.encoders = tuple(enc)
        self.bottom = _DoubleConv(c, widths[depth], key=next(keys), **conv)
        ups, dec = [], []
        for level in reversed(range(depth)):
            ups.append(
                Upsample2x(
                    widths[level + 1], widths[level], key=next(keys), dtype=dtype
                )
            )
            dec.append(
                _DoubleConv(2 * widths[level], widths[level], key=next(keys), **conv)
            )
        self.ups, self.decoders = tuple(ups), tuple(dec)
        head = Conv(
            widths[0], n_channels, 1, key=next(keys), n_spatial=2, use_bias=True,
            **conv,
        )  # fmt: skip
        self.head = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            head,
            (jnp.zeros_like(head.weight), jnp.zeros_like(head.bias)),
        )

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable; `MotionNet(**hp, key=...)`
        rebuilds the architecture)."""
        return {
            "obs_shape": list(self.obs_shape),
            "observed_channels": list(self.observed_channels),
            "width": int(self.bottom.a.out_channels // 2 ** len(self.encoders)),
            "depth": len(self.encoders),
            "obs_scale": self.obs_scale,
            "control_scale": list(self.control_scale),
            "conv_method": self.head.method,
        }

    def check_obs(self, name: str, obs) -> None:
        """Raise unless `obs` is one window of `Observations` of shape `obs_shape`."""
        if not isinstance(obs, Observations):
            raise TypeError(
                f"`{name}` must be a jaxda.obs.Observations; got {type(obs).__name__}."
            )
        if tuple(obs.values.shape) != self.obs_shape:
            raise ValueError(
                f"`{name}` must have the shape the MotionNet was built for, "
                f"{self.obs_shape} (T, C, ny, nx); got {tuple(obs.values.shape)}"
                + (" (a batch? vmap the net over it)" if obs.values.ndim == 5 else "")
                + "."
            )

    def features(self, obs: Observations) -> Float[Array, " c_in ny nx"]:
        """The network input: observed values / `obs_scale` and mask, `(2 T C_o, ny,
        nx)`."""
        ch = list(self.observed_channels)
        values = obs.values[:, ch] / self.obs_scale
        mask = obs.mask[:, ch].astype(values.dtype)
        _, _, ny, nx = self.obs_shape
        return jnp.concatenate([values, mask], axis=1).reshape(-1, ny, nx)

    def encode(self, z: Array) -> tuple[Array, list[Array]]:
        """The encoder on input channels `z`: the bottom level's input and the skip
        connections (the generative nets stack noise channels on either)."""
        skips = []
        for enc in self.encoders:
            z = enc(z)
            skips.append(z)
            z = _pool2(z)
        return z, skips

    def decode(self, z: Array, skips: list[Array]) -> Array:
        """The bottom level and the decoder: the input of the output layer."""
        z = self.bottom(z)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            z = dec(jnp.concatenate([skip, up(z)], axis=0))
        return z

    def __call__(self, obs: Observations) -> Float[Array, "C ny nx"]:
        self.check_obs("obs", obs)
        z = self.decode(*self.encode(self.features(obs).astype(self.head.weight.dtype)))
        scale = jnp.asarray(self.control_scale, z.dtype)[:, None, None]
        increment = scale * self.head(z)
        guess = first_guess(obs)
        return (guess + increment).astype(obs.values.dtype)


def _channel_norm(x: Array, gamma: Array, beta: Array, eps: float = 1e-5) -> Array:
    """Per-channel normalisation over space (batch normalisation of one sample)."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * gamma[:, None, None] + beta[:, None, None]


def _upsample_bilinear(x: Array) -> Array:
    c, h, w = x.shape
    return jax.image.resize(x, (c, 2 * h, 2 * w), method="bilinear")


class MotionGenerator(eqx.Module):
    r"""The deep prior's generator $G_\phi$: a fixed latent vector $z$ to a control
    `(C, ny, nx)`, after [FBC23]'s DCGAN-like [RMC16] generator.

    $z \in \mathbb R^{n_z}$ is mapped linearly to `width * 2**(L-1)` channels on a
    `(ny / 2**L, nx / 2**L)` grid (their first transposed 4x4 convolution of a 1x1
    input), then $L$ times: bilinear 2x upsampling and a 3x3 convolution halving the
    channels, each but the last followed by a per-channel normalisation over space
    (their batch normalisation of a batch of one) and ReLU; the last convolution gives
    the $C$ channels, then $\tanh$ and the per-channel `control_scale` $s$:
    $G_\phi(z) = s \odot \tanh(\cdot)$. Weights are drawn from $N(0, 0.02^2)$ and the
    normalisation gains from $N(1, 0.02^2)$ (their `weights_init`). Departures: zero
    padding instead of their reflection padding; the output scaled by $s$ (theirs is
    the bare $\tanh$, at most 1 in every channel).

    **Arguments:** `shape` the control `(C, ny, nx)` (`ny`, `nx` divisible by `2**L`);
    `key`; `latent_size` $n_z$ (default 100, theirs); `width` (default 64, theirs);
    `n_levels` $L$ (default 4, theirs for 64 x 64); `control_scale` (default
    `(1, 0.1, 0.1)`); `conv_method` (`"xla"`, default, or `"im2col"`, as
    `MotionNet`); `dtype`.
    """

    dense: Float[Array, "out nz"]
    convs: tuple[Conv, ...]
    gains: tuple[Float[Array, " c"], ...]
    biases: tuple[Float[Array, " c"], ...]
    shape: tuple[int, int, int] = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    control_scale: tuple[float, ...] = eqx.field(static=True)

    def __init__(
        self,
        shape,
        *,
        key: Key,
        latent_size: int = 100,
        width: int = 64,
        n_levels: int = 4,
        control_scale=DEFAULT_CONTROL_SCALE,
        conv_method: str = "xla",
        dtype=None,
    ):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"`shape` must be (C, ny, nx); got {shape}.")
        n_channels, ny, nx = shape
        self.latent_size = check_int("latent_size", latent_size, minimum=1)
        width = check_int("width", width, minimum=1)
        n_levels = check_int("n_levels", n_levels, minimum=1)
        if ny % 2**n_levels or nx % 2**n_levels:
            raise ValueError(
                f"`shape` grid ({ny}, {nx}) must be divisible by 2**n_levels = "
                f"{2**n_levels}."
            )
        check_choice("conv_method", conv_method, CONV_METHODS)
        self.shape = shape
        self.control_scale = _check_scale("control_scale", control_scale, n_channels)
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        channels = [width * 2 ** (n_levels - 1 - k) for k in range(n_levels)]
        channels.append(n_channels)
        keys = jax.random.split(key, 2 * n_levels + 2)
        by, bx = ny // 2**n_levels, nx // 2**n_levels
        self.dense = 0.02 * jax.random.normal(
            keys[0], (channels[0] * by * bx, self.latent_size), dtype
        )
        convs = []
        for k in range(n_levels):
            conv = Conv(
                channels[k], channels[k + 1], 3, key=keys[1 + k], n_spatial=2,
                use_bias=True, dtype=dtype, method=conv_method,
            )  # fmt: skip
            w = 0.02 * jax.random.normal(
                keys[1 + n_levels + k], conv.weight.shape, dtype
            )
            convs.append(
                eqx.tree_at(
                    lambda m: (m.weight, m.bias), conv, (w, jnp.zeros_like(conv.bias))
                )
            )
        self.convs = tuple(convs)
        gain_keys = jax.random.split(keys[-1], n_levels)
        self.gains = tuple(
            1.0 + 0.02 * jax.random.normal(gain_keys[k], (channels[k],), dtype)
            for k in range(n_levels)
        )
        self.biases = tuple(jnp.zeros((channels[k],), dtype) for k in range(n_levels))

    def __call__(self, z: Float[Array, " nz"]) -> Float[Array, "C ny nx"]:
        if tuple(jnp.shape(z)) != (self.latent_size,):
            raise ValueError(
                f"`z` must have shape ({self.latent_size},); got {jnp.shape(z)}."
            )
        _, ny, nx = self.shape
        levels = len(self.convs)
        c0 = self.gains[0].shape[0]
        h = (self.dense @ z).reshape(c0, ny // 2**levels, nx // 2**levels)
        h = jax.nn.relu(_channel_norm(h, self.gains[0], self.biases[0]))
        for k, conv in enumerate(self.convs):
            h = conv(_upsample_bilinear(h))
            if k + 1 < levels:
                h = jax.nn.relu(_channel_norm(h, self.gains[k + 1], self.biases[k + 1]))
        scale = jnp.asarray(self.control_scale, h.dtype)[:, None, None]
        return scale * jnp.tanh(h)


__all__ = ["MotionGenerator", "MotionNet"]
