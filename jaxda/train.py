r"""A small, reusable training loop: optax, one compiled step, checkpoints, resume.

The loop is generic: it trains any pytree `model` (usually an `equinox.Module`) on a
per-example loss `loss_fn(model, example, key) -> scalar`, where `example` is one item
of a dataset held in memory as a pytree of arrays with a leading sample axis. Batches
are `jax.vmap`-ed over that loss and averaged:

$$\mathcal L(\theta) = \frac1B \sum_{b=1}^B \ell(\theta; e_b, \kappa_b),$$

with one PRNG key $\kappa_b$ per example (e.g. to draw a fresh observation process per
training pair and per epoch). The step number fixes both the batch (a seeded permutation
per epoch) and the keys, so a run is deterministic for a seed and a resumed run equals
an uninterrupted one.

Checkpoints use the format of `jaxda.io.save_checkpoint`: a JSON header line (user
`header` such as architecture hyperparameters, payload size, and a checksum over both)
followed by `equinox.tree_serialise_leaves` of the `TrainState`, written atomically.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._custom_types import Array, Key, Scalar
from ._results import RESULTS, all_finite, raise_if_failed
from ._validation import check_int, check_key
from .io import load_checkpoint, save_checkpoint


__all__ = [
    "TrainResult",
    "TrainState",
    "batch_indices",
    "batches",
    "fit",
    "init_state",
    "make_train_step",
]


class TrainState(eqx.Module):
    """Everything needed to resume training exactly.

    **Fields:**

    - `model`: the trained pytree (parameters and static structure).
    - `opt_state`: the optax optimiser state.
    - `step`: number of optimisation steps already taken (int32 scalar array).
    - `key`: the run's base PRNG key; step $t$ uses `fold_in(key, t)`, so it never
      changes.
    """

    model: Any
    opt_state: Any
    step: Array
    key: Key


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Output of `fit`.

    **Fields:**

    - `state`: the final `TrainState` (its `model` is the trained model). When the
      loss became non-finite it is the last state whose loss was finite (or the
      initial / resumed state when the first loss was not).
    - `losses`: training loss of every step taken in this call, shape `(n,)`; after a
      non-finite loss it ends with that value.
    - `history`: list of `(step, metrics)` returned by the evaluation callback.
    - `result`: `jaxda.RESULTS.successful`, or `RESULTS.nonfinite_loss` when training
      stopped at a non-finite loss.
    """

    state: TrainState
    losses: np.ndarray
    history: list
    result: RESULTS = dataclasses.field(default_factory=lambda: RESULTS.successful)

    @property
    def model(self):
        """The trained model (`state.model`)."""
        return self.state.model


def _strong_types(tree):
    """`tree` with every weakly typed JAX array leaf made strongly typed (same dtype
    and values); other leaves are returned unchanged."""

    def fix(a):
        if isinstance(a, jax.Array) and getattr(a, "weak_type", False):
            return jnp.asarray(a, a.dtype)
        return a

    return jax.tree_util.tree_map(fix, tree)


def _finite_params(state: TrainState) -> bool:
    return bool(all_finite(eqx.filter(state.model, eqx.is_inexact_array)))


def init_state(model, optimizer: optax.GradientTransformation, key: Key) -> TrainState:
    """Initial `TrainState` at step 0.

    **Arguments:**

    - `model`: pytree with the trainable arrays (`eqx.is_inexact_array` leaves are
      trained).
    - `optimizer`: an optax transformation, e.g. `optax.adam(1e-3)`.
    - `key`: base PRNG key of the run (batches and per-example keys derive from it).

    **Returns:** a `TrainState` whose model has every weakly typed inexact array leaf
    (e.g. `jnp.full(3, 8.0)`) made strongly typed with the same dtype: one optax update
    returns strongly typed arrays, and a weak leaf would otherwise make the compiled
    train step trace a second time.
    """
    model = _strong_types(model)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(model, opt_state, jnp.asarray(0, dtype=jnp.int32), key)


