r"""SPDE / GMRF priors on gridded fields ([BF24], [LRL11]): the precision of a window
of states driven by the advection-diffusion SPDE, conditional (posterior) ensembles
and the precision-form optimal interpolation.

$$\partial_t x + \{\kappa^2(s, t) + \mathbf m(s, t)\cdot\nabla -
\nabla\cdot(\mathbf H(s, t)\nabla)\}^{\alpha/2}\, x = \tau(s, t)\, z(s, t),$$

$\alpha = 2$, discretised in time by implicit Euler, $x_k = M_k x_{k-1} + T_k z_k$
with $M_k = (I + \Delta t\,\mathcal A_k)^{-1}$ and $T_k = \tau_k\sqrt{\Delta t}\,M_k$,
and in space by a 9-point stencil on a `jaxda.grid.Grid`.

- `SPDEParameters`: the fields $\kappa$, $\mathbf m$, $\mathbf H$, $\tau$ (stationary
  or not, in space and time); `diffusion_from_anisotropy` ($\mathbf H = \gamma
  \mathbf I + \mathbf v\mathbf v^\top$).
- `SPDEPrior`: $Q v$ (matrix-free), $\log|Q|$ (banded Cholesky or FFT), exact
  samples by the recursion, $\log p(x)$, $\mathrm{diag}(Q)$; everything
  differentiable with respect to the parameter fields.
- `spde_map`, `conditional_ensemble`: the MAP $(Q + H^\top R^{-1} H)\,x = Q\mu +
  H^\top R^{-1} y$ by preconditioned conjugate gradients, and posterior samples by
  perturbation-optimisation.
- `fit_maximum_likelihood`, `negative_log_likelihood`, `MaximumLikelihoodFit`: the
  parameters by maximum likelihood on training windows (exact log-determinant).
"""

from ._fit import (
    MaximumLikelihoodFit as MaximumLikelihoodFit,
    fit_maximum_likelihood as fit_maximum_likelihood,
    negative_log_likelihood as negative_log_likelihood,
)
from ._oi import (
    ConditionalEnsemble as ConditionalEnsemble,
    conditional_ensemble as conditional_ensemble,
    spde_map as spde_map,
)
from ._operator import spatial_operator as spatial_operator
from ._parameters import (
    SPDEParameters as SPDEParameters,
    diffusion_from_anisotropy as diffusion_from_anisotropy,
)
from ._prior import SPDEPrior as SPDEPrior


__all__ = [
    "ConditionalEnsemble",
    "MaximumLikelihoodFit",
    "SPDEParameters",
    "SPDEPrior",
    "conditional_ensemble",
    "diffusion_from_anisotropy",
    "fit_maximum_likelihood",
    "negative_log_likelihood",
    "spatial_operator",
    "spde_map",
]
