r"""A generative learned motion estimator: the `MotionNet` UNet made stochastic by
noise inputs, trained with the fair ensemble CRPS.

The network $f_\theta(y, \zeta)$ takes, besides the observations $y$ of a window, a
noise draw $\zeta = (\zeta^{\rm in}, \zeta^{\rm bot})$ with independent
$\mathcal N(0, 1)$ entries: $\zeta^{\rm in}$ extra input channels at full resolution
and $\zeta^{\rm bot}$ extra channels concatenated at the UNet's bottleneck (the
coarsest level, where one channel moves large-scale structure). One forward pass per
member, $X_i = f_\theta(y, \zeta_i)$, $\zeta_i$ independent, gives an ensemble of
controls $(\eta_0, u_0, v_0)$ that samples the network's predictive distribution of
the initial state given the observations.

**Training by a proper scoring rule.** For members $X_1, \dots, X_m$ and the truth
$x$ at one point, the fair ensemble CRPS [GR07; F14]
$$\mathrm{CRPS}_{\rm fair}(X, x) = \frac1m \sum_i |X_i - x|
- \frac{1}{2m(m-1)} \sum_{i,j} |X_i - X_j|$$
is an unbiased estimate of the CRPS of the distribution the members sample, so its
expectation is minimised when that distribution is the conditional law of the truth
given the observations [GR07]: the network is rewarded for an ensemble that is both
sharp and calibrated, and the noise inputs are the only way it can spread. The loss
(`ensemble_crps_loss`) is that score averaged over the points and the channels of the
control, in the net's normalised units $(X - x) / s$ ($s$ = `control_scale`, as
`supervised_loss`). It is `jaxda.metrics.crps_ensemble`, the `scoringrules`
package's sorted-member form ($O(m \log m)$ per point), which is differentiable.
It needs the true initial state (supervised).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._custom_types import Array, Float, Key, Scalar
from .._validation import check_int, check_key, check_positive
from ..metrics import crps_ensemble
from ..nn import Conv
from ..obs import Observations
from ..train import TrainResult, fit
from ._fourdvar import first_guess
from ._learned import _check_samples
from ._networks import DEFAULT_CONTROL_SCALE, MotionNet


def _widened(conv: Conv, extra: int, key: Key) -> Conv:
    """A fresh 3x3 convolution like `conv` with `extra` more input channels."""
    return Conv(
        conv.in_channels + extra, conv.out_channels, conv.kernel_size, key=key,
        n_spatial=2, periodic=conv.periodic, use_bias=conv.bias is not None,
        dtype=conv.weight.dtype, method=conv.method,
    )  # fmt: skip


class GenerativeMotionNet(eqx.Module):
    r"""`MotionNet` with noise inputs: $f_\theta(y, \zeta)$, one control per noise
    draw (module docstring).

    The UNet is `MotionNet`'s (its blocks, its input features, its first-guess
    increment $x^{fg}(y) + s \odot U_\theta(\cdot)$ and its zero-initialised output
    layer, so an untrained net returns the first guess for every draw), with
    `input_noise` channels of $\mathcal N(0, 1)$ noise stacked on the observation
    channels and `bottleneck_noise` channels stacked on the input of the bottom level
    (grid `(ny / 2**depth, nx / 2**depth)`). With `input_noise = 0` the encoder does
    not depend on the draw and `sample` computes it once per window.

    **Arguments:**

    - `obs_shape`: `(T, C, ny, nx)` of one window's observations.
    - `key`: initialisation key.
    - `input_noise`: noise channels at the input (default 4).
    - `bottleneck_noise`: noise channels at the bottleneck (default 4); at least one
      of the two is positive.
    - `observed_channels`, `width`, `depth`, `obs_scale`, `control_scale`,
      `conv_method`, `dtype`: as `MotionNet`.

    **Fields:** `backbone`, the `MotionNet` holding the blocks (its first and bottom
    convolutions take the extra noise channels, so it is called through this net,
    not on its own); `input_noise`; `bottleneck_noise`.

    **Call:** `net(obs, key)` is one member $f_\theta(y, \zeta)$, $\zeta$ drawn from
    `key`; `net.sample(obs, key, n_members)` the ensemble `(n_members, C, ny, nx)`.
    """

    backbone: MotionNet
    input_noise: int = eqx.field(static=True)
    bottleneck_noise: int = eqx.field(static=True)

    def __init__(
        self,
        obs_shape,
        *,
        key: Key,
        input_noise: int = 4,
        bottleneck_noise: int = 4,
        observed_channels=(0,),
        width: int = 16,
        depth: int = 2,
        obs_scale: float = 1.0,
        control_scale=DEFAULT_CONTROL_SCALE,
        conv_method: str = "xla",
        dtype=None,
    ):
        check_key("key", key)
        input_noise = check_int("input_noise", input_noise, minimum=0)
        bottleneck_noise = check_int("bottleneck_noise", bottleneck_noise, minimum=0)
        if input_noise + bottleneck_noise == 0:
            raise ValueError(
                "`input_noise` and `bottleneck_noise` are both 0: the net would be "
                "deterministic (use MotionNet); give one of them >= 1."
            )
        k_net, k_in, k_bottom = jax.random.split(key, 3)
        net = MotionNet(
            obs_shape, key=k_net, observed_channels=observed_channels, width=width,
            depth=depth, obs_scale=obs_scale, control_scale=control_scale,
            conv_method=conv_method, dtype=dtype,
        )  # fmt: skip
        if net.encoders:
            if input_noise:
                first = _widened(net.encoders[0].a, input_noise, k_in)
                net = eqx.tree_at(lambda m: m.encoders[0].a, net, first)
            extra_bottom = bottleneck_noise
        else:  # depth 0: the bottom level is the first
            extra_bottom = input_noise + bottleneck_noise
        if extra_bottom:
            bottom = _widened(net.bottom.a, extra_bottom, k_bottom)
            net = eqx.tree_at(lambda m: m.bottom.a, net, bottom)
        self.backbone = net
        self.input_noise = input_noise
        self.bottleneck_noise = bottleneck_noise

    @property
    def obs_shape(self) -> tuple[int, int, int, int]:
        """`(T, C, ny, nx)` of one window's observations."""
        return self.backbone.obs_shape

    @property
    def control_scale(self) -> tuple[float, ...]:
        """The per-channel scale $s$ of the control."""
        return self.backbone.control_scale

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable; `GenerativeMotionNet(**hp,
        key=...)` rebuilds the architecture)."""
        return {
            **self.backbone.hyperparameters,
            "input_noise": self.input_noise,
            "bottleneck_noise": self.bottleneck_noise,
        }

    def check_obs(self, name: str, obs) -> None:
        """Raise unless `obs` is one window of `Observations` of shape `obs_shape`."""
        self.backbone.check_obs(name, obs)

    def noise(self, key: Key, dtype=None) -> tuple[Array, Array]:
        r"""One draw $\zeta = (\zeta^{\rm in}, \zeta^{\rm bot})$: standard normal
        arrays `(input_noise, ny, nx)` and `(bottleneck_noise, ny / 2**depth,
        nx / 2**depth)`."""
        dtype = self.backbone.head.weight.dtype if dtype is None else dtype
        _, _, ny, nx = self.obs_shape
        f = 2 ** len(self.backbone.encoders)
        k_in, k_bottom = jax.random.split(key)
        bottom_shape = (self.bottleneck_noise, ny // f, nx // f)
        return (
            jax.random.normal(k_in, (self.input_noise, ny, nx), dtype),
            jax.random.normal(k_bottom, bottom_shape, dtype),
        )

    def _encode(self, obs, noise_in):
        z = self.backbone.features(obs).astype(self.backbone.head.weight.dtype)
        return self.backbone.encode(jnp.concatenate([z, noise_in], axis=0))

    def _decode(self, obs, z, skips, noise_bottom):
        net = self.backbone
        h = net.decode(jnp.concatenate([z, noise_bottom], axis=0), skips)
        scale = jnp.asarray(net.control_scale, h.dtype)[:, None, None]
        return (first_guess(obs) + scale * net.head(h)).astype(obs.values.dtype)

    def __call__(self, obs: Observations, key: Key) -> Float[Array, "C ny nx"]:
        self.check_obs("obs", obs)
        noise_in, noise_bottom = self.noise(key)
        z, skips = self._encode(obs, noise_in)
        return self._decode(obs, z, skips, noise_bottom)

    def sample(
        self, obs: Observations, key: Key, n_members: int
    ) -> Float[Array, "N C ny nx"]:
        r"""`n_members` members $f_\theta(y, \zeta_i)$, $\zeta_i$ from
        `jax.random.split(key, n_members)` (vmapped; traceable, so usable inside a
        loss and under `jit`). The same key gives the same members.

        **Arguments:** `obs` one window `(T, C, ny, nx)`; `key`; `n_members` >= 2.

        **Returns:** the ensemble of controls `(n_members, C, ny, nx)`.
        """
        self.check_obs("obs", obs)
        check_key("key", key)
        n_members = check_int("n_members", n_members, minimum=2)
        noise_in, noise_bottom = jax.vmap(self.noise)(jax.random.split(key, n_members))
        if self.input_noise == 0:  # the encoder is the same for every member
            z, skips = self._encode(obs, noise_in[0])
            return jax.vmap(lambda nb: self._decode(obs, z, skips, nb))(noise_bottom)

        def member(n_in, n_bottom):
            z, skips = self._encode(obs, n_in)
            return self._decode(obs, z, skips, n_bottom)

        return jax.vmap(member)(noise_in, noise_bottom)


class GaussianMotionNet(eqx.Module):
    r"""`MotionNet` with a Gaussian head: a mean and a standard deviation per entry
    of the control, $x_0 \sim \mathcal N\big(\mu_\theta(y), \mathrm{diag}\,
    \sigma_\theta(y)^2\big)$, the second design of a probabilistic estimator
    (independent entries, where the noise inputs of `GenerativeMotionNet` can
    correlate them).

    The UNet is `MotionNet`'s with a $2C$-channel output layer $(a, b)$:
    $\mu = x^{fg}(y) + s \odot a$ and $\sigma = s \odot (\sigma_{\min} +
    \mathrm{softplus}(b))$. The output layer starts at zero weights and the bias of
    $b$ at $\mathrm{softplus}^{-1}(\sigma_0 - \sigma_{\min})$, so an untrained net
    gives the first guess with $\sigma = s\,\sigma_0$. Trained on the closed-form
    CRPS of the Gaussian (`gaussian_crps_loss`).

    **Arguments:** `obs_shape`, `key`; `init_std` $\sigma_0$ (default 0.1) and
    `min_std` $\sigma_{\min}$ (default 1e-3), in the normalised units $s$
    (`control_scale`); `observed_channels`, `width`, `depth`, `obs_scale`,
    `control_scale`, `conv_method`, `dtype`: as `MotionNet`.

    **Call:** `net(obs)` gives `(mean, std)`, each `(C, ny, nx)`;
    `net.sample(obs, key, n_members)` draws `(n_members, C, ny, nx)`.
    """

    backbone: MotionNet
    min_std: float = eqx.field(static=True)

    def __init__(
        self,
        obs_shape,
        *,
        key: Key,
        init_std: float = 0.1,
        min_std: float = 1e-3,
        observed_channels=(0,),
        width: int = 16,
        depth: int = 2,
        obs_scale: float = 1.0,
        control_scale=DEFAULT_CONTROL_SCALE,
        conv_method: str = "xla",
        dtype=None,
    ):
        check_key("key", key)
        check_positive("min_std", min_std)
        check_positive("init_std", init_std)
        if not init_std > min_std:
            raise ValueError(
                f"`init_std` must be > `min_std` = {min_std}; got {init_std}."
            )
        k_net, k_head = jax.random.split(key)
        net = MotionNet(
            obs_shape, key=k_net, observed_channels=observed_channels, width=width,
            depth=depth, obs_scale=obs_scale, control_scale=control_scale,
            conv_method=conv_method, dtype=dtype,
        )  # fmt: skip
        old = net.head
        c = old.out_channels
        head = Conv(
            old.in_channels, 2 * c, 1, key=k_head, n_spatial=2, use_bias=True,
            dtype=old.weight.dtype, method=old.method,
        )  # fmt: skip
        b0 = float(np.log(np.expm1(init_std - min_std)))
        bias = jnp.concatenate([jnp.zeros(c), jnp.full(c, b0)]).astype(head.bias.dtype)
        head = eqx.tree_at(
            lambda m: (m.weight, m.bias), head, (jnp.zeros_like(head.weight), bias)
        )
        self.backbone = eqx.tree_at(lambda m: m.head, net, head)
        self.min_std = float(min_std)

    @property
    def obs_shape(self) -> tuple[int, int, int, int]:
        """`(T, C, ny, nx)` of one window's observations."""
        return self.backbone.obs_shape

    @property
    def control_scale(self) -> tuple[float, ...]:
        """The per-channel scale $s$ of the control."""
        return self.backbone.control_scale

    @property
    def hyperparameters(self) -> dict:
        """The architecture's arguments (JSON-serialisable; `init_std` is not kept)."""
        return {**self.backbone.hyperparameters, "min_std": self.min_std}

    def check_obs(self, name: str, obs) -> None:
        """Raise unless `obs` is one window of `Observations` of shape `obs_shape`."""
        self.backbone.check_obs(name, obs)

    def __call__(self, obs: Observations) -> tuple[Array, Array]:
        self.check_obs("obs", obs)
        net = self.backbone
        z = net.features(obs).astype(net.head.weight.dtype)
        out = net.head(net.decode(*net.encode(z)))
        c = out.shape[0] // 2
        scale = jnp.asarray(net.control_scale, out.dtype)[:, None, None]
        mean = first_guess(obs) + scale * out[:c]
        std = scale * (self.min_std + jax.nn.softplus(out[c:]))
        dtype = obs.values.dtype
        return mean.astype(dtype), std.astype(dtype)

    def sample(
        self, obs: Observations, key: Key, n_members: int
    ) -> Float[Array, "N C ny nx"]:
        r"""`n_members` draws $\mu + \sigma \odot \varepsilon_i$,
        $\varepsilon_i \sim \mathcal N(0, I)$ from `key`: `(n_members, C, ny,
        nx)`."""
        check_key("key", key)
        n_members = check_int("n_members", n_members, minimum=2)
        mean, std = self(obs)
        eps = jax.random.normal(key, (n_members, *mean.shape), mean.dtype)
        return mean + std * eps


