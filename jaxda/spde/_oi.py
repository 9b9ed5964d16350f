r"""Optimal interpolation with an SPDE prior, and conditional ensembles.

With the prior $x \sim \mathcal N(\mu, Q^{-1})$ of `SPDEPrior` and observations
$y = Hx + \varepsilon$, $\varepsilon \sim \mathcal N(0, R)$ ($R$ diagonal, a mask of
the available entries), the posterior is $\mathcal N(x^\star, A^{-1})$ with

$$A = Q + H^\top R^{-1} H, \qquad A\,(x^\star - \mu) = H^\top R^{-1}(y - H\mu),$$

the precision form of `jaxda.gaussian`, solved by conjugate gradients (`lineax.CG`):
one $Qv$ (two stencil passes) and one $H$, $H^\top$ per iteration, $O(d)$ memory,
with the Jacobi preconditioner $\mathrm{diag}(Q) + \mathrm{diag}(H^\top R^{-1} H)$
(`SPDEPrior.precision_diagonal`; the second term exact for selection operators, $H^\top
R^{-1}\mathbf 1$ for an interpolation, whose weights are $\le 1$).

**Control form.** A smooth, persistent prior makes $A$ too ill-conditioned for CG in
float32 (slow time modes have eigenvalues of $Q$ near zero). With $w = G(x - \mu)$
the system becomes $(I + G^{-\top} H^\top R^{-1} H G^{-1})\,w = G^{-\top} H^\top
R^{-1}(y - H\mu)$, whose eigenvalues are $\ge 1$: each iteration runs the recursion
$G^{-1}$ and its transpose once, cheap when the recursion is a direct solve (FFT or
banded), which is when `form="auto"` chooses it. The ensembles' perturbations become
$G^{-\top} H^\top R^{-1}\eta_i + z_i$.

**Conditional ensembles** (posterior samples), two constructions, both exact for a
linear-Gaussian problem solved exactly:

- `"perturbation"` (perturbation-optimisation [OFG12]): member $i$ solves $A\,\delta_i
  = H^\top R^{-1}(y - H\mu + \eta_i) + G^\top z_i$ with $\eta_i \sim \mathcal N(0, R)$,
  $z_i \sim \mathcal N(0, I)$: the right-hand side has covariance $H^\top R^{-1} H +
  G^\top G = A$, so $\mu + \delta_i \sim \mathcal N(x^\star, A^{-1})$. One CG solve
  per member, no prior sample needed.
- `"kriging"` (conditioning of prior simulations, the form of [BF24]):
  $X^\star_i = X^\star + (X^S_i - X^{\star S}_i)$, with $X^S_i$ a prior sample (the
  recursion), observed on the same $\Omega$ with noise, and $X^{\star S}_i$ the MAP of
  those synthetic observations. The same law; it needs only a MAP solver, so it
  carries over to a learned solver (4DVarNet) in place of CG.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .._custom_types import Array, ArrayLike, Bool, Float, Int, Key
from .._results import RESULTS, all_finite, raise_if_failed
from .._validation import check_choice, check_int, check_key, check_positive
from ..gaussian import IterativeGaussianMAP, _operator as op
from ..obs import AbstractLinearObservationOperator, IdentityOperator
from ..obs._operators import AbstractSelectionOperator
from ._prior import SPDEPrior, _sample
from ._whitening import Whitening


ENSEMBLE_METHODS = ("perturbation", "kriging")
FORMS = ("auto", "control", "precision")
PRECONDITIONERS = ("jacobi", None)


class ConditionalEnsemble(eqx.Module):
    """Posterior samples of a window with an SPDE prior.

    **Fields:**

    - `members`: `(N, T, ny, nx)` samples of the posterior.
    - `mean`: the posterior mean (MAP) $x^\\star$, `(T, ny, nx)`.
    - `result`: a `jaxda.RESULTS` item (the first failure among the MAP and the
      members' solves: `max_steps_reached`, `breakdown`, `invalid_input`).
    - `num_steps`: CG iterations of the MAP; `member_steps` `(N,)`, of each member.
    """

    members: Float[Array, "N T ny nx"]
    mean: Float[Array, "T ny nx"]
    result: RESULTS
    num_steps: Int[Array, ""]
    member_steps: Int[Array, " N"]


def _check_prior(prior) -> SPDEPrior:
    if not isinstance(prior, SPDEPrior):
        raise TypeError(
            f"`prior` must be a jaxda.spde.SPDEPrior; got {type(prior).__name__}."
        )
    return prior


def _check_options(rtol, max_steps, preconditioner):
    if rtol is not None:
        check_positive("rtol", rtol)
    check_int("max_steps", max_steps, minimum=1)
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(
            f"`preconditioner` must be 'jacobi' or None; got {preconditioner!r}."
        )


def _problem(prior, y, mask, obs_var, operator):
    if operator is None:
        operator = IdentityOperator(prior.grid.shape)
    if not isinstance(operator, AbstractLinearObservationOperator):
        raise TypeError(
            "`operator` must be a linear jaxda.obs operator (IdentityOperator, "
            f"SelectionOperator, BilinearInterpolation, ...); got "
            f"{type(operator).__name__}."
        )
    if tuple(operator.state_shape) != prior.grid.shape:
        raise ValueError(
            f"`operator` acts on states of shape {tuple(operator.state_shape)}, but "
            f"the prior's grid is {prior.grid.shape}."
        )
    mu, y, mask, obs_var, lead = op.validate(prior.mean, y, mask, obs_var, operator)
    return operator, y, mask, obs_var, lead


class _System(eqx.Module):
    """The normal equations of one problem, in precision or control form."""

    prior: SPDEPrior
    whitening: Whitening
    operator: AbstractLinearObservationOperator
    weight: Array  # (T, m): mask / r
    var: Array  # (T, m): r, 1 where unobserved
    mask: Array  # (T, m)
    factors: object
    method: str = eqx.field(static=True)
    form: str = eqx.field(static=True)

    def h(self, x):
        t = x.shape[0]
        return jnp.reshape(self.operator.trajectory(x), (t, -1)).astype(x.dtype)

    def h_t(self, v):
        return jnp.reshape(op.transpose_all(self.operator, v), self.prior.shape)

    def inverse(self, w):
        """$G^{-1} w$ (the recursion)."""
        x, _ = self.prior._color(w[None], self.method, self.whitening, self.factors)
        return x[0]

    def inverse_transpose(self, x):
        """$G^{-\\top} x$."""
        zero = jnp.zeros(self.prior.shape, x.dtype)
        return jax.linear_transpose(self.inverse, zero)(x)[0]

    def to_state(self, u):
        """The anomaly $x - \\mu$ of the unknown `u` ($G^{-1} u$ in control form)."""
        return self.inverse(u) if self.form == "control" else u

    def rhs(self, d):
        """$H^\\top W d$, or $G^{-\\top} H^\\top W d$ in control form."""
        b = self.h_t(self.weight * d)
        return self.inverse_transpose(b) if self.form == "control" else b

    def prior_perturbation(self, z):
        """A right-hand side of covariance the prior's term: $G^\\top z$, or $z$."""
        return z if self.form == "control" else self.whitening.transpose(z)

    def matvec(self, v):
        if self.form == "control":
            x = self.inverse(v)
            return v + self.inverse_transpose(self.h_t(self.weight * self.h(x)))
        return self.whitening.gram(v) + self.h_t(self.weight * self.h(v))

    def diagonal(self):
        if isinstance(self.operator, AbstractSelectionOperator):
            obs = jnp.reshape(
                op.diagonal_grams(self.operator, self.weight), self.prior.shape
            )
        else:
            obs = self.h_t(self.weight)
        return self.whitening.gram_diagonal() + obs

    def solve(self, rhs, rtol, atol, max_steps, preconditioner):
        dtype = rhs.dtype
        if rtol is None:
            rtol = 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-10
        struct = jax.ShapeDtypeStruct(rhs.shape, dtype)
        tag = lx.positive_semidefinite_tag
        system = lx.FunctionLinearOperator(self.matvec, struct, tag)
        options = {}
        if preconditioner == "jacobi" and self.form == "precision":
            diag = jax.lax.stop_gradient(self.diagonal())
            options["preconditioner"] = lx.FunctionLinearOperator(
                lambda r: r / diag, struct, tag
            )
        if atol is None:
            scale = jax.lax.stop_gradient(jnp.max(jnp.abs(rhs)))
            atol = rtol * scale + jnp.finfo(dtype).tiny
        solver = lx.CG(rtol=rtol, atol=atol, max_steps=max_steps)
        sol = lx.linear_solve(system, rhs, solver, options=options, throw=False)
        result = RESULTS.where(
            all_finite(sol.value), RESULTS.promote(sol.result), RESULTS.breakdown
        )
        return sol.value, result, sol.stats["num_steps"]


def _form(prior, form: str) -> str:
    check_choice("form", form, FORMS)
    if form == "auto":
        return "control" if prior._solve_method() in ("fft", "banded") else "precision"
    return form


def _system(prior, y, mask, obs_var, operator, lead, form):
    _, mk, var, innov, weight, input_result = op.prepare(
        prior.mean, y, mask, obs_var, operator, lead
    )
    method, g, factors = prior._prepared()
    if form == "precision":
        factors = None
    system = _System(prior, g, operator, weight, var, mk, factors, method, form)
    return system, innov, input_result


def spde_map(
    prior: SPDEPrior,
    y: Float[ArrayLike, "T *obs"],
    mask: Bool[ArrayLike, "T *obs"] | None,
    obs_var: Float[ArrayLike, "T *obs"] | float,
    *,
    operator: AbstractLinearObservationOperator | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 2000,
    preconditioner: str | None = "jacobi",
    form: str = "auto",
    throw: bool = True,
) -> IterativeGaussianMAP:
    r"""The posterior mean (MAP) of a window with an SPDE prior, precision form by
    preconditioned conjugate gradients (see the module docstring).

    **Arguments:**

    - `prior`: a `jaxda.spde.SPDEPrior` (its `mean` is $\mu$).
    - `y`, `mask`, `obs_var`: the observations `(T, *obs_shape)` of `operator` (with
      `operator=None`, the window's shape `(T, ny, nx)`), the boolean mask of the
      available entries (`None`: all) and their variances $r > 0$ (a scalar or an
      array of `y`'s shape), as in `jaxda.gaussian`.
    - `operator`: a linear `jaxda.obs` operator on each state `(ny, nx)` (default
      the identity: gridded observations under `mask`).
    - `rtol`, `atol`: CG tolerances (lineax's max-norm test; `rtol` defaults to
      `1e-5` in float32, `1e-10` in float64; `atol` to `rtol * max|b|`).
    - `max_steps`: the CG iteration cap; `preconditioner`: `"jacobi"` or None
      (precision form).
    - `form`: `"precision"` (CG on $A$, Jacobi-preconditioned), `"control"` (CG on
      $I + G^{-\top} H^\top R^{-1} H G^{-1}$ for $w = G(x - \mu)$, the
      control-variable transform: eigenvalues $\ge 1$, two runs of the recursion
      per iteration) or `"auto"` (control when the prior's solves are direct, FFT or
      banded; precision otherwise). Persistent, smooth priors make $A$ too
      ill-conditioned for float32 CG in precision form.
    - `throw`: raise when `result` is not successful.

    **Returns:** a `jaxda.gaussian.IterativeGaussianMAP` (`mean`, `result`,
    `num_steps`): `max_steps_reached` when CG stopped at its cap (the last iterate is
    returned), `breakdown` on a non-finite iterate, `invalid_input` for a failed value
    check (parameters or observations) under `jit`.
    """
    prior = _check_prior(prior)
    _check_options(rtol, max_steps, preconditioner)
    form = _form(prior, form)
    operator, y, mask, obs_var, lead = _problem(prior, y, mask, obs_var, operator)
    out = _spde_map(
        prior,
        y,
        mask,
        obs_var,
        operator,
        lead,
        rtol,
        atol,
        max_steps,
        preconditioner,
        form,
    )
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _spde_map(prior, y, mask, obs_var, operator, lead, rtol, atol, max_steps, pc, form):
    system, innov, input_result = _system(prior, y, mask, obs_var, operator, lead, form)
    u, result, steps = system.solve(system.rhs(innov), rtol, atol, max_steps, pc)
    result = _combine(input_result, prior, result)
    return IterativeGaussianMAP(prior.mean + system.to_state(u), result, steps)


def _combine(input_result, prior, result):
    result = RESULTS.where(input_result == RESULTS.successful, result, input_result)
    return RESULTS.where(prior.params.values_valid(), result, RESULTS.invalid_input)


def conditional_ensemble(
    key: Key,
    prior: SPDEPrior,
    y: Float[ArrayLike, "T *obs"],
    mask: Bool[ArrayLike, "T *obs"] | None,
    obs_var: Float[ArrayLike, "T *obs"] | float,
    n_members: int,
    *,
    method: str = "perturbation",
    operator: AbstractLinearObservationOperator | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 2000,
    preconditioner: str | None = "jacobi",
    form: str = "auto",
    throw: bool = True,
) -> ConditionalEnsemble:
    r"""`n_members` samples of the posterior of a window with an SPDE prior, and its
    mean (module docstring: `method` `"perturbation"` or `"kriging"`).

    Arguments as `spde_map` (`form` included), plus `key` (a `jax.random` key),
    `n_members` $\ge 2$ and `method`. The members' solves run batched (`vmap`);
    `member_steps` gives each one's iterations.

    **Returns:** a `ConditionalEnsemble`.
    """
    check_key("key", key)
    prior = _check_prior(prior)
    n_members = check_int("n_members", n_members, minimum=2)
    check_choice("method", method, ENSEMBLE_METHODS)
    _check_options(rtol, max_steps, preconditioner)
    form = _form(prior, form)
    operator, y, mask, obs_var, lead = _problem(prior, y, mask, obs_var, operator)
    out = _ensemble(
        key,
        prior,
        y,
        mask,
        obs_var,
        operator,
        lead,
        n_members,
        method,
        rtol,
        atol,
        max_steps,
        preconditioner,
        form,
    )
    return raise_if_failed(out, out.result, throw)


@eqx.filter_jit
def _ensemble(
    key,
    prior,
    y,
    mask,
    obs_var,
    operator,
    lead,
    n,
    method,
    rtol,
    atol,
    max_steps,
    pc,
    form,
):
    system, innov, input_result = _system(prior, y, mask, obs_var, operator, lead, form)
    dtype = innov.dtype
    k_obs, k_prior = jax.random.split(key)
    noise = jnp.sqrt(system.var) * jax.random.normal(
        k_obs, (n, *system.var.shape), dtype
    )
    noise = jnp.where(system.mask, noise, 0.0)
    z = jax.random.normal(k_prior, (n, *prior.shape), dtype)
    map_rhs = system.rhs(innov)
    if method == "perturbation":
        rhs = jax.vmap(
            lambda eta, zi: system.rhs(innov + eta) + system.prior_perturbation(zi)
        )(noise, z)
        sample_result = RESULTS.successful
    else:  # kriging: the MAPs of each simulation's synthetic observations
        sims, sample_result = _sample(prior, z)
        h_mean = system.h(prior.mean)
        rhs = jax.vmap(
            lambda sim, eta: system.rhs(
                jnp.where(system.mask, system.h(sim) + eta - h_mean, 0)
            )
        )(sims, noise)
    # one batched solve: the MAP first, then the members
    us, results, steps = jax.vmap(lambda b: system.solve(b, rtol, atol, max_steps, pc))(
        jnp.concatenate([map_rhs[None], rhs])
    )
    deltas = jax.vmap(system.to_state)(us)
    mean = prior.mean + deltas[0]
    if method == "perturbation":
        members = prior.mean + deltas[1:]
    else:  # X*_i = X* + (X^S_i - X*^S_i), X*^S_i = mu + delta_i
        members = mean + (sims - (prior.mean + deltas[1:]))
    failed = results != RESULTS.successful
    first = jax.tree.map(lambda v: v[jnp.argmax(failed)], results)
    result = RESULTS.where(jnp.any(failed), first, RESULTS.successful)
    result = RESULTS.where(result == RESULTS.successful, sample_result, result)
    result = RESULTS.where(all_finite(members), result, RESULTS.breakdown)
    result = _combine(input_result, prior, result)
    return ConditionalEnsemble(
        members.astype(dtype), mean.astype(dtype), result, steps[0], steps[1:]
    )
