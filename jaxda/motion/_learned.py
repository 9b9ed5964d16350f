r"""Learning over 4DVar [FBC23]: a network trained with the 4DVar cost of its output.

A network $f_\theta$ (`MotionNet`) maps the observations $y_b$ of window $b$ to its
control, the initial state $x_0 = (\eta_0, u_0, v_0)$. Trained over many windows with

$$\mathcal L_{\rm 4DVar}(\theta) = \frac1B \sum_b J_b\big(f_\theta(y_b)\big),$$

$J_b$ the (optionally penalised) strong-constraint 4DVar cost of window $b$
(`fourdvar_loss`), it needs no ground truth: the model and the observations are the
supervision, and the gradient backpropagates through the model's window. The
supervised comparison (`supervised_loss`) needs the true $x_0$:
$\frac1B\sum_b \|(f_\theta(y_b) - x_{0,b}) / s\|^2 / n$, in the net's normalised
units $s$ (`MotionNet.control_scale`). The hybrid (`hybrid_4dvar`) starts 4DVar from
$f_\theta(y)$ and never returns a control costlier than that start.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._custom_types import Array, Float, Key, Scalar
from .._results import raise_if_failed
from .._validation import check_int, check_key, check_positive
from ..obs import Observations
from ..train import TrainResult, fit
from ..var import LBFGS, AbstractSolver, AbstractVarProblem, Solution, solve
from ._networks import MotionNet


ProblemFn = Callable[[Observations], AbstractVarProblem]


def _check_net(net) -> None:
    if not isinstance(net, MotionNet):
        raise TypeError(
            f"`net` must be a jaxda.motion.MotionNet; got {type(net).__name__}."
        )


def _example_obs(example) -> Observations:
    """The observations of one training example: `(initial, obs)` or `obs`."""
    obs = example[1] if isinstance(example, tuple) else example
    if not isinstance(obs, Observations):
        raise TypeError(
            "a training example must be `(initial, obs)` or `obs`, with `obs` a "
            f"jaxda.obs.Observations; got {type(obs).__name__}."
        )
    return obs


def fourdvar_loss(problem_fn: ProblemFn) -> Callable:
    r"""The learning-over-4DVar loss of one example: $J(f_\theta(y))$.

    **Arguments:**

    - `problem_fn`: `problem_fn(obs) -> problem`, the 4DVar problem of one window
      whose control is the net's output, e.g.
      `lambda obs: jaxda.motion.motion_4dvar(flow, obs, noise_std, penalty=penalty)`
      (penalised: the natural unsupervised loss). It is called on traced
      observations inside the training step.

    **Returns:** `loss_fn(net, example, key) -> J` for `jaxda.train.fit`, `example`
    being `(initial, obs)` (the `initial` state is not used) or `obs`.
    """
    if not callable(problem_fn):
        raise TypeError(
            f"`problem_fn` must be callable (obs -> problem); got "
            f"{type(problem_fn).__name__}."
        )

    def loss_fn(net, example, key=None):
        obs = _example_obs(example)
        return problem_fn(obs).cost(net(obs))

    return loss_fn


def supervised_loss(net, example, key=None) -> Scalar:
    r"""The supervised loss of one example `(initial, obs)`:
    $\frac1n \|(f_\theta(y) - x_0) / s\|^2$, the mean square error of the predicted
    control in the net's normalised units ($s$ = `net.control_scale` per channel, $n$
    the number of entries), so that every channel counts at its typical amplitude.
    Needs the truth $x_0$; a loss for `jaxda.train.fit`."""
    if not (isinstance(example, tuple) and len(example) == 2):
        raise TypeError(
            "`supervised_loss` needs examples `(initial, obs)` (the true initial "
            f"state); got {type(example).__name__}."
        )
    initial, obs = example
    pred = net(obs)
    scale = jnp.asarray(net.control_scale, pred.dtype)[:, None, None]
    return jnp.mean(((pred - initial) / scale) ** 2)


def _check_samples(name: str, samples, net: MotionNet) -> tuple:
    """`(initial, obs)` arrays of a `MotionSamples` (or such a tuple), checked
    against the net."""
    if isinstance(samples, tuple):
        initial, obs = samples
    else:
        initial, obs = getattr(samples, "initial", None), getattr(samples, "obs", None)
    if not isinstance(obs, Observations) or initial is None:
        raise TypeError(
            f"`{name}` must be a jaxda.motion.MotionSamples or a tuple (initial, obs); "
            f"got {type(samples).__name__}."
        )
    t, c, ny, nx = net.obs_shape
    if tuple(obs.values.shape[1:]) != net.obs_shape or obs.values.ndim != 5:
        raise ValueError(
            f"`{name}.obs` must have shape (N, {t}, {c}, {ny}, {nx}) for this net; got "
            f"{tuple(obs.values.shape)}."
        )
    n = obs.values.shape[0]
    if tuple(jnp.shape(initial)) != (n, c, ny, nx):
        raise ValueError(
            f"`{name}.initial` must have shape ({n}, {c}, {ny}, {nx}); got "
            f"{tuple(jnp.shape(initial))}."
        )
    return jnp.asarray(initial), obs


def mean_loss(loss_fn: Callable, net, samples, *, chunk_size: int = 16) -> Scalar:
    """The mean of `loss_fn(net, (initial, obs), None)` over a set of windows,
    computed in chunks of `chunk_size` windows (one compiled chunk)."""
    _check_net(net)
    initial, obs = _check_samples("samples", samples, net)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    n = initial.shape[0]
    total = 0.0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        part = jax.tree_util.tree_map(lambda a: a[start:stop], (initial, obs))
        total = total + float(_chunk_loss(loss_fn, net, part) * (stop - start))
    return total / n


@eqx.filter_jit
def _chunk_loss(loss_fn, net, batch):
    return jnp.mean(jax.vmap(lambda e: loss_fn(net, e, None))(batch))


def train_motion_net(
    net: MotionNet,
    samples,
    loss_fn: Callable,
    *,
    key: Key,
    n_steps: int,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    validation=None,
    eval_every: int = 0,
    checkpoint_path=None,
    progress: bool = True,
    throw: bool = False,
) -> tuple[MotionNet, TrainResult]:
    r"""Train a `MotionNet` on windows with `jaxda.train.fit` (Adam, cosine decay).

    The optimiser is Adam at `learning_rate` decayed by a cosine schedule to 1 % of it
    over `n_steps` steps, on batches of `batch_size` windows of `samples` drawn by
    `fit`'s seeded shuffling.

    **Arguments:**

    - `net`: the initial `MotionNet`.
    - `samples`: a `jaxda.motion.MotionSamples` (or a tuple `(initial, obs)` with
      leading sample axes); only `obs` is used by `fourdvar_loss`.
    - `loss_fn`: `fourdvar_loss(problem_fn)`, `supervised_loss`, or any
      `loss_fn(net, (initial, obs), key)`.
    - `key`: the run's key (batches and example keys).
    - `n_steps`, `batch_size`, `learning_rate`: the optimisation.
    - `validation`: optional windows (same types as `samples`): every `eval_every`
      steps and at the end, their mean `loss_fn` is recorded in
      `TrainResult.history` as `"val_loss"`.
    - `checkpoint_path`: optional checkpoint file (`fit`'s format; a run resumes).
    - `progress`: show `fit`'s progress bar.
    - `throw`: raise when the loss became non-finite (default `False`: a warning, and
      `result` says `RESULTS.nonfinite_loss`).

    **Returns:** `(trained_net, train_result)`; `trained_net` is `train_result.model`
    (the last parameters with a finite loss).
    """
    _check_net(net)
    check_key("key", key)
    n_steps = check_int("n_steps", n_steps, minimum=0)
    check_positive("learning_rate", learning_rate)
    data = _check_samples("samples", samples, net)
    if validation is not None:
        validation = _check_samples("validation", validation, net)
    schedule = optax.cosine_decay_schedule(learning_rate, max(n_steps, 1), alpha=0.01)
    eval_fn = None
    if validation is not None:

        def eval_fn(model, step):
            return {"val_loss": mean_loss(loss_fn, model, validation)}

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
        header={"MotionNet": net.hyperparameters},
        progress=progress,
        throw=throw,
    )
    return result.model, result


def predict(net: MotionNet, obs: Observations) -> Float[Array, "N C ny nx"]:
    """The net's controls for a batch of windows `obs` `(N, T, C, ny, nx)` (vmapped
    and jitted); `net(obs_i)` for one window."""
    _check_net(net)
    if not isinstance(obs, Observations):
        raise TypeError(
            f"`obs` must be a jaxda.obs.Observations; got {type(obs).__name__}."
        )
    if obs.values.ndim != 5 or tuple(obs.values.shape[1:]) != net.obs_shape:
        t, c, ny, nx = net.obs_shape
        raise ValueError(
            f"`obs` must be a batch (N, {t}, {c}, {ny}, {nx}) for this net; got "
            f"{tuple(obs.values.shape)}."
        )
    return _predict(net, obs)


@eqx.filter_jit
def _predict(net, obs):
    return jax.vmap(net)(obs)


def hybrid_4dvar(
    net: MotionNet,
    problem: AbstractVarProblem,
    solver: AbstractSolver | None = None,
    *,
    obs: Observations | None = None,
    max_steps: int = 100,
    throw: bool = True,
) -> Solution:
    r"""4DVar started from the net's prediction: `solve(problem, solver, net(obs))`.

    The returned control is the solver's estimate when its cost is at most the cost
    $J(f_\theta(y))$ of the start, else the start itself, so the hybrid never raises
    the cost above the net's (`Solution.stats["initial_cost"]` holds $J(f_\theta(y))$).

    **Arguments:**

    - `net`: a trained `MotionNet`.
    - `problem`: the window's strong-constraint 4DVar problem (control: the initial
      state, the net's output shape).
    - `solver`: a `jaxda.var` solver (default `jaxda.var.LBFGS()`).
    - `obs`: the observations given to the net (default: the problem's, `problem.obs`).
    - `max_steps`: the solver's iteration budget.
    - `throw`: as `jaxda.var.solve` (raise when the solve did not succeed).

    **Returns:** the `jaxda.var.Solution`.
    """
    _check_net(net)
    if not isinstance(problem, AbstractVarProblem):
        raise TypeError(
            f"`problem` must be a jaxda.var problem; got {type(problem).__name__}."
        )
    shape = tuple(getattr(problem, "shape", ()))
    if shape != tuple(net.obs_shape[1:]):
        raise ValueError(
            f"`problem`'s control must be the net's output {net.obs_shape[1:]} (a "
            f"strong-constraint problem); got a control of shape {shape}."
        )
    if obs is None:
        obs = getattr(problem, "obs", None)
        if obs is None:
            raise ValueError("`obs` is needed: `problem` has no `obs` field.")
    net.check_obs("obs", obs)
    solver = LBFGS() if solver is None else solver
    x_net = _net_start(net, obs, problem.dtype)
    sol = solve(problem, solver, x_net, max_steps=max_steps, throw=False)
    sol = _keep_better(problem, x_net, sol)
    return raise_if_failed(sol, sol.result, throw)


@eqx.filter_jit
def _net_start(net, obs, dtype):
    return net(obs).astype(dtype)


@eqx.filter_jit
def _keep_better(problem, x_net, sol):
    start_cost = problem.cost(x_net)
    better = sol.cost <= start_cost
    x = jnp.where(better, sol.x, x_net)
    cost = jnp.where(better, sol.cost, start_cost)
    stats = dict(sol.stats, initial_cost=start_cost)
    return Solution(x, cost, sol.n_steps, sol.result, stats, sol.iterates)


__all__ = [
    "fourdvar_loss",
    "hybrid_4dvar",
    "mean_loss",
    "predict",
    "supervised_loss",
    "train_motion_net",
]
