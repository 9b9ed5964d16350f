r"""Gradient-based solvers $\Gamma$ of 4DVarNet [F21, eqs. 5, 11, 12].

A solver maps the current iterate $x^{(k)}$ and the gradient $\nabla_x U_\Phi(x^{(k)})$
of the variational cost to $x^{(k+1)}$, carrying a state (LSTM memory, previous update,
the gradient scale) through `lax.scan`:

- `TrainableStepGradient`: $x^{(k+1)} = x^{(k)} - \alpha \nabla_x U$ with a step
  $\alpha$ trained with the network (the FSGD baseline as a layer of the unroll).
- `ConvLSTMSolver`: $\tilde g = \nabla_x U / \rho$ with $\rho$ the RMS of the gradient
  at the first iteration; $(h, c) \leftarrow \mathrm{ConvLSTM}(\tilde g, h, c)$;
  $x^{(k+1)} = x^{(k)} - \mathcal L(h) / K$ (eq. 11 with the $1/K$ scaling of the
  authors' code; $\mathcal L$ a 1x1 convolution).
- `CNNSolver`: $\tilde g = \nabla_x U / \rho_k$ with $\rho_k$ the RMS of the gradient
  at each iteration (by default; as the authors' code); $g^{(k+1)} = \mathcal
  C([\tilde g, g^{(k)}])$, $x^{(k+1)} = x^{(k)} - \arctan(g^{(k+1)})$ (eq. 12).

All solvers act on ONE window `(T, *state)`; `n_iter` is the total number of unrolled
iterations $K$ (static).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Key
from .._validation import check_int, check_positive
from ..nn._conv import Conv, ConvLSTMCell, check_layout, conv_shape, from_conv, to_conv


_TINY = 1e-12


def gradient_scale(grad: Array) -> Array:
    r"""$\rho = \sqrt{\mathrm{mean}(g^2)}$, floored at a tiny positive number."""
    rms = jnp.sqrt(jnp.mean(grad**2))
    return jnp.maximum(rms, jnp.asarray(_TINY, grad.dtype))


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


class ConvLSTMSolver(AbstractGradientSolver):
    r"""ConvLSTM gradient solver [F21, eq. 11], the authors'
    `model_GradUpdateLSTM`.

    $\tilde g = \nabla_x U / \rho$ ($\rho$: RMS of the gradient at iteration 0, kept in
    the state), $(h, c) \leftarrow \mathrm{ConvLSTM}(\tilde g, h, c)$ from $h = c = 0$,
    $x \leftarrow x - \mathcal L(h) / K$ with $\mathcal L$ a 1x1 convolution.
    `kernel_size=1` gives a pointwise LSTM.

    **Arguments:** `state_shape`; `key`; `layout` (`"channels"` or `"field"`, as for
    `GENN`); `hidden` channels (default 5 per input channel); `kernel_size` (odd,
    default 3); `periodic_space`.
    """

    cell: ConvLSTMCell
    out: Conv
    state_shape: tuple[int, ...] = eqx.field(static=True)
    layout: str = eqx.field(static=True)

    def __init__(
        self,
        state_shape,
        *,
        key: Key,
        layout: str = "channels",
        hidden: int | None = None,
        kernel_size=3,
        periodic_space: bool = False,
        dtype=None,
    ):
        state_shape = (
            (state_shape,) if isinstance(state_shape, int) else tuple(state_shape)
        )
        check_layout(layout, len(state_shape))
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
        )
        self.out = Conv(hidden, channels, (1,) * nd, key=k2, n_spatial=nd, dtype=dtype)
        self.state_shape = state_shape
        self.layout = layout

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable; `ConvLSTMSolver(**hp,
        key=...)` rebuilds the architecture)."""
        conv = self.cell.gates
        return {
            "state_shape": list(self.state_shape),
            "layout": self.layout,
            "hidden": self.cell.hidden,
            "kernel_size": [int(k) for k in conv.weight.shape[2:]],
            "periodic_space": bool(self.layout == "field" and conv.periodic[-1]),
        }

    def check_state_shape(self, state_shape):
        _check_shape("ConvLSTMSolver", state_shape, self.state_shape)

    def init(self, x, grad):
        z = to_conv(x, self.layout)
        h = jnp.zeros((self.cell.hidden, *z.shape[1:]), x.dtype)
        return h, h, gradient_scale(grad)

    def step(self, x, grad, state, n_iter):
        h, c, rho = state
        g = to_conv(grad / rho, self.layout)
        h, c = self.cell(g, h, c)
        dx = from_conv(self.out(h), self.layout)
        return x - dx / n_iter, (h, c, rho)


