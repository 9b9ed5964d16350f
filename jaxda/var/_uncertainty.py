r"""Uncertainty of a 4DVar estimate: randomised-maximum-likelihood ensembles and
samples of the Gauss-Newton (Laplace) posterior.

Every `jaxda.var` problem is a least-squares problem in whitened residuals,
$J(u) = \tfrac12\|r(u)\|^2$, each term of $r$ the misfit of one Gaussian piece of
information (an observation, the background, a model error, a penalty) divided by its
standard deviation. Both methods perturb those residuals:
$$J_e(u) = \tfrac12\,\|r(u) - e\|^2, \qquad e \sim \mathcal N(0, I)$$
(`PerturbedProblem`). Subtracting $e$ from a term is perturbing its data:

- the observation term $R^{-1/2}(h(x) - y)$: observations $y + R^{1/2} e$, i.e.
  $y + \varepsilon$, $\varepsilon \sim \mathcal N(0, R)$, on the observed entries
  (on the unobserved ones the residual is identically 0 and $e$ adds a constant to
  $J_e$, not moving its minimiser);
- a `Background` $L^\top (x_0 - x_b)$, $B^{-1} = L L^\top$: the mean
  $x_b + L^{-\top} e$, i.e. $x_b + \eta$, $\eta \sim \mathcal N(0, B)$;
- the control-variable transform ($\tfrac12\|w\|^2$, `ControlTransform`): the mean
  $x_b + U e$; a weak-constraint model error: a forcing $\sim \mathcal N(0, Q)$;
- a penalty $\tfrac12\|L w\|^2$ (e.g. `jaxda.motion.MotionPenalty`): its improper
  Gaussian prior (precision $L^\top L$) sampled in the range of $L$.

The perturbation acts on the residual vector that every problem already exposes, so
it applies to every problem and wrapper alike (`StrongConstraint4DVar`,
`WeakConstraint4DVar`, `ControlTransform`, `WeakConstraintForcing`,
`JointStateParameter`, `jaxda.motion.Motion4DVar`) without looking into them; `terms`
selects the residual terms perturbed (e.g. `terms=(0,)`: the observations only).

**Randomised maximum likelihood** [O96] (perturbed-observation 4DVar,
`rml_ensemble`): member $i$ minimises $J_{e_i}$ from the same first guess. For a
linear-Gaussian problem, $r(u) = A u - b$, the minimiser
$u_i = (A^\top A)^{-1} A^\top (b + e_i)$ is an exact sample of the posterior
$\mathcal N(u^\star, (A^\top A)^{-1})$; for a nonlinear one RML is an approximate
sampler (each member a full nonlinear minimisation, so it sees the curvature the
linearisation misses), and a truncated minimisation under-disperses.

**Laplace samples** (`laplace_ensemble`): the Gaussian $\mathcal N(u^\star,
(J^\top J)^{-1})$ of the linearisation at a solution $u^\star$, $J = \partial r /
\partial u\,(u^\star)$, sampled by perturbation-optimisation of the linearised least
squares: $\delta_i = \arg\min \|J\delta - e_i\|^2$ solves
$J^\top J\,\delta_i = J^\top e_i$, and $\mathrm{Cov}(\delta_i) = (J^\top J)^{-1}
J^\top J (J^\top J)^{-1} = (J^\top J)^{-1}$. The normal equations are solved
matrix-free by conjugate gradients on the tangent-linear and adjoint models
(`ConjugateGradientNormal`, from $\delta = 0$); a CG stopped by its iteration cap is
reported (`max_steps_reached`), never returned as a converged sample.

**Rank-deficient problems.** When $J^\top J$ is singular (no background, and
directions that the data do not see, as the velocity parallel to a height's contours
in unpenalised motion 4DVar), the posterior is improper. The right-hand side
$J^\top e$ lies in the range of $J^\top J$, so CG from 0 converges (in exact
arithmetic) to the minimum-norm solution $J^{+} e$: the samples spread only in the
observed directions and have zero spread along the null space, which is a statement
about the solver, not about the uncertainty there. Regularise first (a background,
or a penalty acting as a prior) before reading the spread as an uncertainty.
"""

