r"""Observations: the `(values, mask)` pytree, sampling patterns, noise and operators.

A trajectory has shape `(T, *state)`. Its observations have the same shape: `values`
holds the observed numbers (zero where nothing is observed) and `mask` is `True` where
an observation exists. At file and user boundaries missing values may be NaN
(`Observations.from_nan`, `Observations.to_nan`); inside the library they never are.

Patterns (`FullPattern`, `EveryKPattern`, `RandomComponentsPattern`,
`RandomTimesPattern`, `RandomPhasePattern`) give boolean masks of shape `(T, *state)`,
`pattern(key, T, state_shape)`; `observe` adds Gaussian noise,
$y = m \odot (x + \sigma \varepsilon)$, $\varepsilon \sim \mathcal N(0, I)$.

Observation operators (`IdentityOperator`, `SelectionOperator`, `MatrixOperator`,
`LinearFunctionOperator`, `NonlinearOperator`) generalise the mask:
$y_t = h_t(x_t) + \varepsilon_t$ with observations of shape `(T, *obs_shape)` in
observation space, passed as `operator=` to the 4DVar costs and the Gaussian MAPs.

On a `jaxda.grid.Grid`: `RandomPointsPattern`, `SatelliteTracks` (nadir and
SWOT-like swath altimetry of a constellation of `Satellite`s) and `CloudPattern`
(moving cloud gaps) give gridded masks; the point patterns also give exact positions
(`GridPoints`, padded `(T, M)` slots) for `BilinearInterpolation`, the interpolating
linear operator from a gridded state to point observations.

Components of a state with several axes are numbered in flattened (C) order.
"""

from ._grid_patterns import (
    AbstractGridPattern as AbstractGridPattern,
    AbstractPointPattern as AbstractPointPattern,
    CloudPattern as CloudPattern,
    RandomPointsPattern as RandomPointsPattern,
)
from ._interpolation import (
    BilinearInterpolation as BilinearInterpolation,
    GridPoints as GridPoints,
)
from ._observations import Observations as Observations, observe as observe
from ._operators import (
    AbstractLinearObservationOperator as AbstractLinearObservationOperator,
    AbstractObservationOperator as AbstractObservationOperator,
    AbstractSelectionOperator as AbstractSelectionOperator,
    IdentityOperator as IdentityOperator,
    LinearFunctionOperator as LinearFunctionOperator,
    MatrixOperator as MatrixOperator,
    NonlinearOperator as NonlinearOperator,
    SelectionOperator as SelectionOperator,
    check_operator as check_operator,
    check_operator_observations as check_operator_observations,
    is_state_mask as is_state_mask,
    misfit as misfit,
)
from ._patterns import (
    AbstractPattern as AbstractPattern,
    EveryKPattern as EveryKPattern,
    FullPattern as FullPattern,
    RandomComponentsPattern as RandomComponentsPattern,
    RandomPhasePattern as RandomPhasePattern,
    RandomTimesPattern as RandomTimesPattern,
)
from ._satellites import Satellite as Satellite, SatelliteTracks as SatelliteTracks


__all__ = [
    "AbstractGridPattern",
    "AbstractLinearObservationOperator",
    "AbstractObservationOperator",
    "AbstractPattern",
    "AbstractPointPattern",
    "AbstractSelectionOperator",
    "BilinearInterpolation",
    "CloudPattern",
    "EveryKPattern",
    "FullPattern",
    "GridPoints",
    "IdentityOperator",
    "LinearFunctionOperator",
    "MatrixOperator",
    "NonlinearOperator",
    "Observations",
    "RandomComponentsPattern",
    "RandomPhasePattern",
    "RandomPointsPattern",
    "RandomTimesPattern",
    "Satellite",
    "SatelliteTracks",
    "SelectionOperator",
    "check_operator",
    "check_operator_observations",
    "is_state_mask",
    "misfit",
    "observe",
]