class _SolverCNN(eqx.Module):
    conv1: Conv
    conv2: Conv

    def __call__(self, z):
        return self.conv2(jax.nn.relu(self.conv1(z)))


class CNNSolver(AbstractGradientSolver):
    r"""CNN gradient solver with atan modulation [F21, eq. 12].

    $g^{(k+1)} = \mathcal C([\nabla_x U(x^{(k)}) / \rho_k,\ g^{(k)}])$ from
    $g^{(0)} = 0$, $x^{(k+1)} = x^{(k)} - \arctan(g^{(k+1)})$; $\mathcal C$ is a
    convolution (`kernel_size`, `hidden` channels), ReLU, and a 1x1 convolution, or any
    `network` mapping `(2 C, *spatial)` to `(C, *spatial)` in the convolution layout
    (e.g. a `jaxda.nn.FlaxModule`).

    $\rho_k$ is the RMS of the gradient at iteration $k$ (`gradient_rms="each"`, as
    the authors' `model_GradUpdate1`) or at iteration 0 (`"first"`, as
    `ConvLSTMSolver`). With `"each"` the network sees a gradient of unit RMS at every
    iteration; with `"first"` and the RK4 prior of Lorenz-63, whose gradient grows
    quickly away from the data, the iterates diverged and training stalled on F21-L63
    (supervised; the R-scores are in docs/benchmarks.md), most likely from gradients
    saturating the atan.

    **Arguments:** `state_shape`; `key`; `layout`; `hidden` (default 10 per channel);
    `kernel_size` (default 3); `periodic_space`; `network` (overrides the default CNN);
    `gradient_rms` (`"each"` or `"first"`).
    """

    network: Callable
    state_shape: tuple[int, ...] = eqx.field(static=True)
    layout: str = eqx.field(static=True)
    gradient_rms: str = eqx.field(static=True)

    def __init__(
        self,
        state_shape,
        *,
        key: Key | None = None,
        layout: str = "channels",
        hidden: int | None = None,
        kernel_size=3,
        periodic_space: bool = False,
        network: Callable | None = None,
        gradient_rms: str = "each",
        dtype=None,
    ):
        state_shape = (
            (state_shape,) if isinstance(state_shape, int) else tuple(state_shape)
        )
        check_layout(layout, len(state_shape))
        if gradient_rms not in ("each", "first"):
            raise ValueError(
                f'`gradient_rms` must be "each" or "first"; got {gradient_rms!r}.'
            )
        channels, nd = conv_shape(state_shape, layout)
        if network is None:
            if key is None:
                raise ValueError("CNNSolver needs a `key` unless `network` is given.")
            hidden = (
                10 * channels
                if hidden is None
                else check_int("hidden", hidden, minimum=1)
            )
            periodic = (False,) + (bool(periodic_space),) * (nd - 1)
            k1, k2 = jax.random.split(key)
            kw = dict(n_spatial=nd, periodic=periodic, dtype=dtype)
            network = _SolverCNN(
                Conv(2 * channels, hidden, kernel_size, key=k1, use_bias=True, **kw),
                Conv(hidden, channels, (1,) * nd, key=k2, **kw),
            )
        self.network = network
        self.state_shape = state_shape
        self.layout = layout
        self.gradient_rms = gradient_rms

    @property
    def hyperparameters(self) -> dict | None:
        """The constructor arguments (JSON-serialisable; `CNNSolver(**hp, key=...)`
        rebuilds the architecture), or None when a custom `network` is used."""
        if not isinstance(self.network, _SolverCNN):
            return None
        conv = self.network.conv1
        return {
            "state_shape": list(self.state_shape),
            "layout": self.layout,
            "hidden": int(conv.weight.shape[0]),
            "kernel_size": [int(k) for k in conv.weight.shape[2:]],
            "periodic_space": bool(self.layout == "field" and conv.periodic[-1]),
            "gradient_rms": self.gradient_rms,
        }

    def check_state_shape(self, state_shape):
        _check_shape("CNNSolver", state_shape, self.state_shape)

    def init(self, x, grad):
        return jnp.zeros_like(to_conv(x, self.layout)), gradient_scale(grad)

    def step(self, x, grad, state, n_iter):
        g_prev, rho = state
        if self.gradient_rms == "each":
            rho = gradient_scale(grad)
        g_in = to_conv(grad / rho, self.layout)
        g = self.network(jnp.concatenate([g_in, g_prev], axis=0)).astype(x.dtype)
        return x - from_conv(jnp.arctan(g), self.layout), (g, rho)


__all__ = [
    "AbstractGradientSolver",
    "CNNSolver",
    "ConvLSTMSolver",
    "TrainableStepGradient",
    "gradient_scale",
]
