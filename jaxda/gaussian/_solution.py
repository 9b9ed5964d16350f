"""The outputs of the Gaussian MAP functions: `GaussianMAP` and `PosteriorVariance`."""

import equinox as eqx

from .._custom_types import Array, Float
from .._results import RESULTS


class GaussianMAP(eqx.Module):
    """Result of a Gaussian MAP estimate.

    **Fields:**

    - `mean`: the posterior mean (= MAP), with the shape of `mu`.
    - `result`: a `jaxda.RESULTS` item: `successful`; `invalid_input` (a value check
      failed under `jit`, or more observations than `max_obs`); `nonfinite_input` (the
      prior matrix holds NaN / inf); `not_positive_definite` (the prior is not
      positive semi-definite or the linear system is not SPD). When it is not
      `successful` the mean is not meaningful (it may hold NaN).
    """

    mean: Float[Array, " *shape"]
    result: RESULTS


class PosteriorVariance(eqx.Module):
    r"""Posterior marginal variances $\mathrm{diag}((Q + H^\top R^{-1} H)^{-1})$.

    **Fields:** `variance` (shape of `mask`) and `result` (as in `GaussianMAP`).
    """

    variance: Float[Array, " *shape"]
    result: RESULTS