from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Int
from .._results import RESULTS, all_finite, raise_if_failed
from .._validation import check_int, check_key
from ._costs import AbstractVarProblem
from ._matrix_free import ConjugateGradientNormal
from ._solve import _cast_control, _run
from ._solver import AbstractSolver


class PerturbedProblem(AbstractVarProblem):
    r"""A problem with its whitened residuals shifted: $r_e(u) = r(u) - e$,
    $J_e(u) = \tfrac12\|r(u) - e\|^2$ (module docstring).

    **Arguments:**

    - `problem`: any `jaxda.var` problem.
    - `perturbation`: a tuple of arrays shaped like `problem.residual_terms(u)`
      (`residual_noise` draws one).
    """

    problem: AbstractVarProblem
    perturbation: tuple[Array, ...]

    def __check_init__(self):
        if not isinstance(self.problem, AbstractVarProblem):
            raise TypeError(
                "`problem` must be a jaxda.var problem; got "
                f"{type(self.problem).__name__}."
            )
        if not isinstance(self.perturbation, tuple):
            raise TypeError(
                "`perturbation` must be a tuple of arrays shaped like the problem's "
                f"residual terms; got {type(self.perturbation).__name__}."
            )

    def check_control(self, name, u):
        self.problem.check_control(name, u)
        shapes = [jnp.shape(r) for r in jax.eval_shape(self.problem.residual_terms, u)]
        given = [jnp.shape(e) for e in self.perturbation]
        if shapes != given:
            raise ValueError(
                f"`perturbation` must have the shapes of the residual terms {shapes}; "
                f"got {given}."
            )

    def values_valid(self):
        return self.problem.values_valid() & all_finite(self.perturbation)

    def residual_terms(self, u):
        terms = self.problem.residual_terms(u)
        return tuple(r - e for r, e in zip(terms, self.perturbation, strict=True))


def _check_terms(terms, n_terms: int) -> tuple[int, ...]:
    if terms is None:
        return tuple(range(n_terms))
    if not isinstance(terms, Sequence) or isinstance(terms, str):
        raise TypeError(
            f"`terms` must be None or a sequence of ints; got {type(terms).__name__}."
        )
    out = tuple(check_int("terms", k, minimum=0) for k in terms)
    if any(k >= n_terms for k in out) or len(set(out)) != len(out):
        raise ValueError(
            f"`terms` must be distinct indices of the {n_terms} residual terms of "
            f"the problem (0..{n_terms - 1}); got {tuple(terms)}."
        )
    return out


def residual_noise(
    problem: AbstractVarProblem,
    key,
    control,
    terms: Sequence[int] | None = None,
) -> tuple[Array, ...]:
    r"""A draw $e \sim \mathcal N(0, I)$ shaped like `problem.residual_terms(control)`,
    zero in the terms not listed in `terms` (default: every term).

    **Arguments:** `problem`; `key` (a `jax.random` key); `control` (any valid
    control, only its shape is used); `terms` (indices of the residual terms
    perturbed, or `None` for all).

    **Returns:** a tuple of arrays, one per residual term, in the residuals' dtypes.
    """
    shapes = jax.eval_shape(problem.residual_terms, control)
    terms = _check_terms(terms, len(shapes))
    keys = jax.random.split(key, len(shapes))
    return tuple(
        jax.random.normal(k, s.shape, s.dtype)
        if i in terms
        else jnp.zeros(s.shape, s.dtype)
        for i, (k, s) in enumerate(zip(keys, shapes))
    )


