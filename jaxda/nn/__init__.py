"""Learned data assimilation: neural incremental DA (seed 003).

- `NeuralBandPrior`: the learned local Gaussian prior $\\mathcal N(\\mu(z; \\theta, s),
  P(z; \\theta, s))$ with a banded SPD factorisation; calling it is the assimilation operator.
- `assimilate`, `incremental_assimilation` (Algorithm 2), `default_levels`.
- `incremental_loss` (objective 3.5), `make_incremental_loss` (for `jaxda.train.fit`).
- `BandedGaussianPrior`: band-precision Gaussian fitted to training windows (first guess).
- `save_model`, `load_model`.
"""

from ._band import (
    band_to_dense as band_to_dense,
    lower_band_gram as lower_band_gram,
    lower_band_to_dense as lower_band_to_dense,
)
from ._band_prior import NeuralBandPrior as NeuralBandPrior
from ._embedding import sinusoidal_embedding as sinusoidal_embedding
from ._first_guess import (
    BandedGaussianPrior as BandedGaussianPrior,
    covariance_band as covariance_band,
    dense_to_band as dense_to_band,
)
from ._incremental import (
    IncrementalSolution as IncrementalSolution,
    assimilate as assimilate,
    default_levels as default_levels,
    incremental_assimilation as incremental_assimilation,
    incremental_loss as incremental_loss,
    make_incremental_loss as make_incremental_loss,
    neural_then_refine as neural_then_refine,
)
from ._io import load_model as load_model, save_model as save_model


__all__ = [
    "BandedGaussianPrior",
    "IncrementalSolution",
    "NeuralBandPrior",
    "assimilate",
    "band_to_dense",
    "covariance_band",
    "default_levels",
    "dense_to_band",
    "incremental_assimilation",
    "incremental_loss",
    "load_model",
    "lower_band_gram",
    "lower_band_to_dense",
    "make_incremental_loss",
    "neural_then_refine",
    "save_model",
    "sinusoidal_embedding",
]