def gaussian_crps_loss(net, example, key=None) -> Scalar:
    r"""The closed-form CRPS of the net's Gaussian at the true control [GR07],
    $$\mathrm{CRPS}(\mathcal N(\mu, \sigma^2), x) = \sigma\Big(z\,(2\Phi(z) - 1)
    + 2\varphi(z) - \tfrac{1}{\sqrt\pi}\Big),\qquad z = \frac{x - \mu}{\sigma},$$
    averaged over the entries of the control in the normalised units $s$
    (`control_scale`); computed by `scoringrules.crps_normal`. A loss for
    `jaxda.train.fit`, examples `(initial, obs)` (`key` unused)."""
    if not (isinstance(example, tuple) and len(example) == 2):
        raise TypeError(
            "`gaussian_crps_loss` needs examples `(initial, obs)` (the true initial "
            f"state); got {type(example).__name__}."
        )
    import scoringrules

    initial, obs = example
    mean, std = net(obs)
    scale = jnp.asarray(net.control_scale, mean.dtype)[:, None, None]
    crps = scoringrules.crps_normal(
        jnp.asarray(initial) / scale, mean / scale, std / scale, backend="jax"
    )
    return jnp.mean(jnp.asarray(crps, mean.dtype))


def _check_generative(net) -> None:
    if not isinstance(net, GenerativeMotionNet | GaussianMotionNet):
        raise TypeError(
            "`net` must be a jaxda.motion.GenerativeMotionNet or GaussianMotionNet; "
            f"got {type(net).__name__}."
        )


