r"""Neural band-Gaussian prior $\mathcal N(\mu(z; \theta, s), P(z; \theta, s))$ ([B24],
§3) and the assimilation operator at one level.

The trajectory $z \in \mathbb R^{T \times n}$ is flattened in C order (time-major,
components interleaved: index $i = t n + c$), so that a bandwidth $b = 2n$ couples each
state with the states of the two neighbouring times.

The network outputs a banded lower-triangular factor $L$ (bandwidth $b$) with a positive
diagonal and entries bounded by $c$, and the matrix $L L^\top + \varepsilon I$ is
therefore banded (bandwidth $b$) and symmetric positive definite **by construction**,
with eigenvalues in $[\varepsilon, \varepsilon + ((b+1)c)^2]$ (a bounded condition
number, so the banded Cholesky of the MAP cannot fail numerically, whatever the
weights). Every banded SPD matrix with eigenvalues above $\varepsilon$ is of this form
(the Cholesky factor of $A - \varepsilon I$ keeps the band), up to the bound $c$ on its
entries.

$L L^\top$ is either the prior **covariance** $P$ (`form="covariance"`, the default and
the paper's wording) or the prior **precision** $Q = P^{-1}$ (`form="precision"`). Both
keep the MAP at $O(d b^2)$ (covariance form with a mask: $M P M + R$ is banded;
precision form: $Q + H^\top R^{-1} H$ is banded), but they are different models:

- a banded covariance makes states more than $b/n$ time steps apart uncorrelated: the
  increment $x_{\mathrm{MAP}} - \mu$ is local to the observations, and the network has
  to carry information to the rest of the window through the mean $\mu(z)$ (which sees
  the whole of $z$, and $z$ already holds the observations);
- a banded precision is a Gauss-Markov model (the Gauss-Newton Hessian of
  weak-constraint 4DVar, eq. 2.7a, is block-tridiagonal, i.e. banded with $b = 2n - 1$;
  the exact prior of a linear-Gaussian model is of this form), whose covariance is
  dense: one observation informs the whole window.

The default follows a measurement on B24-L63 (test observation phases never seen in
training): the covariance form transferred better than the precision form at the same
data, seed and training budget (the numbers are in docs/benchmarks.md). The exact-prior
(oracle) tests use `form="precision"`.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import gaussian
from .._custom_types import Array, Float, Key, ScalarLike
from .._results import (
    RESULTS,
    all_finite,
    all_positive,
    first_failure,
    raise_if_failed,
)
from .._validation import check_choice, check_finite, check_int, check_positive
from ..linalg import SymmetricBandMatrix
from ..linalg._band_kernels import lower_band_gram, valid_band_mask
from ..nn._embedding import sinusoidal_embedding
from ..obs import Observations


_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
}


def _float_dtype(dtype):
    try:
        out = jnp.dtype(jnp.float32 if dtype is None else dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise TypeError(
            "`dtype` must be a floating dtype (e.g. float32 or float64); got "
            f"{dtype!r}."
        )
    return out


class _MLPNet(eqx.Module):
    """Fully connected net on `[flatten(z), e(s)]` -> flat output of `out_size`."""

    mlp: eqx.nn.MLP

    def __init__(self, d, embed_dim, out_size, width, depth, activation, dtype, key):
        self.mlp = eqx.nn.MLP(
            d + embed_dim,
            out_size,
            width_size=width,
            depth=depth,
            activation=_ACTIVATIONS[activation],
            dtype=dtype,
            key=key,
        )
        # Small last layer: the initial model is close to mu = z (residual) and L = c I.
        last = self.mlp.layers[-1]
        self.mlp = eqx.tree_at(
            lambda m: m.layers[-1].weight, self.mlp, 0.1 * last.weight
        )

    def __call__(self, z2, emb, per_step):
        out = self.mlp(jnp.concatenate([z2.reshape(-1), emb]))
        return out.reshape(per_step, -1)  # (per_step, d) with column i = t n + c


class _ConvNet(eqx.Module):
    """1-D convolutions in time (translation-equivariant): channels = components +
    e(s)."""

    convs: tuple
    activation: str = eqx.field(static=True)

    def __init__(
        self, n, embed_dim, per_step, width, depth, kernel, activation, dtype, key
    ):
        keys = jax.random.split(key, depth + 1)
        sizes = [n + embed_dim] + [width] * depth + [n * per_step]
        convs = []
        for j in range(depth + 1):
            conv = eqx.nn.Conv1d(
                sizes[j], sizes[j + 1], kernel, padding="SAME", dtype=dtype, key=keys[j]
            )
            if j == depth:
                conv = eqx.tree_at(lambda c: c.weight, conv, 0.1 * conv.weight)
            convs.append(conv)
        self.convs = tuple(convs)
        self.activation = activation

    def __call__(self, z2, emb, per_step):
        t, n = z2.shape
        h = jnp.concatenate([z2.T, jnp.broadcast_to(emb[:, None], (emb.shape[0], t))])
        act = _ACTIVATIONS[self.activation]
        for conv in self.convs[:-1]:
            h = act(conv(h))
        out = self.convs[-1](h)  # (n * per_step, T), channel c * per_step + k
        return out.reshape(n, per_step, t).transpose(1, 2, 0).reshape(per_step, t * n)


class NeuralBandGaussian(eqx.Module):
    r"""Learned local Gaussian prior $x \mid z \sim \mathcal N(\mu(z; \theta, s), P(z;
    \theta, s))$.

    Two networks (as in [B24]): one for the mean, one for the banded factor $L$ of $L
    L^\top$ ($= P$ with `form="covariance"`, the default, or $= P^{-1}$ with
    `form="precision"`, plus $\varepsilon I$; see the module docstring). The level $s$
    enters through a sinusoidal embedding concatenated to the input. With
    `residual=True` the mean is $z + f(z, s)$.

    Calling the model is the assimilation operator (eq. 3.2) $A(z, y; \theta, s) =
    x_{\mathrm{MAP}}(y; \mu(z; \theta, s), P(z; \theta, s))$; with `conditional=False`
    (the "unconditional" cold-diffusion ablation) it is $\mu(z; \theta, s)$ and no
    factor network is built.

    **Arguments:**

    - `n_times`: window length $T$.
    - `state_shape`: shape of one state (an int $n$ or a tuple); $d = T \cdot \prod$
      state.
    - `key`: initialisation key.
    - `architecture`: `"mlp"` (depth/width fully connected nets on the flattened window,
      the paper's choice) or `"conv"` (1-D convolutions in time with `kernel_size`:
      parameters do not depend on $T$ and the model is translation-equivariant in time;
      for long windows).
    - `bandwidth`: $b$ of $L$ and $L L^\top$ in the interleaved layout (default $2n$).
    - `width`, `depth`: hidden width and number of hidden layers (default 32 and 4).
    - `embed_dim`: size of the level embedding (default 16).
    - `kernel_size`: convolution width in time (`"conv"` only, odd, default 5).
    - `activation`: `"silu"` (default), `"tanh"`, `"gelu"` or `"relu"`.
    - `form`: `"covariance"` (default) or `"precision"`.
    - `conditional`: `False` for the unconditional cold-diffusion ablation.
    - `residual`: mean $= z + f$ (default) or $f$.
    - `max_entry`: $c$, bound on the entries of $L$ (soft clip $c \tanh(\cdot / c)$).
    - `min_eig`: $\varepsilon > 0$; the matrix is $L L^\top + \varepsilon I$, so its
      eigenvalues lie in $[\varepsilon, \varepsilon + ((b + 1) c)^2]$: a bounded
      condition number whatever the weights and inputs (defaults: $c = 30$, $\varepsilon
      = 10^{-3}$).
    - `dtype`: parameter dtype (default float32).
    """

    mean_net: eqx.Module
    factor_net: eqx.Module | None
    n_times: int = eqx.field(static=True)
    state_shape: tuple[int, ...] = eqx.field(static=True)
    architecture: str = eqx.field(static=True)
    bandwidth: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    form: str = eqx.field(static=True)
    conditional: bool = eqx.field(static=True)
    residual: bool = eqx.field(static=True)
    max_entry: float = eqx.field(static=True)
    min_eig: float = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(
        self,
        n_times: int,
        state_shape: int | tuple[int, ...],
        *,
        key: Key,
        architecture: str = "mlp",
        bandwidth: int | None = None,
        width: int = 32,
        depth: int = 4,
        embed_dim: int = 16,
        kernel_size: int = 5,
        activation: str = "silu",
        form: str = "covariance",
        conditional: bool = True,
        residual: bool = True,
        max_entry: float = 30.0,
        min_eig: float = 1e-3,
        dtype=None,
    ):
        self.n_times = check_int("n_times", n_times, minimum=1)
        if isinstance(state_shape, int) and not isinstance(state_shape, bool):
            state_shape = (state_shape,)
        if not isinstance(state_shape, tuple | list):
            raise TypeError(
                "`state_shape` must be an int or a tuple of ints; got "
                f"{type(state_shape).__name__} ({state_shape!r})."
            )
        state_shape = tuple(check_int("state_shape", s, minimum=1) for s in state_shape)
        self.state_shape = state_shape
        n = math.prod(state_shape)
        d = self.n_times * n
        check_choice("architecture", architecture, ("mlp", "conv"))
        check_choice("activation", activation, tuple(_ACTIVATIONS))
        check_choice("form", form, ("precision", "covariance"))
        self.architecture = architecture
        self.bandwidth = check_int(
            "bandwidth", 2 * n if bandwidth is None else bandwidth, minimum=0
        )
        if self.bandwidth >= d:
            raise ValueError(
                f"`bandwidth` must be < d = {d} (T * state size); got {self.bandwidth}."
            )
        self.width = check_int("width", width, minimum=1)
        self.depth = check_int("depth", depth, minimum=0)
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=2)
        if self.embed_dim % 2:
            raise ValueError(f"`embed_dim` must be even; got {embed_dim}.")
        self.kernel_size = check_int("kernel_size", kernel_size, minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd; got {kernel_size}.")
        self.activation = activation
        self.form = form
        self.conditional = bool(conditional)
        self.residual = bool(residual)
        check_positive("max_entry", max_entry)
        check_positive("min_eig", min_eig)
        self.max_entry = float(max_entry)
        self.min_eig = float(min_eig)
        dtype = _float_dtype(dtype)
        self.dtype = dtype.name
        kmean, kfac = jax.random.split(key)
        b1 = self.bandwidth + 1
        if architecture == "mlp":

            def make(per_step, k):
                return _MLPNet(
                    d, self.embed_dim, per_step * d, width, depth, activation, dtype, k
                )
        else:

            def make(per_step, k):
                return _ConvNet(
                    n,
                    self.embed_dim,
                    per_step,
                    width,
                    depth,
                    self.kernel_size,
                    activation,
                    dtype,
                    k,
                )

        self.mean_net = make(1, kmean)
        self.factor_net = make(b1, kfac) if self.conditional else None

    # --------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """$d = T \\cdot \\prod$ `state_shape`."""
        return self.n_times * math.prod(self.state_shape)

    @property
    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-serialisable), e.g. for checkpoint
        headers."""
        return {
            "n_times": self.n_times,
            "state_shape": list(self.state_shape),
            "architecture": self.architecture,
            "bandwidth": self.bandwidth,
            "width": self.width,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "form": self.form,
            "conditional": self.conditional,
            "residual": self.residual,
            "max_entry": self.max_entry,
            "min_eig": self.min_eig,
            "dtype": self.dtype,
        }

    def _check_z(self, z, name="z"):
        want = (self.n_times, *self.state_shape)
        if jnp.shape(z) != want:
            raise ValueError(
                f"`{name}` must have shape {want} (T, *state); got {jnp.shape(z)}."
            )

    def _features(self, z, s):
        self._check_z(z)
        z = jnp.asarray(z)
        if not jnp.issubdtype(z.dtype, jnp.floating):
            raise TypeError(f"`z` must be a floating array; got dtype {z.dtype}.")
        s = jnp.asarray(s, z.dtype)
        if s.ndim != 0:
            raise ValueError(f"`s` must be a scalar level; got shape {s.shape}.")
        dt = jnp.dtype(self.dtype)
        z2 = z.reshape(self.n_times, -1).astype(dt)
        return z2, sinusoidal_embedding(s, self.embed_dim).astype(dt)

    def mean(
        self, z: Float[Array, "T *state"], s: ScalarLike
    ) -> Float[Array, "T *state"]:
        r"""$\mu(z; \theta, s)$, same shape as `z`."""
        z2, emb = self._features(z, s)
        out = self.mean_net(z2, emb, 1).reshape(z.shape).astype(z.dtype)
        return z + out if self.residual else out

    def factor(
        self, z: Float[Array, "T *state"], s: ScalarLike
    ) -> Float[Array, "b1 d"]:
        r"""Band storage of $L(z; \theta, s)$: `factor[k, i]` $= L_{i+k, i}$, shape
        `(b+1, d)`.

        $L_{ii} = c \tanh(\mathrm{softplus}(u_{0i}) / c) > 0$, $L_{i+k, i} = c
        \tanh(u_{ki} / c)$ for the network outputs $u$; entries outside the matrix ($i +
        k \ge d$) are zero.
        """
        if self.factor_net is None:
            raise ValueError(
                "An unconditional model (`conditional=False`) has no factor."
            )
        z2, emb = self._features(z, s)
        raw = self.factor_net(z2, emb, self.bandwidth + 1).astype(jnp.asarray(z).dtype)
        c = jnp.asarray(self.max_entry, raw.dtype)
        raw = raw.at[0].set(jax.nn.softplus(raw[0]))
        lb = c * jnp.tanh(raw / c)
        return jnp.where(valid_band_mask(self.bandwidth, self.size), lb, 0)

    def band(self, z: Float[Array, "T *state"], s: ScalarLike) -> Float[Array, "b1 d"]:
        r"""Band storage of $L L^\top + \varepsilon I$ (the precision $Q$ or the
        covariance $P$, see `form`): symmetric positive definite with eigenvalues in
        $[\varepsilon, \varepsilon + ((b+1) c)^2]$."""
        band = lower_band_gram(self.factor(z, s))
        return band.at[0].add(jnp.asarray(self.min_eig, band.dtype))

    def moments(self, z: Float[Array, "T *state"], s: ScalarLike):
        """`(mean, band)` of the local Gaussian prior at `(z, s)` (see `mean`,
        `band`)."""
        return self.mean(z, s), self.band(z, s)

    def __call__(self, z, obs, s, obs_var, *, max_obs=None):
        """The assimilation operator $A(z, y; \\theta, s)$ as a bare array (for
        training losses): `jaxda.incremental.assimilate(...).x` without the result code.
        Shapes and concrete values are checked as in `assimilate` (`ValueError`)."""
        _check_args(self, z, obs, obs_var)
        return _assimilate(self, jnp.asarray(z), obs, s, obs_var, max_obs)[0]


