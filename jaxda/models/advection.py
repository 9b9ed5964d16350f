r"""Two-dimensional tracer advection in flux form with a limited upwind scheme.

The tracer $q$ obeys the conservation law

$$\partial_t q + \nabla\cdot(\mathbf{w}\, q) = 0,\qquad \mathbf{w} = (u, v),$$

discretised by finite volumes on a `jaxda.grid.Grid`:

$$\frac{dq_{ji}}{dt} = -\frac{F_{j,i+1/2} - F_{j,i-1/2}}{\Delta x}
- \frac{G_{j+1/2,i} - G_{j-1/2,i}}{\Delta y},\qquad
F_{i+1/2} = u^+_{i+1/2}\, q^L_{i+1/2} + u^-_{i+1/2}\, q^R_{i+1/2},$$

with $u^\pm = \max/\min(u, 0)$ the upwind split of the face velocity and the MUSCL
reconstructions $q^L_{i+1/2} = q_i + \sigma_i/2$, $q^R_{i+1/2} = q_{i+1} -
\sigma_{i+1}/2$ from the limited slopes $\sigma_i = \phi(q_i - q_{i-1}, q_{i+1} - q_i)$
[vL79]. The flux difference is `jaxda.grid.diff_backward`, whose sum over the cells
vanishes on periodic and closed grids alike: **the total mass $\sum q\,\Delta x\Delta y$
is conserved to round-off**, whatever the velocity. On a closed grid the normal
velocity at the walls is 0 (no flux), and the ghost cells beyond a wall repeat the
edge cell (zero slope there).

Limiters $\phi(a, b)$ (all 0 when $ab \le 0$): `"van_leer"` $2ab/(a+b)$ (the default;
smooth away from extrema, which suits gradient-based assimilation), `"minmod"`
$\mathrm{sign}(a)\min(|a|,|b|)$, `"mc"` (monotonised centred,
$\mathrm{sign}(a)\min(2|a|, 2|b|, |a+b|/2)$), `"upwind"` ($\phi = 0$: first order,
linear in $q$) and `"fromm"` ($(a + b)/2$, unlimited: second order and linear in
$q$, but not monotone). With a limiter and the strong-stability-preserving `SSPRK3`
step [SO88] at `dt <= Advection2D.max_stable_dt`, the scheme preserves positivity, and
with a discretely divergence-free velocity (`velocity_from_streamfunction`) it creates
no new extrema.

**Where the velocity lives.** Either it is a field of the Module (`velocity`, shape
`(2, ny, nx)`: learnable, a control of the 4DVar cost through `equinox.tree_at` and
`equinox.filter_grad`) and the state is the tracer alone, `(1, ny, nx)`; or
`velocity=None` and it is part of the state `(3, ny, nx) = (q, u, v)`, constant in
time (`velocity_dynamics="constant"`) or transported by itself
(`"advected"`: $\partial_t \mathbf{w} + (\mathbf{w}\cdot\nabla)\mathbf{w} = 0$, the
Lagrangian constancy of the motion used in image-sequence assimilation, discretised
as the same limited flux divergence minus $\mathbf{w}\,\nabla\cdot\mathbf{w}$).
By default the velocity is given at the cell centres and averaged to the faces
(`jaxda.grid.centres_to_faces`); `staggered=True` reads it as C-grid face values
(`u[j, i]` on the east face of cell `(j, i)`, `v[j, i]` on its north face, the wall
entries ignored), e.g. a shallow-water velocity or `velocity_from_streamfunction`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_choice, check_finite, check_real, check_shape
from ..grid._differences import _next, _prev, centres_to_faces, diff_backward
from ..grid._grid import Grid
from ._base import AbstractDynamics
from ._flow import AbstractFlowMap


def _minmod(a, b):
    return 0.5 * (jnp.sign(a) + jnp.sign(b)) * jnp.minimum(jnp.abs(a), jnp.abs(b))


def _van_leer(a, b):
    ab = a * b
    same = ab > 0
    return jnp.where(same, 2 * ab / jnp.where(same, a + b, 1.0), 0.0)


def _mc(a, b):
    same = a * b > 0
    size = jnp.minimum(2 * jnp.minimum(jnp.abs(a), jnp.abs(b)), jnp.abs(a + b) / 2)
    return jnp.where(same, jnp.sign(a) * size, 0.0)


LIMITERS = {
    "van_leer": _van_leer,
    "minmod": _minmod,
    "mc": _mc,
    "upwind": lambda a, b: jnp.zeros_like(a),
    "fromm": lambda a, b: (a + b) / 2,
}
# The largest Courant number (outflow rate x dt) at which a forward-Euler step, hence
# SSPRK3, keeps the tracer positive: the outgoing face value is at most (1 + c) q_i
# with c = 1 (van Leer, MC), 1/2 (minmod), 0 (upwind).
_COURANT = {"van_leer": 0.5, "minmod": 2 / 3, "mc": 0.5, "upwind": 1.0, "fromm": 0.5}
VELOCITY_DYNAMICS = ("constant", "advected")


def _upwind_flux(q, speed, grid: Grid, axis: str, limiter):
    """The limited upwind flux `speed * q_face` on the faces along `axis`."""
    ax = -1 if axis == "x" else -2
    periodic = grid.periodic
    slope = limiter(q - _prev(q, ax, periodic), _next(q, ax, periodic) - q)
    left = q + slope / 2  # the face value reconstructed from the cell behind it
    right = _next(q - slope / 2, ax, periodic)  # ... from the cell ahead
    return jnp.maximum(speed, 0) * left + jnp.minimum(speed, 0) * right


def flux_divergence(
    q: Float[Array, "*lead ny nx"],
    u_face: Float[Array, "*#lead ny nx"],
    v_face: Float[Array, "*#lead ny nx"],
    grid: Grid,
    limiter: str = "van_leer",
) -> Float[Array, "*lead ny nx"]:
    r"""$\nabla\cdot(\mathbf{w} q)$ by limited upwind fluxes (see the module docstring).

    **Arguments:** `q` a centre field `(..., ny, nx)`; `u_face`, `v_face` the
    velocity on the east / north faces (C-grid layout; wall entries ignored); `grid`;
    `limiter` one of `"van_leer"`, `"minmod"`, `"mc"`, `"upwind"`, `"fromm"`.

    **Returns:** the centre field of the flux divergence; it sums to 0 over the grid.
    """
    check_choice("limiter", limiter, tuple(LIMITERS))
    phi = LIMITERS[limiter]
    flux_x = _upwind_flux(q, u_face, grid, "x", phi)
    flux_y = _upwind_flux(q, v_face, grid, "y", phi)
    return diff_backward(flux_x, grid, "x") + diff_backward(flux_y, grid, "y")


def velocity_from_streamfunction(
    psi: Float[Array, "*lead ny nx"], grid: Grid
) -> Float[Array, "*lead 2 ny nx"]:
    r"""A discretely divergence-free C-grid velocity from a streamfunction.

    $u = -\partial_y\psi$, $v = \partial_x\psi$ with $\psi$ at the cell corners
    (`psi[j, i]` at $(y_j + \Delta y/2,\ x_i + \Delta x/2)$, the north-east corner of
    cell `(j, i)`): $u_{j,i+1/2} = -(\psi_{j+1/2,i+1/2} - \psi_{j-1/2,i+1/2})/\Delta y$,
    $v_{j+1/2,i} = (\psi_{j+1/2,i+1/2} - \psi_{j+1/2,i-1/2})/\Delta x$, so
    `divergence(w) == 0` to round-off. On a closed grid $\psi = 0$ on the walls (the
    last row and column of `psi`, which lie on the north and east walls, are ignored),
    so the normal velocity vanishes there.

    **Returns:** the face velocity `(..., 2, ny, nx)`, for `Advection2D(...,
    staggered=True)`.
    """
    grid.check_field("psi", psi, leading=jnp.ndim(psi) - 2)
    if not grid.periodic:
        keep = jnp.ones(grid.shape).at[-1, :].set(0).at[:, -1].set(0)
        psi = psi * keep
    u = -diff_backward(psi, grid, "y")
    v = diff_backward(psi, grid, "x")
    return jnp.stack([u, v], axis=-3)


class Advection2D(AbstractDynamics):
    r"""A tracer advected by a velocity field on a 2-D grid (flux form, limited upwind).

    $\partial_t q + \nabla\cdot(\mathbf{w} q) = 0$; the scheme, the limiters and the
    conservation properties are in the module docstring (`jaxda.models.advection`).

    **Arguments:**

    - `grid`: the `jaxda.grid.Grid` (periodic or closed).
    - `velocity`: `(2, ny, nx)` array `(u, v)` (a learnable field; the state is then
      `(1, ny, nx)`, the tracer), or `None` (default): the velocity is part of the
      state `(3, ny, nx) = (q, u, v)`.
    - `limiter`: `"van_leer"` (default), `"minmod"`, `"mc"`, `"upwind"` or `"fromm"`
      (static).
    - `staggered`: whether the velocity holds C-grid face values (`u` on the east
      faces, `v` on the north faces) rather than cell-centre values (default False,
      static).
    - `velocity_dynamics`: with `velocity=None`, `"constant"` (default,
      $\partial_t\mathbf{w} = 0$) or `"advected"`
      ($\partial_t\mathbf{w} + (\mathbf{w}\cdot\nabla)\mathbf{w} = 0$; cell-centre
      velocities only) (static).

    Use the `SSPRK3` flow map with `dt <= max_stable_dt(x)`.
    """

    grid: Grid
    velocity: Float[Array, "2 ny nx"] | None = None
    limiter: str = eqx.field(static=True, default="van_leer")
    staggered: bool = eqx.field(static=True, default=False)
    velocity_dynamics: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        if not isinstance(self.grid, Grid):
            raise TypeError(
                f"`grid` must be a jaxda.grid.Grid; got {type(self.grid).__name__}."
            )
        check_choice("limiter", self.limiter, tuple(LIMITERS))
        check_choice("velocity_dynamics", self.velocity_dynamics, VELOCITY_DYNAMICS)
        if not isinstance(self.staggered, bool):
            raise TypeError(f"`staggered` must be a bool; got {self.staggered!r}.")
        if self.velocity is not None:
            check_real("velocity", self.velocity)
            check_shape("velocity", self.velocity, (2, *self.grid.shape))
            check_finite("velocity", self.velocity)
            if self.velocity_dynamics != "constant":
                raise ValueError(
                    "`velocity_dynamics` applies to a velocity carried in the state "
                    "(velocity=None); a `velocity` field of the model is stationary; "
                    f"got velocity_dynamics={self.velocity_dynamics!r}."
                )
        if self.velocity_dynamics == "advected" and self.staggered:
            raise ValueError(
                "`velocity_dynamics='advected'` needs cell-centre velocities "
                "(staggered=False)."
            )

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (1 if self.velocity is not None else 3, *self.grid.shape)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names of the state's channels: `("q",)` or `("q", "u", "v")`."""
        return ("q",) if self.velocity is not None else ("q", "u", "v")

    def _velocity(self, x):
        return jnp.asarray(self.velocity) if self.velocity is not None else x[1:3]

    def face_velocity(
        self, x: Float[Array, "C ny nx"] | None = None
    ) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """`(u, v)` on the east / north faces (0 at closed walls).

        `x`: the state, needed when the velocity is part of it.
        """
        if self.velocity is None and x is None:
            raise ValueError("`x` is needed: the velocity is part of the state.")
        w = self._velocity(x)
        if self.staggered:
            u, v = w[0], w[1]
            if not self.grid.periodic:
                u, v = u.at[:, -1].set(0), v.at[-1, :].set(0)
            return u, v
        return centres_to_faces(w[0], self.grid, "x"), centres_to_faces(
            w[1], self.grid, "y"
        )

    def vector_field(self, t, x: Float[Array, "C ny nx"]) -> Float[Array, "C ny nx"]:
        # the state's dtype governs (a float64 velocity does not promote a float32 q)
        u, v = (c.astype(x.dtype) for c in self.face_velocity(x))
        dq = -flux_divergence(x[0], u, v, self.grid, self.limiter)
        if self.velocity is not None:
            return dq[None]
        w = x[1:3]
        if self.velocity_dynamics == "constant":
            dw = jnp.zeros_like(w)
        else:  # (w . grad) w = div(w w) - w div(w), each component by the same fluxes
            div = diff_backward(u, self.grid, "x") + diff_backward(v, self.grid, "y")
            dw = -flux_divergence(w, u, v, self.grid, self.limiter) + w * div
        return jnp.concatenate([dq[None], dw], axis=0)

    def max_stable_dt(
        self, x: Float[Array, "C ny nx"] | None = None
    ) -> Float[Array, ""]:
        r"""The largest positivity-preserving time step of `SSPRK3` (or `Euler`).

        $\Delta t_{\max} = c / \max_{ji} r_{ji}$, with $r_{ji}$ the outflow rate of cell
        $(j, i)$ (the outgoing face speeds over the spacing, summed over its four faces)
        and $c$ the limiter's Courant number: 1 (`upwind`), 2/3 (`minmod`), 1/2
        (`van_leer`, `mc`; also used for the linearly stable `fromm`). Infinite for a
        zero velocity. With `velocity_dynamics="advected"` it holds at the state `x`.
        """
        u, v = self.face_velocity(x)
        periodic = self.grid.periodic

        def west(f, ax):  # the value on the face behind (0 at a wall)
            if periodic:
                return jnp.roll(f, 1, axis=ax)
            pad = [(0, 0)] * f.ndim
            pad[ax] = (1, 0)
            return jax.lax.slice_in_dim(jnp.pad(f, pad), 0, f.shape[ax], axis=ax)

        rate = (jnp.maximum(u, 0) - jnp.minimum(west(u, -1), 0)) / self.grid.dx + (
            jnp.maximum(v, 0) - jnp.minimum(west(v, -2), 0)
        ) / self.grid.dy
        return _COURANT[self.limiter] / jnp.max(rate)

    @property
    def reference_state(self) -> Float[Array, "C ny nx"]:
        """A smooth Gaussian blob of tracer (peak 1, width a tenth of the domain, at
        (0.5 Ly, 0.3 Lx)); with the velocity in the state, a uniform flow (1, 1/2) on a
        periodic grid and a clockwise gyre of peak speed ~1 on a closed grid."""
        g = self.grid
        Y, X = g.meshgrid()
        (ly, lx), (y_min, x_min) = g.extent, (g.y0 - g.dy / 2, g.x0 - g.dx / 2)
        s, t = (X - x_min) / lx, (Y - y_min) / ly
        q = jnp.exp(-((s - 0.3) ** 2 + (t - 0.5) ** 2) / (2 * 0.1**2))
        if self.velocity is not None:
            return q[None]
        if g.periodic:
            w = jnp.stack([jnp.ones(g.shape), jnp.full(g.shape, 0.5)])
        elif self.staggered:
            sc, tc = s + g.dx / (2 * lx), t + g.dy / (2 * ly)
            psi = min(lx, ly) / jnp.pi * jnp.sin(jnp.pi * sc) * jnp.sin(jnp.pi * tc)
            w = velocity_from_streamfunction(psi, g)
        else:
            a = min(lx, ly)
            u = -a / ly * jnp.sin(jnp.pi * s) * jnp.cos(jnp.pi * t)
            v = a / lx * jnp.cos(jnp.pi * s) * jnp.sin(jnp.pi * t)
            w = jnp.stack([u, v])
        return jnp.concatenate([q[None], w.astype(q.dtype)], axis=0)


class SSPRK3(AbstractFlowMap):
    r"""The three-stage, third-order strong-stability-preserving Runge-Kutta step.

    Shu and Osher's scheme [SO88], a convex combination of forward-Euler steps:

    $$x^{(1)} = x + h f(t, x),\quad
    x^{(2)} = \tfrac34 x + \tfrac14\big(x^{(1)} + h f(t + h, x^{(1)})\big),$$
    $$x \mapsto \tfrac13 x + \tfrac23\big(x^{(2)} + h f(t + h/2, x^{(2)})\big),$$

    so any property a forward-Euler step of size $h$ keeps (positivity, no new extrema
    of a limited advection scheme) it keeps too. `substeps` steps of
    $h = dt/substeps$. Third order.
    """

    model: AbstractDynamics
    dt: float
    substeps: int = eqx.field(static=True, default=1)

    def _step(self, x, t, h):
        f = self.model.vector_field
        x1 = x + h * f(t, x)
        x2 = 0.75 * x + 0.25 * (x1 + h * f(t + h, x1))
        return x / 3 + (2 / 3) * (x2 + h * f(t + h / 2, x2))

    @property
    def order(self) -> int:
        return 3