def ensemble_crps_loss(n_members: int = 8):
    r"""The fair ensemble CRPS of the net's members at the true control (module
    docstring), for `jaxda.train.fit`:
    $$\mathcal L(\theta; y, x_0, \kappa) = \frac1n \sum_{c, p}
    \mathrm{CRPS}_{\rm fair}\big(\{X_{i,cp} / s_c\}_{i \le m},\ x_{0,cp} / s_c\big),
    \qquad X_i = f_\theta(y, \zeta_i),$$
    $n$ the number of entries of the control, $s$ = `control_scale`, the $m$ draws
    $\zeta_i$ from the example's key $\kappa$.

    **Arguments:** `n_members` $m \ge 2$ (default 8): members per example.

    **Returns:** `loss_fn(net, (initial, obs), key) -> scalar`.
    """
    n_members = check_int("n_members", n_members, minimum=2)

    def loss_fn(net, example, key) -> Scalar:
        if not (isinstance(example, tuple) and len(example) == 2):
            raise TypeError(
                "`ensemble_crps_loss` needs examples `(initial, obs)` (the true "
                f"initial state); got {type(example).__name__}."
            )
        if key is None:
            raise TypeError("`ensemble_crps_loss` needs a key per example; got None.")
        initial, obs = example
        members = net.sample(obs, key, n_members)
        scale = jnp.asarray(net.control_scale, members.dtype)[:, None, None]
        return crps_ensemble(members / scale, jnp.asarray(initial) / scale)

    return loss_fn