def band_gaussian_map(mean, band, form, obs, obs_var, max_obs=None):
    r"""MAP under $\mathcal N(\mu, A^{-1})$ (`form="precision"`) or $\mathcal N(\mu, A)$
    (`form="covariance"`), $A$ given by `band`, with the banded solvers of
    `jaxda.gaussian` ($O(d b^2)$, implicit derivatives). With `max_obs` the covariance
    form is solved in observation space ($O(m^3 + d b)$, see
    `jaxda.gaussian.map_covariance`); the precision form has no such shortcut and
    ignores it.

    **Returns:** `(mean, ok)`, `ok` whether the factorisation succeeded."""
    mat = SymmetricBandMatrix(band)
    if form == "precision":
        out = gaussian.map_precision(
            mean, mat, obs.values, obs.mask, obs_var, throw=False
        )
    else:
        out = gaussian.map_covariance(
            mean, mat, obs.values, obs.mask, obs_var, max_obs=max_obs, throw=False
        )
    return out.mean, out.result == RESULTS.successful


class MAPSolution(eqx.Module):
    """Output of `assimilate`: the MAP at one level and its result code.

    **Fields:**

    - `x`: the estimate $A(z, y; \\theta, s)$, shape `(T, *state)`.
    - `result`: a `jaxda.RESULTS`: `successful`, `invalid_input` (a non-finite `z` or
      observed value, or `obs_var <= 0`, seen under `jit`), `nonfinite` (the estimate is
      not finite, e.g. from a first guess of $10^{30}$) or `not_positive_definite`
      (the banded Cholesky of the MAP failed).
    """

    x: Array
    result: RESULTS


