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

**Forward-backward scheme** (`ForwardBackward`, the time stepping of [FBC23]'s
code): the momentum equations without advection, $\partial_t\mathbf u +
f\hat{\mathbf z}\times\mathbf u + g\nabla\eta = 0$, stepped forward from $\eta^n$,
then the flux-form continuity with upwind depths stepped with the new velocity; a
one-step map of its own, not a discretisation of `ShallowWater.vector_field`.

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

from .._custom_types import Array, Float, Key
from .._validation import check_choice, check_int, check_key, check_positive, check_real
from ..grid._differences import (
    _next,
    centres_to_faces,
    diff_backward,
    diff_forward,
    faces_to_centres,
)
from ..grid._grid import Grid
from ..obs._observations import Observations, observe
from ..obs._patterns import EveryKPattern
from ._base import AbstractDynamics
from ._flow import RK4, AbstractFlowMap, rollout


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
    `flow_map(model, dt, "rk4")` with `dt <= max_stable_dt()` to step this
    tendency, or `ForwardBackward(model, dt)` for [FBC23]'s forward-backward scheme
    (momentum without advection, upwind continuity).
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

    def coriolis_at_centres(self) -> Float[Array, "ny 1"]:
        """$f = f_0 + \\beta (y - y_c)$ at the cell-centre rows $y_j$."""
        g = self.grid
        y_centre = g.y0 - g.dy / 2 + g.extent[0] / 2
        return (self.coriolis + self.beta * (g.y - y_centre))[:, None]

    @property
    def rotating(self) -> bool:
        """False when `coriolis` and `beta` are the Python number 0 (no Coriolis term
        is computed); True otherwise (arrays count as rotating: they may be traced)."""
        return not all(
            isinstance(p, int | float) and p == 0 for p in (self.coriolis, self.beta)
        )

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


