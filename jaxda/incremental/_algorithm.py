r"""Neural incremental data assimilation [B24, §3.2 and Algorithm 2].

Levels $s_k = 1 - k/(\ell + 1)$, $k = 0, \dots, \ell$ (`default_levels`). Training pairs
at level $s$ interpolate between the first guess $z_0$ and the truth $x$ (eq. 3.4), $z =
s z_0 + (1 - s) x$, and the objective (3.5) is the reconstruction error of the
assimilation operator $A(z, y; \theta, s)$ averaged over levels.

Inference (Algorithm 2) follows the cold-diffusion sampler of Bansal et al. (their
Algorithm 2, "TACoS"): with the degradation $D(x, s) = s z_0 + (1 - s) x$ of eq. 3.4,

$$x_k = A(z_k, y; \theta, s_k), \qquad z_{k+1} = z_k - D(x_k, s_k) + D(x_k, s_{k+1})
      = z_k + (s_k - s_{k+1})(x_k - z_0),$$

with $s_{\ell+1} = 0$. The printed Algorithm 2 of [B24] writes the step as $s_k(x_k -
z_0)$; only the difference $s_k - s_{k+1}$ keeps $z_k$ on the path (3.4) used for
training (if $x_k = x$ then $z_{k+1} = s_{k+1} z_0 + (1 - s_{k+1}) x$ exactly), and it
is what the authors' code does. The estimate returned is the last MAP $x_\ell$ (it
honours the observations); the last iterate $z_{\ell+1}$ is returned as well.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Key, Scalar, ScalarLike
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import check_int, check_positive, is_concrete
from ..obs import Observations, observe
from ._band_gaussian import NeuralBandGaussian, _assimilate, _check_args, _valid


def default_levels(ell: int = 5, dtype=None) -> Float[Array, " L"]:
    r"""Levels $s_k = 1 - k/(\ell + 1)$, $k = 0, \dots, \ell$ ([B24] uses $\ell =
    5$).

    $\ell = 0$ gives the single level $s = 1$: one-shot assimilation from $z_0$ (the
    pendulum experiment). **Returns:** a decreasing array of $\ell + 1$ levels in $(0,
    1]$.
    """
    ell = check_int("ell", ell, minimum=0)
    dtype = jnp.float32 if dtype is None else dtype
    return 1.0 - jnp.arange(ell + 1, dtype=dtype) / (ell + 1)


class IncrementalSolution(eqx.Module):
    """Output of `incremental_assimilation`.

    **Fields:**

    - `x`: the estimate, the last MAP $x_\\ell$, shape `(T, *state)`.
    - `z`: the last iterate $z_{\\ell+1}$.
    - `estimates`: every $x_k$, shape `(ell + 1, T, *state)`.
    - `iterates`: $z_0, \\dots, z_\\ell$, shape `(ell + 1, T, *state)`.
    - `result`: a `jaxda.RESULTS`: `successful`; `invalid_input` (a non-finite `z0` or
      observed value, or `obs_var <= 0`, seen under `jit`); `nonfinite` (an estimate
      is not finite, e.g. from a first guess of $10^{30}$, or more observations than
      `max_obs`); `not_positive_definite` (a MAP's banded Cholesky failed).
    """

    x: Array
    z: Array
    estimates: Array
    iterates: Array
    result: RESULTS


def _check_levels(levels):
    levels = jnp.asarray(levels)
    if levels.ndim != 1 or levels.shape[0] < 1:
        raise ValueError(
            f"`levels` must be a non-empty 1-D array of levels in (0, 1]; got shape "
            f"{levels.shape}."
        )
    if is_concrete(levels):
        lv = np.asarray(levels)
        if np.any(lv <= 0) or np.any(lv > 1) or np.any(np.diff(lv) >= 0):
            raise ValueError(
                f"`levels` must be strictly decreasing in (0, 1]; got {lv.tolist()}."
            )
    return levels


def incremental_assimilation(
    model: NeuralBandGaussian,
    z0: Float[Array, "T *state"],
    obs: Observations,
    obs_var: ScalarLike | Float[Array, "T *state"],
    levels: Float[Array, " L"] | None = None,
    *,
    max_obs: int | None = None,
    throw: bool = True,
) -> IncrementalSolution:
    r"""Algorithm 2 of [B24]: coarse-to-fine neural assimilation from a first guess.

    For $k = 0, \dots, \ell$: $x_k = A(z_k, y; \theta, s_k)$ and $z_{k+1} = z_k + (s_k -
    s_{k+1})(x_k - z_0)$, $s_{\ell+1} = 0$ (the cold-diffusion update; see the module
    docstring for why $s_k - s_{k+1}$). A `lax.scan` over levels: jit- and
    vmap-friendly. With an unconditional model the observations enter only through
    $z_0$.

    **Arguments:**

    - `model`: a trained `NeuralBandGaussian`.
    - `z0`: first guess `(T, *state)` (e.g. the Gaussian MAP under empirical moments).
    - `obs`: `Observations`; `obs_var`: noise variance $r > 0$.
    - `levels`: the training levels $s_0 > \dots > s_\ell$ (default
      `default_levels(5)`).
    - `max_obs`: optional static bound on the number of observed entries per window
      (e.g. `pattern.max_count(T, state_shape)`): the covariance-form MAP is then
      solved in observation space, $O(m^3 + d b)$ with no sequential pass over the
      window (`jaxda.gaussian.map_covariance`). A window with more observations gives
      a non-finite estimate (`RESULTS.nonfinite`).
    - `throw`: raise (eagerly and under `jit`) when `result` is not successful;
      `False` to inspect `result` instead (e.g. under `vmap`).

    **Returns:** an `IncrementalSolution` (`.x` is the estimate, `.result`).

    A wrong shape, a non-finite `z0` or `obs_var <= 0` raise `ValueError` eagerly;
    under `jit` these value checks give `RESULTS.invalid_input`.
    """
    _check_args(model, z0, obs, obs_var, "z0")
    z0 = jnp.asarray(z0)
    levels = _default_levels_np(z0.dtype) if levels is None else _check_levels(levels)
    max_obs = _check_max_obs(max_obs)
    obs_var = np.asarray(obs_var, z0.dtype) if is_concrete(obs_var) else obs_var
    return _algorithm2(model, z0, obs, obs_var, levels, max_obs, bool(throw))


_DEFAULT_LEVELS: dict = {}


def _default_levels_np(dtype):
    """`default_levels(5, dtype)` as a NumPy array, computed once per dtype (no device
    work per call)."""
    key = np.dtype(dtype).name
    if key not in _DEFAULT_LEVELS:
        with jax.ensure_compile_time_eval():  # also when called under jit
            _DEFAULT_LEVELS[key] = np.asarray(default_levels(5, dtype))
    return _DEFAULT_LEVELS[key]


def _check_max_obs(max_obs):
    return None if max_obs is None else check_int("max_obs", max_obs, minimum=1)


@eqx.filter_jit
def _algorithm2(model, z0, obs, obs_var, levels, max_obs, throw=False):
    levels = levels.astype(z0.dtype)
    nxt = jnp.concatenate([levels[1:], jnp.zeros((1,), levels.dtype)])

    def body(z, sk):
        s, s_next = sk
        x, ok = _assimilate(model, z, obs, s, obs_var, max_obs)
        return z + (s - s_next) * (x - z0), (x, z, ok)

    z_last, (xs, zs, oks) = jax.lax.scan(body, z0, (levels, nxt))
    result = first_failure(
        (~_valid(model, z0, obs, obs_var), RESULTS.invalid_input),
        (~all_finite(xs), RESULTS.nonfinite),
        (~jnp.all(oks), RESULTS.not_positive_definite),
    )
    sol = IncrementalSolution(
        x=xs[-1], z=z_last, estimates=xs, iterates=zs, result=result
    )
    return raise_if_failed(sol, result, throw)


def incremental_loss(
    model: NeuralBandGaussian,
    x: Float[Array, "T *state"],
    z0: Float[Array, "T *state"],
    obs: Observations,
    obs_var: ScalarLike | Float[Array, "T *state"],
    levels: Float[Array, " L"] | None = None,
    *,
    max_obs: int | None = None,
) -> Scalar:
    r"""Objective (3.5) for one training pair, averaged over levels and entries.

    $\frac{1}{(\ell + 1) d}\sum_{k=0}^{\ell} \|A(s_k z_0 + (1 - s_k) x, y; \theta, s_k)
    - x\|^2$. Gradients flow through the MAP by implicit differentiation
    (`jaxda.gaussian`, or autodiff through the $m \times m$ Cholesky with `max_obs`, see
    `assimilate`); $z_0$ is treated as data (no gradient).

    **Returns:** a scalar.
    """
    model._check_z(x, "x")
    _check_args(model, z0, obs, obs_var, "z0")
    levels = _check_levels(default_levels(5) if levels is None else levels)
    max_obs = _check_max_obs(max_obs)
    x = jnp.asarray(x)
    z0 = jax.lax.stop_gradient(jnp.asarray(z0, x.dtype))
    levels = levels.astype(x.dtype)

    def one(s):
        z = s * z0 + (1 - s) * x
        xhat = _assimilate(model, z, obs, s, obs_var, max_obs)[0]
        return jnp.mean((xhat - x) ** 2)

    return jnp.mean(jax.vmap(one)(levels))


def make_incremental_loss(
    first_guess: Callable[[Observations], Float[Array, "T *state"]],
    pattern: Callable[[Key, int, tuple[int, ...]], Array],
    noise_std: float,
    levels: Float[Array, " L"] | None = None,
    *,
    max_obs: int | None = None,
) -> Callable[[NeuralBandGaussian, Float[Array, "T *state"], Key], Scalar]:
    r"""Per-example loss for `jaxda.train.fit` with a fresh observation process per
    pair.

    For a truth window $x$ and a key: draw a mask `pattern(key1, T, state_shape)` (e.g.
    a `jaxda.obs.RandomPhasePattern` with the *training* phases), observations $y = m
    \odot (x + \sigma\varepsilon)$ (`jaxda.obs.observe` with `key2`), the first guess
    $z_0$ = `first_guess(obs)`, and return `incremental_loss(model, x, z0, obs, sigma^2,
    levels)`. Since `jaxda.train` derives the keys from the step, every pair sees a new
    observation process at every epoch.

    **Arguments:**

    - `first_guess`: `first_guess(obs) -> z0` for one window (e.g.
      `jaxda.data.BandedGaussian.map` or a wrapper of
      `jaxda.data.gaussian_first_guess`).
    - `pattern`: `pattern(key, T, state_shape) -> mask` (a `jaxda.obs.AbstractPattern`).
    - `noise_std`: observation noise standard deviation $\sigma > 0$.
    - `levels`: training levels (default `default_levels(5)`).
    - `max_obs`: passed to `incremental_loss`; e.g. `pattern.max_count(T,
      state_shape)`.

    **Returns:** `loss_fn(model, x, key) -> scalar`.
    """
    check_positive("noise_std", noise_std)
    levels = _check_levels(default_levels(5) if levels is None else levels)
    max_obs = _check_max_obs(max_obs)

    def loss_fn(model, x, key):
        kmask, knoise = jax.random.split(key)
        mask = pattern(kmask, x.shape[0], tuple(x.shape[1:]))
        obs = observe(knoise, x, mask, noise_std=noise_std)
        z0 = first_guess(obs)
        return incremental_loss(
            model, x, z0, obs, noise_std**2, levels, max_obs=max_obs
        )

    return loss_fn


def neural_then_refine(
    model: NeuralBandGaussian,
    z0: Float[Array, "T *state"],
    obs: Observations,
    obs_var: ScalarLike | Float[Array, "T *state"],
    refine: Callable[[Float[Array, "T *state"], Observations], object],
    levels: Float[Array, " L"] | None = None,
    *,
    max_obs: int | None = None,
    throw: bool = True,
):
    r"""Neural estimate, then a physical refinement ([B24] §4.2, "neural + 4DVar").

    Runs `incremental_assimilation` and hands its estimate to `refine(x_init, obs)`,
    e.g. a weak-constraint 4DVar solver from `jaxda.var` started at the neural estimate
    (that solver's solution reports its iteration count, to compare with a start from
    $z_0$).

    **Returns:** `(neural_solution, refine(neural_solution.x, obs))`; `throw` is
    passed to `incremental_assimilation`.
    """
    sol = incremental_assimilation(
        model, z0, obs, obs_var, levels, max_obs=max_obs, throw=throw
    )
    return sol, refine(sol.x, obs)