def _check_obs(model: NeuralBandGaussian, obs) -> Observations:
    return Observations.check(obs, model.state_shape, n_times=model.n_times, name="obs")


def _check_args(model, z, obs, obs_var, z_name="z"):
    """Static checks, and the value checks that can be made eagerly (concrete values):
    `ValueError` naming the argument."""
    model._check_z(z, z_name)
    check_finite(z_name, z)
    if model.conditional:
        _check_obs(model, obs)
        check_positive("obs_var", obs_var)


def _valid(model, z, obs, obs_var):
    """The same value checks on traced values (for `RESULTS.invalid_input`)."""
    ok = all_finite(z)
    if model.conditional:
        observed = jnp.where(obs.mask, obs.values, 0)
        ok = ok & all_finite(observed) & all_positive(obs_var)
    return ok


def assimilate(
    model: NeuralBandGaussian,
    z: Float[Array, "T *state"],
    obs: Observations,
    s: ScalarLike,
    obs_var: ScalarLike | Float[Array, "T *state"],
    *,
    max_obs: int | None = None,
    throw: bool = True,
) -> MAPSolution:
    r"""The neural assimilation operator (eq. 3.2) at level $s$, with its result code.

    $A(z, y; \theta, s) = x_{\mathrm{MAP}}(y; \mu, P) = \arg\min_x \tfrac12\|x -
    \mu\|^2_{P^{-1}} + \tfrac12\|Hx - y\|^2_{R^{-1}}$ with $\mu = \mu(z; \theta, s)$, $P
    = P(z; \theta, s)$ banded (or its banded precision), $H$ the selection of `obs.mask`
    and $R = \mathrm{diag}(r)$. It is solved in $O(d b^2)$ by `jaxda.gaussian` and
    differentiated implicitly. For an unconditional model it is $\mu(z; \theta, s)$
    (`obs` unused). `model(z, obs, s, obs_var)` is the same operator returning the
    bare array (for training losses).

    **Arguments:**

    - `model`: a `NeuralBandGaussian`.
    - `z`: current estimate `(T, *state)`.
    - `obs`: `Observations` of the same shape.
    - `s`: level in $[0, 1]$.
    - `obs_var`: observation noise variance $r > 0$ (scalar or per entry).
    - `max_obs`: optional static bound on the number of observed entries per window
      (e.g. `pattern.max_count(T, state_shape)`): the covariance-form MAP is then
      solved in observation space, $O(m^3 + d b)$ with no sequential pass over the
      window (`jaxda.gaussian.map_covariance`). A window with more observations gives
      a non-finite estimate (`RESULTS.nonfinite`).
    - `throw`: raise (eagerly and under `jit`) when `result` is not successful;
      `False` to inspect `result` instead.

    Compiled with `eqx.filter_jit` (one compilation per shape and `max_obs`).

    **Returns:** a `MAPSolution` (`.x` the estimate `(T, *state)`, `.result`).

    Non-finite `z`, `obs_var <= 0` or a wrong shape raise `ValueError` eagerly; under
    `jit` the value checks give `RESULTS.invalid_input`.
    """
    _check_args(model, z, obs, obs_var)
    max_obs = None if max_obs is None else check_int("max_obs", max_obs, minimum=1)
    z = jnp.asarray(z)
    s = jnp.asarray(s, z.dtype)
    if s.ndim != 0:
        raise ValueError(f"`s` must be a scalar level; got shape {s.shape}.")
    obs_var = jnp.asarray(obs_var, z.dtype)
    return _assimilate_checked(model, z, obs, s, obs_var, max_obs, bool(throw))


@eqx.filter_jit
def _assimilate_checked(model, z, obs, s, obs_var, max_obs, throw):
    x, ok = _assimilate(model, z, obs, s, obs_var, max_obs)
    result = first_failure(
        (~_valid(model, z, obs, obs_var), RESULTS.invalid_input),
        (~all_finite(x), RESULTS.nonfinite),
        (~ok, RESULTS.not_positive_definite),
    )
    return raise_if_failed(MAPSolution(x, result), result, throw)


def _assimilate(model, z, obs, s, obs_var, max_obs=None):
    """`(estimate, ok)`, no checks; `ok` is False when the MAP's Cholesky failed."""
    mean = model.mean(z, s)
    if not model.conditional:
        return mean, jnp.asarray(True)
    band = model.band(z, s)
    x, ok = band_gaussian_map(mean, band, model.form, obs, obs_var, max_obs)
    return x.reshape(mean.shape), ok
