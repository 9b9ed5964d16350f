r"""Shallow water on an Arakawa C-grid: linear or nonlinear, with or without rotation.

**Equations.** With $\eta$ the surface elevation, $h = H + \eta$ the depth over a flat
bottom at mean depth $H$, $\mathbf{u} = (u, v)$ the velocity, $g$ gravity and
$f = f_0 + \beta (y - y_c)$ the Coriolis parameter ($y_c$ the domain's centre):

- nonlinear, flux-form continuity and vector-invariant momentum,
  $$\partial_t \eta + \nabla\cdot(h\mathbf{u}) = 0,\qquad
  \partial_t \mathbf{u} + q\,\hat{\mathbf z}\times h\mathbf{u}
  + \nabla(g\eta + K) = 0,$$
  with $K = |\mathbf u|^2/2$ and the potential vorticity $q = (f + \zeta)/h$,
  $\zeta = \partial_x v - \partial_y u$;
- linear (`nonlinear=False`): $\partial_t\eta + H\nabla\cdot\mathbf u = 0$,
  $\partial_t \mathbf u + f\hat{\mathbf z}\times\mathbf u + g\nabla\eta = 0$.

**Staggering and state layout** (`(3, ny, nx)`, channels `("eta", "u", "v")`):
`x[0, j, i]` is $\eta$ at the centre of cell $(j, i)$; `x[1, j, i]` is $u$ on its east
face $(y_j, x_{i+1/2})$; `x[2, j, i]` is $v$ on its north face $(y_{j+1/2}, x_i)$;
vorticity and potential vorticity live on the north-east corners
$(y_{j+1/2}, x_{i+1/2})$. On a `"periodic"` grid every entry is a degree of freedom.
In a `"closed"` basin the normal velocity vanishes on the walls: the east-wall face
`x[1, :, -1]` and the north-wall face `x[2, -1, :]` are stored but inert (their
tendency is 0 and the scheme never reads them: keep them 0, as `gaussian_bump` and the
preset do); the west and south wall faces are not stored. The walls are free-slip
($\zeta = 0$ there).

**Scheme** (in `jaxda.grid` operators: $D^\pm$ the forward / backward differences,
$\overline{\,\cdot\,}$ the face / centre averages): the mass flux
$U = \overline{h}^x u$, $V = \overline{h}^y v$;
$\partial_t\eta = -(D^-_x U + D^-_y V)$;
$\partial_t u = \overline{q\,\overline{V}^x}^y - D^+_x B$,
$\partial_t v = -\overline{q\,\overline{U}^y}^x - D^+_y B$, with the Bernoulli function
$B = g\eta + \tfrac12(\overline{u^2}^x + \overline{v^2}^y)$ and $q$ at the corners with
the four-point mean depth. This is Sadourny's energy-conserving scheme [S75] (in the
form of [AL77]); the linear scheme is the same with $h \to H$, $K \to 0$,
$\zeta \to 0$.

**Conserved** (semi-discretely, to round-off; for the time-discrete RK4 flow map to
its order): the mass $\sum\eta\,\Delta x\Delta y$ (flux form with the exact
`diff_backward`, periodic or closed), and the energy (`energy`)
$E = \sum_{\text{cells}} \big(\tilde h\,\tfrac12(\overline{u^2}^x + \overline{v^2}^y)
+ \tfrac12 g\eta^2\big)\Delta x\Delta y$ with $\tilde h = h$ (nonlinear) or $H$
(linear): the averaging operators are each other's transposes, so the Coriolis terms
do no work and the pressure work cancels the flux divergence.

**Waves.** The linear C-grid scheme has the discrete dispersion relation
$\omega^2 = f^2\cos^2\tfrac{k\Delta x}{2}\cos^2\tfrac{l\Delta y}{2}
+ gH\big(\tfrac{4}{\Delta x^2}\sin^2\tfrac{k\Delta x}{2}
+ \tfrac{4}{\Delta y^2}\sin^2\tfrac{l\Delta y}{2}\big)$ (Poincaré waves, and a
zero-frequency geostrophic mode), which tends to $\omega^2 = f^2 + gH(k^2 + l^2)$.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._validation import check_int, check_positive, check_real
from ..grid._differences import (
    _next,
    centres_to_faces,
    diff_backward,
    diff_forward,
    faces_to_centres,
)
from ..grid._grid import Grid
from ._base import AbstractDynamics
from ._flow import RK4


class ShallowWater(AbstractDynamics):
    r"""The shallow-water equations on an Arakawa C-grid (module `shallow_water`).

    **Arguments:**

    - `grid`: the `jaxda.grid.Grid`, `"closed"` (a basin with walls) or `"periodic"`.
    - `gravity`: $g$ (default 9.81), > 0.
    - `depth`: the mean depth $H$ (default 100), > 0.
    - `coriolis`: $f_0$ (default 0: no rotation; an f-plane otherwise).
    - `beta`: $\beta$, the meridional gradient of $f$ (default 0; a beta-plane
      otherwise), $f = f_0 + \beta(y - y_c)$ at the vorticity points.
    - `nonlinear`: the nonlinear (default) or the linearised equations (static).

    The physical parameters are array fields (learnable, differentiable). The state is
    `(3, ny, nx) = (eta, u, v)` on the C-grid (layout in the module docstring). Use
    `flow_map(model, dt, "rk4")` with `dt <= max_stable_dt()`.
    """

    grid: Grid
    gravity: Float[Array, ""] | float = 9.81
    depth: Float[Array, ""] | float = 100.0
    coriolis: Float[Array, ""] | float = 0.0
    beta: Float[Array, ""] | float = 0.0
    nonlinear: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not isinstance(self.grid, Grid):
            raise TypeError(
                f"`grid` must be a jaxda.grid.Grid; got {type(self.grid).__name__}."
            )
        for name in ("gravity", "depth", "coriolis", "beta"):
            check_real(name, getattr(self, name))
        check_positive("gravity", self.gravity)
        check_positive("depth", self.depth)
        if not isinstance(self.nonlinear, bool):
            raise TypeError(f"`nonlinear` must be a bool; got {self.nonlinear!r}.")

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (3, *self.grid.shape)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """`("eta", "u", "v")`."""
        return ("eta", "u", "v")

    def coriolis_at_corners(self) -> Float[Array, "ny 1"]:
        """$f = f_0 + \\beta (y - y_c)$ at the corner rows $y_{j+1/2}$."""
        g = self.grid
        y = g.y + g.dy / 2
        y_centre = g.y0 - g.dy / 2 + g.extent[0] / 2
        return (self.coriolis + self.beta * (y - y_centre))[:, None]

    def _corner_depth(self, h):
        g = self.grid
        hx = _next(h, -1, g.periodic)
        return (h + hx + _next(h, -2, g.periodic) + _next(hx, -2, g.periodic)) / 4

    def vector_field(self, t, x: Float[Array, "3 ny nx"]) -> Float[Array, "3 ny nx"]:
        g = self.grid
        eta, u, v = x[0], x[1], x[2]
        # the state's dtype governs: float64 parameters do not promote a float32 state
        gravity, depth = (
            jnp.asarray(p).astype(x.dtype) for p in (self.gravity, self.depth)
        )
        f = self.coriolis_at_corners().astype(x.dtype)
        if self.nonlinear:
            h = depth + eta
            U = centres_to_faces(h, g, "x") * u
            V = centres_to_faces(h, g, "y") * v
            zeta = diff_forward(v, g, "x") - diff_forward(u, g, "y")
            q = (f + zeta) / self._corner_depth(h)
            kinetic = faces_to_centres(u**2, g, "x") + faces_to_centres(v**2, g, "y")
            bernoulli = gravity * eta + kinetic / 2
        else:
            U, V = depth * u, depth * v
            q = f / depth
            bernoulli = gravity * eta
        deta = -(diff_backward(U, g, "x") + diff_backward(V, g, "y"))
        du = faces_to_centres(q * centres_to_faces(V, g, "x"), g, "y")
        dv = -faces_to_centres(q * centres_to_faces(U, g, "y"), g, "x")
        du = du - diff_forward(bernoulli, g, "x")
        dv = dv - diff_forward(bernoulli, g, "y")
        if not g.periodic:  # the wall faces stay as they are
            du, dv = du.at[:, -1].set(0), dv.at[-1, :].set(0)
        return jnp.stack([deta, du, dv])

    # -- diagnostics

    def _wall_masked(self, x):
        u, v = x[1], x[2]
        if not self.grid.periodic:
            u, v = u.at[:, -1].set(0), v.at[-1, :].set(0)
        return u, v

    def mass(self, x: Float[Array, "*lead 3 ny nx"]) -> Float[Array, "*lead"]:
        r"""$\sum \eta\,\Delta x\Delta y$, conserved by the scheme."""
        return self.grid.integral(x[..., 0, :, :])

    def energy(self, x: Float[Array, "3 ny nx"]) -> Float[Array, ""]:
        r"""The discrete energy the scheme conserves (module docstring): kinetic
        $\tilde h K$ plus potential $g\eta^2/2$, integrated over the cells."""
        g = self.grid
        eta = x[0]
        u, v = self._wall_masked(x)
        kinetic = (faces_to_centres(u**2, g, "x") + faces_to_centres(v**2, g, "y")) / 2
        h = self.depth + eta if self.nonlinear else self.depth
        return g.integral(h * kinetic + self.gravity * eta**2 / 2)

    def vorticity(self, x: Float[Array, "3 ny nx"]) -> Float[Array, "ny nx"]:
        r"""$\zeta = D^+_x v - D^+_y u$ at the north-east corners (0 on the walls)."""
        u, v = self._wall_masked(x)
        return diff_forward(v, self.grid, "x") - diff_forward(u, self.grid, "y")

    def velocity_at_centres(
        self, x: Float[Array, "*lead 3 ny nx"]
    ) -> Float[Array, "*lead 2 ny nx"]:
        """`(u, v)` averaged from the faces to the cell centres (the motion field)."""
        u, v = x[..., 1, :, :], x[..., 2, :, :]
        return jnp.stack(
            [faces_to_centres(u, self.grid, "x"), faces_to_centres(v, self.grid, "y")],
            axis=-3,
        )

    def max_stable_dt(
        self, x: Float[Array, "3 ny nx"] | None = None
    ) -> Float[Array, ""]:
        r"""The linear-stability limit of the RK4 flow map.

        RK4 is stable for eigenvalues $i\omega$ with $|\omega|\Delta t \le 2\sqrt2$;
        the fastest C-grid wave has $\omega_{\max}^2 \le f_{\max}^2 + 4(c +
        |\mathbf u|_{\max})^2(\Delta x^{-2} + \Delta y^{-2})$ with
        $c = \sqrt{g h_{\max}}$ ($h = H$ without a state). Returns
        $2\sqrt2/\omega_{\max}$.
        """
        g = self.grid
        h_max, speed = jnp.asarray(self.depth), 0.0
        if x is not None:
            self.check_state("x", x)
            u, v = self._wall_masked(x)
            h_max = h_max + jnp.maximum(jnp.max(x[0]), 0.0)
            speed = jnp.maximum(jnp.max(jnp.abs(u)), jnp.max(jnp.abs(v)))
        c = jnp.sqrt(self.gravity * h_max) + speed
        f_max = jnp.max(jnp.abs(self.coriolis_at_corners()))
        omega = jnp.sqrt(f_max**2 + 4 * c**2 * (1 / g.dx**2 + 1 / g.dy**2))
        return 2 * math.sqrt(2) / omega

    def gaussian_bump(
        self,
        height: Float[Array, ""] | float = 1.0,
        width: Float[Array, ""] | float = 0.05,
        centre: tuple[float, float] | Float[Array, "2"] = (0.5, 0.5),
    ) -> Float[Array, "3 ny nx"]:
        r"""A state at rest with a Gaussian bump of surface elevation.

        $\eta = a \exp(-|\mathbf x - \mathbf x_c|^2 / (2\sigma^2))$, $u = v = 0$, with
        `height` $a$, `width` $\sigma$ and `centre` $(y_c, x_c)$ given as fractions of
        the domain side (traceable: vmap over random centres to make a dataset).
        """
        g = self.grid
        Y, X = g.meshgrid()
        (ly, lx) = g.extent
        centre = jnp.asarray(centre)
        yc = g.y0 - g.dy / 2 + centre[0] * ly
        xc = g.x0 - g.dx / 2 + centre[1] * lx
        sigma = width * min(lx, ly)
        eta = height * jnp.exp(-((X - xc) ** 2 + (Y - yc) ** 2) / (2 * sigma**2))
        return jnp.stack([eta, jnp.zeros_like(eta), jnp.zeros_like(eta)])

    @property
    def reference_state(self) -> Float[Array, "3 ny nx"]:
        """`gaussian_bump()`: a bump of 1 at the centre, width 5 % of the domain."""
        return self.gaussian_bump()


class BasinPreset(eqx.Module):
    """What `shallow_water_basin` returns.

    **Fields:** `model` (`ShallowWater`), `grid`, `dt` (the time step), `initial_state`
    (the Gaussian bump at rest) and `state` (after `spinup_steps` RK4 steps of `dt`).
    """

    model: ShallowWater
    grid: Grid
    dt: float = eqx.field(static=True)
    initial_state: Float[Array, "3 ny nx"]
    state: Float[Array, "3 ny nx"]
    spinup_steps: int = eqx.field(static=True)


def spin_up(
    model: ShallowWater, dt: float, x0: Float[Array, "3 ny nx"], n_steps: int
) -> Float[Array, "3 ny nx"]:
    """`n_steps` RK4 steps of `dt` from `x0`, keeping only the last state (a
    `lax.fori_loop`; vmap it over initial states)."""
    n_steps = check_int("n_steps", n_steps, minimum=0)
    flow = RK4(model, dt)
    return _spin_up(flow, x0, n_steps)


@eqx.filter_jit
def _spin_up(flow, x0, n_steps):
    return jax.lax.fori_loop(0, n_steps, lambda i, x: flow(x), x0)


def shallow_water_basin(
    n: int = 64,
    length: float = 1.0e6,
    *,
    depth: float = 100.0,
    gravity: float = 9.81,
    courant: float = 0.5,
    bump_height: float = 1.0,
    bump_width: float = 0.05,
    bump_centre: tuple[float, float] = (0.5, 0.5),
    spinup_steps: int = 1000,
    nonlinear: bool = True,
    coriolis: float = 0.0,
    dtype=None,
) -> BasinPreset:
    r"""The closed-basin shallow-water set-up of Filoche et al. [FBC23].

    From [FBC23] (as summarised in `docs/references.md`; seed [FB22] names the
    shallow-water model without the details): non-rotating shallow water in a closed
    square basin of `n` x `n` = 64 x 64 cells and side `length` = 1000 km, mean depth
    $H$ = 100 m, $g$ = 9.81, $\Delta t = 0.5\,\Delta x/\sqrt{gH}$ (`courant` = 0.5),
    a Gaussian bump of surface elevation spun up for 1000 steps. **Our choices**
    (the papers we have do not give them): the bump's height 1 m, its width (standard
    deviation) 5 % of the side, at the centre; the nonlinear equations of
    `ShallowWater`; the RK4 flow map. The velocity then carries the waves the bump
    radiated and their reflections; [FBC23] observe the height every third step of
    10-step windows (noise $\sigma = 0.05$) and recover the velocity.

    **Arguments:** the sizes and physical constants above (keyword-only after
    `length`), `coriolis` $f_0$ (default 0), `spinup_steps` (default 1000), `dtype`
    of the states (default: JAX's default float).

    **Returns:** a `BasinPreset` (`model`, `grid`, `dt`, `initial_state`, `state`).
    """
    n = check_int("n", n, minimum=2)
    check_positive("courant", courant)
    spinup_steps = check_int("spinup_steps", spinup_steps, minimum=0)
    grid = Grid.square(n, length, boundary="closed")
    model = ShallowWater(grid, gravity, depth, coriolis, nonlinear=nonlinear)
    dt = float(courant) * grid.dx / math.sqrt(gravity * depth)
    x0 = model.gaussian_bump(bump_height, bump_width, bump_centre)
    x0 = x0.astype(dtype or jnp.result_type(float))
    state = spin_up(model, dt, x0, spinup_steps)
    return BasinPreset(model, grid, dt, x0, state, spinup_steps)
