r"""Neural incremental data assimilation ([B24]).

- `NeuralBandGaussian`: the learned local Gaussian prior $\mathcal N(\mu(z; \theta, s),
  P(z; \theta, s))$ with a banded SPD factorisation; calling it is the assimilation
  operator at one level (`assimilate`, returning a `MAPSolution` with a `result`).
- `incremental_assimilation` (Algorithm 2), `IncrementalSolution`, `default_levels`,
  `neural_then_refine` (neural estimate, then a 4DVar refinement).
- `incremental_loss` (objective 3.5), `make_incremental_loss` (for `jaxda.train.fit`).

The first guess $z_0$ is a Gaussian fitted to the training windows:
`jaxda.data.BandedGaussian` or `jaxda.data.gaussian_first_guess`. Save and load trained
models with `jaxda.io.save_model` / `jaxda.io.load_model`.
"""

from ._algorithm import (
    IncrementalSolution as IncrementalSolution,
    default_levels as default_levels,
    incremental_assimilation as incremental_assimilation,
    incremental_loss as incremental_loss,
    make_incremental_loss as make_incremental_loss,
    neural_then_refine as neural_then_refine,
)
from ._band_gaussian import (
    MAPSolution as MAPSolution,
    NeuralBandGaussian as NeuralBandGaussian,
    assimilate as assimilate,
)
from ._format import register as _register


_register()
del _register

__all__ = [
    "IncrementalSolution",
    "MAPSolution",
    "NeuralBandGaussian",
    "assimilate",
    "default_levels",
    "incremental_assimilation",
    "incremental_loss",
    "make_incremental_loss",
    "neural_then_refine",
]