class PosteriorEnsemble(eqx.Module):
    r"""Samples of a 4DVar posterior (`rml_ensemble`, `laplace_ensemble`).

    **Fields:**

    - `members`: the samples, `(N, *control)` (every leaf of the control with a
      leading member axis).
    - `result`: `(N,)` `jaxda.RESULTS`, one per member (the solve's, or the CG's).
    - `n_steps`: `(N,)` the iterations each member took (solver or CG iterations).
    - `cost`: `(N,)` the cost $J$ of the unperturbed problem at each member.
    - `stats`: method-specific extras (dict of arrays).

    `mean()`, `variance()` (unbiased, $N - 1$) and `std()` are pointwise over the
    members; `converged` is `result == RESULTS.successful`.
    """

    members: Any
    result: RESULTS
    n_steps: Int[Array, " N"]
    cost: Float[Array, " N"]
    stats: dict = eqx.field(default_factory=dict)

    @property
    def converged(self):
        """`(N,)`: whether each member met its tolerances."""
        return self.result == RESULTS.successful

    def mean(self):
        """The ensemble mean (shaped like one control)."""
        return jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), self.members)

    def variance(self):
        """The pointwise unbiased variance of the members ($N - 1$)."""
        return jax.tree_util.tree_map(
            lambda m: jnp.var(m, axis=0, ddof=1), self.members
        )

    def std(self):
        """The pointwise standard deviation of the members (from `variance`)."""
        return jax.tree_util.tree_map(jnp.sqrt, self.variance())


def _check_common(problem, key, n, name, chunk_size, throw):
    if not isinstance(problem, AbstractVarProblem):
        raise TypeError(
            f"`problem` must be a jaxda.var problem; got {type(problem).__name__}."
        )
    check_key("key", key)
    n = check_int(name, n, minimum=2)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {type(throw).__name__}.")
    return n, chunk_size


def _map(f, xs, chunk_size):
    """`vmap` over all of `xs`, or `lax.map` over chunks of `chunk_size`."""
    if chunk_size is None:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=chunk_size)


@eqx.filter_jit
def _rml(problem, solver, x_init, keys, max_steps, terms, chunk_size):
    def member(key):
        noise = residual_noise(problem, key, x_init, terms)
        sol = _run(PerturbedProblem(problem, noise), solver, x_init, max_steps, None)
        return sol.x, sol.result, sol.n_steps, problem.cost(sol.x)

    return _map(member, keys, chunk_size)


def rml_ensemble(
    problem: AbstractVarProblem,
    solver: AbstractSolver,
    x_init,
    key,
    n_members: int,
    *,
    max_steps: int = 100,
    terms: Sequence[int] | None = None,
    chunk_size: int | None = None,
    throw: bool = True,
) -> PosteriorEnsemble:
    r"""A randomised-maximum-likelihood (perturbed-observation 4DVar) ensemble
    [O96]: member $i$ minimises $\tfrac12\|r(u) - e_i\|^2$, $e_i \sim
    \mathcal N(0, I)$, from `x_init` (module docstring).

    **Arguments:**

    - `problem`: any `jaxda.var` problem.
    - `solver`: a solver that accepts any problem (`LBFGS`, `GaussNewtonCG`,
      `DenseGaussNewton`, the first-order solvers; the structured weak-constraint
      solvers need a `WeakConstraint4DVar` itself).
    - `x_init`: the first guess of every member (the unperturbed solution, or the
      first guess of the unperturbed solve).
    - `key`: a `jax.random` key; `n_members`: $N \ge 2$.
    - `max_steps`: the solver's iteration cap per member.
    - `terms`: the residual terms perturbed (default all; `(0,)`: the observations
      only, for a problem whose first term is its observation term).
    - `chunk_size`: `None` (default): `vmap` over all members (every member iterates
      until the last one stops); an int: `lax.map` over chunks of that many.
    - `throw`: raise when a member did not converge (see `jaxda.RESULTS`); with
      `throw=False` inspect `result`.

    **Returns:** a `PosteriorEnsemble` (`members` `(N, *control)`, per-member
    `result`, `n_steps`, unperturbed `cost`).
    """
    n_members, chunk_size = _check_common(
        problem, key, n_members, "n_members", chunk_size, throw
    )
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"`solver` must be a jaxda.var solver; got {type(solver).__name__}."
        )
    max_steps = check_int("max_steps", max_steps, minimum=0)
    problem.check_control("x_init", x_init)
    x_init = _cast_control(problem, x_init)
    noise = residual_noise(problem, key, x_init, terms)
    solver.check_problem(PerturbedProblem(problem, noise))
    keys = jax.random.split(key, n_members)
    terms = None if terms is None else tuple(terms)
    members, result, n_steps, cost = _rml(
        problem, solver, x_init, keys, max_steps, terms, chunk_size
    )
    ensemble = PosteriorEnsemble(members, result, n_steps, cost)
    return raise_if_failed(ensemble, result, throw)


