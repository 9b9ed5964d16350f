r"""Convolution building blocks for 4DVarNet priors and solvers (pure JAX, no layer
zoo).

A window $x$ of shape `(T, *state)` is seen by a convolution in one of two layouts:

- `"channels"`: the state components are channels and time is the only convolution
  axis: `(T, c)` -> `(c, T)` ([F21]'s Lorenz-63 networks);
- `"field"`: the window is a one-channel image over (time, *space): `(T, *grid)` ->
  `(1, T, *grid)` ([F21]'s Lorenz-96 networks), optionally periodic in space.

`Conv` pads explicitly ("same" output size; zeros, or wrap-around on periodic axes) and
can force its centre tap to zero *in the forward pass* (`centre_zero=True`): the
effective kernel is `weight * mask` at every call, so the centre entries neither act nor
receive a gradient, whatever the optimiser does.
"""

from __future__ import annotations

import copy
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key
from .._validation import check_choice, check_int


LAYOUTS = ("channels", "field")


def check_layout(layout: str, state_ndim: int) -> None:
    """Validate a layout name against the number of state axes."""
    check_choice("layout", layout, LAYOUTS)
    if layout == "channels" and state_ndim != 1:
        raise ValueError(
            "`layout='channels'` needs a vector state (T, c); got a state with "
            f"{state_ndim} axes. Use layout='field'."
        )


def to_conv(x: Float[Array, "T *state"], layout: str) -> Array:
    """`(T, c)` -> `(c, T)` (`"channels"`) or `(T, *grid)` -> `(1, T, *grid)`
    (`"field"`)."""
    if layout == "channels":
        return x.T
    return x[None]


def from_conv(z: Array, layout: str) -> Float[Array, "T *state"]:
    """Inverse of `to_conv`."""
    if layout == "channels":
        return z.T
    return z[0]


