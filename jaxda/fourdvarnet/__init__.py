r"""4DVarNet ([F21]): a learnable variational cost and its unrolled learned solver.

- `VariationalCost`: $U_\Phi(x, y, \Omega) = \lambda_o \|x - y\|^2_\Omega + \lambda_p
  \|x - \Phi(x)\|^2$ with a dynamical prior $\Phi$.
- Dynamical priors $\Phi$ (trajectory -> trajectory maps): `ODEPrior`, `GENN`,
  `UNetPrior` (or any module, e.g. a `jaxda.nn.FlaxModule`).
- Gradient solvers $\Gamma$: `ConvLSTMSolver`, `CNNSolver`, `TrainableStepGradient`
  (subclasses of `AbstractGradientSolver`).
- `FourDVarNet`: the unrolled network $\Psi_{\Phi,\Gamma}$; `assimilate` (one window)
  and `assimilate_batch` (a batch) run it compiled and return a `FourDVarNetSolution`
  with a `result`.
- Losses: `supervised_loss`, `unsupervised_loss`, `semisupervised_loss`,
  `make_fourdvarnet_loss`, `make_training_data`.
- Tasks of a window (mapping, near real time, short forecast): `window_steps` (the
  steps a loss scores: `supervised_loss(..., steps=...)`), `forecast_observations`
  (the observations of the last steps removed).
- The generative 4DVarNet with an SPDE prior ([BF24]): `SPDEFourDVarNet` (augmented
  state $\{x, \Theta\}$, cost `SPDECost`, parameter fields `SPDEFieldMap`, solvers
  `AugmentedConvLSTMSolver`, `AugmentedGradientDescent`), its training loss
  `generative_loss` / `make_generative_loss` (reconstruction + the truth's negative
  log-likelihood `truth_nll`), `spde_reconstruct` and `spde_conditional_ensemble`.
- Curriculum training: `fit_fourdvarnet`, `CurriculumStage`, `default_curriculum`,
  `FitResult`.

Save and load trained models with `jaxda.io.save_model` / `jaxda.io.load_model`.
"""

from ._describe import register as _register
from ._losses import (
    make_fourdvarnet_loss as make_fourdvarnet_loss,
    make_training_data as make_training_data,
    semisupervised_loss as semisupervised_loss,
    supervised_loss as supervised_loss,
    unsupervised_loss as unsupervised_loss,
)
from ._model import (
    FourDVarNet as FourDVarNet,
    FourDVarNetSolution as FourDVarNetSolution,
    VariationalCost as VariationalCost,
    assimilate as assimilate,
    assimilate_batch as assimilate_batch,
)
from ._priors import GENN as GENN, ODEPrior as ODEPrior, UNetPrior as UNetPrior
from ._solvers import (
    AbstractGradientSolver as AbstractGradientSolver,
    CNNSolver as CNNSolver,
    ConvLSTMSolver as ConvLSTMSolver,
    TrainableStepGradient as TrainableStepGradient,
)
from ._spde_ensemble import (
    SPDEEnsemble as SPDEEnsemble,
    SPDEReconstruction as SPDEReconstruction,
    generative_loss as generative_loss,
    make_generative_loss as make_generative_loss,
    spde_conditional_ensemble as spde_conditional_ensemble,
    spde_reconstruct as spde_reconstruct,
    truth_nll as truth_nll,
)
from ._spde_fields import SPDEFieldMap as SPDEFieldMap
from ._spde_net import (
    AbstractAugmentedSolver as AbstractAugmentedSolver,
    AugmentedConvLSTMSolver as AugmentedConvLSTMSolver,
    AugmentedGradientDescent as AugmentedGradientDescent,
    SPDECost as SPDECost,
    SPDEFourDVarNet as SPDEFourDVarNet,
)
from ._tasks import (
    forecast_observations as forecast_observations,
    window_steps as window_steps,
)
from ._train import (
    CurriculumStage as CurriculumStage,
    FitResult as FitResult,
    default_curriculum as default_curriculum,
    fit_fourdvarnet as fit_fourdvarnet,
)


_register()
del _register

__all__ = [
    "GENN",
    "AbstractAugmentedSolver",
    "AbstractGradientSolver",
    "AugmentedConvLSTMSolver",
    "AugmentedGradientDescent",
    "CNNSolver",
    "ConvLSTMSolver",
    "CurriculumStage",
    "FitResult",
    "FourDVarNet",
    "FourDVarNetSolution",
    "ODEPrior",
    "SPDECost",
    "SPDEEnsemble",
    "SPDEFieldMap",
    "SPDEFourDVarNet",
    "SPDEReconstruction",
    "TrainableStepGradient",
    "UNetPrior",
    "VariationalCost",
    "assimilate",
    "assimilate_batch",
    "default_curriculum",
    "fit_fourdvarnet",
    "forecast_observations",
    "generative_loss",
    "make_generative_loss",
    "make_fourdvarnet_loss",
    "make_training_data",
    "semisupervised_loss",
    "spde_conditional_ensemble",
    "spde_reconstruct",
    "supervised_loss",
    "truth_nll",
    "unsupervised_loss",
    "window_steps",
]
