r"""`SPDEPrior`: the Gaussian law of a window of states driven by the
advection-diffusion SPDE, as a sparse precision that is never a matrix.

**The process** (implicit Euler, time step $\Delta t$): with $\mathcal A_k$ the
spatial operator of $\Theta_k$ (`jaxda.spde.SPDEParameters`) and $B_k = I + \Delta
t\,\mathcal A_k$ ($\alpha = 2$; $I + \Delta t\,\mathcal A_k^2$ and $K_0^2$ below
for `alpha=4`),

$$K_0 x_0 = \tau_0 z_0, \qquad B_k x_k = x_{k-1} + \tau_k\sqrt{\Delta t}\, z_k
\quad (k = 1, \dots, T-1),$$

$z_k \sim \mathcal N(0, I)$ independent, $K_0 = \kappa_0^2 - \nabla\cdot(\mathbf
H_0\nabla)$ (the $\alpha = 2$ Matérn field of [LRL11] for the initial state). So
$x_k = M_k x_{k-1} + T_k z_k$ with $M_k = B_k^{-1}$ and $T_k = \tau_k\sqrt{\Delta t}\,
M_k$, the discretisation of [BF24].

**Whitening.** $G$ maps a window to its innovations, $(Gx)_0 = K_0 x_0 / \tau_0$,
$(Gx)_k = (B_k x_k - x_{k-1}) / (\tau_k \sqrt{\Delta t})$: block lower-bidiagonal,
9-point blocks. The precision is $Q = G^\top G$, whose blocks are those of [BF24],

$$Q_{00} = P_0^{-1} + M_1^\top S_1^{-1} M_1,\quad Q_{kk} = S_k^{-1} + M_{k+1}^\top
S_{k+1}^{-1} M_{k+1},\quad Q_{k,k+1} = -M_{k+1}^\top S_{k+1}^{-1},$$

$S_k = T_k T_k^\top$, $S_k^{-1} = B_k^\top B_k / (\tau_k^2 \Delta t)$,
$P_0^{-1} = K_0^\top K_0 / \tau_0^2$, $M_{k+1}^\top S_{k+1}^{-1} M_{k+1} = I /
(\tau_{k+1}^2\Delta t)$ (for fields $\tau$, diagonal scalings in place of the
divisions). $Qv = G^\top (G v)$ costs two stencil passes.

**Log-determinant** (a Markov chain): $\log|Q| = 2\log|\det G| = \log|P_0^{-1}| +
\sum_k \log|S_k^{-1}|$, each block's $\log|\det X| = \tfrac12\log\det X^\top X$:

- `"banded"` (closed grids): a banded Cholesky of $X^\top X$ (half-bandwidth
  $2(n_x + 1)$, `jaxda.linalg.SymmetricBandMatrix`, $O(n_y n_x^3)$ per block, up to
  about 128 x 128), differentiable by its implicit rule;
- `"fft"` (periodic grid, fields constant in space): $\sum \log|\hat c|$ of the
  convolution's eigenvalues, exact;
- `"dense"`: `slogdet` of the densified blocks (tests, small grids).

**Sampling** runs the recursion: `"fft"` solves (periodic, constant fields), banded
LU factorisations without pivoting (closed grids, factorised once for all members:
$K_0$ once for $X_0 = K_0^{\alpha/2}$, solved $\alpha/2$ times, and $B_k$ itself,
half-bandwidth $\tfrac\alpha2(n_x + 1)$; `jaxda.linalg._band_kernels.band_lu`), or
matrix-free restarted GMRES (`lineax`), any grid. The LU solves work at the
condition of $K_0$ and $B_k$, where the normal equations $(X^\top X)^{-1} X^\top r$
would square that of $X_0 = K_0^{\alpha/2}$, to $\mathrm{cond}(K_0)^\alpha$: about
$10^9$ for a long-range $\alpha = 4$ prior ($\kappa = 0.1$ per day on 16 x 16 cells
of 62.5 km: $\mathrm{cond}(K_0) = 177$), beyond float32. No row exchanges are needed:
$K_0$ is an M-matrix up to its small cross-diffusion terms and $B_k = I + \Delta
t\,\mathcal A_k^{\alpha/2}$ is close to diagonally dominant while the cell Péclet
number $|\mathbf m| h / H$ stays below about 2; a zero or non-finite pivot is
reported (`RESULTS.singular`), never hidden.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax

from .._custom_types import Array, ArrayLike, Float, Key
from .._results import RESULTS, all_finite, first_failure, raise_if_failed
from .._validation import check_choice, check_int, check_key, check_positive
from ..grid._grid import Grid
from ..linalg import SymmetricBandMatrix, _band_kernels as K
from ._operator import apply_stencil, band_gram, fft_solve, operator_band, symbol
from ._parameters import SPDEParameters
from ._whitening import Whitening


SOLVERS = ("auto", "fft", "banded", "iterative")
LOGDETS = ("auto", "fft", "banded", "dense")


class SPDEPrior(eqx.Module):
    r"""The Gaussian prior $x \sim \mathcal N(\mu, Q^{-1})$ of a window of $T$ states
    on a grid, $Q = G^\top G$ from the SPDE (see the module docstring).

    **Arguments:**

    - `params`: `jaxda.spde.SPDEParameters` (its `n_times` is $T$).
    - `grid`: the `jaxda.grid.Grid` of the parameters.
    - `dt` $> 0$: the time step between states.
    - `mean`: $\mu$, a scalar or `(T, ny, nx)` (default 0).
    - `solver`: how $K_0^{-1}$, $B_k^{-1}$ are applied when sampling: `"auto"`
      (`"fft"` on a periodic grid with constant fields, else `"iterative"`),
      `"fft"`, `"banded"` (closed grids: banded LU of $K_0$ and $B_k$) or
      `"iterative"` (GMRES, restart 20).
    - `rtol`, `max_steps`: GMRES's relative tolerance (default `1e-5` in
      float32, `1e-10` in float64) and cap on its restarts.

    Every method is a pure function of the prior's arrays (`jit`, `vmap` and
    gradients with respect to the parameter fields apply).
    """

    params: SPDEParameters
    mean: Float[Array, "T ny nx"]
    grid: Grid = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    solver: str = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        params: SPDEParameters,
        grid: Grid,
        dt: float,
        *,
        mean: Float[ArrayLike, "T ny nx"] | float = 0.0,
        solver: str = "auto",
        rtol: float | None = None,
        max_steps: int = 500,
    ):
        if not isinstance(params, SPDEParameters):
            raise TypeError(
                f"`params` must be a jaxda.spde.SPDEParameters; got "
                f"{type(params).__name__}."
            )
        if not isinstance(grid, Grid):
            raise TypeError(f"`grid` must be a jaxda.grid.Grid; got {type(grid)}.")
        if params.grid_shape != grid.shape:
            raise ValueError(
                f"`params` are fields on a {params.grid_shape} grid but `grid` is "
                f"{grid.shape}."
            )
        check_positive("dt", dt)
        check_choice("solver", solver, SOLVERS)
        if rtol is not None:
            check_positive("rtol", rtol)
        self.max_steps = check_int("max_steps", max_steps, minimum=1)
        if solver == "fft" and not (grid.periodic and params.spatially_constant):
            raise ValueError(
                "`solver='fft'` needs a periodic grid and fields constant in space; "
                f"got boundary {grid.boundary!r} and "
                f"{'constant' if params.spatially_constant else 'varying'} fields."
            )
        if solver == "banded" and grid.periodic:
            raise ValueError("`solver='banded'` needs a closed grid; got periodic.")
        shape = (params.n_times, *grid.shape)
        mean = jnp.asarray(mean, params.dtype)
        if mean.ndim and mean.shape != shape:
            raise ValueError(
                f"`mean` must be a scalar or have shape {shape}; got {mean.shape}."
            )
        self.params = params
        self.mean = jnp.broadcast_to(mean, shape)
        self.grid = grid
        self.dt = float(dt)
        self.solver = solver
        self.rtol = None if rtol is None else float(rtol)

    # ----------------------------------------------------------------- shapes
    @property
    def n_times(self) -> int:
        return self.params.n_times

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(T, ny, nx)`: the shape of one window."""
        return (self.n_times, *self.grid.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self):
        return self.params.dtype

    @property
    def alpha(self) -> int:
        """The operator's power $\\alpha$ (`params.alpha`: 2 or 4)."""
        return self.params.alpha

    # ------------------------------------------------------- the blocks of G
    def whitening(self) -> Whitening:
        """$G$ with its stencils computed (build it once outside a loop of
        products)."""
        return Whitening.build(self.params, self.grid, self.dt, self.alpha)

    def innovations(self, v: Float[Array, "T ny nx"]) -> Float[Array, "T ny nx"]:
        r"""$G v$ (linear; no mean): $z$ that drives the anomaly $v$."""
        return self.whitening().apply(v)

    def whiten(self, x: Float[ArrayLike, "T ny nx"]) -> Float[Array, "T ny nx"]:
        r"""$G(x - \mu)$: standard normal innovations when $x$ is a prior sample."""
        x = self._check_window("x", x)
        return self.innovations(x - self.mean)

    def innovations_transpose(self, z: Float[Array, "T ny nx"]):
        """$G^\\top z$."""
        return self.whitening().transpose(z)

    def precision_matvec(
        self, v: Float[ArrayLike, "T ny nx"]
    ) -> Float[Array, "T ny nx"]:
        r"""$Q v = G^\top G v$ (two stencil passes, no matrix)."""
        v = self._check_window("v", v)
        return self.whitening().gram(v)

    def energy(self, x: Float[ArrayLike, "T ny nx"]) -> Float[Array, ""]:
        r"""$\tfrac12 (x - \mu)^\top Q (x - \mu) = \tfrac12\|G(x - \mu)\|^2$."""
        return 0.5 * jnp.sum(self.whiten(x) ** 2)

    def log_prob(self, x, *, logdet: str = "auto") -> Float[Array, ""]:
        r"""$\log p(x) = -\tfrac12\|G(x-\mu)\|^2 + \tfrac12\log|Q|
        - \tfrac d2\log 2\pi$."""
        d = self.size
        return (
            -self.energy(x)
            + 0.5 * self.logdet_precision(logdet)
            - 0.5 * d * jnp.log(2 * jnp.pi).astype(self.dtype)
        )

    def to_dense_precision(self) -> Float[Array, "d d"]:
        """The dense $Q$ over the C-order flattened window (tests, small grids)."""
        d = self.size
        eye = jnp.eye(d, dtype=self.dtype).reshape(d, *self.shape)
        g = jax.vmap(self.whitening().apply)(eye).reshape(d, d).T  # columns G e_i
        return g.T @ g

    def precision_diagonal(self) -> Float[Array, "T ny nx"]:
        r"""$\mathrm{diag}(Q)$ without the matrix (probing; the Jacobi
        preconditioner of `spde_map`)."""
        return self.whitening().gram_diagonal()

    # ---------------------------------------------------------- log-determinant
    def _logdet_method(self, method: str) -> str:
        check_choice("method", method, LOGDETS)
        if method == "auto":
            if self.grid.periodic and self.params.spatially_constant:
                return "fft"
            if not self.grid.periodic:
                return "banded"
            if self.grid.size <= 1024:
                return "dense"
            raise ValueError(
                "no exact log-determinant for a periodic grid with fields varying in "
                f"space beyond 32 x 32 cells (got {self.grid.shape}): use a closed "
                "grid (banded Cholesky) or constant fields (FFT)."
            )
        if method == "fft" and not (
            self.grid.periodic and self.params.spatially_constant
        ):
            raise ValueError(
                "`method='fft'` needs a periodic grid and fields constant in space."
            )
        if method == "banded" and self.grid.periodic:
            raise ValueError("`method='banded'` needs a closed grid; got periodic.")
        return method

    def _block_logabsdet(self, apply, method: str, radius: int | None = None):
        """$(\\log|\\det X|, \\text{ok})$ for one 9-point block."""
        dtype = self.dtype
        if method == "fft":
            hat = symbol(apply, self.grid, dtype)
            return jnp.sum(jnp.log(jnp.abs(hat))).astype(dtype), jnp.all(hat != 0)
        if method == "banded":
            radius = self.alpha // 2 if radius is None else radius
            band = band_gram(apply, self.grid, dtype, radius)
            chol = SymmetricBandMatrix(band).cholesky()
            return 0.5 * chol.logdet_with_rule(), chol.result == RESULTS.successful
        n = self.grid.size
        eye = jnp.eye(n, dtype=dtype).reshape(n, *self.grid.shape)
        x = jax.vmap(apply)(eye).reshape(n, n)
        sign, value = jnp.linalg.slogdet(x)
        return value, sign != 0

    def logdet_precision(
        self, method: str = "auto", *, throw: bool = True
    ) -> Float[Array, ""]:
        r"""$\log|Q| = \sum_k (2\log|\det X_k| - 2\sum \log s_k)$ ($X_0 = K_0$, $s_0 =
        \tau_0$; $X_k = B_k$, $s_k = \tau_k\sqrt{\Delta t}$), differentiable with
        respect to the parameter fields. `method`: `"auto"`, `"banded"`, `"fft"`,
        `"dense"` (module docstring). A singular block raises with `throw`
        (`RESULTS.not_positive_definite`), else gives a non-finite value.
        """
        method = self._logdet_method(method)
        g = self.whitening()
        # log|det K_0^p| = p log|det K_0|: the Gram of K_0 alone has cond(K_0)^2,
        # that of K_0^p cond(K_0)^(2p) (1e10 and more for a long-range alpha = 4
        # prior: a float32 Cholesky fails)
        k0 = lambda v: apply_stencil(g.initial, v, self.grid)  # noqa: E731
        total, ok = self._block_logabsdet(k0, method, radius=1)
        total = 2 * g.power * total
        if self.n_times > 1:

            def block(c):
                return self._block_logabsdet(g.step_block(c), method)

            values, oks = lax.map(block, g.steps)
            repeat = self.n_times - 1 if g.steps.shape[0] == 1 else 1
            total = total + 2 * repeat * jnp.sum(values)
            ok = ok & jnp.all(oks)
        total = total - 2 * jnp.sum(jnp.log(g.scales))
        result = first_failure(
            (~self.params.values_valid(), RESULTS.invalid_input),
            (~(ok & jnp.isfinite(total)), RESULTS.not_positive_definite),
        )
        return raise_if_failed(total, result, throw)

    # ------------------------------------------------------------------ sampling
    def _solve_method(self) -> str:
        if self.solver != "auto":
            return self.solver
        if self.grid.periodic and self.params.spatially_constant:
            return "fft"
        return "iterative"

    def _factors(self, g: Whitening, method: str):
        """What the solves need, computed once for all members: for the initial
        block and each step's (one for all steps when stationary)."""
        if method == "fft":
            hat = symbol(g.initial_block(), self.grid, self.dtype)
            steps = jax.vmap(lambda c: symbol(g.step_block(c), self.grid, self.dtype))(
                g.steps
            )
            return hat, steps
        if method == "banded":
            # LU of K_0 itself (X_0 = K_0^p is solved as p solves with it: cond(K_0)
            # rather than cond(K_0)^p) and of each B_k = I + dt A_k^p (half-bandwidth
            # p (nx + 1), cond(B_k) modest); without row exchanges (module
            # docstring), a zero pivot reported by `_solve`
            def factor(apply, radius):
                band = operator_band(apply, self.grid, self.dtype, radius)
                return K.band_lu(band)[0]

            def step(c):
                return factor(g.step_block(c), g.radius)

            steps = jax.vmap(step)(g.steps)
            k0 = factor(lambda p: apply_stencil(g.initial, p, self.grid), 1)
            return k0, steps
        return None

    def _solve(self, method, factor, apply, r, *, repeat: int = 1):
        """$X^{-1} r$ for one block (operator `apply`) and a batch `r` `(n, ny,
        nx)`: `(x, result)`. `"banded"`: `factor` is the LU of a matrix whose
        `repeat`-th power is $X$ (`repeat` solves; `RESULTS.singular` for a zero or
        non-finite pivot)."""
        if method == "fft":
            return fft_solve(factor, r), RESULTS.successful
        if method == "banded":
            x = r.reshape(r.shape[0], -1).T
            for _ in range(repeat):
                x = K.lu_solve(factor, x)
            pivots = factor[(factor.shape[0] - 1) // 2]
            ok = jnp.all(jnp.isfinite(factor)) & jnp.all(pivots != 0)
            result = RESULTS.where(ok, RESULTS.successful, RESULTS.singular)
            return x.T.reshape(r.shape), result
        # restarted GMRES: X is not symmetric; BiCGStab breaks down in float32 on
        # these operators and CG on the normal equations squares their condition
        rtol = self.rtol
        if rtol is None:
            rtol = 1e-5 if jnp.finfo(self.dtype).bits <= 32 else 1e-10
        struct = jax.ShapeDtypeStruct(self.grid.shape, self.dtype)
        operator = lx.FunctionLinearOperator(apply, struct)

        def one(ri):
            atol = rtol * jnp.max(jnp.abs(ri)) + jnp.finfo(self.dtype).tiny
            gmres = lx.GMRES(rtol=rtol, atol=atol, max_steps=self.max_steps, restart=20)
            sol = lx.linear_solve(operator, ri, gmres, throw=False)
            return sol.value, sol.result

        x, results = jax.vmap(one)(r)
        return x, _first_failure(RESULTS.promote(results))

    def color(self, z: Float[ArrayLike, "T ny nx"], *, throw: bool = True):
        r"""$G^{-1} z$ by the recursion: the anomaly driven by innovations `z` (a
        prior sample for standard normal `z`; add `mean` for the state)."""
        z = self._check_window("z", z)
        x, result = _color(self, z[None])
        return raise_if_failed(x[0], result, throw)

    def _prepared(self):
        method = self._solve_method()
        g = self.whitening()
        return method, g, self._factors(g, method)

    def _color(self, z, method, g: Whitening, factors):
        """$G^{-1} z$ for a batch `z` `(n, T, ny, nx)`, every member at once."""
        first_factor, step_factors = (None, None) if factors is None else factors
        scales = g.scales
        x0, res0 = self._solve(
            method,
            first_factor,
            g.initial_block(),
            scales[0] * z[:, 0],
            repeat=g.power if method == "banded" else 1,
        )
        if self.n_times == 1:
            return x0[:, None], res0
        stationary = g.steps.shape[0] == 1

        def body(carry, k):
            x_prev, result = carry
            i = 0 if stationary else k - 1
            f = None if step_factors is None else step_factors[i]
            r = x_prev + scales[k] * z[:, k]
            x, res = self._solve(method, f, g.step_block(g.steps[i]), r)
            result = RESULTS.where(result == RESULTS.successful, res, result)
            return (x, result), x

        steps = jnp.arange(1, self.n_times)
        (_, result), rest = lax.scan(body, (x0, res0), steps)
        return jnp.concatenate([x0[:, None], jnp.moveaxis(rest, 0, 1)], 1), result

    def sample(
        self, key: Key, n: int | None = None, *, throw: bool = True
    ) -> Float[Array, "*n T ny nx"]:
        r"""`n` independent samples $x = \mu + G^{-1} z$ (`(n, T, ny, nx)`; one
        window `(T, ny, nx)` when `n` is None), by the recursion. A solve that does
        not converge raises with `throw` (its `RESULTS` message); with
        `throw=False` its members are returned as they are."""
        check_key("key", key)
        if n is not None:
            n = check_int("n", n, minimum=1)
        z = jax.random.normal(key, (1 if n is None else n, *self.shape), self.dtype)
        x, result = _sample(self, z)
        if n is None:
            x = x[0]
        result = first_failure(
            (~self.params.values_valid(), RESULTS.invalid_input),
            (result != RESULTS.successful, result),
            (~all_finite(x), RESULTS.nonfinite),
        )
        return raise_if_failed(x, result, throw)

    # --------------------------------------------------------------- helpers
    def _check_window(self, name: str, x) -> Array:
        x = jnp.asarray(x)
        if x.shape != self.shape:
            raise ValueError(
                f"`{name}` must be a window of shape {self.shape} (T, ny, nx); got "
                f"{x.shape}."
            )
        return x.astype(jnp.result_type(x.dtype, self.dtype))


def _first_failure(results):
    """The first failed item of a batch of results, else success."""
    failed = results != RESULTS.successful
    first = jax.tree.map(lambda v: v[jnp.argmax(failed)], results)
    return RESULTS.where(jnp.any(failed), first, RESULTS.successful)


@eqx.filter_jit
def _color(prior: SPDEPrior, z):
    return prior._color(z, *prior._prepared())


@eqx.filter_jit
def _sample(prior: SPDEPrior, z):
    """Samples for innovations `z` `(n, T, ny, nx)`: the factors once, then the
    recursion for every member at once."""
    x, result = prior._color(z, *prior._prepared())
    return x + prior.mean, result
