"""Named presets for the reference experiments of [F21] and [B24].

- `F21-L63`: Lorenz-63 (10, 28, 8/3), dt 0.01, T = 200; u1 every 8 steps, nothing in the
  first and last 10 steps; noise variance 2; 10000 train / 2000 test windows.
- `F21-L96`: Lorenz-96 (n = 40, F = 8), dt 0.05, T = 200; 20 of the 40 components at
  random every 4 steps; noise variance 2; 2000 / 256.
- `B24-L63`: Lorenz-63 with process noise N(0, dt I) per step, dt 0.025, T = 32, each
  component normalised; u1 every 8 steps from a random phase; noise std 0.05 (normalised
  units); 1800 / 200.
- `B24-pendulum`: damped pendulum (omega0^2 = 2, damping 0.1), dt 0.1, T = 100; the
  angle every 20 steps from a random phase; noise std 0.01; 400 / 100.

Sources and choices ([F21] and its public notebooks; [B24] and its
code):

- F21: the truth is integrated with an adaptive solver (the authors used RK45). The
  authors cut windows out of one long trajectory; here each window starts from its own
  Gaussian draw followed by a burn-in (`burn_in_steps`, 5 model time units for L63, 10
  for L96) so that it starts on the attractor and windows are independent. F21-L63
  observes times 16, 24, ..., 184 (multiples of 8 outside the first and last 10 steps),
  as the authors' notebook does. F21-L96 draws a fresh set of 20 components at each
  observed time.
- B24-L63: the paper gives dt = 0.025 (the code uses 0.05); x0 ~ N((0, 0, 25), 10^2 I)
  as in the code, then a 5-time-unit burn-in (the paper samples the stationary
  distribution); each component normalised to zero mean and unit variance with
  statistics of the training set (pooled over windows and times; the code normalises per
  time index too); the noise 0.05 is added in normalised units, as in the code.
- B24-pendulum: omega0^2 = 2, damping 0.1, dt = 0.1, x0 uniform in
  [-3 pi/4, 3 pi/4] x [-1, 1] as in the code; noise 0.01 as in the paper (the code:
  0.001).
- B24 observation processes: every window has its own process (observing component 0
  every k steps from a random phase). Training windows draw their phase from one set and
  test windows from a disjoint set (even / odd phases for L63, 0-9 / 10-19 for the
  pendulum), so test observation times never occur in training. The train and test
  splits also use disjoint keys: `jax.random.fold_in(key, 0)` and `fold_in(key, 1)`.
"""

import dataclasses
import math

import jax
import numpy as np

from .._custom_types import Key
from .._validation import check_choice
from ..models import AbstractDynamics, Lorenz63, Lorenz96, Pendulum
from ..obs import (
    AbstractPattern,
    EveryKPattern,
    RandomComponentsPattern,
    RandomPhasePattern,
)
from ._dataset import (
    Dataset,
    GaussianInitialState,
    UniformInitialState,
    _key_and_seed,
    make_dataset,
)
from ._normalise import Normalisation


@dataclasses.dataclass(frozen=True)
class Preset:
    """The configuration of a reference experiment (sources: the module docstring).

    Override any field with `get_preset(name, **overrides)` (e.g. `n_times=50`,
    `n_train=64`). `pattern=` sets both patterns and `noise_var=` sets `noise_std`.
    """

    name: str
    model: AbstractDynamics
    dt: float
    n_times: int
    n_train: int
    n_test: int
    initial_state: object
    train_pattern: AbstractPattern
    test_pattern: AbstractPattern
    noise_std: float
    burn_in_steps: int = 0
    process_noise_std: float = 0.0
    normalise: bool = False
    solver: str = "tsit5"
    reference: str = ""


def _presets() -> dict[str, Preset]:
    l63_centre = np.array([0.0, 0.0, 25.0])
    return {
        "F21-L63": Preset(
            name="F21-L63",
            model=Lorenz63(),
            dt=0.01,
            n_times=200,
            n_train=10000,
            n_test=2000,
            initial_state=GaussianInitialState(l63_centre, 10.0),
            train_pattern=EveryKPattern(8, (0,), start=10, stop_margin=10),
            test_pattern=EveryKPattern(8, (0,), start=10, stop_margin=10),
            noise_std=math.sqrt(2.0),
            burn_in_steps=500,
            reference="[F21] Fablet et al. 2021, section 4.1",
        ),
        "F21-L96": Preset(
            name="F21-L96",
            model=Lorenz96(40, 8.0),
            dt=0.05,
            n_times=200,
            n_train=2000,
            n_test=256,
            initial_state=GaussianInitialState(8.0, 1.0),
            train_pattern=RandomComponentsPattern(20, every=4),
            test_pattern=RandomComponentsPattern(20, every=4),
            noise_std=math.sqrt(2.0),
            burn_in_steps=200,
            reference="[F21] Fablet et al. 2021, section 4.2",
        ),
        "B24-L63": Preset(
            name="B24-L63",
            model=Lorenz63(),
            dt=0.025,
            n_times=32,
            n_train=1800,
            n_test=200,
            initial_state=GaussianInitialState(l63_centre, 10.0),
            train_pattern=RandomPhasePattern(8, (0, 2, 4, 6), (0,)),
            test_pattern=RandomPhasePattern(8, (1, 3, 5, 7), (0,)),
            noise_std=0.05,
            burn_in_steps=200,
            process_noise_std=math.sqrt(0.025),
            normalise=True,
            reference="[B24] Blanke et al. 2024, section 4.2",
        ),
        "B24-pendulum": Preset(
            name="B24-pendulum",
            model=Pendulum(omega0_sq=2.0, damping=0.1),
            dt=0.1,
            n_times=100,
            n_train=400,
            n_test=100,
            initial_state=UniformInitialState(
                np.array([-0.75 * np.pi, -1.0]), np.array([0.75 * np.pi, 1.0])
            ),
            train_pattern=RandomPhasePattern(20, tuple(range(10)), (0,)),
            test_pattern=RandomPhasePattern(20, tuple(range(10, 20)), (0,)),
            noise_std=0.01,
            reference="[B24] Blanke et al. 2024, section 4.1",
        ),
    }


