r"""Ensemble and hybrid background covariances for EnVar, as square-root operators.

The ensemble covariance of $N$ members $x^{(k)}$ is $P_e = A A^\top$ with the scaled
anomalies $a_k = (x^{(k)} - \bar x) / \sqrt{N - 1}$. Localised by the Schur
(entrywise) product with a correlation $C = L L^\top$ (unit diagonal), its square
root in the $\alpha$-control variable form [L03; B05] is

$$U_e w = \sum_{k=1}^N a_k \circ (L w_k),\qquad
U_e U_e^\top = \sum_k \mathrm{diag}(a_k)\, C\, \mathrm{diag}(a_k) = C \circ P_e,$$

with one control field $w_k$ per member (`control_shape` `(N, *field)`); without
localisation $U_e w = \sum_k a_k w_k$, $w \in \mathbb R^N$. The hybrid background of
hybrid EnVar / hybrid 4DVar is

$$B = \beta\, B_s + (1 - \beta)\,(C \circ P_e),\qquad
U w = \sqrt\beta\, U_s w_s + \sqrt{1 - \beta}\, U_e w_e,$$

with the control $w = (w_s, w_e)$ flattened into one vector. Through
`jaxda.var.ControlTransform` ($x = x_b + U w$, $J_b = \|w\|^2/2$) any 4DVar problem
then runs with the hybrid $B$ on every solver (`var.GaussNewtonCG`, `var.LBFGS`,
`var.DenseGaussNewton` for small states): the 4DVar of [jaxda.var] and the ensembles
of [jaxda.ensemble] share the solvers. The minimiser in $x$ is the Gaussian posterior
mean with this $B$ even though $U$ is not square ($x^\star - x_b = U U^\top G^\top
(G B G^\top + R)^{-1} d$ for a linear model $G$).

`TaperCovariance` turns a dense taper matrix (e.g. `gaspari_cohn_matrix`, for the
Lorenz-96 ring) into the localisation correlation $C$ with its symmetric square
root; on 2-D grids use a unit-variance `jaxda.grid.SpectralCovariance` or
`DiffusionCovariance` as $C$ instead (never a dense matrix).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from .._validation import check_finite, is_concrete
from ..grid import AbstractCovariance


def _check_covariance(name: str, value, field_shape=None) -> None:
    if not isinstance(value, AbstractCovariance):
        raise TypeError(
            f"`{name}` must be a jaxda.grid.AbstractCovariance; got "
            f"{type(value).__name__}."
        )
    if field_shape is not None and tuple(value.field_shape) != tuple(field_shape):
        raise ValueError(
            f"`{name}.field_shape` must be {tuple(field_shape)}; got "
            f"{tuple(value.field_shape)}."
        )


class TaperCovariance(AbstractCovariance):
    r"""A dense correlation (taper) matrix $C$ as a covariance operator, $U = C^{1/2}$
    the symmetric square root (eigenvalues below 0 from round-off set to 0).

    **Arguments:** `taper` `(d, d)` symmetric positive semi-definite (e.g.
    `gaspari_cohn_matrix(grid, radius)`); `field_shape` the shape of one field
    (default `(d,)`). For small states only: it stores $d \times d$ numbers.
    """

    field_shape: tuple[int, ...] = eqx.field(static=True)
    root: Float[Array, "d d"]

    def __init__(self, taper, field_shape: tuple[int, ...] | None = None):
        taper = jnp.asarray(taper)
        if taper.ndim != 2 or taper.shape[0] != taper.shape[1]:
            raise ValueError(
                f"`taper` must be a square (d, d) matrix; got shape {taper.shape}."
            )
        check_finite("taper", taper)
        d = taper.shape[0]
        field_shape = (d,) if field_shape is None else tuple(field_shape)
        if math.prod(field_shape) != d:
            raise ValueError(
                f"`field_shape` must have {d} entries (the taper's size); got "
                f"{field_shape}."
            )
        if is_concrete(taper):
            t = np.asarray(taper)
            if not np.allclose(t, t.T, atol=1e-12 * max(1.0, np.abs(t).max())):
                raise ValueError("`taper` must be symmetric.")
        eigenvalues, vectors = jnp.linalg.eigh(taper)
        eigenvalues = jnp.maximum(eigenvalues, 0.0)
        self.root = (vectors * jnp.sqrt(eigenvalues)) @ vectors.T
        self.field_shape = field_shape

    def sqrt(self, w):
        return (self.root @ jnp.ravel(w)).reshape(self.field_shape)

    def sqrt_transpose(self, v):
        return (self.root.T @ jnp.ravel(v)).reshape(self.field_shape)

    @property
    def variance(self):
        return jnp.sum(self.root**2, axis=1).reshape(self.field_shape)


class EnsembleCovariance(AbstractCovariance):
    r"""The (localised) ensemble covariance $C \circ P_e$ of an ensemble, as a
    square-root operator (module docstring).

    **Arguments:**

    - `ensemble` `(N, *field)`: the members, $N \ge 2$.
    - `localisation`: the correlation $C$, a `jaxda.grid.AbstractCovariance` of
      unit variance on `field` (`TaperCovariance`, `jaxda.grid.SpectralCovariance`,
      ...); `None`: no localisation (control $w \in \mathbb R^N$).

    `control_shape` is `(N, *field)` with localisation, `(N,)` without.
    """

    anomalies: Float[Array, "N *field"]
    localisation: AbstractCovariance | None
    field_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, ensemble, localisation: AbstractCovariance | None = None):
        ensemble = jnp.asarray(ensemble)
        if ensemble.ndim < 2 or ensemble.shape[0] < 2:
            raise ValueError(
                "`ensemble` must be an array (N, *field) with N >= 2 members; got "
                f"shape {ensemble.shape}."
            )
        if not jnp.issubdtype(ensemble.dtype, jnp.floating):
            raise TypeError(
                f"`ensemble` must be a floating array; got dtype {ensemble.dtype}."
            )
        check_finite("ensemble", ensemble)
        field_shape = tuple(ensemble.shape[1:])
        if localisation is not None:
            _check_covariance("localisation", localisation, field_shape)
        n = ensemble.shape[0]
        self.anomalies = (ensemble - jnp.mean(ensemble, axis=0)) / jnp.sqrt(n - 1.0)
        self.localisation = localisation
        self.field_shape = field_shape

    @property
    def n_members(self) -> int:
        return self.anomalies.shape[0]

    @property
    def control_shape(self) -> tuple[int, ...]:
        if self.localisation is None:
            return (self.n_members,)
        return (self.n_members, *self.field_shape)

    def sqrt(self, w):
        if self.localisation is None:
            return jnp.tensordot(w, self.anomalies, axes=1)
        spread = jax.vmap(self.localisation.sqrt)(w)  # L w_k for every member
        return jnp.sum(self.anomalies * spread, axis=0)

    def sqrt_transpose(self, v):
        axes = tuple(range(1, self.anomalies.ndim))
        if self.localisation is None:
            return jnp.sum(self.anomalies * v, axis=axes)
        return jax.vmap(self.localisation.sqrt_transpose)(self.anomalies * v)

    @property
    def variance(self):
        var = jnp.sum(self.anomalies**2, axis=0)
        if self.localisation is None:
            return var
        return var * self.localisation.variance


class HybridCovariance(AbstractCovariance):
    r"""$B = \beta B_s + (1 - \beta) B_e$: a static and an ensemble covariance
    (module docstring), with the flattened control $(w_s, w_e)$.

    **Arguments:** `static` $B_s$ and `ensemble` $B_e$ (`jaxda.grid`
    covariances on the same `field_shape`, e.g. a `SpectralCovariance` and an
    `EnsembleCovariance`); `weight` $\beta \in [0, 1]$, the static share (1: 3DVar /
    4DVar with $B_s$; 0: pure EnVar).
    """

    static: AbstractCovariance
    ensemble: AbstractCovariance
    weight: Float[Array, ""]
    field_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, static, ensemble, weight):
        _check_covariance("static", static)
        _check_covariance("ensemble", ensemble, static.field_shape)
        weight = jnp.asarray(weight)
        if weight.shape != () or not jnp.issubdtype(weight.dtype, jnp.floating):
            if not (weight.shape == () and jnp.issubdtype(weight.dtype, jnp.integer)):
                raise TypeError(
                    f"`weight` must be a real number in [0, 1]; got {weight!r}."
                )
            weight = weight.astype(jnp.result_type(float))
        if is_concrete(weight) and not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"`weight` must be in [0, 1]; got {float(weight)}.")
        self.static = static
        self.ensemble = ensemble
        self.weight = weight
        self.field_shape = tuple(static.field_shape)

    @property
    def _sizes(self) -> tuple[int, int]:
        return (
            math.prod(self.static.control_shape),
            math.prod(self.ensemble.control_shape),
        )

    @property
    def control_shape(self) -> tuple[int, ...]:
        return (sum(self._sizes),)

    def sqrt(self, w):
        n_static = self._sizes[0]
        w_s = w[:n_static].reshape(self.static.control_shape)
        w_e = w[n_static:].reshape(self.ensemble.control_shape)
        return jnp.sqrt(self.weight) * self.static.sqrt(w_s) + jnp.sqrt(
            1.0 - self.weight
        ) * self.ensemble.sqrt(w_e)

    def sqrt_transpose(self, v):
        w_s = jnp.sqrt(self.weight) * self.static.sqrt_transpose(v)
        w_e = jnp.sqrt(1.0 - self.weight) * self.ensemble.sqrt_transpose(v)
        return jnp.concatenate([jnp.ravel(w_s), jnp.ravel(w_e)])

    @property
    def variance(self):
        return (
            self.weight * self.static.variance
            + (1.0 - self.weight) * self.ensemble.variance
        )