@eqx.filter_jit
def _laplace(problem, x_star, keys, cg, terms, chunk_size):
    residual = problem.residual_terms(x_star)

    def sample(key):
        noise = residual_noise(problem, key, x_star, terms)
        shifted = tuple(r + e for r, e in zip(residual, noise, strict=True))
        # At x*, the residuals of this problem are -e: CG solves J^T J d = J^T e.
        sol = cg.solve_normal(PerturbedProblem(problem, shifted), x_star)
        member = jax.tree_util.tree_map(jnp.add, x_star, sol.delta)
        return member, sol.result, sol.num_steps, problem.cost(member)

    return _map(sample, keys, chunk_size)


def laplace_ensemble(
    problem: AbstractVarProblem,
    x_star,
    key,
    n_samples: int,
    *,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_steps: int = 100,
    terms: Sequence[int] | None = None,
    linearisation: Literal["fwd", "rev"] = "fwd",
    chunk_size: int | None = None,
    throw: bool = True,
) -> PosteriorEnsemble:
    r"""Samples of the Gauss-Newton (Laplace) posterior $\mathcal N(u^\star,
    (J^\top J)^{-1})$ at a solution $u^\star$, by perturbation-optimisation of the
    linearised least squares (module docstring).

    Sample $i$ is $u^\star + \delta_i$ with $J^\top J\,\delta_i = J^\top e_i$,
    $e_i \sim \mathcal N(0, I)$ in residual space (zero outside `terms`), solved by
    conjugate gradients from $\delta = 0$ on $v \mapsto J^\top(J v)$ (one
    tangent-linear and one adjoint run of the model per iteration; the model is
    linearised once, at $u^\star$).

    **Arguments:**

    - `problem`: any `jaxda.var` problem; `x_star`: its solution $u^\star$ (e.g.
      `solve(...).x`; the linearisation point, not checked to be a minimiser).
    - `key`: a `jax.random` key; `n_samples`: $N \ge 2$.
    - `rtol`, `atol`, `max_steps`: the CG's stopping test and cap (see
      `ConjugateGradientNormal`; defaults 1e-6, 0, 100).
    - `terms`: the residual terms perturbed (default all).
    - `linearisation`: `"fwd"` (default, `jax.linearize`) or `"rev"` (`jax.vjp`).
    - `chunk_size`: `None` (vmap over all samples) or the chunk of a `lax.map`.
    - `throw`: raise when a CG did not converge (`max_steps_reached`) or broke down
      (`nonfinite`); with `throw=False` inspect `result`.

    **Returns:** a `PosteriorEnsemble` (`members` $u^\star + \delta_i$, per-sample CG
    `result` and iteration counts `n_steps`, `cost` $J$ at each sample).
    """
    n_samples, chunk_size = _check_common(
        problem, key, n_samples, "n_samples", chunk_size, throw
    )
    problem.check_control("x_star", x_star)
    x_star = _cast_control(problem, x_star)
    _check_terms(terms, len(jax.eval_shape(problem.residual_terms, x_star)))
    cg = ConjugateGradientNormal(
        rtol, atol, max_steps, require_convergence=True, linearisation=linearisation
    )
    keys = jax.random.split(key, n_samples)
    terms = None if terms is None else tuple(terms)
    members, result, n_steps, cost = _laplace(
        problem, x_star, keys, cg, terms, chunk_size
    )
    ensemble = PosteriorEnsemble(members, result, n_steps, cost)
    return raise_if_failed(ensemble, result, throw)


__all__ = [
    "PerturbedProblem",
    "PosteriorEnsemble",
    "laplace_ensemble",
    "residual_noise",
    "rml_ensemble",
]