class ForwardBackward(AbstractFlowMap):
    r"""The forward-backward step of Filoche et al.'s shallow-water code [FBC23].

    One step of $h = \Delta t$ / `substeps` on the C-grid of `ShallowWater` (module
    docstring), in this order:

    1. momentum, forward from $\eta^n$ (no momentum advection):
       $u^{n+1} = u^n + h\big(f\,\overline{\overline{v^n}^y}^x - g D^+_x\eta^n\big)$,
       then $v^{n+1} = v^n - h\big(f\,\overline{\overline{u^{n+1}}^x}^y
       + g D^+_y\eta^n\big)$ (Coriolis forward-backward: $u$ first with the old $v$,
       then $v$ with the new $u$; $f$ at the cell centres, the averages
       `faces_to_centres` then `centres_to_faces`, each other's transposes, so that
       the Coriolis term does no work); without rotation the two updates are the
       authors' `u[:-1, :] -= g dt/dx (eta[1:, :] - eta[:-1, :])` and
       `v[:, :-1] -= g dt/dy (eta[:, 1:] - eta[:, :-1])`;
    2. continuity, backward with the new velocity, in flux form with upwind depths
       $\tilde h = H + \eta^n$ taken on the side the face velocity comes from:
       $U_{i+1/2} = u^{n+1}_{i+1/2}\,\tilde h_{i}$ if $u^{n+1}_{i+1/2} > 0$ else
       $u^{n+1}_{i+1/2}\,\tilde h_{i+1}$ (likewise $V$), and
       $\eta^{n+1} = \eta^n - h\,(D^-_x U + D^-_y V)$; with
       `model.nonlinear=False`, $U = H u^{n+1}$, $V = H v^{n+1}$.

    **The authors' arrays and ours.** Their first array axis is $x$ and the second
    $y$: their `eta[i, j]`, `u[i, j]`, `v[i, j]` are our `x[0, j, i]`, `x[1, j, i]`,
    `x[2, j, i]` (transposes). Their `u[i, :]` lies between cells `i` and `i + 1`
    and their last row `u[-1, :]`, never updated and 0, is our east-wall face
    `x[1, :, -1]` (likewise `v[:, -1]` and `x[2, -1, :]`): the same C-grid layout.
    Their upwind depth on face `i` is `H + eta[i]` if `u[i] > 0`, else
    `H + eta[i + 1]`, and the difference of the face fluxes is our $D^-_x U$ (the
    same along y); the wall fluxes vanish.

    **Properties.** Mass $\sum\eta\,\Delta x\Delta y$ is conserved exactly (flux
    form, closed or periodic grid); the wall faces keep their value (keep them 0).
    In the linear limit each C-grid gravity mode of wavenumber $(k, l)$ turns by
    $\theta$ per step with
    $\sin^2\tfrac{\theta}{2} = \tfrac{h^2}{4}\,gH(\hat k^2 + \hat l^2)$,
    $\hat k = \tfrac{2}{\Delta x}\sin\tfrac{k\Delta x}{2}$,
    $\hat l = \tfrac{2}{\Delta y}\sin\tfrac{l\Delta y}{2}$ (neutral, no
    damping), stable for $h\sqrt{gH}\sqrt{\Delta x^{-2} + \Delta y^{-2}} < 1$
    [MA76]; [FBC23] take $\Delta t = 0.5\min(\Delta x, \Delta y)/\sqrt{gH}$.
    One step is a handful of fused array operations, differentiable (the upwind
    choice is a `jnp.where`: the flux is continuous in $u$, its derivative jumps
    at $u = 0$).

    **Arguments:** `model` a `ShallowWater` (its `gravity`, `depth`, `coriolis`,
    `beta`, `nonlinear` and grid are used; its vector field is not); `dt` > 0;
    `substeps` >= 1 (static).
    """

    model: ShallowWater
    dt: float
    substeps: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if not isinstance(self.model, ShallowWater):
            raise TypeError(
                "`model` must be a jaxda.models.ShallowWater; got "
                f"{type(self.model).__name__}."
            )

    def _step(self, x, t, h):
        m = self.model
        g = m.grid
        eta, u, v = x[0], x[1], x[2]
        # the state's dtype governs: float64 parameters do not promote a float32 state
        gravity, depth = (jnp.asarray(p).astype(x.dtype) for p in (m.gravity, m.depth))
        h = jnp.asarray(h, x.dtype)
        u = u - h * gravity * diff_forward(eta, g, "x")  # 0 on the wall face
        if m.rotating:
            f = m.coriolis_at_centres().astype(x.dtype)
            v_at_u = centres_to_faces(f * faces_to_centres(v, g, "y"), g, "x")
            u = u + h * v_at_u
            u_at_v = centres_to_faces(f * faces_to_centres(u, g, "x"), g, "y")
            v = v - h * (u_at_v + gravity * diff_forward(eta, g, "y"))
        else:
            v = v - h * gravity * diff_forward(eta, g, "y")
        if m.nonlinear:
            total = depth + eta
            U = u * jnp.where(u > 0, total, _next(total, -1, g.periodic))
            V = v * jnp.where(v > 0, total, _next(total, -2, g.periodic))
        else:
            U, V = depth * u, depth * v
        eta = eta - h * (diff_backward(U, g, "x") + diff_backward(V, g, "y"))
        return jnp.stack([eta, u, v])


class BasinPreset(eqx.Module):
    """What `shallow_water_basin` returns.

    **Fields:** `model` (`ShallowWater`), `grid`, `dt` (the time step),
    `initial_state` (the Gaussian bump at rest), `state` (after `spinup_steps` steps
    of `flow`: the start of an assimilation window), `spinup_steps` and `flow` (the
    one-step map of `dt`: `ForwardBackward` or `RK4`).
    """

    model: ShallowWater
    grid: Grid
    dt: float = eqx.field(static=True)
    initial_state: Float[Array, "3 ny nx"]
    state: Float[Array, "3 ny nx"]
    spinup_steps: int = eqx.field(static=True)
    flow: AbstractFlowMap


def spin_up(flow, *args) -> Float[Array, "3 ny nx"]:
    """`n_steps` steps of a flow map from `x0`, keeping only the last state (a
    `lax.fori_loop`, jitted; vmap it over initial states).

    **Arguments:** `spin_up(flow, x0, n_steps)` with `flow` an `AbstractFlowMap`
    (e.g. `ForwardBackward(model, dt)`), or `spin_up(model, dt, x0, n_steps)`: RK4
    steps of `dt` of `model`.

    **Returns:** the state after `n_steps` steps.
    """
    if isinstance(flow, AbstractFlowMap) and len(args) == 2:
        x0, n_steps = args
    elif isinstance(flow, ShallowWater) and len(args) == 3:
        dt, x0, n_steps = args
        flow = RK4(flow, dt)
    else:
        raise TypeError(
            "Call `spin_up(flow, x0, n_steps)` with an AbstractFlowMap, or "
            "`spin_up(model, dt, x0, n_steps)` with a ShallowWater; got "
            f"{type(flow).__name__} and {len(args)} more arguments."
        )
    n_steps = check_int("n_steps", n_steps, minimum=0)
    flow.model.check_state("x0", x0)
    return _spin_up(flow, jnp.asarray(x0), n_steps)


