r"""Smoothness and divergence penalties of a velocity field, as residual terms.

For the velocity $\mathbf w = (u, v)$ held in two channels of a state, the penalty

$$J_w(\mathbf w) = \tfrac12\,\lambda_s \|\nabla\mathbf w\|^2
+ \tfrac12\,\lambda_d \|\nabla\cdot\mathbf w\|^2,\qquad
\|\nabla\mathbf w\|^2 = \sum_{ji} (D_x u)^2 + (D_y u)^2 + (D_x v)^2 + (D_y v)^2,$$

is the first-order Tikhonov (Horn-Schunck) regulariser [HS81] plus a divergence
term, written as whitened residuals $\sqrt{\lambda_s}\,\nabla\mathbf w$ and
$\sqrt{\lambda_d}\,\nabla\cdot\mathbf w$ so that Gauss-Newton solvers see it as
least-squares terms. The derivatives are in physical units (per metre on a grid in
metres): $\lambda_s$ and $\lambda_d$ carry the units that make $J_w$ a cost.

**Two conventions** (`convention=`):

- `"grid"` (default): the `jaxda.grid` operators of the velocity's C-grid. The
  smoothness term is `gradient(u)`, `gradient(v)` (forward differences
  $(f_{i+1} - f_i)/h$; on a closed grid the difference across a wall is 0, the
  zero-gradient ghost cell of `jaxda.grid`), the divergence `divergence(w)`
  ($D^-_x u + D^-_y v$ at the cell centres from the face velocities, the west /
  south wall faces 0: the exact discrete divergence of the C-grid).
- `"authors"`: the formula of [FBC23]'s code (`_4DVar/regularization.py`): the
  velocity zero-padded by one cell on every side, forward differences
  $(f_{i+1} - f_i)/h$ on the $n_y\times n_x$ points, so the last point of each row
  and column has $(0 - f_{n-1})/h$ (the velocity is pulled to 0 beyond the domain
  on the east and north sides only); and their "divergence" is
  `div_mat(V_0, U_0, dy, dx)`, which with their first array axis $x$ is
  $(v_{i+1} - v_i)/\Delta y + (u_{j+1} - u_j)/\Delta x$, i.e. $D^+_x v + D^+_y u$
  when $\Delta x = \Delta y$, not $D^+_x u + D^+_y v$ (their comment: "we inverse U0,dx
  and V0,dy because we copied the wrong indexation in C code"). We reproduce it as
  written. In the interior the smoothness stencil is the same as `"grid"`'s.

**[FBC23]'s weights in our convention.** Their cost is
$J' = \frac1N\sum_{\text{obs}} (y - x)^2 + \tfrac12\alpha\|\nabla\mathbf w\|^2 +
\tfrac12\beta\|\cdot\|^2$, a mean over all $N = T \cdot C \cdot n_y n_x$ entries of
the window (observed or not). Ours is $J = \frac{1}{2\sigma^2}\sum_{\text{obs}}
(y - x)^2 + \tfrac12\lambda_s\|\nabla\mathbf w\|^2 + \tfrac12\lambda_d\|\cdot\|^2$.
Multiplying $J'$ by $N/(2\sigma^2)$ gives $J$ exactly when
$\lambda_s = \alpha N/(2\sigma^2)$ and $\lambda_d = \beta N/(2\sigma^2)$
(`fbc23_weights`); the minimisers are the same, only the cost's scale changes.
"""

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float, Scalar
from .._validation import check_choice, check_int, check_positive, check_real
from ..grid._differences import divergence, gradient
from ..grid._grid import Grid


CONVENTIONS = ("grid", "authors")


def _zero_padded_forward(f: Array, h: float, axis: int) -> Array:
    """$(f_{i+1} - f_i)/h$ along `axis` with $f_n = 0$ (zero padding beyond)."""
    pad = [(0, 0)] * f.ndim
    pad[axis] = (0, 1)
    return jnp.diff(jnp.pad(f, pad), axis=axis) / h


