r"""The deep prior of [FBC23]: 4DVar with the control reparametrised by a generator.

Per window, the control is $x_0 = x_b + G_\phi(z)$ with $G_\phi$ a convolutional
generator (`MotionGenerator`) of a fixed latent vector $z \sim N(0, I)$ and $x_b$ a
background (default zero, as the authors' code; the first guess of the window is the
natural choice). The generator's weights $\phi$ are fitted to the window by Adam on
$$\phi^\star = \arg\min_\phi J\big(x_b + G_\phi(z)\big),$$
$J$ the window's 4DVar cost; the architecture is the regulariser (the deep image
prior of [UVL18]). The authors fit 2000 (in their code, 3000) Adam steps at
learning rate 0.002, $\beta_1 = 0.5$, keeping the control of the lowest cost seen;
so does `deep_prior_4dvar`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._custom_types import Array, Float, Int, Key, Scalar
from .._results import RESULTS, all_finite, raise_if_failed
from .._validation import check_int, check_key, check_positive
from ..var import AbstractVarProblem
from ._networks import DEFAULT_CONTROL_SCALE, MotionGenerator


class DeepPriorSolution(eqx.Module):
    r"""The result of `deep_prior_4dvar`.

    **Fields:**

    - `x`: the control $x_b + G_\phi(z)$ of the lowest cost seen.
    - `cost`: its cost $J(x)$.
    - `initial_cost`: $J$ at the generator's initialisation.
    - `losses`: `(steps,)` the cost at each Adam step (before its update); after a
      non-finite cost the remaining entries repeat it.
    - `generator`: the fitted generator (the parameters of the last finite step).
    - `latent`: the fixed latent vector $z$.
    - `n_steps`: the number of Adam updates made.
    - `result`: `RESULTS.successful`; `RESULTS.nonfinite_loss` when the cost became
      non-finite (fitting stopped, the best finite control is kept);
      `RESULTS.invalid_input` when the problem's values are invalid (checked under
      `jit`).
    """

    x: Float[Array, "*state"]
    cost: Scalar
    initial_cost: Scalar
    losses: Float[Array, " steps"]
    generator: MotionGenerator
    latent: Float[Array, " nz"]
    n_steps: Int[Array, ""]
    result: RESULTS


def deep_prior_4dvar(
    problem: AbstractVarProblem,
    key: Key,
    *,
    steps: int = 2000,
    background: Float[Array, "*state"] | None = None,
    generator: MotionGenerator | None = None,
    learning_rate: float = 2e-3,
    b1: float = 0.5,
    b2: float = 0.999,
    latent_size: int = 100,
    width: int = 64,
    n_levels: int = 4,
    control_scale=DEFAULT_CONTROL_SCALE,
    throw: bool = True,
) -> DeepPriorSolution:
    r"""Fit [FBC23]'s deep prior to one window: $\min_\phi J(x_b + G_\phi(z))$.

    `steps` Adam updates on the generator's weights (one `lax.scan`, jitted); the
    latent $z \sim N(0, I)$ and the initial weights are drawn from `key`. The control
    of the lowest finite cost is returned. A non-finite cost stops the updates and is
    reported in `result` (`RESULTS.nonfinite_loss`), never returned as the estimate.
    vmap over problems and keys for a batch of windows (`throw=False` there).

    **Arguments:**

    - `problem`: the window's 4DVar problem whose control has the state shape
      `(C, ny, nx)` (strong constraint).
    - `key`: a `jax.random` key.
    - `steps`: the number of Adam updates (default 2000, the paper's).
    - `background`: $x_b$ (default zeros, as the authors' code; e.g.
      `first_guess(obs)`).
    - `generator`: an initial `MotionGenerator` (default: one built from `key` with
      `latent_size`, `width`, `n_levels`, `control_scale`: the authors' 100 / 64 /
      4 and the $(1, 0.1, 0.1)$ scales).
    - `learning_rate`, `b1`, `b2`: Adam's (the authors' 0.002, 0.5, 0.999).
    - `throw`: raise when `result` is not successful (eager and under `jit`).

    **Returns:** a `DeepPriorSolution`.
    """
    if not isinstance(problem, AbstractVarProblem):
        raise TypeError(
            f"`problem` must be a jaxda.var problem; got {type(problem).__name__}."
        )
    check_key("key", key)
    steps = check_int("steps", steps, minimum=0)
    check_positive("learning_rate", learning_rate)
    for name, b in (("b1", b1), ("b2", b2)):
        if not 0.0 <= float(b) < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1); got {b}.")
    shape = tuple(getattr(problem, "shape", ()))
    if len(shape) != 3:
        raise ValueError(
            "`problem`'s control must be one state (C, ny, nx) (a strong-constraint "
            f"problem); got a control of shape {shape}."
        )
    dtype = problem.dtype
    if background is None:
        background = jnp.zeros(shape, dtype)
    problem.check_control("background", background)
    k_gen, k_latent = jax.random.split(key)
    if generator is None:
        generator = MotionGenerator(
            shape, key=k_gen, latent_size=latent_size, width=width,
            n_levels=n_levels, control_scale=control_scale, dtype=dtype,
        )  # fmt: skip
    elif not isinstance(generator, MotionGenerator):
        raise TypeError(
            "`generator` must be a jaxda.motion.MotionGenerator or None; got "
            f"{type(generator).__name__}."
        )
    elif generator.shape != shape:
        raise ValueError(
            f"`generator` makes controls of shape {generator.shape}; the problem's "
            f"is {shape}."
        )
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {type(throw).__name__}.")
    latent = jax.random.normal(k_latent, (generator.latent_size,), dtype)
    hyper = jnp.asarray([learning_rate, b1, b2], dtype)
    sol = _fit(problem, generator, latent, jnp.asarray(background, dtype), hyper, steps)
    return raise_if_failed(sol, sol.result, throw)


@eqx.filter_jit
def _fit(problem, generator, latent, background, hyper, steps):
    optimizer = optax.adam(hyper[0], b1=hyper[1], b2=hyper[2])
    params, static = eqx.partition(generator, eqx.is_inexact_array)

    def control(p):
        return background + eqx.combine(p, static)(latent).astype(background.dtype)

    def cost(p):
        return problem.cost(control(p))

    value_and_grad = jax.value_and_grad(cost)
    cost0 = cost(params)
    x0 = control(params)
    finite0 = jnp.isfinite(cost0)

    def step(carry, _):
        p, opt_state, best_x, best_cost, stopped, n = carry
        # The cost of `p`, its gradient, and the control it gives (the step's).
        c, g = value_and_grad(p)
        x = control(p)
        ok = ~stopped & jnp.isfinite(c) & all_finite(g)
        better = ok & (c < best_cost)
        best_x = jnp.where(better, x, best_x)
        best_cost = jnp.where(better, c, best_cost)
        updates, new_opt = optimizer.update(g, opt_state, p)
        new_p = eqx.apply_updates(p, updates)
        p = _tree_where(ok, new_p, p)
        opt_state = _tree_where(ok, new_opt, opt_state)
        return (
            p,
            opt_state,
            best_x,
            best_cost,
            stopped | ~ok,
            n + ok.astype(jnp.int32),
        ), c

    init = (
        params,
        optimizer.init(params),
        x0,
        jnp.where(finite0, cost0, jnp.inf),
        ~finite0,
        jnp.asarray(0, jnp.int32),
    )
    (p, _, best_x, best_cost, stopped, n), losses = jax.lax.scan(
        step, init, None, length=steps
    )
    if steps == 0:
        losses = jnp.zeros((0,), cost0.dtype)
    # After a stop every later step sees the same frozen parameters: the recorded
    # losses repeat the non-finite one.
    final_cost = cost(p)
    better = jnp.isfinite(final_cost) & (final_cost < best_cost) & ~stopped
    best_x = jnp.where(better, control(p), best_x)
    best_cost = jnp.where(better, final_cost, best_cost)
    stopped = stopped | ~jnp.isfinite(final_cost)
    result = RESULTS.where(stopped, RESULTS.nonfinite_loss, RESULTS.successful)
    result = RESULTS.where(problem.values_valid(), result, RESULTS.invalid_input)
    return DeepPriorSolution(
        x=best_x,
        cost=best_cost,
        initial_cost=cost0,
        losses=losses,
        generator=eqx.combine(p, static),
        latent=latent,
        n_steps=n,
        result=result,
    )


def _tree_where(cond, a, b):
    return jax.tree_util.tree_map(
        lambda x, y: jnp.where(cond, x, y) if eqx.is_array(x) else x, a, b
    )


__all__ = ["DeepPriorSolution", "deep_prior_4dvar"]
