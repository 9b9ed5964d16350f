r"""Training 4DVarNet with an iteration curriculum on top of `jaxda.train.fit`.

[F21] and the authors' code grow the number of unrolled iterations during training
(5 -> 20) and restart Adam with a new learning rate at each stage. `fit_fourdvarnet`
runs one `jaxda.train.fit` per `CurriculumStage`: the model's `n_iter` is a static
field,
so each stage compiles its train step exactly once (fit guards this with
`max_traces=1`) and the model is carried from stage to stage.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import optax

from .._custom_types import Key
from .._results import RESULTS
from .._validation import check_int, check_positive
from ..train import TrainResult, fit
from ._losses import make_fourdvarnet_loss
from ._model import FourDVarNet
from ._tasks import window_steps


class CurriculumStage(NamedTuple):
    """One stage: `n_iter` unrolled iterations, `n_steps` Adam steps, `learning_rate`
    (a float or an optax schedule of the stage's step)."""

    n_iter: int
    n_steps: int
    learning_rate: float | optax.Schedule = 1e-3


def default_curriculum(
    n_steps: int,
    *,
    learning_rate: float = 1e-3,
    iterations: Sequence[int] = (5, 10, 15, 20),
) -> tuple[CurriculumStage, ...]:
    """Stages with `iterations` unrolled iterations, `n_steps` in total split evenly;
    the learning rate is divided by 10 in the last stage (the authors' schedule)."""
    n_steps = check_int("n_steps", n_steps, minimum=len(iterations))
    per = n_steps // len(iterations)
    stages = []
    for i, k in enumerate(iterations):
        steps = (
            per if i < len(iterations) - 1 else n_steps - per * (len(iterations) - 1)
        )
        lr = learning_rate if i < len(iterations) - 1 else learning_rate / 10
        stages.append(CurriculumStage(int(k), steps, lr))
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Output of `fit_fourdvarnet`.

    **Fields:**

    - `model`: the trained model (with the `n_iter` of the last stage run).
    - `stages`: one `jaxda.train.TrainResult` per stage run.
    - `result`: `jaxda.RESULTS.successful`, or `RESULTS.nonfinite_loss` when a stage
      stopped at a non-finite loss (the later stages are then not run, and `model`
      is that stage's last model with a finite loss).
    """

    model: FourDVarNet
    stages: tuple[TrainResult, ...]
    result: RESULTS = dataclasses.field(default_factory=lambda: RESULTS.successful)

    @property
    def losses(self):
        """Training losses of all stages, concatenated."""
        import numpy as np

        return np.concatenate([r.losses for r in self.stages])


def fit_fourdvarnet(
    model: FourDVarNet,
    data: dict,
    *,
    key: Key,
    batch_size: int,
    stages: Sequence[CurriculumStage],
    mode: str = "supervised",
    prior_weight: float = 0.0,
    holdout: float = 0.2,
    steps: int | Sequence[int] | None = None,
    clip_norm: float | None = None,
    loss_factory: Callable[[], Callable] | None = None,
    eval_fn: Callable[[FourDVarNet, int], dict] | None = None,
    eval_every: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    print_every: int = 100,
) -> FitResult:
    r"""Train a `FourDVarNet` with Adam through an iteration curriculum.

    Stage $i$ sets `model.n_iter = stages[i].n_iter` and runs `jaxda.train.fit` for
    `stages[i].n_steps` steps with `optax.adam(stages[i].learning_rate)` (after global
    norm clipping when `clip_norm` is set), key `fold_in(key, i)` and checkpoint file
    `f"{checkpoint_path}.stage{i}"` (a finished stage is skipped on resume).

    **Arguments:**

    - `model`: the `FourDVarNet` to train.
    - `data`: from `make_training_data` (`"obs"`, `"truth"` for supervised, `"x_init"`).
    - `key`, `batch_size`: as in `jaxda.train.fit`.
    - `stages`: `CurriculumStage`s (e.g. `default_curriculum(n_steps)`).
    - `mode`: `"supervised"` (eq. 14), `"unsupervised"` (eq. 13) or `"semisupervised"`
      (held-out observations); `prior_weight`, `holdout`: see the losses.
    - `steps`: the time steps of the window the supervised loss scores (e.g. the
      centre step for mapping, `-1` for near real time; default the whole window;
      see `supervised_loss` and `window_steps`).
    - `loss_factory`: optional `() -> loss(model, example, key)` replacing the built-in
      loss (called once per stage).
    - `eval_fn(model, step)`, `eval_every`, `progress`, `print_every`: passed to `fit`.

    **Returns:** a `FitResult` (`model`, per-stage `TrainResult`s, `losses`,
    `result`). A stage whose loss becomes non-finite stops the curriculum (see
    `jaxda.train.fit`): `result` is then `RESULTS.nonfinite_loss`.
    """
    if not isinstance(model, FourDVarNet):
        raise TypeError(f"`model` must be a FourDVarNet; got {type(model).__name__}.")
    if not stages:
        raise ValueError("`stages` must contain at least one CurriculumStage.")
    if "obs" not in data:
        raise ValueError("`data` must be a dict with 'obs' (see make_training_data).")
    if mode == "supervised" and "truth" not in data:
        raise ValueError("`mode='supervised'` needs data['truth'].")
    if clip_norm is not None:
        check_positive("clip_norm", clip_norm)
    batch = jax.tree_util.tree_map(lambda a: a[:1], data)
    model.check_inputs(batch["obs"], batch.get("x_init"), batched=True)
    if steps is not None:
        if loss_factory is not None:
            raise ValueError(
                "`steps` applies to the built-in loss, not `loss_factory`."
            )
        steps = window_steps(steps, data["obs"].values.shape[1])
    if loss_factory is None:

        def loss_factory():
            return make_fourdvarnet_loss(
                mode, prior_weight=prior_weight, holdout=holdout, steps=steps
            )

    results = []
    for i, stage in enumerate(stages):
        stage = CurriculumStage(*stage)
        check_int("n_steps", stage.n_steps, minimum=0)
        model = model.with_iterations(stage.n_iter)
        opt = optax.adam(stage.learning_rate)
        if clip_norm is not None:
            opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
        path = (
            None
            if checkpoint_path is None
            else f"{os.fspath(checkpoint_path)}.stage{i}"
        )
        if progress:
            print(
                f"[4DVarNet] stage {i + 1}/{len(stages)}: K={stage.n_iter}, "
                f"{stage.n_steps} steps, mode={mode}"
            )
        res = fit(
            model,
            loss_factory(),
            data,
            key=jax.random.fold_in(key, i),
            n_steps=stage.n_steps,
            batch_size=batch_size,
            optimizer=opt,
            eval_fn=eval_fn,
            eval_every=eval_every,
            checkpoint_path=path,
            header={"stage": i, "n_iter": stage.n_iter, "mode": mode},
            progress=progress,
            print_every=print_every,
        )
        model = res.model
        results.append(res)
        if res.result != RESULTS.successful:
            return FitResult(model, tuple(results), res.result)
    return FitResult(model, tuple(results))


__all__ = ["CurriculumStage", "FitResult", "default_curriculum", "fit_fourdvarnet"]