def mean_ensemble_loss(
    loss_fn, net, samples, *, key: Key, chunk_size: int = 16
) -> float:
    """The mean of `loss_fn(net, (initial_b, obs_b), fold_in(key, b))` over the
    windows `b` of `samples` (a `MotionSamples` or `(initial, obs)`), computed in
    jitted chunks of `chunk_size` windows (a fixed `key` gives a fixed estimate)."""
    _check_generative(net)
    check_key("key", key)
    initial, obs = _check_samples("samples", samples, net)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    n = initial.shape[0]
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(n))
    total = 0.0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        part = jax.tree_util.tree_map(lambda a: a[start:stop], (initial, obs, keys))
        total += float(_chunk_loss(loss_fn, net, part)) * (stop - start)
    return total / n


@eqx.filter_jit
def _chunk_loss(loss_fn, net, batch):
    initial, obs, keys = batch
    per = jax.vmap(lambda x0, o, k: loss_fn(net, (x0, o), k))(initial, obs, keys)
    return jnp.mean(per)


def train_generative_motion_net(
    net: GenerativeMotionNet | GaussianMotionNet,
    samples,
    *,
    key: Key,
    n_steps: int,
    n_members: int = 8,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    validation=None,
    eval_every: int = 0,
    checkpoint_path=None,
    progress: bool = True,
    throw: bool = False,
) -> tuple[GenerativeMotionNet | GaussianMotionNet, TrainResult]:
    r"""Train a `GenerativeMotionNet` on the fair ensemble CRPS
    (`ensemble_crps_loss(n_members)`), or a `GaussianMotionNet` on the closed-form
    Gaussian CRPS (`gaussian_crps_loss`), with `jaxda.train.fit`, as
    `train_motion_net` trains a `MotionNet`: Adam at `learning_rate` decayed by a
    cosine schedule to 1 % of it over `n_steps`, batches of `batch_size` windows,
    fresh noise draws at every step (from `fit`'s per-example keys).

    **Arguments:**

    - `net`: the initial `GenerativeMotionNet` or `GaussianMotionNet`.
    - `samples`: a `jaxda.motion.MotionSamples` or a tuple `(initial, obs)` with a
      leading window axis (the truth is needed).
    - `key`: the run's key (batches and noise draws).
    - `n_steps`, `n_members` ($m \ge 2$ members per window; the
      `GenerativeMotionNet` only), `batch_size`,
      `learning_rate`: the optimisation.
    - `validation`: optional windows: every `eval_every` steps and at the end their
      mean loss (`mean_ensemble_loss`, a fixed key) is recorded in
      `TrainResult.history` as `"val_crps"`.
    - `checkpoint_path`: optional checkpoint file (`fit`'s format; a run resumes).
    - `progress`: show `fit`'s progress bar.
    - `throw`: raise when the loss became non-finite (default `False`: a warning,
      and `result` says `RESULTS.nonfinite_loss`).

    **Returns:** `(trained_net, train_result)`, `trained_net` the last parameters
    with a finite loss.
    """
    _check_generative(net)
    check_key("key", key)
    n_steps = check_int("n_steps", n_steps, minimum=0)
    check_positive("learning_rate", learning_rate)
    if isinstance(net, GenerativeMotionNet):
        loss_fn = ensemble_crps_loss(n_members)
    else:
        loss_fn = gaussian_crps_loss
    data = _check_samples("samples", samples, net)
    eval_fn = None
    if validation is not None:
        validation = _check_samples("validation", validation, net)
        val_key = jax.random.fold_in(key, 2**31 - 1)

        def eval_fn(model, step):
            crps = mean_ensemble_loss(loss_fn, model, validation, key=val_key)
            return {"val_crps": crps}

    schedule = optax.cosine_decay_schedule(learning_rate, max(n_steps, 1), alpha=0.01)
    result = fit(
        net,
        loss_fn,
        data,
        key=key,
        n_steps=n_steps,
        batch_size=batch_size,
        optimizer=optax.adam(schedule),
        eval_fn=eval_fn,
        eval_every=eval_every,
        checkpoint_path=checkpoint_path,
        header={type(net).__name__: net.hyperparameters, "n_members": n_members},
        progress=progress,
        throw=throw,
    )
    return result.model, result


