r"""Gaussian MAP estimation (optimal interpolation) with structured prior matrices.

Prior $x \sim \mathcal N(\mu, P)$ (or precision $Q = P^{-1}$), observations
$y = H x + \varepsilon$, $\varepsilon \sim \mathcal N(0, R)$ with diagonal $R$, where
$H$ selects the entries where `mask` is `True`. The posterior mean (= MAP) is

- covariance form: $x = \mu + P H^\top (H P H^\top + R)^{-1} (y - H\mu)$;
- precision form: $(Q + H^\top R^{-1} H)\, x = Q\mu + H^\top R^{-1} y$.

Arrays `mu`, `y`, `mask` (and `obs_var` unless scalar) share one shape of size $d$ and
are flattened in C order: a `(T, n)` trajectory becomes the interleaved time-major
layout $i = t n + j$, matching `SymmetricBandMatrix` (bandwidth $\le 2n-1$) and
`BlockTridiagonal` (blocks of size $n$). Results have the shape of `mu`.

Costs are $O(d b^2)$ (band) or $O(T n^3)$ (block-tridiagonal): for a mask, $H^\top
R^{-1} H = \mathrm{diag}(m / r)$ is added to the diagonal of $Q$; in covariance form
the observed block $H P H^\top + R$ is embedded in a $d \times d$ matrix of the same
structure, $S = M P M + \tilde R$ with $M = \mathrm{diag}(m)$ and $\tilde R$ the
observation variances on observed entries and $1$ elsewhere: $S$ is block diagonal
(after permutation) with blocks $H P H^\top + R$ and $I$, so with
$z = S^{-1} M (y - \mu)$ (zero on unobserved entries), $x = \mu + P z$.

**Observation operators.** Every function also takes `operator=`, a linear
`jaxda.obs` operator $H_t$ acting on each state of `mu` (`mu` of the operator's
state shape, or `(T, *state_shape)` with $H = \mathrm{blockdiag}(H_t)$), with `y`,
`mask`, `obs_var` in observation space, shape `lead + obs_shape` (`mask` optional).
An `IdentityOperator` is the mask above, with the same numbers. Which form takes
which operator:

- `IdentityOperator`, `SelectionOperator` ($H^\top R^{-1} H$ diagonal): every
  function, with any `Q` / `P`;
- `MatrixOperator`, `LinearFunctionOperator` (any other linear $H_t$):
  `map_precision` and `posterior_variance` only with a `BlockTridiagonal` `Q` of one
  block per time of the operator's state size, $Q_{tt} + H_t^\top R_t^{-1} H_t$
  ($O(T(m n^2 + n^3))$); `map_covariance` with any `P`, in observation space,
  $K = P H^\top (H P H^\top + R)^{-1}$; `map_dense`;
- `NonlinearOperator`: refused (`TypeError`): a Gaussian MAP needs a linear $H$.

A banded `Q` with an operator whose $H^\top R^{-1} H$ is not diagonal is refused with
a `ValueError` naming `Q` and `operator`. Derivatives with respect to the operator's
parameters (a blur width) flow through every form.

**Gridded fields** ($d = T n_y n_x$ up to $10^6$): two covariance-form MAPs whose
prior is never a matrix.

- `map_kernel`: a covariance *function* (`jaxda.grid.SpaceTimeKernel`) and point
  observations at coordinates $(t, y, x)$ off the grid (`points` `(m, 3)`, e.g.
  `jaxda.obs.GridPoints.rows`): $K + R$ at the points, $m \times m$ dense Cholesky,
  the analysis on the grid by products of the kernel's axis factors (DUACS-style OI
  of track observations; $O(m^3)$, for $m$ up to about $10^4$).
- `map_covariance_cg`: a covariance *operator* (`jaxda.grid.AbstractCovariance`:
  spectral, diffusion, space-time) and any linear operator (`SelectionOperator`,
  `BilinearInterpolation`, ...) or the mask of the field: conjugate gradients on
  $(H P H^\top + R) z = y - H\mu$, one $P v$ per iteration, $O(d + m)$ memory; an
  `IterativeGaussianMAP` (`num_steps`; `max_steps_reached` / `breakdown` in
  `result`).

Derivatives with respect to `mu`, `y`, `obs_var` and the prior matrix entries come from
the implicit rules of `jaxda.linalg.solve`. Every function handles one problem and is
`jax.vmap`-able over samples and masks; with no observation at all the MAP is `mu`.

**Failures** follow the library's one convention: every function returns a Module with
a `result` field (`jaxda.RESULTS`) and takes `throw=True`, which raises an
`equinox.EquinoxRuntimeError` carrying the result's message when it is not
`successful`, eagerly and under `jit` alike (pass `throw=False` under `vmap` to keep
the members that succeeded). Static misuse (shapes, dtypes, types) and, on concrete
values, a non-finite `mu`, `y` (where observed) or prior matrix, or `obs_var <= 0`,
raise a `ValueError` / `TypeError` naming the argument; under `jit` those value checks
give `RESULTS.invalid_input`. A prior that is not positive semi-definite or a linear
system that is not SPD gives `RESULTS.not_positive_definite`.

**Definiteness.** Two matrices are checked, each by a Cholesky factorisation of the
prior's structure (for a structured prior both in one batched pass):

- the *system* matrix (the posterior precision $Q + H^\top R^{-1} H$, or $S = M P M +
  \tilde R$, or $H P H^\top + R$) must be SPD: its factorisation is the solve itself;
- the *prior* matrix $A$ ($P$ or $Q$) must be positive **semi**-definite: $A + \delta I$
  is factorised, $\delta = \sqrt{\varepsilon}\,\max_i |A_{ii}| + \text{tiny}$
  ($\varepsilon$ the machine epsilon of the dtype). Since $\lambda_{\min}(A + \delta
  I) = \lambda_{\min}(A) + \delta$, this flags every $A$ with an eigenvalue below
  $-\delta$ (an indefinite prior, for which the "MAP" is a saddle point, not a
  minimum) and accepts singular semi-definite priors (an empirical covariance of fewer
  samples than $d$; an intrinsic precision with a null space) and eigenvalues in
  $(-\delta, 0)$, which are rounding at working precision.

An SPD system does not imply a valid prior: with $P$ tridiagonal with unit diagonal and
off-diagonal 2 (eigenvalues down to $-2.6$) and every other entry observed, $S$ is
diagonal and positive while $P$ is indefinite; hence the second check. The
observation-space form (`map_covariance(..., max_obs=m)`) checks only the observed
block $H P H^\top$ (a necessary condition), to keep its cost free of a sequential pass
over $d$.
"""

from ._dense import map_dense as map_dense
from ._grid_oi import (
    IterativeGaussianMAP as IterativeGaussianMAP,
    map_covariance_cg as map_covariance_cg,
    map_kernel as map_kernel,
)
from ._solution import (
    GaussianMAP as GaussianMAP,
    PosteriorVariance as PosteriorVariance,
)
from ._structured import (
    map_covariance as map_covariance,
    map_precision as map_precision,
    posterior_variance as posterior_variance,
)


__all__ = [
    "GaussianMAP",
    "IterativeGaussianMAP",
    "PosteriorVariance",
    "map_covariance",
    "map_covariance_cg",
    "map_dense",
    "map_kernel",
    "map_precision",
    "posterior_variance",
]