@eqx.filter_jit
def _spin_up(flow, x0, n_steps):
    return jax.lax.fori_loop(0, n_steps, lambda i, x: flow(x), x0)


def basin_grid(n: int = 64, length: float = 1.0e6) -> Grid:
    r"""The closed basin grid of [FBC23]'s code: `n` x `n` nodes from $-L/2$ to $L/2$.

    $\Delta x = \Delta y = L/(n - 1)$ and the cell centres $x_i = -L/2 + i\Delta x$
    are their `np.linspace(-L/2, L/2, n)`. Read as cells, the walls lie half a cell
    beyond the outer nodes: the basin is $n\Delta x = nL/(n-1)$ wide (1015.9 km for
    the default $L$ = 1000 km), which is what mass and energy integrals see.
    """
    n = check_int("n", n, minimum=2)
    check_positive("length", length)
    step = float(length) / (n - 1)
    return Grid(n, n, step, step, "closed", -float(length) / 2, -float(length) / 2)


def basin_bump(
    key: Key,
    grid: Grid,
    *,
    height: float | Float[Array, ""] = 5.0,
    divisor_range: tuple[float, float] = (3.0, 7.0),
    width_range: tuple[float, float] = (2.0e4, 1.0e5),
) -> Float[Array, "3 ny nx"]:
    r"""A random Gaussian bump at rest, drawn as in [FBC23]'s data generator.

    $\eta_0 = a\exp\!\big(-((x - x_c)^2 + (y - y_c)^2)/(2 s^2)\big)$, $u = v = 0$,
    with $x_c = \bar x + L_x/\xi_x$, $y_c = \bar y + L_y/\xi_y$ ($\bar x$, $\bar y$
    the domain's centre, $L_x = (n_x - 1)\Delta x$, $L_y$ the distance between the
    outer nodes: their $L$), $\xi = \pm U(3, 7)$ with a random sign of probability
    1/2 each (`divisor_range`), and $s \sim U(2, 10)\times 10^4$ m (`width_range`, in
    grid units); `height` $a$ = 5. Traceable: vmap over keys to make a data set.

    **Arguments:** `key` a `jax.random` key; `grid`; the ranges above (keywords).

    **Returns:** the state `(3, ny, nx)` (in JAX's default float dtype).
    """
    check_key("key", key)
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid).__name__}.")
    k_div, k_sign, k_width = jax.random.split(key, 3)
    divisor = jax.random.uniform(
        k_div, (2,), minval=divisor_range[0], maxval=divisor_range[1]
    )
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (2,)), 1.0, -1.0)
    width = jax.random.uniform(
        k_width, (), minval=width_range[0], maxval=width_range[1]
    )
    spans = jnp.asarray([(grid.ny - 1) * grid.dy, (grid.nx - 1) * grid.dx])
    middle = jnp.asarray([grid.y0, grid.x0]) + spans / 2
    yc, xc = middle + spans / (sign * divisor)
    Y, X = grid.meshgrid()
    eta = height * jnp.exp(-((X - xc) ** 2 + (Y - yc) ** 2) / (2 * width**2))
    return jnp.stack([eta, jnp.zeros_like(eta), jnp.zeros_like(eta)])


SCHEMES = ("forward_backward", "rk4")