def sample_ensembles(
    net: GenerativeMotionNet | GaussianMotionNet,
    obs: Observations,
    key: Key,
    n_members: int,
    *,
    chunk_size: int | None = None,
) -> Float[Array, "B N C ny nx"]:
    """The ensembles of a batch of windows `obs` `(B, T, C, ny, nx)`: window `b`
    gets `net.sample(obs_b, fold_in(key, b), n_members)` (jitted and vmapped over
    all windows at once, or over `chunk_size` windows per call to bound the memory:
    one compiled program, the last chunk padded). On the CPU, a `jax.lax.map` over
    the chunks was about 10 times slower per window than these calls (convolutions
    inside a compiled loop; `benchmarks/bench_motion_generative.py`).

    **Returns:** `(B, n_members, C, ny, nx)`.
    """
    _check_generative(net)
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`obs` must be a jaxda.obs.Observations; got {type(obs).__name__}."
        )
    if obs.values.ndim != 5 or tuple(obs.values.shape[1:]) != net.obs_shape:
        t, c, ny, nx = net.obs_shape
        raise ValueError(
            f"`obs` must be a batch (B, {t}, {c}, {ny}, {nx}) for this net; got "
            f"{tuple(obs.values.shape)}."
        )
    check_key("key", key)
    n_members = check_int("n_members", n_members, minimum=2)
    n = obs.values.shape[0]
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(n))
    if chunk_size is None or chunk_size >= n:
        return _sample_windows(net, obs, keys, n_members)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    parts = []
    for start in range(0, n, chunk_size):
        idx = jnp.minimum(jnp.arange(start, start + chunk_size), n - 1)  # padded
        part = jax.tree_util.tree_map(lambda a: a[idx], (obs, keys))
        parts.append(_sample_windows(net, *part, n_members)[: n - start])
    return jnp.concatenate(parts, axis=0)


@eqx.filter_jit
def _sample_windows(net, obs, keys, n_members):
    return jax.vmap(lambda o, k: net.sample(o, k, n_members))(obs, keys)


__all__ = [
    "GaussianMotionNet",
    "GenerativeMotionNet",
    "gaussian_crps_loss",
    "ensemble_crps_loss",
    "mean_ensemble_loss",
    "sample_ensembles",
    "train_generative_motion_net",
]