def conv_shape(state_shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """`(channels, n_spatial_dims)` of the convolution input for a state shape."""
    if layout == "channels":
        return state_shape[0], 1
    return 1, 1 + len(state_shape)


def _as_tuple(k, nd: int, name: str) -> tuple[int, ...]:
    k = (k,) * nd if isinstance(k, int) else tuple(k)
    if len(k) != nd:
        raise ValueError(f"`{name}` must have {nd} entries; got {k}.")
    for v in k:
        check_int(name, v, minimum=1)
    return k


def pad_same(
    x: Array,
    kernel: tuple[int, ...],
    periodic: tuple[bool, ...],
    *,
    zeros: bool = True,
) -> Array:
    """Pad the spatial axes of `x` `(C, *spatial)` by `k // 2`: wrap-around on the
    periodic axes, zeros on the others (left unpadded when `zeros=False`)."""
    for ax, (k, per) in enumerate(zip(kernel, periodic), start=1):
        p = k // 2
        if p == 0 or not (per or zeros):
            continue
        width = [(0, 0)] * x.ndim
        width[ax] = (p, p)
        x = jnp.pad(x, width, mode="wrap" if per else "constant")
    return x


CONV_METHODS = ("xla", "im2col")


class Conv(eqx.Module):
    r"""An N-d convolution with "same" padding, no stride: `(C_in, *s)` -> `(C_out,
    *s)`.

    $y_o = b_o + \sum_c w_{oc} \star x_c$, with the kernel centre zeroed at every call
    when `centre_zero=True` (then $y(s)$ does not depend on $x(s)$: [F21]'s
    constrained convolution). Kernel sizes must be odd.

    Two implementations of the same map (`method`): `"im2col"` (the default) stacks
    one shifted view of the input per kernel offset and contracts them with the
    kernel in one `einsum`, which differentiates (twice, in 4DVarNet training) into
    plain matrix products; `"xla"` calls `jax.lax.conv_general_dilated` (under
    `jax.vmap` the window axis becomes the convolution's batch axis). On the 2-core
    CPU the 4DVarNet training step was about 3 times slower with `"xla"` (see
    `benchmarks/bench_fourdvarnet.py`); on accelerators, measure.

    **Arguments:** `in_channels`, `out_channels`; `kernel_size` (int or tuple); `key`;
    `n_spatial` (number of convolution axes); `periodic` (bool per axis: wrap-around
    padding); `centre_zero`; `use_bias`; `dtype`; `method` (`"im2col"` or `"xla"`).
    """

    weight: Float[Array, "out in *k"]
    bias: Float[Array, " out"] | None
    periodic: tuple[bool, ...] = eqx.field(static=True)
    centre_zero: bool = eqx.field(static=True)
    method: str = eqx.field(static=True, default="im2col")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        key: Key,
        n_spatial: int = 1,
        periodic=False,
        centre_zero: bool = False,
        use_bias: bool = False,
        dtype=None,
        method: str = "im2col",
    ):
        in_channels = check_int("in_channels", in_channels, minimum=1)
        out_channels = check_int("out_channels", out_channels, minimum=1)
        check_choice("method", method, CONV_METHODS)
        kernel = _as_tuple(kernel_size, n_spatial, "kernel_size")
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"`kernel_size` must be odd; got {kernel}.")
        if centre_zero and all(k == 1 for k in kernel):
            raise ValueError(
                "`centre_zero=True` with a 1x..x1 kernel would make the layer zero."
            )
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        fan_in = in_channels * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        wkey, bkey = jax.random.split(key)
        w = jax.random.uniform(
            wkey, (out_channels, in_channels, *kernel), dtype, -bound, bound
        )
        self.periodic = (
            (bool(periodic),) * n_spatial
            if isinstance(periodic, bool)
            else tuple(bool(p) for p in periodic)
        )
        if len(self.periodic) != n_spatial:
            raise ValueError(
                f"`periodic` must have {n_spatial} entries; got {self.periodic}."
            )
        self.centre_zero = bool(centre_zero)
        self.method = method
        self.weight = w * self.mask(w.shape) if centre_zero else w
        self.bias = (
            jax.random.uniform(bkey, (out_channels,), dtype, -bound, bound)
            if use_bias
            else None
        )

    @staticmethod
    def mask(shape) -> Array:
        """Ones with a zero at the kernel centre (all channel pairs)."""
        kernel = shape[2:]
        centre = (slice(None), slice(None), *(k // 2 for k in kernel))
        return jnp.ones(shape, dtype=bool).at[centre].set(False)

    @property
    def effective_weight(self) -> Array:
        """The kernel used in the forward pass (centre zeroed if `centre_zero`)."""
        if self.centre_zero:
            return jnp.where(self.mask(self.weight.shape), self.weight, 0.0)
        return self.weight

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.weight.shape[2:])

    def __call__(self, x: Float[Array, "C *s"]) -> Float[Array, "O *s"]:
        if x.ndim != self.weight.ndim - 1 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"Conv expects an input of shape ({self.in_channels}, *spatial) with "
                f"{self.weight.ndim - 2} spatial axes; got {x.shape}."
            )
        w = self.effective_weight.astype(x.dtype)
        kernel = self.kernel_size
        if all(k == 1 for k in kernel):  # a 1x..x1 kernel is a matrix product
            y = jnp.einsum("oi,i...->o...", w.reshape(w.shape[:2]), x)
        elif self.method == "xla":
            y = _conv_xla(x, w, self.periodic)
        else:
            y = _conv_im2col(x, w, self.periodic)
        if self.bias is not None:
            y = y + self.bias.astype(x.dtype).reshape((-1,) + (1,) * len(kernel))
        return y


