r"""The Gauss-Markov prior of a trajectory under linear dynamics ([B24], section 4.1).

A linear model with Gaussian noise,

$$x_0 \sim \mathcal N(m_0, P_0), \qquad x_{t+1} = M x_t + w_t, \quad
w_t \sim \mathcal N(0, Q),$$

gives the trajectory $x = (x_0, \dots, x_{T-1})$ a Gaussian law $\mathcal N(\mu, P)$
with $\mu_t = M^t m_0$. Its precision is block tridiagonal (the weak-constraint 4DVar
cost of a linear model, [FLN]):

$$P^{-1} = \begin{pmatrix} P_0^{-1} + M^\top Q^{-1} M & -M^\top Q^{-1} & \\
-Q^{-1} M & Q^{-1} + M^\top Q^{-1} M & \ddots \\ & \ddots & Q^{-1}\end{pmatrix},$$

so the MAP of a window under this prior (the first guess of [B24]'s pendulum
experiment, $z_0 = x_{MAP}(y; \mu_0, P_0)$) is one block-tridiagonal solve,
$O(T n^3)$: a Kalman smoother.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from .._validation import check_int, check_positive, is_concrete
from ..gaussian import map_precision
from ..linalg import BlockTridiagonal
from ..models import AbstractDynamics
from ..obs import Observations


def _check_spd(name: str, a) -> None:
    if is_concrete(a):
        a = np.asarray(a)
        if not np.allclose(a, a.T) or np.any(np.linalg.eigvalsh(a) <= 0):
            raise ValueError(f"`{name}` must be symmetric positive definite.")


class GaussMarkovPrior(eqx.Module):
    r"""The Gaussian law of a trajectory of $x_{t+1} = M x_t + w_t$ (module docstring).

    **Arguments:**

    - `transition`: $M$, `(n, n)`.
    - `initial_mean`: $m_0$, `(n,)`.
    - `initial_cov`: $P_0$, `(n, n)`, symmetric positive definite.
    - `process_cov`: $Q$, `(n, n)`, symmetric positive definite.

    `GaussMarkovPrior.linearised(model, dt, ...)` builds $M = \exp(\Delta t\, J)$ from
    the Jacobian $J$ of a model's vector field at a rest state.
    """

    transition: Float[Array, "n n"]
    initial_mean: Float[Array, " n"]
    initial_cov: Float[Array, "n n"]
    process_cov: Float[Array, "n n"]

    def __init__(
        self,
        transition: Float[ArrayLike, "n n"],
        initial_mean: Float[ArrayLike, " n"],
        initial_cov: Float[ArrayLike, "n n"],
        process_cov: Float[ArrayLike, "n n"],
    ):
        m0 = jnp.asarray(initial_mean)
        if m0.ndim != 1 or not jnp.issubdtype(m0.dtype, jnp.floating):
            raise ValueError(
                "`initial_mean` must be a floating vector (n,); got shape "
                f"{m0.shape}, dtype {m0.dtype}."
            )
        n = m0.shape[0]
        arrays = {}
        for name, a in (
            ("transition", transition),
            ("initial_cov", initial_cov),
            ("process_cov", process_cov),
        ):
            a = jnp.asarray(a, m0.dtype)
            if a.shape != (n, n):
                raise ValueError(
                    f"`{name}` must have shape ({n}, {n}) to match `initial_mean`; "
                    f"got {a.shape}."
                )
            arrays[name] = a
        _check_spd("initial_cov", arrays["initial_cov"])
        _check_spd("process_cov", arrays["process_cov"])
        self.transition = arrays["transition"]
        self.initial_mean = m0
        self.initial_cov = arrays["initial_cov"]
        self.process_cov = arrays["process_cov"]

    @classmethod
    def linearised(
        cls,
        model: AbstractDynamics,
        dt: float,
        initial_mean: Float[ArrayLike, " n"],
        initial_cov: Float[ArrayLike, "n n"],
        process_cov: Float[ArrayLike, "n n"],
        rest_state: Float[ArrayLike, " n"] | None = None,
    ) -> "GaussMarkovPrior":
        r"""The prior of the model linearised at `rest_state` (default: the model's
        `reference_state`): $M = \exp(\Delta t\, J)$, $J = \partial f / \partial
        x$ there (the exact flow of the linear ODE $\dot x = J x$ over one step; the
        rest state must be a fixed point, $f = 0$, for the linear law to be centred
        on it).

        For the damped pendulum $\dot\theta = p$, $\dot p = -\omega_0^2 \sin\theta -
        \gamma p$ at rest, $J = \begin{pmatrix} 0 & 1 \\ -\omega_0^2 & -\gamma
        \end{pmatrix}$: the damped harmonic oscillator of [B24].
        """
        if not isinstance(model, AbstractDynamics):
            raise TypeError(
                f"`model` must be a jaxda dynamics; got {type(model).__name__}."
            )
        check_positive("dt", dt)
        m0 = jnp.asarray(initial_mean)
        x = model.reference_state if rest_state is None else rest_state
        x = jnp.asarray(x, m0.dtype)
        if x.shape != m0.shape or len(model.state_shape) != 1:
            raise ValueError(
                f"`rest_state` must be a state of shape {m0.shape} of a model with "
                f"vector states; got {x.shape} for state shape {model.state_shape}."
            )
        jac = jax.jacfwd(lambda s: model.vector_field(0.0, s))(x)
        return cls(jsl.expm(dt * jac), m0, initial_cov, process_cov)

    @property
    def state_size(self) -> int:
        """$n$, the size of one state."""
        return self.initial_mean.shape[0]

    def mean(self, n_times: int) -> Float[Array, "T n"]:
        r"""$\mu_t = M^t m_0$, $t = 0, \dots, T - 1$."""
        n_times = check_int("n_times", n_times, minimum=1)

        def step(x, _):
            return self.transition @ x, x

        return jax.lax.scan(step, self.initial_mean, None, length=n_times)[1]

    def precision(self, n_times: int) -> BlockTridiagonal:
        r"""$P^{-1}$ of a window of `n_times` states, block tridiagonal (module
        docstring)."""
        n_times = check_int("n_times", n_times, minimum=1)
        M = self.transition
        eye = jnp.eye(self.state_size, dtype=M.dtype)
        q_inv = jsl.cho_solve(jsl.cho_factor(self.process_cov, lower=True), eye)
        p0_inv = jsl.cho_solve(jsl.cho_factor(self.initial_cov, lower=True), eye)
        coupling = M.T @ q_inv @ M
        middle = jnp.broadcast_to(q_inv + coupling, (n_times,) + M.shape)
        diagonal = middle.at[-1].set(q_inv)
        first = p0_inv + (coupling if n_times > 1 else 0.0)
        diagonal = diagonal.at[0].set(first)
        diagonal = 0.5 * (diagonal + jnp.swapaxes(diagonal, 1, 2))
        lower = jnp.broadcast_to(-q_inv @ M, (n_times - 1,) + M.shape)
        return BlockTridiagonal(diagonal, lower)

    def covariance(self, n_times: int) -> Float[Array, "Tn Tn"]:
        r"""The dense covariance $P$ of `n_times` states (time-major): $P_{s,t} =
        M^{s-t} \Sigma_t$ for $s \ge t$, with $\Sigma_0 = P_0$, $\Sigma_{t+1} = M
        \Sigma_t M^\top + Q$. $O(T^2 n^2)$ memory: for references and small windows."""
        n_times = check_int("n_times", n_times, minimum=1)
        M, n = self.transition, self.state_size
        sigmas, powers = [self.initial_cov], [jnp.eye(n, dtype=M.dtype)]
        for _ in range(n_times - 1):
            sigmas.append(M @ sigmas[-1] @ M.T + self.process_cov)
            powers.append(M @ powers[-1])
        rows = []
        for s in range(n_times):
            row = []
            for t in range(n_times):
                if s >= t:
                    row.append(powers[s - t] @ sigmas[t])
                else:
                    row.append((powers[t - s] @ sigmas[s]).T)
            rows.append(jnp.concatenate(row, axis=1))
        return jnp.concatenate(rows, axis=0)

    def map(self, obs: Observations, noise_var, *, throw: bool = True):
        r"""The MAP of one window under this prior, $\mathcal N(0, r I)$ noise on the
        observed entries: `jaxda.gaussian.map_precision` with the block-tridiagonal
        precision (a `GaussianMAP`; `.mean` is the estimate `(T, n)`)."""
        Observations.check(obs, name="obs")
        if obs.values.ndim != 2 or obs.values.shape[1] != self.state_size:
            raise ValueError(
                f"`obs` must be one window of shape (T, {self.state_size}); got "
                f"{obs.values.shape}."
            )
        n_times = obs.values.shape[0]
        dtype = obs.values.dtype
        prior = jax.tree_util.tree_map(lambda a: a.astype(dtype), self)
        return map_precision(
            prior.mean(n_times),
            prior.precision(n_times),
            obs.values,
            obs.mask,
            jnp.asarray(noise_var, dtype),
            throw=throw,
        )