def shallow_water_basin(
    key: Key | None = None,
    n: int = 64,
    length: float = 1.0e6,
    *,
    depth: float = 100.0,
    gravity: float = 9.81,
    courant: float = 0.5,
    bump_height: float = 5.0,
    scheme: str = "forward_backward",
    spinup_steps: int = 1000,
    nonlinear: bool = True,
    coriolis: float = 0.0,
    dtype=None,
) -> BasinPreset:
    r"""The closed-basin shallow-water set-up of Filoche et al. [FBC23], as their
    public code runs it.

    **Taken from the authors' code** (`utils/data_generator.py`,
    `dynamics/Shallow_water.py`): the grid of `basin_grid` ($n$ = 64 nodes a side over
    $L$ = 1000 km, $\Delta x = L/(n-1)$), $g$ = 9.81, $H$ = 100 m,
    $\Delta t = 0.5\min(\Delta x, \Delta y)/\sqrt{gH}$ (`courant` = 0.5); the random
    initial bump of `basin_bump` (height 5 m, centre $\pm L/U(3, 7)$ from the middle
    along each axis, width $U(2, 10)\times 10^4$ m, at rest); their time stepping
    (`ForwardBackward`: non-rotating, momentum without advection, upwind nonlinear
    flux-form continuity); 1000 spin-up steps. **From the paper** (and issue
    settings): a window of 10 steps from the spun-up state, the height observed every
    third step with noise $\sigma$ = 0.05 (`basin_observations`; the code's default
    is 0.1). **What differs:** nothing in the arithmetic; the domain read as cells is
    $n\Delta x$ = 1015.9 km wide (walls half a cell beyond the outer nodes, see
    `basin_grid`).

    **Options** (not the authors'): `key=None` puts a fixed bump of height
    `bump_height` and standard deviation 5 % of $L$ at the middle of the basin;
    `scheme="rk4"` steps `ShallowWater`'s Sadourny energy-conserving tendency
    (vector-invariant momentum, with advection) with RK4; `coriolis` $f_0 \ne 0$
    rotates (forward-backward Coriolis in `ForwardBackward`); `nonlinear=False`
    linearises.

    **Arguments:** `key` a `jax.random` key (or `None`, above); `n`, `length`; the
    physical constants and options above (keyword-only); `spinup_steps` (default
    1000); `dtype` of the states (default: JAX's default float).

    **Returns:** a `BasinPreset` (`model`, `grid`, `dt`, `initial_state`, `state`,
    `spinup_steps`, `flow`). For a data set of many samples, vmap `basin_bump` and
    `spin_up(preset.flow, x0, 1000)` over keys, then `basin_observations`.
    """
    check_choice("scheme", scheme, SCHEMES)
    check_positive("courant", courant)
    check_positive("bump_height", bump_height, allow_zero=True)
    spinup_steps = check_int("spinup_steps", spinup_steps, minimum=0)
    grid = basin_grid(n, length)
    model = ShallowWater(grid, gravity, depth, coriolis, nonlinear=nonlinear)
    dt = float(courant) * min(grid.dx, grid.dy) / math.sqrt(gravity * depth)
    if key is None:
        Y, X = grid.meshgrid()
        eta = bump_height * jnp.exp(-(X**2 + Y**2) / (2 * (0.05 * length) ** 2))
        x0 = jnp.stack([eta, jnp.zeros_like(eta), jnp.zeros_like(eta)])
    else:
        x0 = basin_bump(key, grid, height=bump_height)
    x0 = x0.astype(dtype or jnp.result_type(float))
    flow = (
        ForwardBackward(model, dt) if scheme == "forward_backward" else RK4(model, dt)
    )
    state = spin_up(flow, x0, spinup_steps)
    return BasinPreset(model, grid, dt, x0, state, spinup_steps, flow)


def basin_observations(
    key: Key,
    flow: AbstractFlowMap,
    x0: Float[Array, "3 ny nx"],
    *,
    n_times: int = 10,
    every: int = 3,
    noise_std: float = 0.05,
) -> tuple[Float[Array, "T 3 ny nx"], Observations]:
    r"""One assimilation window of [FBC23]: the truth and its observed heights.

    The truth is the window $x_0, \dots, x_{T-1}$ of `flow` from `x0` (`T` =
    `n_times` = 10 states, `x0` the spun-up `BasinPreset.state`); the height
    $\eta$ is observed at $t = 0, k, 2k, \dots$ (`every` $k$ = 3: steps 0, 3, 6, 9),
    $y = \eta + \sigma\varepsilon$ with $\sigma$ = `noise_std` = 0.05 (the paper's;
    the authors' code defaults to 0.1); the velocities are never observed. The same
    as `EveryKPattern(every, components=range(ny * nx))` (the height channel in
    flattened order) and `observe`.

    **Returns:** `(truth, observations)`: `truth` `(T, 3, ny, nx)` and
    `Observations` of that shape, the mask on channel 0 at the observed times.
    """
    if not isinstance(flow, AbstractFlowMap):
        raise TypeError(
            f"`flow` must be a jaxda.models.AbstractFlowMap; got {type(flow).__name__}."
        )
    n_times = check_int("n_times", n_times, minimum=1)
    every = check_int("every", every, minimum=1)
    truth = rollout(flow, x0, n_times - 1)
    ny, nx = flow.model.state_shape[1:]
    pattern = EveryKPattern(every, components=tuple(range(ny * nx)))
    mask = pattern(None, n_times, flow.model.state_shape)
    return truth, observe(key, truth, mask, noise_std=noise_std)