def _conv_xla(x: Array, w: Array, periodic: tuple[bool, ...]) -> Array:
    """`jax.lax.conv_general_dilated` on one input `(C, *s)`; wrap-around axes are
    padded by hand, the others by the convolution."""
    kernel = w.shape[2:]
    xp = pad_same(x, kernel, periodic, zeros=False)
    padding = [(0, 0) if per else (k // 2, k // 2) for k, per in zip(kernel, periodic)]
    y = jax.lax.conv_general_dilated(
        xp[None], w, window_strides=(1,) * len(kernel), padding=padding
    )
    return y[0]


def _conv_im2col(x: Array, w: Array, periodic: tuple[bool, ...]) -> Array:
    """One shifted view of the padded input per kernel offset, then one contraction."""
    kernel = w.shape[2:]
    xp = pad_same(x, kernel, periodic)
    spatial = x.shape[1:]
    cols = [
        xp[(slice(None), *(slice(o, o + n) for o, n in zip(off, spatial)))]
        for off in itertools.product(*(range(k) for k in kernel))
    ]
    patches = jnp.stack(cols, axis=1)  # (C, prod(k), *spatial)
    wf = w.reshape(w.shape[0], w.shape[1], -1)
    return jnp.einsum("oik,ik...->o...", wf, patches)


def avg_pool_time(z: Array, factor: int) -> Array:
    """Average-pool axis 1 (time) of `(C, T, *rest)` by `factor` (edge-padded to a
    multiple)."""
    if factor == 1:
        return z
    t = z.shape[1]
    t_up = -(-t // factor) * factor
    if t_up != t:
        width = [(0, 0)] * z.ndim
        width[1] = (0, t_up - t)
        z = jnp.pad(z, width, mode="edge")
    shape = (z.shape[0], t_up // factor, factor, *z.shape[2:])
    return jnp.mean(z.reshape(shape), axis=2)


class UpsampleTime(eqx.Module):
    r"""Transposed convolution along time with kernel = stride = `factor`.

    $y_o(f t + j) = \sum_c W_{ocj}\, z_c(t)$: `(C_in, T', *rest)` -> `(C_out, f T',
    *rest)`,
    then cropped to `n_times`.
    """

    weight: Float[Array, "out in f"]

    def __init__(self, in_channels, out_channels, factor, *, key, dtype=None):
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        bound = 1.0 / math.sqrt(in_channels * factor)
        self.weight = jax.random.uniform(
            key, (out_channels, in_channels, factor), dtype, -bound, bound
        )

    def __call__(self, z: Array, n_times: int) -> Array:
        w = self.weight.astype(z.dtype)
        y = jnp.einsum("ocj,ct...->otj...", w, z)
        y = y.reshape((y.shape[0], y.shape[1] * y.shape[2], *y.shape[3:]))
        return y[:, :n_times]


class Upsample2x(eqx.Module):
    """Transposed 2-d convolution with kernel = stride = 2: `(C, h, w)` -> `(O, 2h,
    2w)`."""

    weight: Float[Array, "out in 2 2"]

    def __init__(self, in_channels, out_channels, *, key, dtype=None):
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        bound = 1.0 / math.sqrt(in_channels * 4)
        self.weight = jax.random.uniform(
            key, (out_channels, in_channels, 2, 2), dtype, -bound, bound
        )

    def __call__(self, z: Array) -> Array:
        y = jnp.einsum("ocij,chw->ohiwj", self.weight.astype(z.dtype), z)
        o, h, _, w, _ = y.shape
        return y.reshape(o, 2 * h, 2 * w)


class ConvLSTMCell(eqx.Module):
    r"""A convolutional LSTM cell (Shi et al. 2015).

    $[i, f, o, u] = W \star [x, h]$, $c' = \sigma(f) c + \sigma(i) \tanh(u)$,
    $h' = \sigma(o)\tanh(c')$. With a kernel of size 1 it is a pointwise LSTM.
    """

    gates: Conv
    hidden: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels,
        hidden,
        kernel_size,
        *,
        key,
        n_spatial=1,
        periodic=False,
        dtype=None,
        method: str = "im2col",
    ):
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.gates = Conv(
            in_channels + hidden,
            4 * hidden,
            kernel_size,
            key=key,
            n_spatial=n_spatial,
            periodic=periodic,
            use_bias=True,
            dtype=dtype,
            method=method,
        )

    def __call__(self, x: Array, h: Array, c: Array) -> tuple[Array, Array]:
        g = self.gates(jnp.concatenate([x, h], axis=0))
        i, f, o, u = jnp.split(g, 4, axis=0)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c


def with_conv_method(tree, method: str):
    """`tree` with every `Conv` in it (at any depth) switched to `method` (`"xla"` or
    `"im2col"`); the weights are shared, the outputs agree to rounding."""
    check_choice("method", method, CONV_METHODS)

    def switch(node):
        if isinstance(node, Conv):
            new = copy.copy(node)  # a static field: set it on a shallow copy
            object.__setattr__(new, "method", method)
            return new
        return node

    return jax.tree_util.tree_map(switch, tree, is_leaf=lambda n: isinstance(n, Conv))