def make_train_step(
    loss_fn: Callable[[Any, Any, Key], Scalar],
    optimizer: optax.GradientTransformation,
    *,
    max_traces: int | None = None,
) -> Callable:
    """One compiled optimisation step on a batch.

    The step computes $\\frac1B\\sum_b \\ell(\\theta; e_b, \\kappa_b)$ with `jax.vmap`
    over the batch (one key per example), its gradient with respect to the inexact-array
    leaves of the model, and applies one optax update. It is wrapped once in
    `eqx.filter_jit`; with `max_traces=1` it raises if it is ever traced twice
    (retracing guard).

    **Arguments:**

    - `loss_fn`: `loss_fn(model, example, key) -> scalar` for ONE example.
    - `optimizer`: optax transformation.
    - `max_traces`: optional bound on the number of traces (see
      `equinox.debug.assert_max_traces`).

    **Returns:** `step(state, batch) -> (state, loss)` with `state` a `TrainState` and
    `batch` a pytree of arrays with a leading batch axis.
    """

    def _step(state: TrainState, batch):
        n = jax.tree_util.tree_leaves(batch)[0].shape[0]
        keys = jax.random.split(jax.random.fold_in(state.key, state.step), n)

        def batch_loss(model):
            return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0, 0))(model, batch, keys))

        params, static = eqx.partition(state.model, eqx.is_inexact_array)

        def batch_loss_params(p):
            return batch_loss(eqx.combine(p, static))

        loss, grads = jax.value_and_grad(batch_loss_params)(params)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.combine(eqx.apply_updates(params, updates), static)
        new = TrainState(model, opt_state, state.step + 1, state.key)
        return new, loss

    if max_traces is not None:
        _step = eqx.debug.assert_max_traces(_step, max_traces=max_traces)
    return eqx.filter_jit(_step)


def _n_samples(data) -> int:
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("`data` must contain at least one array; got an empty pytree.")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        shapes = [tuple(np.shape(leaf)) for leaf in leaves]
        raise ValueError(
            "`data` must be a pytree of arrays sharing a leading sample axis; got "
            "shapes "
            f"{shapes}."
        )
    return sizes.pop()


@jax.jit
def _gather(data, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], data)


@jax.jit
def _permutation(key, epoch, arange):
    return jax.random.permutation(jax.random.fold_in(key, epoch), arange)


def batch_indices(key: Key, step: int, n_samples: int, batch_size: int) -> Array:
    """Indices of the batch used at `step` (deterministic given `key` and `step`).

    Epoch $e = \\lfloor t / E \\rfloor$ with $E = \\lfloor N / B \\rfloor$ batches per
    epoch uses the permutation `jax.random.permutation(fold_in(key, e), N)`; batch $t$
    is its $(t \\bmod E)$-th slice of length $B$ (the last incomplete batch is dropped
    so every batch has the same shape and the step compiles once).
    """
    per_epoch = n_samples // batch_size
    epoch, pos = divmod(int(step), per_epoch)
    perm = _permutation(key, epoch, jnp.arange(n_samples))
    return perm[pos * batch_size : (pos + 1) * batch_size]


class _Batcher:
    """Batches of `batch_indices`, computing each epoch's permutation once."""

    def __init__(self, data, batch_size, key):
        self.data = jax.tree_util.tree_map(jnp.asarray, data)
        self.n = _n_samples(data)
        self.batch_size = batch_size
        self.key = key
        self.per_epoch = self.n // batch_size
        self._epoch, self._perm = None, None

    def __call__(self, step: int):
        epoch, pos = divmod(int(step), self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.asarray(_permutation(self.key, epoch, jnp.arange(self.n)))
        b = self.batch_size
        return _gather(self.data, jnp.asarray(self._perm[pos * b : (pos + 1) * b]))


def batches(data, batch_size: int, key: Key, *, start_step: int = 0) -> Iterator:
    """Endless seeded shuffling iterator over a dataset held in memory.

    **Arguments:**

    - `data`: pytree of arrays with a common leading sample axis $N$.
    - `batch_size`: $B \\le N$.
    - `key`: shuffling key.
    - `start_step`: first step (to resume mid-epoch).

    **Returns:** an iterator of pytrees with leading axis $B$ (see `batch_indices`).
    """
    n = _n_samples(data)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if batch_size > n:
        raise ValueError(
            f"`batch_size` must be <= the number of samples ({n}); got {batch_size}."
        )
    batcher = _Batcher(data, batch_size, key)
    step = start_step
    while True:
        yield batcher(step)
        step += 1


# --------------------------------------------------------------------------------------
# The loop


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an optional extra
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True, leave=True)


