r"""Motion fields: the velocity that moves an image sequence or a shallow-water height.

The motion $\mathbf w = (u, v)$ is recovered from partial, noisy observations of what
it transports, by the methods of [FBC23] and of the optical-flow literature:

- **4DVar with the motion as control**: the strong-constraint cost of a model whose
  state carries the velocity (`jaxda.models.Advection2D` with the velocity in the
  state, `jaxda.models.ShallowWater`), unpenalised or with smoothness
  $\|\nabla\mathbf w\|^2$ and divergence $\|\nabla\cdot\mathbf w\|^2$ penalties, and
  its weak-constraint version;
- **optical flow** baselines on the same images (Horn-Schunck, Lucas-Kanade);
- **learning over 4DVar**: a network that maps the observations to the control,
  trained with the 4DVar cost of its prediction as the loss, and the deep prior;
- **uncertainty**: perturbed-observation ensembles and the spread of the linearised
  posterior.

Velocity fields are arrays `(2, ny, nx)` (`u` along x, `v` along y) on a
`jaxda.grid.Grid`; the scores (end-point and angular errors) are in `jaxda.metrics`.
"""

from ._data import (
    MotionSamples as MotionSamples,
    advection_motion_samples as advection_motion_samples,
    basin_motion_samples as basin_motion_samples,
)
from ._deep_prior import (
    DeepPriorSolution as DeepPriorSolution,
    deep_prior_4dvar as deep_prior_4dvar,
)
from ._fourdvar import (
    Motion4DVar as Motion4DVar,
    first_guess as first_guess,
    motion_4dvar as motion_4dvar,
)
from ._generative import (
    GaussianMotionNet as GaussianMotionNet,
    GenerativeMotionNet as GenerativeMotionNet,
    ensemble_crps_loss as ensemble_crps_loss,
    gaussian_crps_loss as gaussian_crps_loss,
    mean_ensemble_loss as mean_ensemble_loss,
    sample_ensembles as sample_ensembles,
    train_generative_motion_net as train_generative_motion_net,
)
from ._learned import (
    fourdvar_loss as fourdvar_loss,
    hybrid_4dvar as hybrid_4dvar,
    mean_loss as mean_loss,
    predict as predict,
    supervised_loss as supervised_loss,
    train_motion_net as train_motion_net,
)
from ._networks import MotionGenerator as MotionGenerator, MotionNet as MotionNet
from ._optical_flow import (
    OpticalFlow as OpticalFlow,
    horn_schunck as horn_schunck,
    lucas_kanade as lucas_kanade,
)
from ._penalty import (
    MotionPenalty as MotionPenalty,
    fbc23_weights as fbc23_weights,
)


__all__: list[str] = [
    "Motion4DVar",
    "MotionPenalty",
    "MotionSamples",
    "advection_motion_samples",
    "basin_motion_samples",
    "fbc23_weights",
    "first_guess",
    "motion_4dvar",
    "OpticalFlow",
    "horn_schunck",
    "lucas_kanade",
    "DeepPriorSolution",
    "MotionGenerator",
    "MotionNet",
    "deep_prior_4dvar",
    "fourdvar_loss",
    "hybrid_4dvar",
    "mean_loss",
    "predict",
    "supervised_loss",
    "train_motion_net",
    "GaussianMotionNet",
    "GenerativeMotionNet",
    "ensemble_crps_loss",
    "gaussian_crps_loss",
    "mean_ensemble_loss",
    "sample_ensembles",
    "train_generative_motion_net",
]