PRESET_NAMES: tuple[str, ...] = tuple(_presets())


def get_preset(name: str, **overrides) -> Preset:
    """The configuration of preset `name`, with fields replaced by `overrides`.

    **Arguments:** `name` in `PRESET_NAMES`; any `Preset` field as keyword, plus
    `pattern` (both patterns) and `noise_var` (sets `noise_std` to its square root).

    **Returns:** a `Preset`. Unknown names raise `ValueError`, unknown fields
    `TypeError`.
    """
    presets = _presets()
    if name not in presets:
        raise ValueError(
            f"`name` must be one of {', '.join(map(repr, presets))}; got {name!r}."
        )
    preset = presets[name]
    if "pattern" in overrides:
        pattern = overrides.pop("pattern")
        overrides.update(train_pattern=pattern, test_pattern=pattern)
    if "noise_var" in overrides:
        var = overrides.pop("noise_var")
        if var is None or not np.isfinite(var) or var < 0:
            raise ValueError(f"`noise_var` must be finite and >= 0; got {var!r}.")
        overrides["noise_std"] = float(np.sqrt(var))
    fields = {f.name for f in dataclasses.fields(Preset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"Unknown preset field(s) {', '.join(unknown)}; valid fields are "
            f"{', '.join(sorted(fields | {'pattern', 'noise_var'}))}."
        )
    return dataclasses.replace(preset, **overrides)


_SPLIT_INDEX = {"train": 0, "test": 1}


def make_preset_dataset(
    name: str | Preset,
    key: Key | int,
    *,
    split: str = "train",
    n_windows: int | None = None,
    normalisation: Normalisation | None = None,
    dtype=None,
    **overrides,
) -> Dataset:
    """Generate the `split` of a preset experiment.

    The key of a split is `jax.random.fold_in(key, 0 for train / 1 for test)`, so the
    two splits are independent even from the same key; B24 presets also use disjoint
    observation processes for the two splits. For normalised presets (B24-L63), the
    statistics are fitted on this dataset unless `normalisation` is given: pass the
    training set's `normalisation` when generating a test set, or use
    `make_preset_splits`.

    **Arguments:** `name` (or a `Preset`); `key` (PRNG key or int seed); `split` "train"
    or "test"; `n_windows` (default: the paper's split size); `normalisation`; `dtype`;
    `overrides` as in `get_preset` (e.g. `n_times=40`).

    **Returns:** a `Dataset` with `name` and `split` set.
    """
    preset = name if isinstance(name, Preset) else get_preset(name, **overrides)
    if isinstance(name, Preset) and overrides:
        preset = dataclasses.replace(preset, **overrides)
    check_choice("split", split, tuple(_SPLIT_INDEX))
    key, seed = _key_and_seed(key)
    if n_windows is None:
        n_windows = preset.n_train if split == "train" else preset.n_test
    normalise = False
    if preset.normalise:
        normalise = True if normalisation is None else normalisation
    elif normalisation is not None:
        normalise = normalisation
    ds = make_dataset(
        jax.random.fold_in(key, _SPLIT_INDEX[split]),
        preset.model,
        n_windows=n_windows,
        n_times=preset.n_times,
        dt=preset.dt,
        initial_state=preset.initial_state,
        pattern=preset.train_pattern if split == "train" else preset.test_pattern,
        noise_std=preset.noise_std,
        burn_in_steps=preset.burn_in_steps,
        process_noise_std=preset.process_noise_std,
        solver=preset.solver,
        normalise=normalise,
        dtype=dtype,
        name=preset.name,
        split=split,
    )
    return dataclasses.replace(ds, seed=seed) if seed is not None else ds


def make_preset_splits(
    name: str | Preset,
    key: Key | int,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype=None,
    **overrides,
) -> tuple[Dataset, Dataset]:
    """Training and test sets of a preset; the test set reuses the train normalisation.

    **Returns:** `(train, test)`, as `make_preset_dataset` with `split="train"` /
    `"test"`.
    """
    preset = name if isinstance(name, Preset) else get_preset(name, **overrides)
    train = make_preset_dataset(
        preset, key, split="train", n_windows=n_train, dtype=dtype
    )
    test = make_preset_dataset(
        preset,
        key,
        split="test",
        n_windows=n_test,
        normalisation=train.normalisation,
        dtype=dtype,
    )
    return train, test
