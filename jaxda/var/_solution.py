"""What `solve` returns: `Solution`, and the optional record of the iterates."""

from typing import Any

import equinox as eqx

from .._custom_types import Array, Bool, Float, Int, Scalar
from .._results import RESULTS


class SaveIterates(eqx.Module):
    """Ask `solve` to record the path of the iteration, as diffrax's `SaveAt`.

    `solve(problem, solver, x_init, max_steps=K, save=SaveIterates())` fills
    `Solution.iterates` with arrays of the fixed length `K + 1` (entry 0 is `x_init`,
    entry `k` the solver's iterate after step `k`), so the call stays `jit`/`vmap`
    friendly. Entries after the last step repeat the final iterate; `iterates.n_saved`
    (`n_steps + 1`) says how many are real.

    **Arguments:**

    - `x`: record the iterates $u_k$ (default `True`).
    - `cost`: record the costs $J(u_k)$ (default `True`).
    """

    x: bool = eqx.field(static=True, default=True)
    cost: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        for name in ("x", "cost"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool; got {type(value).__name__}.")


class Iterates(eqx.Module):
    """The recorded path of a solve (see `SaveIterates`).

    **Fields:**

    - `x`: the iterates $u_0 = x_{init}, u_1, \\dots$, stacked on a leading axis of
      length `max_steps + 1` (every leaf of the control), or `None`.
    - `cost`: `(max_steps + 1,)` costs $J(u_k)$, or `None`.
    - `n_saved`: how many leading entries are real iterates (`n_steps + 1`); the rest
      repeat the last one.
    """

    x: Any
    cost: Float[Array, " K"] | None
    n_saved: Int[Array, ""]


class Solution(eqx.Module):
    """The result of a 4DVar solve.

    **Fields:**

    - `x`: the estimate: the last iterate when `result` is `successful` (the
      tolerances hold there), else the iterate with the lowest cost seen (finite
      unless the first guess was not).
    - `cost`: its cost $J(x)$.
    - `n_steps`: the number of iterations taken.
    - `result`: a `jaxda.RESULTS` item: `successful`, `max_steps_reached`,
      `nonfinite`, `no_decrease` or `invalid_input` (a value check that could only be
      made under `jit` failed).
    - `stats`: solver-specific extras (a dict of arrays; may be empty).
    - `iterates`: an `Iterates` when `solve` was given `save=SaveIterates(...)`, else
      `None`.

    `converged` is `result == RESULTS.successful`.
    """

    x: Any
    cost: Scalar
    n_steps: Int[Array, ""]
    result: RESULTS
    stats: dict = eqx.field(default_factory=dict)
    iterates: Iterates | None = None

    @property
    def converged(self) -> Bool[Array, "..."]:
        """Whether the stopping tolerances were met (`result == successful`)."""
        return self.result == RESULTS.successful
