"""Shared test utilities: tolerant tree comparison and float64 finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxda.models import AbstractDynamics


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Whether two pytrees have the same structure and close leaves."""
    return eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol) is True


def finite_difference_grad(f, x, eps=1e-6):
    """Central finite-difference gradient of scalar `f` at float64 array `x`.

    `f` is compiled once (`eqx.filter_jit`): its 2 `x.size` evaluations would
    otherwise dispatch (and compile) every operation one by one."""
    f = eqx.filter_jit(f)
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        fp = float(f(jnp.asarray((flat + e).reshape(x.shape))))
        fm = float(f(jnp.asarray((flat - e).reshape(x.shape))))
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def finite_difference_jvp(f, x, v, eps=1e-6):
    """Central finite-difference directional derivative of `f` at `x` along `v`."""
    f = eqx.filter_jit(f)
    return jax.tree_util.tree_map(
        lambda a, b: (a - b) / (2 * eps), f(x + eps * v), f(x - eps * v)
    )


class LinearDynamics(AbstractDynamics):
    """dx/dt = F x; with an Euler flow map, Phi(x) = (I + dt F) x."""

    F: jax.Array

    def vector_field(self, t, x):
        return self.F @ x

    @property
    def state_shape(self):
        return (self.F.shape[0],)


def var_solvers():
    """One instance of every `jaxda.var` solver, for tests parametrised over all of
    them (as optimistix's tests do): `[(id, solver), ...]`. Tuned for small,
    well-conditioned problems (the first-order solvers' step sizes)."""
    import optax

    from jaxda import var

    return [
        ("GaussNewton", var.GaussNewton()),
        ("LevenbergMarquardt", var.LevenbergMarquardt()),
        ("Incremental4DVar", var.Incremental4DVar()),
        ("DenseGaussNewton", var.DenseGaussNewton()),
        ("DenseLevenbergMarquardt", var.DenseLevenbergMarquardt()),
        ("GaussNewtonCG", var.GaussNewtonCG(cg_rtol=1e-12)),
        ("LBFGS", var.LBFGS()),
        ("GradientDescent", var.GradientDescent(0.02)),
        ("OptaxSolver", var.OptaxSolver(optax.sgd(0.02, momentum=0.5))),
        ("JaxoptGaussNewton", var.JaxoptGaussNewton()),
        ("JaxoptLevenbergMarquardt", var.JaxoptLevenbergMarquardt()),
        ("QuasiStatic", var.QuasiStatic(var.GaussNewton(), 2, steps_per_stage=5)),
        (
            "ModelErrorContinuation",
            var.ModelErrorContinuation(var.GaussNewton(), (10.0,), steps_per_stage=5),
        ),
    ]


def kalman_smoother(M, Q, xb, B, y, mask, R):
    """Numpy Kalman filter + RTS smoother mean for x_{t+1} = M x_t + w, y = x + v."""
    T, n = y.shape
    mf, Pf, mp, Pp = [], [], [], []
    m, P = xb, B
    for t in range(T):
        if t > 0:
            m, P = M @ m, M @ P @ M.T + Q
        mp.append(m)
        Pp.append(P)
        H = np.eye(n)[mask[t]]
        if H.shape[0]:
            S = H @ P @ H.T + np.diag(R[mask[t]])
            K = P @ H.T @ np.linalg.inv(S)
            m = m + K @ (y[t][mask[t]] - H @ m)
            P = P - K @ H @ P
        mf.append(m)
        Pf.append(P)
    ms = [mf[-1]]
    for t in range(T - 2, -1, -1):
        G = Pf[t] @ M.T @ np.linalg.inv(Pp[t + 1])
        ms.insert(0, mf[t] + G @ (ms[0] - mp[t + 1]))
    return np.stack(ms)