def fit(
    model,
    loss_fn: Callable[[Any, Any, Key], Scalar],
    data,
    *,
    key: Key,
    n_steps: int,
    batch_size: int,
    optimizer: optax.GradientTransformation | None = None,
    eval_fn: Callable[[Any, int], dict] | None = None,
    eval_every: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    header: dict | None = None,
    resume: bool = True,
    progress: bool = True,
    print_every: int = 100,
    throw: bool = False,
) -> TrainResult:
    """Train `model` by minimising the batch mean of `loss_fn` with optax.

    Each step $t$ draws the batch `batch_indices(key_data, t, N, B)` and per-example
    keys from `fold_in(key_loss, t)` (`key_data, key_loss = split(key)`), so the run is
    a function of `key` only. With `checkpoint_path`, the `TrainState` is saved every
    `checkpoint_every` steps and at the end; with `resume=True` an existing checkpoint
    (whose `header` must equal `header`) is loaded first and training continues from its
    step up to `n_steps` in total, giving the same result as an uninterrupted run.

    **Arguments:**

    - `model`: pytree to train (inexact-array leaves are the parameters).
    - `loss_fn`: `loss_fn(model, example, key) -> scalar` for ONE example.
    - `data`: pytree of arrays with a leading sample axis $N$ (held in memory).
    - `key`: PRNG key of the run.
    - `n_steps`: total number of optimisation steps (including resumed ones).
    - `batch_size`: examples per step (the last incomplete batch of each epoch is
      dropped).
    - `optimizer`: optax transformation; default `optax.adam(1e-3)`.
    - `eval_fn`: optional `eval_fn(model, step) -> dict` of metrics, called every
      `eval_every` steps and at the end; results go to `TrainResult.history`.
    - `checkpoint_path`, `checkpoint_every`: periodic atomic checkpoints (0 = only at
      the end).
    - `header`: JSON-serialisable architecture description stored in and checked against
      the checkpoint.
    - `resume`: load `checkpoint_path` if it exists.
    - `progress`: show a tqdm bar if tqdm is installed, else print every `print_every`
      steps.
    - `throw`: raise an `equinox.EquinoxRuntimeError` when training stopped at a
      non-finite loss (default False: a warning, and `result` says so).

    **Returns:** a `TrainResult` (`.model`, `.state`, `.losses`, `.history`,
    `.result`).

    A non-finite loss stops training: the last state whose loss was finite is
    returned and written to `checkpoint_path` (a checkpoint is only written for a
    state whose parameters are finite, so the last good checkpoint is never replaced
    by a diverged one), `result` is `RESULTS.nonfinite_loss` and a `RuntimeWarning` is
    issued.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        key = jax.random.key(key)
    check_key("key", key)
    n_steps = check_int("n_steps", n_steps, minimum=0)
    n = _n_samples(data)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if batch_size > n:
        raise ValueError(
            f"`batch_size` must be <= the number of samples ({n}); got {batch_size}."
        )
    eval_every = check_int("eval_every", eval_every, minimum=0)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=0)
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    key_data, key_loss = jax.random.split(key)
    state = init_state(model, optimizer, key_loss)
    if checkpoint_path is not None and resume and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path, state, header)
    start = int(state.step)

    batcher = _Batcher(data, batch_size, key_data)
    step_fn = make_train_step(loss_fn, optimizer, max_traces=1)
    bar = _progress(n_steps, start, progress)
    losses, history = [], []
    t0 = time.perf_counter()

    def evaluate(step):
        metrics = dict(eval_fn(state.model, step))
        history.append((step, metrics))
        if bar is None and progress:
            print(f"[eval] step {step}: {metrics}")
        return metrics

    good, result = state, RESULTS.successful  # `good`: its loss was finite
    try:
        for t in range(start, n_steps):
            new, loss = step_fn(state, batcher(t))
            loss = float(loss)
            losses.append(loss)
            if not np.isfinite(loss):
                result = RESULTS.nonfinite_loss
                break
            good, state = state, new
            done = t + 1
            metrics = None
            if eval_fn is not None and eval_every and done % eval_every == 0:
                metrics = evaluate(done)
            if (
                checkpoint_path is not None
                and checkpoint_every
                and (done % checkpoint_every == 0)
                and _finite_params(state)
            ):
                save_checkpoint(checkpoint_path, state, header)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{loss:.4g}"}
                if metrics:
                    post.update({k: f"{float(v):.4g}" for k, v in metrics.items()})
                bar.set_postfix(post, refresh=False)
            elif progress and (done % max(print_every, 1) == 0 or done == n_steps):
                rate = (done - start) / (time.perf_counter() - t0)
                print(f"step {done}/{n_steps}  loss {loss:.4g}  ({rate:.1f} steps/s)")
    finally:
        if bar is not None:
            bar.close()
    if result != RESULTS.successful:
        # `state` gave the non-finite loss; `good` is the state before it
        failed_at = int(state.step)
        state = good if failed_at > start else state
        warnings.warn(
            f"jaxda.train.fit: the loss became non-finite at step {failed_at} "
            f"({losses[-1]}); training stopped and the state of step "
            f"{int(state.step)} (the last with a finite loss) is kept.",
            RuntimeWarning,
            stacklevel=2,
        )
    if eval_fn is not None and (not history or history[-1][0] != int(state.step)):
        evaluate(int(state.step))
    stepped = result == RESULTS.successful or int(state.step) > start
    if checkpoint_path is not None and stepped and _finite_params(state):
        save_checkpoint(checkpoint_path, state, header)
    out = TrainResult(state, np.asarray(losses), history, result)
    raise_if_failed(jnp.asarray(losses), result, throw)
    return out
