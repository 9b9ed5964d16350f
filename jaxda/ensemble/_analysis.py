r"""Ensemble analysis schemes: stochastic EnKF, ETKF, EnKF-N and LETKF.

Notation (one analysis time). $E$ `(N, n)` the forecast ensemble, $A$ its anomalies
(rows, unscaled), $N_1 = N - 1$. $Y$ the anomalies of the observed ensemble
$h(E_i)$, $\delta = y - \overline{h(E)}$ the mean innovation, $W$ the diagonal of
observation weights ($R^{-1}$ where observed, 0 elsewhere). Whitened:
$S = Y W^{1/2}$ `(N, p)`, $d = W^{1/2} \delta$. Everything happens in the ensemble
space, with

$$G = S S^\top + N_1 I_N, \qquad P_w = G^{-1}.$$

For a linear $h$ these give the Kalman update of the ensemble statistics exactly
(the Woodbury identity): the mean increment is $A^\top w$ with $w = G^{-1} S d$,
and $A^\top N_1 G^{-1} A / N_1 = P_f - P_f H^\top (H P_f H^\top + R)^{-1} H P_f$.
When $N > p$ the same quantities come from the $p \times p$ matrix $S^\top S + N_1 I$
(push-through identity $G^{-1} S = S (S^\top S + N_1 I)^{-1}$), so a large
ensemble never builds an $N \times N$ eigendecomposition (DAPPER's "svd" variant).

An analysis sees only the observed ensemble $h(E_i)$, the observations $y$ and the
weights, so the observation operator is a separate piece: `assimilate` observes the
state through the mask (observations shaped like the state, $h$ the identity, weight
0 where unobserved, so the observed entries may change at every time without
changing a shape); a linear $H$ or a nonlinear $h$ only changes what it passes in.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Key
from .._validation import is_concrete
from ..grid import Grid
from ._ensemble import Transform
from ._localisation import LocalisationGrid, check_radius, gaspari_cohn


def _check_inflation(value) -> None:
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.shape != () or not np.isfinite(arr) or arr < 1:
        raise ValueError(
            f"`inflation` must be a finite float >= 1 (1: no inflation); got {value!r}."
        )


def _as_array(x):
    return jnp.asarray(x)


class AbstractEnsembleAnalysis(eqx.Module):
    """An ensemble analysis scheme: the transform $X$ of $E^a = E + X A$.

    Concrete schemes hold their hyperparameters as fields and implement `transform`.
    After the analysis, `jaxda.ensemble.assimilate` applies the multiplicative
    `inflation` $\\lambda \\ge 1$ to the analysis anomalies and, with `rotate`, a
    random mean-preserving rotation (DAPPER's post-processing: the analysis
    covariance is multiplied by $\\lambda^2$).
    """

    inflation: eqx.AbstractVar[Float[Array, ""]]
    rotate: eqx.AbstractVar[bool]

    def __check_init__(self):
        _check_inflation(self.inflation)

    @abc.abstractmethod
    def transform(
        self,
        key: Key,
        observed: Float[Array, "N p"],
        y: Float[Array, " p"],
        weight: Float[Array, " p"],
        *,
        state_shape: tuple[int, ...],
    ) -> Transform:
        """The ensemble transform of one analysis.

        **Arguments:** `key`; `observed` the observed ensemble $h(E_i)$ `(N, p)`;
        `y` the observations `(p,)`; `weight` $R^{-1}$ on the observed entries and 0
        elsewhere `(p,)`; `state_shape` the shape of one state (for localisation).
        """


def _whitened(observed, y, weight):
    """$S = Y W^{1/2}$ and $d = W^{1/2}\\delta$."""
    mean = jnp.mean(observed, axis=0)
    root = jnp.sqrt(weight)
    return (observed - mean) * root, (y - mean) * root


def _etkf_factors(s, d) -> tuple[Array, Array | None]:
    """$X = \\mathbf 1 w^\\top + T - I$ with $T = \\sqrt{N_1}\\,G^{-1/2}$
    symmetric: `(X, None)` from the $N \\times N$ eigendecomposition of $G$
    when $N \\le p$, low-rank factors `(L, R)`, $X = L R^\\top$, when $N > p$."""
    n_members, p = s.shape
    n1 = n_members - 1.0
    ones = jnp.ones((n_members, 1), s.dtype)
    if n_members <= p:
        gram = s @ s.T + n1 * jnp.eye(n_members, dtype=s.dtype)
        eig, v = jnp.linalg.eigh(0.5 * (gram + gram.T))
        eig = jnp.maximum(eig, n1)
        w = v @ ((v.T @ (s @ d)) / eig)
        t = (v * jnp.sqrt(n1 / eig)) @ v.T
        return ones * w[None, :] + t - jnp.eye(n_members, dtype=s.dtype), None
    # T - I = S U diag(g) U^T S^T, g(l) = (sqrt(N1 / (l + N1)) - 1) / l, written
    # without the division (finite at l = 0, the unobserved directions).
    lam, u = jnp.linalg.eigh(s.T @ s)
    lam = jnp.maximum(lam, 0.0)
    root = jnp.sqrt(lam + n1)
    g = -1.0 / (root * (jnp.sqrt(n1) + root))
    su = s @ u
    w = su @ ((u.T @ d) / (lam + n1))
    left = jnp.concatenate([ones, su * g], axis=1)
    right = jnp.concatenate([w[:, None], su], axis=1)
    return left, right


class ETKF(AbstractEnsembleAnalysis):
    r"""The ensemble transform Kalman filter with the symmetric square root
    [BEM01; HKS07, eqs. 20-24; SO08] (DAPPER's `EnKF('Sqrt')`).

    $$E^a = \mathbf 1 (\bar x + A^\top w)^\top + T A,\qquad
    w = G^{-1} S d,\qquad T = \sqrt{N_1}\,G^{-1/2},$$

    $T$ computed from the eigendecomposition $G = V D V^\top$ as
    $V \sqrt{N_1} D^{-1/2} V^\top$. The symmetric root is the transform closest to
    the identity and keeps the mean ($T \mathbf 1 = \mathbf 1$) [SO08]. Deterministic:
    with a linear model and observation operator and an ensemble whose mean and
    covariance are exact, the analysis mean and covariance are the Kalman filter's.

    **Arguments:** `inflation` $\lambda \ge 1$ (default 1); `rotate` (default False).
    """

    inflation: Float[Array, ""] = eqx.field(default=1.0, converter=_as_array)
    rotate: bool = eqx.field(default=False, static=True)

    def transform(self, key, observed, y, weight, *, state_shape):
        return Transform(*_etkf_factors(*_whitened(observed, y, weight)))


_PERTURBATIONS = ("centred", "rescaled", "uncentred")


class EnKF(AbstractEnsembleAnalysis):
    r"""The stochastic EnKF with perturbed observations [BLE98; E09, ch. 9]
    (DAPPER's `EnKF('PertObs')` with `perturbations="rescaled"`).

    Each member is updated with its own perturbed innovation,
    $E^a_i = E_i + K (y - \varepsilon_i - h(E_i))$, $K = A^\top Y (Y^\top Y + N_1
    R)^{-1}$ (the gain of the ensemble covariance, built with $R$). In whitened
    ensemble space ($\Delta$ the whitened member innovations, $Z$ the whitened
    perturbations, $\varepsilon_i = R^{1/2} Z_i$):

    $$E^a = E + \Delta S^\top G^{-1} A,\qquad \Delta_i = d - S_i - Z_i.$$

    With $z_i \sim N(0, I)$ and $\bar z$ their mean over the members, `perturbations`
    chooses $Z_i$:

    - `"centred"` (default): $Z_i = z_i - \bar z$. The analysis mean is the Kalman
      update of the forecast mean with the ensemble covariance $P_e$, exactly, and
      the perturbations' sample covariance $\sum_i \varepsilon_i \varepsilon_i^\top /
      N_1$ is $R$ on average, so that the expected analysis covariance given the
      forecast ensemble is the Kalman one,
      $\mathbb E[P^a_e \mid E] = (I - K H) P_e$.
    - `"rescaled"`: $Z_i = \sqrt{N / N_1}\,(z_i - \bar z)$, DAPPER's (its `mean0`):
      each $\varepsilon_i$ has variance $R$, their sample covariance is $\tfrac{N}{N_1}
      R$ on average, and $\mathbb E[P^a_e \mid E] = (I - K H) P_e + K R K^\top / N_1$:
      an extra inflation of the observation-error part (11 % for $N = 10$).
    - `"uncentred"`: $Z_i = z_i$ [BLE98]: the covariance as `"centred"` on average,
      the mean off Kalman's by the sampling noise $K \bar\varepsilon$.

    With the same perturbations this analysis equals DAPPER's `EnKF_analysis`
    ("PertObs") to round-off, and with `inflation` applied after the analysis
    (`assimilate`) the cycle too. On the cycled Lorenz-63 benchmark (N = 10,
    inflation 1.04, DAPPER's tuning for its variant) `"rescaled"` has the larger
    spread and, on average over random keys, the lower RMSE; the time-averaged RMSE
    of one run varies by about 0.1 from one key to another, so single runs of the
    two codes compare only through that distribution
    (`benchmarks/bench_ensemble.py`).

    **Arguments:** `inflation` $\lambda \ge 1$ (default 1); `rotate` (default False);
    `perturbations` `"centred"`, `"rescaled"` or `"uncentred"` (default `"centred"`).
    """

    inflation: Float[Array, ""] = eqx.field(default=1.0, converter=_as_array)
    rotate: bool = eqx.field(default=False, static=True)
    perturbations: str = eqx.field(default="centred", static=True)

    def __check_init__(self):
        if self.perturbations not in _PERTURBATIONS:
            raise ValueError(
                "`perturbations` must be one of 'centred', 'rescaled', 'uncentred'; "
                f"got {self.perturbations!r}."
            )

    def observation_perturbations(
        self, key: Key, weight: Float[Array, " p"], n_members: int
    ) -> Float[Array, "N p"]:
        r"""The whitened observation perturbations $Z$ `(N, p)` of one analysis
        ($\varepsilon_i = R^{1/2} Z_i$; 0 on the unobserved entries, weight 0).

        **Arguments:** `key`; `weight` $R^{-1}$ on the observed entries, 0 elsewhere
        `(p,)`; `n_members` $N$.
        """
        z = jax.random.normal(key, (n_members, weight.shape[0]), weight.dtype)
        if self.perturbations != "uncentred":
            z = z - jnp.mean(z, axis=0)
        if self.perturbations == "rescaled":
            z = z * np.sqrt(n_members / (n_members - 1.0))
        return z * (weight > 0)

    def transform(self, key, observed, y, weight, *, state_shape):
        s, d = _whitened(observed, y, weight)
        n_members, p = s.shape
        n1 = n_members - 1.0
        z = self.observation_perturbations(key, weight.astype(s.dtype), n_members)
        # Whitened innovations of the members: W^1/2 (y - eps_i - h(E_i)), with
        # W^1/2 R^1/2 = 1 on the observed entries.
        delta = d - s - z
        if n_members <= p:
            gram = s @ s.T + n1 * jnp.eye(n_members, dtype=s.dtype)
            eig, v = jnp.linalg.eigh(0.5 * (gram + gram.T))
            eig = jnp.maximum(eig, n1)
            return Transform(((delta @ s.T) @ v / eig) @ v.T)
        lam, u = jnp.linalg.eigh(s.T @ s)
        lam = jnp.maximum(lam, 0.0)
        return Transform((delta @ u) / (lam + n1), s @ u)


class EnKFN(AbstractEnsembleAnalysis):
    r"""The finite-size EnKF-N, dual form [B11; BRH15] (DAPPER's `EnKF_N`).

    The ETKF with a prior inflation $l$ of the anomalies estimated at each analysis
    from a hierarchical prior on the background covariance. With $S S^\top =
    V \operatorname{diag}(\sigma^2) V^\top$ and $u = \Sigma^{-1} V^\top S d$, $l$ is
    the minimiser of the dual cost

    $$\mathcal D(l) = \sum_i \frac{u_i^2}{l^2 \sigma_i^2 + N_1} + \frac{\varepsilon_N}
    {l^2} + c_L \log l^2,$$

    $\varepsilon_N = \frac{N+1}{N}$, $c_L = \frac{N+g}{N_1}$, both corrected towards
    the mode as in [BRH15, eq. 36] and scaled by `xN`, found by Newton's method
    from $l = 1$ (DAPPER's iteration). Then $A \leftarrow l A$, $S \leftarrow l S$ and
    the ETKF update.

    **Arguments:** `xN` > 0 (confidence in the hyperprior, default 1; 2 for nearly
    linear dynamics); `g` >= 0 (default 0); `inflation` (extra, post-analysis,
    default 1); `rotate` (default False).
    """

    xN: float = eqx.field(default=1.0, static=True)
    g: int = eqx.field(default=0, static=True)
    inflation: Float[Array, ""] = eqx.field(default=1.0, converter=_as_array)
    rotate: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if not (np.isfinite(self.xN) and self.xN > 0):
            raise ValueError(f"`xN` must be a finite float > 0; got {self.xN!r}.")
        if not isinstance(self.g, int) or self.g < 0:
            raise ValueError(f"`g` must be an int >= 0; got {self.g!r}.")

    def inflation_factor(self, s, d) -> Float[Array, ""]:
        """The EnKF-N prior inflation $l$ of one analysis (whitened $S$, $d$)."""
        return _enkf_n_factor(s, d, self.xN, self.g)[0]

    def transform(self, key, observed, y, weight, *, state_shape):
        s, d = _whitened(observed, y, weight)
        l1, sig2, v = _enkf_n_factor(s, d, self.xN, self.g)
        n_members = s.shape[0]
        n1 = n_members - 1.0
        diag = l1**2 * sig2 + n1
        w = v @ ((v.T @ (l1 * (s @ d))) / diag)
        t = (v * jnp.sqrt(n1 / diag)) @ v.T
        ones = jnp.ones((n_members, 1), s.dtype)
        x = l1 * (ones * w[None, :] + t) - jnp.eye(n_members, dtype=s.dtype)
        return Transform(x)


@eqx.filter_jit
def _enkf_n_factor(s, d, xn, g):
    n_members = s.shape[0]
    n1 = n_members - 1.0
    gram = s @ s.T
    sig2, v = jnp.linalg.eigh(0.5 * (gram + gram.T))
    sig2 = jnp.maximum(sig2, 0.0)
    b = v.T @ (s @ d)
    tiny = jnp.finfo(s.dtype).eps * jnp.maximum(jnp.max(sig2), 1.0) * n_members
    nonzero = sig2 > tiny
    du2 = jnp.where(nonzero, b**2 / jnp.where(nonzero, sig2, 1.0), 0.0)
    # Hyperprior coefficients with the mode correction of [BRH15, eq. 36].
    e_n = (n_members + 1.0) / n_members
    c_l = (n_members + g) / n1
    i_kh = jnp.mean(n1 / (sig2 + n1))
    mc = jnp.sqrt((e_n / c_l) ** i_kh)
    e_n, c_l = xn * e_n / mc, xn * c_l * mc

    def grad(l1):
        den = l1**2 * sig2 + n1
        return -2 * l1 * jnp.sum(sig2 * du2 / den**2) - 2 * e_n / l1**3 + 2 * c_l / l1

    def curvature(l1):  # DAPPER's Newton curvature
        den = l1**2 * sig2 + n1
        return (
            8 * l1**2 * jnp.sum(sig2**2 * du2 / den**3)
            + 6 * e_n / l1**4
            - (2 * c_l / l1**2)
        )

    def cond(state):
        l1, step, it = state
        return (jnp.abs(grad(l1)) > 1e-7) & (jnp.abs(step) > 1e-4) & (it < 100)

    def body(state):
        l1, _, it = state
        step = grad(l1) / curvature(l1)
        return l1 - step, step, it + 1

    one = jnp.ones((), s.dtype)
    l1, _, _ = jax.lax.while_loop(cond, body, (one, jnp.array(jnp.inf, s.dtype), 0))
    return l1, sig2, v


class LETKF(AbstractEnsembleAnalysis):
    r"""The local ETKF with R-localisation [HKS07].

    One ETKF analysis per state entry $j$, with the observation weights tapered by
    the Gaspari-Cohn function of the distance to $j$: $W_j = W \rho(d(j, \cdot)/c)$
    (`jaxda.ensemble.gaspari_cohn`). Entry $j$ of the analysis is entry $j$ of
    $E + X_j A$; the $n$ local transforms are computed under `vmap`. An infinite
    `radius` gives the ETKF. Every local analysis sees all $p$ observations with
    zero weight outside the taper's support, so the cost is $O(n N^2 p)$ per
    analysis (a gather of the observations within $2c$ is the next step for large
    grids).

    **Arguments:**
    - `radius`: the Gaspari-Cohn half width $c > 0$ in grid units (the taper vanishes
      beyond $2c$; DAPPER's `loc_rad` $\ell$ is $c / 1.82$); `inf`: no localisation.
    - `grid`: a `jaxda.ensemble.LocalisationGrid`, or a 2-D `jaxda.grid.Grid` for a
      state of shape `(ny, nx)` (distances in its units); default (`None`): the
      periodic grid of the state shape in index units (the Lorenz-96 ring).
    - `inflation` $\lambda \ge 1$ (default 1); `rotate` (default False).
    """

    radius: Float[Array, ""] = eqx.field(converter=_as_array)
    grid: LocalisationGrid | None = None
    inflation: Float[Array, ""] = eqx.field(default=1.0, converter=_as_array)
    rotate: bool = eqx.field(default=False, static=True)

    def __post_init__(self):
        if isinstance(self.grid, Grid):
            self.grid = LocalisationGrid.from_grid(self.grid)

    def __check_init__(self):
        check_radius("radius", self.radius)
        if self.grid is not None and not isinstance(self.grid, LocalisationGrid):
            raise TypeError(
                "`grid` must be a jaxda.ensemble.LocalisationGrid, a jaxda.grid.Grid "
                f"or None; got {type(self.grid).__name__}."
            )

    def taper(self, state_shape) -> Float[Array, "n n"]:
        """$\\rho(d(j, k)/c)$ between the state entries $j$ and the observations $k$
        (located at the state's grid points)."""
        grid = LocalisationGrid(state_shape) if self.grid is None else self.grid
        if tuple(grid.shape) != tuple(state_shape):
            raise ValueError(
                f"`grid` must have the state shape {tuple(state_shape)}; got "
                f"{grid.shape}."
            )
        points = grid.coordinates()
        dist = grid.distances(points, points)
        return gaspari_cohn(dist, self.radius)

    def transform(self, key, observed, y, weight, *, state_shape):
        taper = self.taper(state_shape).astype(observed.dtype)

        def local(rho):
            left, right = _etkf_factors(*_whitened(observed, y, weight * rho))
            return left if right is None else left @ right.T

        return Transform(jax.vmap(local)(taper))