class MotionPenalty(eqx.Module):
    r"""The smoothness / divergence penalty of the velocity channels of a state
    (module docstring).

    **Arguments:**

    - `grid`: the `jaxda.grid.Grid` of the state.
    - `smoothness`: $\lambda_s \ge 0$, the weight of $\tfrac12\|\nabla\mathbf w\|^2$
      (keyword; default 0).
    - `divergence`: $\lambda_d \ge 0$, the weight of
      $\tfrac12\|\nabla\cdot\mathbf w\|^2$ (keyword; default 0).
    - `channels`: the two channels of the state holding $(u, v)$ (keyword; default
      `(1, 2)`, static).
    - `convention`: `"grid"` (default) or `"authors"` (module docstring; static).

    `residual_terms(x)` gives $(\sqrt{\lambda_s}\nabla\mathbf w,
    \sqrt{\lambda_d}\nabla\cdot\mathbf w)$, shapes `(2, 2, ny, nx)` (velocity
    component, derivative direction) and `(ny, nx)`; `cost(x)` is
    $J_w = \tfrac12\sum r^2$; `smoothness_term(w)` and `divergence_term(w)` are the
    unweighted $\nabla\mathbf w$ and $\nabla\cdot\mathbf w$ of a velocity
    `(2, ny, nx)`.
    """

    grid: Grid
    smoothness: Float[Array, ""] | float = eqx.field(default=0.0, kw_only=True)
    divergence: Float[Array, ""] | float = eqx.field(default=0.0, kw_only=True)
    channels: tuple[int, int] = eqx.field(static=True, default=(1, 2), kw_only=True)
    convention: str = eqx.field(static=True, default="grid", kw_only=True)

    def __check_init__(self):
        if not isinstance(self.grid, Grid):
            raise TypeError(
                f"`grid` must be a jaxda.grid.Grid; got {type(self.grid).__name__}."
            )
        for name in ("smoothness", "divergence"):
            value = getattr(self, name)
            check_real(name, value)
            check_positive(name, value, allow_zero=True)
        channels = self.channels
        if not (isinstance(channels, tuple) and len(channels) == 2):
            raise TypeError(
                f"`channels` must be a tuple of two ints; got {channels!r}."
            )
        for c in channels:
            check_int("channels", c, minimum=0)
        if channels[0] == channels[1]:
            raise ValueError(
                f"`channels` must be two different channels; got {channels}."
            )
        check_choice("convention", self.convention, CONVENTIONS)

    def check_state(self, name: str, x) -> None:
        """Raise `ValueError` unless `x` is a state `(C, ny, nx)` on this grid with
        the velocity channels."""
        shape = tuple(jnp.shape(x))
        if len(shape) != 3 or shape[1:] != self.grid.shape:
            raise ValueError(
                f"`{name}` must be a state (C, {self.grid.ny}, {self.grid.nx}) on the "
                f"penalty's grid; got shape {shape}."
            )
        if max(self.channels) >= shape[0]:
            raise ValueError(
                f"`{name}` has {shape[0]} channels; the penalty reads the velocity "
                f"from channels {self.channels}."
            )

    def velocity(self, x: Float[Array, "C ny nx"]) -> Float[Array, "2 ny nx"]:
        """The velocity channels `(u, v)` of the state `x`."""
        return jnp.stack([x[self.channels[0]], x[self.channels[1]]])

    def smoothness_term(self, w: Float[Array, "2 ny nx"]) -> Float[Array, "2 2 ny nx"]:
        r"""$\nabla\mathbf w$: `[c, d]` the derivative of component `c` along `d`
        (0: x, 1: y), in the penalty's convention."""
        g = self.grid
        if self.convention == "grid":
            return gradient(w, g)
        return jnp.stack(
            [
                _zero_padded_forward(w, g.dx, axis=-1),
                _zero_padded_forward(w, g.dy, axis=-2),
            ],
            axis=-3,
        )

    def divergence_term(self, w: Float[Array, "2 ny nx"]) -> Float[Array, "ny nx"]:
        r"""$\nabla\cdot\mathbf w$ (`"grid"`), or [FBC23]'s $D^+_x v + D^+_y u$
        zero-padded (`"authors"`)."""
        g = self.grid
        if self.convention == "grid":
            return divergence(w, g)
        # as written: the x-difference of v over dy, the y-difference of u over dx
        return _zero_padded_forward(w[1], g.dy, axis=-1) + _zero_padded_forward(
            w[0], g.dx, axis=-2
        )

    def residual_terms(self, x: Float[Array, "C ny nx"]) -> tuple[Array, Array]:
        r"""$(\sqrt{\lambda_s}\,\nabla\mathbf w,\ \sqrt{\lambda_d}\,
        \nabla\cdot\mathbf w)$ of the state `x`."""
        w = self.velocity(x)
        dtype = jnp.result_type(x)
        s = jnp.sqrt(jnp.asarray(self.smoothness, dtype))
        d = jnp.sqrt(jnp.asarray(self.divergence, dtype))
        return s * self.smoothness_term(w), d * self.divergence_term(w)

    def cost(self, x: Float[Array, "C ny nx"]) -> Scalar:
        r"""$J_w = \tfrac12\lambda_s\|\nabla\mathbf w\|^2 +
        \tfrac12\lambda_d\|\nabla\cdot\mathbf w\|^2$."""
        return 0.5 * sum(jnp.sum(r**2) for r in self.residual_terms(x))


def fbc23_weights(
    alpha: float, beta: float, *, n_entries: int, noise_std: float
) -> tuple[float, float]:
    r"""[FBC23]'s penalty weights $(\alpha, \beta)$ in our cost's convention.

    $\lambda_s = \alpha N/(2\sigma^2)$, $\lambda_d = \beta N/(2\sigma^2)$ with
    $N$ = `n_entries` the number of entries of the window over which their
    observation term is averaged ($T \cdot C \cdot n_y n_x$) and $\sigma$ =
    `noise_std` (module docstring). Their experiment: $\alpha = 5\cdot10^3$,
    $\beta = 5\cdot10^2$, $N = 10\cdot3\cdot64^2$, $\sigma = 0.05$.

    **Returns:** `(smoothness, divergence)` for `MotionPenalty`.
    """
    check_positive("alpha", alpha, allow_zero=True)
    check_positive("beta", beta, allow_zero=True)
    n_entries = check_int("n_entries", n_entries, minimum=1)
    check_positive("noise_std", noise_std)
    scale = n_entries / (2.0 * float(noise_std) ** 2)
    return float(alpha) * scale, float(beta) * scale
