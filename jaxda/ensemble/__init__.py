"""Ensemble data assimilation: EnKF, ETKF, EnKF-N, LETKF, the EnKS and the iEnKS.

Ensembles are arrays `(N, *state)` (members leading); keys are explicit
`jax.random` keys. `assimilate(method, flow, obs, ensemble0, key=..., obs_var=...)`
cycles any method over an observation sequence in one compiled `lax.scan` and
returns an `EnsembleResult` (mean, spread, optionally members, `result`).
`EnsembleCovariance` and `HybridCovariance` give the (localised, hybrid) ensemble
background covariance of hybrid EnVar as a square-root operator for
`jaxda.var.ControlTransform`.
"""

from ._analysis import (
    ETKF as ETKF,
    LETKF as LETKF,
    AbstractEnsembleAnalysis as AbstractEnsembleAnalysis,
    EnKF as EnKF,
    EnKFN as EnKFN,
)
from ._assimilate import (
    EnKS as EnKS,
    EnsembleResult as EnsembleResult,
    assimilate as assimilate,
)
from ._ensemble import (
    Transform as Transform,
    inflate as inflate,
    mean_preserving_rotation as mean_preserving_rotation,
    rotate as rotate,
)
from ._envar import (
    EnVarResult as EnVarResult,
    HybridEnVar as HybridEnVar,
    ObservationTerm as ObservationTerm,
    assimilate_envar as assimilate_envar,
)
from ._first_guess import (
    SmootherFirstGuess as SmootherFirstGuess,
    climatology_ensemble as climatology_ensemble,
    smoother_first_guess as smoother_first_guess,
)
from ._hybrid import (
    EnsembleCovariance as EnsembleCovariance,
    HybridCovariance as HybridCovariance,
    TaperCovariance as TaperCovariance,
)
from ._ienks import (
    IEnKS as IEnKS,
    IEnKSResult as IEnKSResult,
    ienks_cycle as ienks_cycle,
)
from ._localisation import (
    LocalisationGrid as LocalisationGrid,
    gaspari_cohn as gaspari_cohn,
    gaspari_cohn_matrix as gaspari_cohn_matrix,
    localised_covariance as localised_covariance,
)
