r"""Maximum-likelihood fitting of SPDE priors on training windows.

For training windows $x_1, \dots, x_N$ (`(N, T, ny, nx)`, $d = T n_y n_x$ values
each) and a prior $p_\theta = \mathcal N(\mu_\theta, Q_\theta^{-1})$ built from
unconstrained parameters $\theta$, the objective is the mean negative
log-density per value, without the constant $\tfrac12\log 2\pi$:

$$\ell(\theta) = \frac1d\Big(\frac1N\sum_{n=1}^N \tfrac12\|G_\theta(x_n -
\mu_\theta)\|^2 - \tfrac12\log|Q_\theta|\Big) = -\frac1{Nd}\sum_n \log
p_\theta(x_n) - \tfrac12\log 2\pi,$$

with the exact log-determinant of `SPDEPrior.logdet_precision` (FFT, banded
Cholesky or dense) and its gradient by automatic differentiation.

**Which start.** With the default initial amplitude of `SPDEParameters` ($\tau_0$
tied to $\kappa$ and $\tau$ by the stationary variance of a process without
diffusion) the objective can have more than one basin. On daily QG SSH (almost
perfectly persistent over a 9-day window: lag-1 correlation above 0.999) it has a
long-memory optimum and a degenerate no-memory direction ($\kappa$, $\tau$, $h \to
\infty$ together: every day an independent Matérn field) of higher objective, and
a start at $\kappa^2 = 0.1$ per day runs down the latter. Fitting $\tau_0$ as a
parameter of its own removes that direction there (one optimum from either start).
`starts` fits several starting points with the same settings and keeps the best;
`gradient_norm` and `nll_history` show whether a run converged.

**Which optimizer.** Adam (the default) tolerates starts far from the optimum and
regions where the prior is invalid, but converges slowly: on the tests' problem
(three log-parameters, 200 windows) its gradient norm was still $3\cdot10^{-3}$
after 1500 steps, where L-BFGS (`optax.lbfgs` with
`optax.scale_by_backtracking_linesearch`) reached $10^{-8}$ in 14 iterations.
`optax.lbfgs()`'s default zoom line search is the safer choice (on the QG SSH of
`benchmarks/bench_ssh_spde.py` the backtracking one stalled at a gradient norm of
0.27), at the price of a larger compiled step.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._custom_types import Array, ArrayLike, Float, Int
from .._results import RESULTS, raise_if_failed
from .._validation import check_choice, check_int, check_positive, check_real
from ._prior import LOGDETS, SPDEPrior


class MaximumLikelihoodFit(eqx.Module):
    """The outcome of `fit_maximum_likelihood`.

    **Fields:**

    - `theta`: the parameters with the lowest finite objective met (a pytree like
      `theta0`).
    - `nll`: the objective $\\ell$ at `theta` (mean negative log-density per value,
      without $\\tfrac12\\log 2\\pi$; NaN when no finite value was met).
    - `gradient_norm`: the Euclidean norm of $\\nabla_\\theta \\ell$ at `theta`.
    - `nll_history`: $\\ell$ at every iterate of the retained start (the start
      first).
    - `start_nll`: the best $\\ell$ of each start (`theta0` first, then `starts`).
    - `num_steps`: the optimiser updates the retained start's run applied (it
      stops at `steps`, at `gtol` or at a non-finite value).
    - `result`: `RESULTS.successful`; `RESULTS.nonfinite_loss` when the retained
      run met a non-finite objective or gradient (it stopped there and kept the best
      finite iterate) or no start had a finite objective; `RESULTS.max_steps_reached`
      when `gtol` was given and not met.
    """

    theta: Any
    nll: Float[Array, ""]
    gradient_norm: Float[Array, ""]
    nll_history: Float[Array, " evaluations"]
    start_nll: Float[Array, " starts"]
    num_steps: Int[Array, ""]
    result: RESULTS


def _check_windows(name: str, windows, shape) -> None:
    if not isinstance(windows, jax.Array | np.ndarray):
        raise TypeError(
            f"`{name}` must be an array of windows (N, T, ny, nx); got "
            f"{type(windows).__name__}."
        )
    if windows.ndim != 4 or windows.shape[1:] != tuple(shape) or not windows.shape[0]:
        raise ValueError(
            f"`{name}` must have shape (N, {', '.join(map(str, shape))}) with N >= 1 "
            f"(windows of the prior's shape (T, ny, nx)); got {windows.shape}."
        )
    check_real(name, windows)


def negative_log_likelihood(
    prior: SPDEPrior,
    windows: Float[ArrayLike, "N T ny nx"],
    *,
    logdet: str = "auto",
) -> Float[Array, ""]:
    r"""The mean negative log-density per value of `windows` under `prior`, without
    the constant $\tfrac12\log 2\pi$ (the objective $\ell$ of the module docstring):
    $\big(\frac1N\sum_n \tfrac12\|G(x_n - \mu)\|^2 - \tfrac12\log|Q|\big)/d$.

    **Arguments:** `prior` (a `jaxda.spde.SPDEPrior`), `windows` `(N, T, ny, nx)`,
    `logdet` (`SPDEPrior.logdet_precision`'s method). **Returns:** a scalar;
    non-finite when the log-determinant is (a singular or invalid prior).
    Differentiable with respect to the prior's arrays.
    """
    if not isinstance(prior, SPDEPrior):
        raise TypeError(
            f"`prior` must be a jaxda.spde.SPDEPrior; got {type(prior).__name__}."
        )
    _check_windows("windows", windows, prior.shape)
    check_choice("logdet", logdet, LOGDETS)
    return _objective_jit(prior, jnp.asarray(windows, prior.dtype), logdet)


def _objective(prior: SPDEPrior, windows, logdet: str):
    energy = jnp.mean(jax.vmap(prior.energy)(windows))
    return (energy - 0.5 * prior.logdet_precision(logdet, throw=False)) / prior.size


_objective_jit = eqx.filter_jit(_objective)


def _check_theta(name: str, theta) -> None:
    leaves = jax.tree.leaves(theta)
    bad = [
        leaf
        for leaf in leaves
        if not (
            isinstance(leaf, jax.Array | np.ndarray)
            and jnp.issubdtype(leaf.dtype, jnp.floating)
        )
    ]
    if not leaves or bad:
        what = f"a leaf of type {type(bad[0]).__name__}" if bad else "no leaves"
        raise TypeError(
            f"`{name}` must be a pytree of floating arrays (the unconstrained "
            f"parameters); got {type(theta).__name__} with {what}."
        )


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an optional extra
        return None
    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)


def fit_maximum_likelihood(
    build: Callable[[Any], SPDEPrior],
    theta0,
    windows: Float[ArrayLike, "N T ny nx"],
    *,
    steps: int,
    learning_rate: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
    starts: Sequence = (),
    gtol: float | None = None,
    logdet: str = "auto",
    progress: bool = True,
    throw: bool = True,
) -> MaximumLikelihoodFit:
    r"""Maximum likelihood of an SPDE prior on training windows: minimise $\ell(\theta)$
    (the mean negative log-density per value, without $\tfrac12\log 2\pi$; module
    docstring) by `optimizer` on the unconstrained parameters $\theta$.

    Each iteration evaluates $\ell$ and $\nabla\ell$ at the current $\theta_i$ (one
    compiled program), records the pair if $\ell(\theta_i)$ is the lowest finite
    value so far, and updates; $\theta_{\text{steps}}$ is evaluated too. A
    non-finite $\ell$ or gradient stops that run at its best finite iterate.

    **Arguments:**

    - `build`: `build(theta) -> SPDEPrior`, traceable (e.g. `exp` of log-parameters
      into `SPDEParameters`).
    - `theta0`: the starting parameters, a pytree of floating arrays.
    - `windows`: the training windows `(N, T, ny, nx)` of the prior's shape (cast to
      its dtype).
    - `steps`: optimiser updates per start ($\ge 1$).
    - `learning_rate` $> 0$: of the default optimizer, `optax.adam(learning_rate)`.
    - `optimizer`: any optax transformation instead (e.g. `optax.lbfgs()`: it gets
      `value`, `grad` and `value_fn` as extra arguments).
    - `starts`: more starting points like `theta0`, fitted the same way; the start of
      lowest $\ell$ is returned.
    - `gtol`: stop a run when $\|\nabla\ell\| \le$ `gtol` (default: run `steps`);
      when given and not met, `result` is `max_steps_reached`.
    - `logdet`: the method of `SPDEPrior.logdet_precision` (`"auto"`, `"fft"`,
      `"banded"`, `"dense"`).
    - `progress`: a tqdm bar per start (if tqdm is installed).
    - `throw`: raise an `equinox.EquinoxRuntimeError` when `result` is not
      successful.

    **Returns:** a `jaxda.spde.MaximumLikelihoodFit`.
    """
    if not callable(build):
        raise TypeError(f"`build` must be callable; got {type(build).__name__}.")
    starts = list(starts) if isinstance(starts, list | tuple) else starts
    if not isinstance(starts, list):
        raise TypeError(
            f"`starts` must be a list or tuple of pytrees like `theta0`; got "
            f"{type(starts).__name__}."
        )
    _check_theta("theta0", theta0)
    structure = jax.tree.structure(theta0)
    for i, start in enumerate(starts):
        _check_theta(f"starts[{i}]", start)
        if jax.tree.structure(start) != structure:
            raise ValueError(
                f"`starts[{i}]` must have the pytree structure of `theta0` "
                f"({structure}); got {jax.tree.structure(start)}."
            )
    steps = check_int("steps", steps, minimum=1)
    check_positive("learning_rate", learning_rate)
    if gtol is not None:
        check_positive("gtol", gtol)
    check_choice("logdet", logdet, LOGDETS)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    # shapes only: the values of a non-finite start are reported in `result`
    prior0 = eqx.filter_eval_shape(build, theta0)
    if not isinstance(prior0, SPDEPrior):
        raise TypeError(
            f"`build(theta0)` must return a jaxda.spde.SPDEPrior; got "
            f"{type(prior0).__name__}."
        )
    _check_windows("windows", windows, prior0.shape)
    windows = jnp.asarray(windows, prior0.dtype)
    optimizer = (
        _adam(float(learning_rate))
        if optimizer is None
        else optax.with_extra_args_support(optimizer)
    )
    step = functools.partial(_step, build, optimizer, logdet)

    runs = []
    all_starts = [theta0, *starts]
    for i, start in enumerate(all_starts):
        desc = "SPDE fit" + (f" {i + 1}/{len(all_starts)}" if starts else "")
        runs.append(_run(step, optimizer, start, windows, steps, gtol, desc, progress))
    values = [r["nll"] for r in runs]
    finite = [i for i, v in enumerate(values) if np.isfinite(v)]
    chosen = min(finite, key=values.__getitem__) if finite else 0
    run = runs[chosen]
    if not finite or run["hit_nonfinite"]:
        result = RESULTS.nonfinite_loss
    elif gtol is not None and not run["gradient_norm"] <= gtol:
        result = RESULTS.max_steps_reached
    else:
        result = RESULTS.successful
    dtype = prior0.dtype
    out = MaximumLikelihoodFit(
        theta=run["theta"],
        nll=jnp.asarray(run["nll"], dtype),
        gradient_norm=jnp.asarray(run["gradient_norm"], dtype),
        nll_history=jnp.asarray(run["history"], dtype),
        start_nll=jnp.asarray(values, dtype),
        num_steps=jnp.asarray(run["num_steps"]),
        result=result,
    )
    return raise_if_failed(out, out.result, throw)


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float):
    """One default optimizer per rate, so repeated fits reuse their compiled step."""
    return optax.with_extra_args_support(optax.adam(learning_rate))


@eqx.filter_jit
def _step(build, optimizer, logdet, theta, state, windows):
    r"""$\ell$ and its gradient's norm at `theta`, and the optimiser's update (one
    compiled program per `build`, optimizer and method)."""

    def value_fn(t):
        return _objective(build(t), windows, logdet)

    value, grad = jax.value_and_grad(value_fn)(theta)
    grad_norm = optax.tree.norm(grad)
    updates, state = optimizer.update(
        grad, state, theta, value=value, grad=grad, value_fn=value_fn
    )
    return optax.apply_updates(theta, updates), state, value, grad_norm


def _run(step, optimizer, theta, windows, steps, gtol, desc, progress) -> dict:
    """One start: the host loop over the compiled step, keeping the best finite
    iterate (its parameters are those *before* the update of the step that
    evaluated them)."""
    state = optimizer.init(theta)
    best = dict(theta=theta, nll=np.nan, gradient_norm=np.nan)
    history, hit_nonfinite, i = [], False, 0
    bar = _progress(steps + 1, desc, progress)
    try:
        for i in range(steps + 1):
            new, new_state, value, grad_norm = step(theta, state, windows)
            value, grad_norm = float(value), float(grad_norm)
            if not (np.isfinite(value) and np.isfinite(grad_norm)):
                hit_nonfinite = True
                break
            history.append(value)
            if not value >= best["nll"]:  # lower, or the first finite value (NaN)
                best = dict(theta=theta, nll=value, gradient_norm=grad_norm)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(nll=f"{value:.5g}", grad=f"{grad_norm:.2g}")
            if (gtol is not None and grad_norm <= gtol) or i == steps:
                break
            theta, state = new, new_state
    finally:
        if bar is not None:
            bar.close()
    return dict(
        best, history=np.asarray(history), hit_nonfinite=hit_nonfinite, num_steps=i
    )


__all__ = ["MaximumLikelihoodFit", "fit_maximum_likelihood", "negative_log_likelihood"]
