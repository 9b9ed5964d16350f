r"""Gradient-based solvers $\Gamma$ of 4DVarNet [F21, eqs. 5, 11, 12].

A solver maps the current iterate $x^{(k)}$ and the gradient $\nabla_x U_\Phi(x^{(k)})$
of the variational cost to $x^{(k+1)}$, carrying a state (LSTM memory, previous update,
the gradient scale) through `lax.scan`:

- `TrainableStepGradient`: $x^{(k+1)} = x^{(k)} - \alpha \nabla_x U$ with a step
  $\alpha$ trained with the network (the FSGD baseline as a layer of the unroll).
- `ConvLSTMSolver` (eq. 11): $\tilde g = \alpha \nabla_x U / \rho$,
  $(h, c) \leftarrow \mathrm{ConvLSTM}(\tilde g, h, c)$,
  $x^{(k+1)} = x^{(k)} - \mathcal L(h) / K$.
- `CNNSolver` (eq. 12, the authors' `model_GradUpdate1`): $\tilde g = \alpha
  \nabla_x U / \rho$, $d = \mathcal C([u^{(k)}, \tilde g])$, $u^{(k+1)} = 5
  \arctan(0.2\, W_3(\tilde g + W_2 d))$, $x^{(k+1)} = x^{(k)} - u^{(k+1)}$.

$\alpha$ is the learnable scalar of eqs. 11-12 and $\rho$ the RMS of the gradient,
recomputed at every iteration (`gradient_rms="each"`, the default, as the authors'
`Model_4DVarNN_Grad`) or taken at the first one (`"first"`, as their
`Model_4DVarNN_GradFP`). All solvers act on ONE window `(T, *state)`; `n_iter` is the
total number of unrolled iterations $K$ (static).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key
from .._validation import check_choice, check_int, check_positive
from ..nn._conv import Conv, ConvLSTMCell, check_layout, conv_shape, from_conv, to_conv


_TINY = 1e-12
GRADIENT_RMS = ("each", "first")
CNN_ARCHITECTURES = ("f21", "small")


def gradient_scale(grad: Array) -> Array:
    r"""$\rho = \sqrt{\mathrm{mean}(g^2)}$, floored at a tiny positive number."""
    rms = jnp.sqrt(jnp.mean(grad**2))
    return jnp.maximum(rms, jnp.asarray(_TINY, grad.dtype))


def _as_state_shape(state_shape) -> tuple[int, ...]:
    return (state_shape,) if isinstance(state_shape, int) else tuple(state_shape)


def _alpha(alpha, dtype) -> Array | None:
    """The learnable gradient scaling of eqs. 11-12 as a float array (or None)."""
    if alpha is None:
        return None
    check_positive("alpha", alpha)
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    return jnp.asarray(alpha, dtype)


def _scaled(grad, alpha, rho):
    """$\\alpha g / \\rho$ (or $g / \\rho$ without $\\alpha$)."""
    g = grad / rho
    return g if alpha is None else jnp.asarray(alpha, g.dtype) * g


class AbstractGradientSolver(eqx.Module):
    """A learned (or fixed) update rule $x^{(k+1)} = x^{(k)} - \\Gamma(\\nabla U,
    s_k)$."""

    @abc.abstractmethod
    def init(self, x: Float[Array, "T *state"], grad: Float[Array, "T *state"]) -> Any:
        """Initial solver state (a pytree of arrays) from the first iterate and
        gradient."""

    @abc.abstractmethod
    def step(
        self,
        x: Float[Array, "T *state"],
        grad: Float[Array, "T *state"],
        state: Any,
        n_iter: int,
    ) -> tuple[Float[Array, "T *state"], Any]:
        """One update: `(x_next, state_next)`."""

    def check_state_shape(self, state_shape: tuple[int, ...]) -> None:
        """Raise `ValueError` if this solver was built for another state shape."""


class TrainableStepGradient(AbstractGradientSolver):
    r"""Gradient steps $x^{(k+1)} = x^{(k)} - \alpha \nabla_x U_\Phi(x^{(k)})$ as a
    layer of the unrolled network, with a trainable step $\alpha$.

    What differs from `jaxda.var.GradientDescent` (the same update run to convergence
    with a stopping test, for a fixed cost): here exactly $K$ steps are unrolled inside
    `FourDVarNet`, and $\alpha$ is learned with the prior by differentiating through
    them. For plain gradient descent on a 4DVar cost use `jaxda.var.GradientDescent`.

    **Arguments:**

    - `step_size`: $\alpha > 0$; an array is trained with the rest of the model, a
      Python float stays constant.
    """

    step_size: float | Float[Array, ""]

    def __check_init__(self):
        check_positive("step_size", self.step_size)

    def init(self, x, grad):
        return ()

    def step(self, x, grad, state, n_iter):
        return x - jnp.asarray(self.step_size, x.dtype) * grad, state


def _check_shape(name, state_shape, want):
    if tuple(state_shape) != tuple(want):
        raise ValueError(
            f"{name} was built for states of shape {tuple(want)}; got "
            f"{tuple(state_shape)}."
        )


def _rho(mode: str, grad, rho):
    return gradient_scale(grad) if mode == "each" else rho


class ConvLSTMSolver(AbstractGradientSolver):
    r"""ConvLSTM gradient solver [F21, eq. 11], the authors' `model_GradUpdate2`.

    $\tilde g = \alpha \nabla_x U / \rho_k$, $(h, c) \leftarrow \mathrm{ConvLSTM}(
    \tilde g, h, c)$ from $h = c = 0$, $x \leftarrow x - \mathcal L(h) / K$ with
    $\mathcal L$ a 1x1 convolution (the $1/K$ of the authors' later code). $\alpha$ is
    a learnable scalar (initial value `alpha`; `alpha=None` leaves it out, as models
    saved before it existed), $\rho_k$ the RMS of the gradient at iteration $k$
    (`gradient_rms="each"`) or at iteration 0 (`"first"`). `kernel_size=1` gives a
    pointwise LSTM.

    **Arguments:** `state_shape`; `key`; `layout` (`"channels"` or `"field"`, as for
    `GENN`); `hidden` channels (default 5 per input channel, the authors' size: 3,345
    parameters for Lorenz-63); `kernel_size` (odd, default 3); `periodic_space`;
    `gradient_rms` (`"each"` or `"first"`); `alpha` (> 0 or None); `dtype`;
    `conv_method` (see `jaxda.nn.Conv`).
    """

    cell: ConvLSTMCell
    out: Conv
    alpha: Float[Array, ""] | None
    state_shape: tuple[int, ...] = eqx.field(static=True)
    layout: str = eqx.field(static=True)
    gradient_rms: str = eqx.field(static=True)

    def __init__(
        self,
        state_shape,
        *,
        key: Key,
        layout: str = "channels",
        hidden: int | None = None,
        kernel_size=3,
        periodic_space: bool = False,
        gradient_rms: str = "each",
        alpha: float | None = 1.0,
        dtype=None,
        conv_method: str = "im2col",
    ):
        state_shape = _as_state_shape(state_shape)
        check_layout(layout, len(state_shape))
        check_choice("gradient_rms", gradient_rms, GRADIENT_RMS)
        channels, nd = conv_shape(state_shape, layout)
        hidden = (
            5 * channels if hidden is None else check_int("hidden", hidden, minimum=1)
        )
        periodic = (False,) + (bool(periodic_space),) * (nd - 1)
        k1, k2 = jax.random.split(key)
        self.cell = ConvLSTMCell(
            channels,
            hidden,
            kernel_size,
            key=k1,
            n_spatial=nd,
            periodic=periodic,
            dtype=dtype,
            method=conv_method,
        )
        self.out = Conv(hidden, channels, (1,) * nd, key=k2, n_spatial=nd, dtype=dtype)
        self.alpha = _alpha(alpha, dtype)
        self.state_shape = state_shape
        self.layout = layout
        self.gradient_rms = gradient_rms

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable; `ConvLSTMSolver(**hp,
        key=...)` rebuilds the architecture)."""
        conv = self.cell.gates
        return {
            "state_shape": list(self.state_shape),
            "layout": self.layout,
            "hidden": self.cell.hidden,
            "kernel_size": list(conv.kernel_size),
            "periodic_space": bool(self.layout == "field" and conv.periodic[-1]),
            "gradient_rms": self.gradient_rms,
            "alpha": None if self.alpha is None else 1.0,
        }

    def check_state_shape(self, state_shape):
        _check_shape("ConvLSTMSolver", state_shape, self.state_shape)

    def init(self, x, grad):
        z = to_conv(x, self.layout)
        h = jnp.zeros((self.cell.hidden, *z.shape[1:]), x.dtype)
        return h, h, gradient_scale(grad)

    def step(self, x, grad, state, n_iter):
        h, c, rho = state
        rho = _rho(self.gradient_rms, grad, rho)
        g = to_conv(_scaled(grad, self.alpha, rho), self.layout)
        h, c = self.cell(g, h, c)
        dx = from_conv(self.out(h), self.layout)
        return x - dx / n_iter, (h, c, rho)


class _GradUpdateCNN(eqx.Module):
    r"""$\mathcal C$ of eq. 12 as the authors' `model_GradUpdate1.gradNet1`:
    $d = W_c \star \mathrm{relu}(W_b \star \mathrm{relu}(W_a \star z))$, no biases."""

    conv_a: Conv
    conv_b: Conv
    conv_c: Conv

    def __call__(self, z):
        relu = jax.nn.relu
        return self.conv_c(relu(self.conv_b(relu(self.conv_a(z)))))


class _SmallCNN(eqx.Module):
    """The CNN of jaxda 0.2.0: a convolution with bias, ReLU, a 1x1 convolution."""

    conv1: Conv
    conv2: Conv

    def __call__(self, z):
        return self.conv2(jax.nn.relu(self.conv1(z)))


def _identity_conv(channels: int, nd: int, dtype) -> Conv:
    r"""A 1x1 convolution initialised to the identity ($W_3$ of eq. 12)."""
    key = jax.random.key(0)  # the weights are replaced below
    conv = Conv(channels, channels, (1,) * nd, key=key, n_spatial=nd, dtype=dtype)
    eye = jnp.eye(channels, dtype=conv.weight.dtype).reshape(conv.weight.shape)
    return eqx.tree_at(lambda c: c.weight, conv, eye)


def _zero_conv(channels: int, nd: int, dtype) -> Conv:
    conv = _identity_conv(channels, nd, dtype)
    return eqx.tree_at(lambda c: c.weight, conv, jnp.zeros_like(conv.weight))


class CNNSolver(AbstractGradientSolver):
    r"""CNN gradient solver with atan modulation [F21, eq. 12], the authors'
    `model_GradUpdate1` (`architecture="f21"`, the default).

    With $\tilde g = \alpha \nabla_x U(x^{(k)}) / \rho_k$ and the previous update
    $u^{(k)}$ ($u^{(0)} = 0$; the authors draw it at random):

    $$d = \mathcal C([u^{(k)}, \tilde g]),\quad u^{(k+1)} = s \arctan\big(W_3(\tilde g
    + W_2 d) / s\big),\quad x^{(k+1)} = x^{(k)} - u^{(k+1)},$$

    with $s = 5$ (the authors' $5 \arctan(0.2\,\cdot)$: a step of at most $5\pi/2$
    per entry), $\mathcal C$ three convolutions with ReLUs, $2C \to 8C \to 16C \to C$
    channels, kernel `kernel_size` in every convolution axis, no biases (4,338
    parameters with $W_2$ and $W_3$ for Lorenz-63, $C = 3$), $W_2$ a 1x1 convolution
    and $W_3$ a 1x1 convolution initialised to the identity, so that a small
    $\tilde g$ and $d$ give $u \approx \tilde g + W_2 d$. `network` replaces
    $\mathcal C$ by any map `(2 C, *spatial)` -> `(C, *spatial)` in the convolution
    layout (e.g. a `jaxda.nn.FlaxModule`).

    $\alpha$ is a learnable scalar (initial value `alpha`) and $\rho_k$ the RMS of the
    gradient at iteration $k$ (`gradient_rms="each"`, as the authors'
    `Model_4DVarNN_Grad`) or at iteration 0 (`"first"`, as their
    `Model_4DVarNN_GradFP`). With the RK4 prior of F21-L63, `"first"` made the
    iterates diverge in training (later gradients exceed the first one and saturate
    the atan), and `"each"` with `alpha=1` learned a period-2 oscillation in which
    only the last iterate has a low cost (the pathways are on the benchmarks page).

    `architecture="small"` is the solver of jaxda 0.2.0, kept so that the models saved
    by it load and run as trained: $g^{(k+1)} = \mathcal C([\nabla_x U / \rho_k,
    g^{(k)}])$ with one convolution (`hidden` channels, bias), ReLU and a 1x1
    convolution, and $x^{(k+1)} = x^{(k)} - \arctan(g^{(k+1)})$ (no $\alpha$, $W_2$,
    $W_3$; steps of at most $\pi/2$).

    **Arguments:** `state_shape`; `key` (needed unless `network` is given: then $W_2$
    starts at zero); `layout`; `hidden` (`"f21"`: the two hidden widths, default
    `(8 C, 16 C)`; `"small"`: one width, default `10 C`); `kernel_size` (default 3);
    `periodic_space`; `network`; `gradient_rms` (`"each"` or `"first"`); `alpha`
    (> 0); `max_step` $s > 0$; `architecture` (`"f21"` or `"small"`); `dtype`;
    `conv_method` (see `jaxda.nn.Conv`).
    """

    network: Callable
    mix: Conv | None
    out: Conv | None
    alpha: Float[Array, ""] | None
    state_shape: tuple[int, ...] = eqx.field(static=True)
    layout: str = eqx.field(static=True)
    gradient_rms: str = eqx.field(static=True)
    architecture: str = eqx.field(static=True)
    max_step: float = eqx.field(static=True)

    def __init__(
        self,
        state_shape,
        *,
        key: Key | None = None,
        layout: str = "channels",
        hidden: int | tuple[int, int] | None = None,
        kernel_size=3,
        periodic_space: bool = False,
        network: Callable | None = None,
        gradient_rms: str = "each",
        alpha: float = 1.0,
        max_step: float = 5.0,
        architecture: str = "f21",
        dtype=None,
        conv_method: str = "im2col",
    ):
        state_shape = _as_state_shape(state_shape)
        check_layout(layout, len(state_shape))
        check_choice("gradient_rms", gradient_rms, GRADIENT_RMS)
        check_choice("architecture", architecture, CNN_ARCHITECTURES)
        check_positive("max_step", max_step)
        channels, nd = conv_shape(state_shape, layout)
        if network is None and key is None:
            raise ValueError("CNNSolver needs a `key` unless `network` is given.")
        periodic = (False,) + (bool(periodic_space),) * (nd - 1)
        kw = dict(n_spatial=nd, periodic=periodic, dtype=dtype, method=conv_method)
        keys = jax.random.split(key, 4) if key is not None else None
        if architecture == "small":
            if network is None:
                width = 10 * channels if hidden is None else hidden
                width = check_int("hidden", width, minimum=1)
                conv1 = Conv(
                    2 * channels, width, kernel_size, key=keys[0], use_bias=True, **kw
                )
                conv2 = Conv(width, channels, (1,) * nd, key=keys[1], **kw)
                network = _SmallCNN(conv1, conv2)
            self.mix = self.out = self.alpha = None
        else:
            if network is None:
                if hidden is None:
                    hidden = (8 * channels, 16 * channels)
                if isinstance(hidden, int) or len(hidden) != 2:
                    raise ValueError(
                        "`hidden` of the f21 CNNSolver must be a pair of widths "
                        f"(default (8 C, 16 C)); got {hidden!r}."
                    )
                w1, w2 = (check_int("hidden", w, minimum=1) for w in hidden)
                network = _GradUpdateCNN(
                    Conv(2 * channels, w1, kernel_size, key=keys[0], **kw),
                    Conv(w1, w2, kernel_size, key=keys[1], **kw),
                    Conv(w2, channels, kernel_size, key=keys[2], **kw),
                )
            if keys is None:
                self.mix = _zero_conv(channels, nd, dtype)
            else:
                one = (1,) * nd
                self.mix = Conv(
                    channels, channels, one, key=keys[3], n_spatial=nd, dtype=dtype
                )
            self.out = _identity_conv(channels, nd, dtype)
            self.alpha = _alpha(alpha, dtype)
        self.network = network
        self.state_shape = state_shape
        self.layout = layout
        self.gradient_rms = gradient_rms
        self.architecture = architecture
        self.max_step = float(max_step)

    @property
    def hyperparameters(self) -> dict | None:
        """The constructor arguments (JSON-serialisable; `CNNSolver(**hp, key=...)`
        rebuilds the architecture), or None when a custom `network` is used."""
        net = self.network
        if isinstance(net, _SmallCNN):
            hidden, conv = net.conv1.out_channels, net.conv1
        elif isinstance(net, _GradUpdateCNN):
            hidden = [net.conv_a.out_channels, net.conv_b.out_channels]
            conv = net.conv_a
        else:
            return None
        return {
            "state_shape": list(self.state_shape),
            "layout": self.layout,
            "hidden": hidden,
            "kernel_size": list(conv.kernel_size),
            "periodic_space": bool(self.layout == "field" and conv.periodic[-1]),
            "gradient_rms": self.gradient_rms,
            "max_step": self.max_step,
            "architecture": self.architecture,
        }

    def check_state_shape(self, state_shape):
        _check_shape("CNNSolver", state_shape, self.state_shape)

    def init(self, x, grad):
        return jnp.zeros_like(to_conv(x, self.layout)), gradient_scale(grad)

    def step(self, x, grad, state, n_iter):
        u_prev, rho = state
        rho = _rho(self.gradient_rms, grad, rho)
        g = to_conv(_scaled(grad, self.alpha, rho), self.layout)
        if self.architecture == "small":
            u = self.network(jnp.concatenate([g, u_prev], axis=0)).astype(x.dtype)
            return x - from_conv(jnp.arctan(u), self.layout), (u, rho)
        d = self.network(jnp.concatenate([u_prev, g], axis=0)).astype(x.dtype)
        s = jnp.asarray(self.max_step, x.dtype)
        u = s * jnp.arctan(self.out(g + self.mix(d)) / s)
        return x - from_conv(u, self.layout), (u, rho)


__all__ = [
    "AbstractGradientSolver",
    "CNNSolver",
    "ConvLSTMSolver",
    "TrainableStepGradient",
    "gradient_scale",
]
