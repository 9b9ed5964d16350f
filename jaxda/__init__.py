"""jaxda: variational and learned data assimilation in JAX.

Subpackages: `models` (dynamics, `simulate`, flow maps), `obs` (observations, patterns,
operators, noise), `data` (twin-experiment datasets, presets, first guesses), `grid`
(regular 2-D grids for gridded fields), `metrics`, `linalg` (banded and
block-tridiagonal SPD algebra), `gaussian` (Gaussian MAP / optimal interpolation),
`spde` (SPDE / GMRF priors on grids, SPDE OI, conditional ensembles, [BF24]),
`var` (4DVar costs and solvers), `ensemble` (EnKF, ETKF, LETKF, EnKS, iEnKS),
`cycling` (one driver for every cycled method), `fourdvarnet` (4DVarNet, [F21]),
`incremental` (neural incremental DA, [B24]), `motion` (motion fields from image
sequences and shallow-water heights, [FBC23]), `nn` (reusable layers), `train`
(optax training loop), `sharding` (batches over devices), `io` (atomic files,
checkpoints, model save/load), `plot` (figures; needs matplotlib).
"""

from . import (
    data as data,
    ensemble as ensemble,
    fourdvarnet as fourdvarnet,
    gaussian as gaussian,
    grid as grid,
    incremental as incremental,
    io as io,
    linalg as linalg,
    metrics as metrics,
    models as models,
    motion as motion,
    nn as nn,
    obs as obs,
    plot as plot,
    sharding as sharding,
    spde as spde,
    train as train,
    var as var,
)
from ._results import RESULTS as RESULTS
from .obs import Observations as Observations


__version__ = "0.2.0"
