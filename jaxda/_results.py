r"""One result convention for the whole library: `RESULTS` and the `throw` keyword.

Every solve-like call (a 4DVar solve, a cycle, a Gaussian MAP or variance, a
factorisation or a sample, a simulation, a learned assimilation, a training run)
returns a Module with a `result` field holding a `jaxda.RESULTS` item, and takes
`throw: bool`:

- `throw=True` (the default wherever the output is one estimate): a failure raises an
  `equinox.EquinoxRuntimeError` carrying the result's message, eagerly and under
  `jax.jit` alike (through `equinox.error_if`); under `jax.vmap` it raises when any
  batch member failed.
- `throw=False`: nothing is raised; inspect `result` (`result == RESULTS.successful`,
  or `RESULTS[result]` for the message). Use this under `vmap` when some windows may
  fail and the rest should be kept.

`RESULTS` extends `lineax.RESULTS` (so linear-solve failures keep lineax's messages)
with the outcomes of data assimilation: non-finite iterates, failed line searches,
matrices that are not positive definite, arguments whose values could only be checked
under `jit`, and non-finite training losses.

Static misuse (a wrong shape, dtype or type) is a `ValueError` / `TypeError` raised
before tracing; value checks that need concrete numbers raise eagerly and, under
`jit`, turn into `RESULTS.invalid_input` (see `value_result`).
"""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from ._custom_types import Array, Bool


class RESULTS(lx.RESULTS):  # pyright: ignore
    """Why a computation stopped, or what went wrong.

    Items (besides lineax's `singular`, `breakdown`, `stagnation`, `conlim`,
    `nonfinite_input`):

    - `successful`: the computation met its tolerances.
    - `max_steps_reached`: an iteration cap was reached before convergence.
    - `nonfinite`: a NaN or inf appeared; the last finite estimate is returned.
    - `no_decrease`: the solver could not decrease its cost (line search or damping
      failed) away from a stationary point.
    - `not_positive_definite`: a matrix required to be symmetric positive definite is
      not (its Cholesky factorisation failed).
    - `invalid_input`: an argument failed a value check (a negative variance, a
      non-finite observation) that could only be made on traced values.
    - `nonfinite_loss`: a training loss became non-finite; training stopped at the
      last parameters with a finite loss.
    - `collapsed`: an ensemble's spread fell below its floor (filter divergence by
      collapse).
    """

    successful = ""
    nonfinite = (
        "A non-finite value (NaN or inf) appeared during the computation; the last "
        "finite estimate is returned where there is one."
    )
    no_decrease = (
        "The solver could not decrease the cost (the line search or damping failed) "
        "at a point that is not stationary."
    )
    not_positive_definite = (
        "A matrix required to be symmetric positive definite is not: its Cholesky "
        "factorisation failed (check the covariance / precision passed in)."
    )
    invalid_input = (
        "An argument failed a value check (e.g. a variance <= 0, or a non-finite "
        "observation or prior mean) that could only be made under jit."
    )
    nonfinite_loss = (
        "The training loss became non-finite; training stopped and the last "
        "parameters with a finite loss were kept."
    )
    collapsed = (
        "The ensemble collapsed: its spread fell below `min_spread` (increase the "
        "inflation or the ensemble size, or localise)."
    )


def is_successful(result: RESULTS) -> Bool[Array, "..."]:
    """`result == RESULTS.successful` (elementwise under vmap)."""
    return result == RESULTS.successful


def raise_if_failed(tree, result: RESULTS, throw: bool):
    """Return `tree`, raising `result`'s message when `throw` and it is not success.

    Implemented with `equinox.error_if`, so it behaves the same eagerly and under
    `jit`; under `vmap` it raises when any member failed. Call it once, at the end of
    a public entry point, on the output Module.
    """
    if not throw:
        return tree
    value = result._value
    if not isinstance(value, jax.core.Tracer):
        # Eager fast path: a concrete success costs one host read, not a dispatch.
        ok = RESULTS.successful._value
        if np.all(np.asarray(value) == np.asarray(ok)):
            return tree
    return result.error_if(tree, result != RESULTS.successful)


def first_failure(*pairs: tuple[Bool[Array, ""], RESULTS]) -> RESULTS:
    """The result of the first `(failed, code)` pair whose `failed` holds, else success.

    `first_failure((~finite, RESULTS.nonfinite), (~spd, RESULTS.not_positive_definite))`
    gives `nonfinite` when both fail.
    """
    result = RESULTS.successful
    for failed, code in reversed(pairs):
        result = RESULTS.where(failed, code, result)
    return result


def all_finite(*trees) -> Bool[Array, ""]:
    """Whether every leaf of every pytree is finite (traceable)."""
    leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_positive(*trees) -> Bool[Array, ""]:
    """Whether every leaf of every pytree is finite and > 0 (traceable)."""
    leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(x) & (jnp.asarray(x) > 0)) for x in leaves])
    )


def value_result(valid: Bool[Array, ""]) -> RESULTS:
    """`successful` where a traced value check holds, `invalid_input` where not.

    The eager path raises a `ValueError` naming the argument first (see
    `jaxda._validation`); this is the jit path of the same check, reported in the
    result instead of being skipped.
    """
    return RESULTS.where(valid, RESULTS.successful, RESULTS.invalid_input)


__all__ = [
    "RESULTS",
    "all_finite",
    "all_positive",
    "first_failure",
    "is_successful",
    "raise_if_failed",
    "value_result",
]
