"""Learned data assimilation: neural incremental DA ([B24]).

- `NeuralBandPrior`: the learned local Gaussian prior $\\mathcal N(\\mu(z; \\theta, s),
  P(z; \\theta, s))$ with a banded SPD factorisation; calling it is the assimilation
  operator.
- `assimilate`, `incremental_assimilation` (Algorithm 2), `default_levels`.
- `incremental_loss` (objective 3.5), `make_incremental_loss` (for `jaxda.train.fit`).
- `BandedGaussianPrior`: band-precision Gaussian fitted to training windows (first
  guess).
- `save_model`, `load_model`.
"""

from ._band_prior import NeuralBandPrior as NeuralBandPrior
from ._embedding import sinusoidal_embedding as sinusoidal_embedding
from ._first_guess import (
    BandedGaussianPrior as BandedGaussianPrior,
    covariance_band as covariance_band,
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
    "covariance_band",
    "default_levels",
    "incremental_assimilation",
    "incremental_loss",
    "load_model",
    "make_incremental_loss",
    "neural_then_refine",
    "save_model",
    "sinusoidal_embedding",
]

# 4DVarNet ([F21]): priors, gradient solvers, the unrolled network, training.
from ._conv import Conv as Conv, ConvLSTMCell as ConvLSTMCell
from ._flax import FlaxModule as FlaxModule
from ._fourdvarnet import (
    FourDVarNet as FourDVarNet,
    VariationalCost as VariationalCost,
    assimilate_batch as assimilate_batch,
    make_fourdvarnet_loss as make_fourdvarnet_loss,
    make_training_data as make_training_data,
    semisupervised_loss as semisupervised_loss,
    supervised_loss as supervised_loss,
    unroll as unroll,
    unsupervised_loss as unsupervised_loss,
)
from ._fourdvarnet_train import (
    CurriculumStage as CurriculumStage,
    FitResult as FitResult,
    default_curriculum as default_curriculum,
    fit_fourdvarnet as fit_fourdvarnet,
)
from ._priors import GENN as GENN, ODEPrior as ODEPrior, UNetPrior as UNetPrior
from ._solvers import (
    AbstractGradientSolver as AbstractGradientSolver,
    CNNSolver as CNNSolver,
    ConvLSTMSolver as ConvLSTMSolver,
    FixedStepGradient as FixedStepGradient,
    gradient_scale as gradient_scale,
)


__all__ += [
    "AbstractGradientSolver",
    "CNNSolver",
    "Conv",
    "ConvLSTMCell",
    "ConvLSTMSolver",
    "CurriculumStage",
    "FitResult",
    "FixedStepGradient",
    "FlaxModule",
    "FourDVarNet",
    "GENN",
    "ODEPrior",
    "UNetPrior",
    "VariationalCost",
    "assimilate_batch",
    "default_curriculum",
    "fit_fourdvarnet",
    "gradient_scale",
    "make_fourdvarnet_loss",
    "make_training_data",
    "semisupervised_loss",
    "supervised_loss",
    "unroll",
    "unsupervised_loss",
]
