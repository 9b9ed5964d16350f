"""Scaling of the structured SPD solvers (`jaxda.linalg`).

Problems: a band of bandwidth 6 (`band-b6`, d = 1e3 .. 1e6) and block-tridiagonal
matrices with blocks of size 3 (`blocktri-n3`) and 40 (`blocktri-n40`), T up to 1e4.
Methods: `solve` (factorise + solve), `solve+grad` (value and gradient of
`sum(x**2)`, `x = A^{-1} b`, with respect to the matrix entries and `b`, through the
implicit rules), the parallel block-tridiagonal solver (`parallel-solve`, with
`ratio_to_sequential`), and a dense `jnp.linalg.solve` (+ grad) while d <= 4000.

`map-b6-sparse`: the covariance-form Gaussian MAP (`jaxda.gaussian.map_covariance`)
with a banded covariance (bandwidth 6) of windows of T states of size 3, the first
component observed every 8 steps, vmapped over a batch of windows: `state-space` (the
d x d banded system, a sequential pass over d) against `observation-space` (`max_obs`:
the m x m observed block, `ratio_to_state_space`), each also with the gradient with
respect to the band (`+grad`). T = 32 is [B24]'s B24-L63 window (d = 96, m = 4).
Solves run with their default `throw=True` (the `equinox.error_if` check is inside
the timings); the MAPs include the prior's semi-definiteness check (one more
factorisation, batched with the solve in state space, an m x m one in observation
space). `time_s` is the median run time (compile excluded, `compile_s` apart),
`time_per_element_s = time_s / d`. `memory_bytes` counts the arrays of the problem,
the factor and the solution (the O(d b) / O(T n^2) working set); `peak_rss_mb` is the
process's peak resident memory so far (monotone over the run).
"""

import resource
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from _common import record, time_call

from jaxda import gaussian
from jaxda.linalg import BlockTridiagonal, SymmetricBandMatrix


_BAND_D = {"quick": [1_000, 100_000], "full": [1_000, 10_000, 100_000, 1_000_000]}
_BT = {
    "quick": [(3, 1_000), (40, 100)],
    "full": [(3, 1_000), (3, 10_000), (40, 100), (40, 1_000), (40, 10_000)],
}
_DENSE_MAX = 4000


def _nbytes(*trees) -> int:
    return int(sum(x.nbytes for t in trees for x in jax.tree_util.tree_leaves(t)))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_band(rng, d, b):
    band = rng.uniform(-1.0, 1.0, (b + 1, d))
    band[0] = 2.0 * b + 1.0  # diagonally dominant: SPD
    return jnp.asarray(band, dtype=jnp.result_type(float))


def _random_blocktri(rng, t, n):
    a = rng.normal(size=(t, n, n)) / np.sqrt(n)
    diag = a @ np.swapaxes(a, 1, 2) + 3.0 * np.eye(n)
    lower = rng.uniform(-1.0, 1.0, (t - 1, n, n)) / n
    dtype = jnp.result_type(float)
    return jnp.asarray(diag, dtype), jnp.asarray(lower, dtype)


def _loss_grad(solve_fn):
    def loss(*args):
        return jnp.sum(solve_fn(*args) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(3))))


def _rec(problem, method, d, size_field, compile_s, run_s, mem, **extra):
    return record(
        problem,
        method,
        d=d,
        **size_field,
        time_s=run_s,
        time_per_element_s=run_s / d,
        compile_s=compile_s,
        memory_bytes=mem,
        peak_rss_mb=_peak_rss_mb(),
        **extra,
    )


def _dense_records(problem, size_field, dense, rhs):
    d = dense.shape[0]
    solve = jax.jit(jnp.linalg.solve)
    c, r = time_call(solve, dense, rhs, repeats=3)
    yield _rec(problem, "dense-solve", d, size_field, c, r, _nbytes(dense, rhs) * 2)
    grad = jax.jit(
        jax.value_and_grad(lambda a, b: jnp.sum(jnp.linalg.solve(a, b) ** 2), (0, 1))
    )
    c, r = time_call(grad, dense, rhs, repeats=3)
    yield _rec(
        problem, "dense-solve+grad", d, size_field, c, r, _nbytes(dense, rhs) * 3
    )


def _band_records(suite) -> Iterator[dict]:
    rng = np.random.default_rng(0)
    b = 6
    for d in _BAND_D[suite]:
        band = _random_band(rng, d, b)
        rhs = jnp.asarray(rng.normal(size=d), band.dtype)
        size = {"bandwidth": b}
        solve = jax.jit(lambda band, rhs: SymmetricBandMatrix(band).solve(rhs))
        c, r = time_call(solve, band, rhs, repeats=3)
        factor = SymmetricBandMatrix(band).cholesky()
        mem = _nbytes(band, factor.factor, rhs) + rhs.nbytes
        yield _rec("band-b6", "solve", d, size, c, r, mem)
        grad = _loss_grad(lambda band, rhs, _: SymmetricBandMatrix(band).solve(rhs))
        c, r = time_call(grad, band, rhs, 0.0, repeats=3)
        yield _rec(
            "band-b6", "solve+grad", d, size, c, r, mem + band.nbytes + rhs.nbytes
        )
        if d <= _DENSE_MAX:
            dense = SymmetricBandMatrix(band).to_dense()
            yield from _dense_records("band-b6", size, dense, rhs)


def _blocktri_records(suite) -> Iterator[dict]:
    rng = np.random.default_rng(1)
    for n, t in _BT[suite]:
        problem = f"blocktri-n{n}"
        diag, lower = _random_blocktri(rng, t, n)
        rhs = jnp.asarray(rng.normal(size=(t, n)), diag.dtype)
        d = t * n
        size = {"block_size": n, "num_blocks": t}
        times = {}
        for method in ("sequential", "parallel"):
            solve = jax.jit(
                lambda dg, lw, r, m=method: BlockTridiagonal(dg, lw).solve(r, method=m)
            )
            c, r = time_call(solve, diag, lower, rhs, repeats=3)
            times[method] = r
            chol = BlockTridiagonal(diag, lower).cholesky(method)
            mem = _nbytes(chol, rhs) + rhs.nbytes
            extra = {}
            if method == "parallel":
                extra["ratio_to_sequential"] = r / times["sequential"]
            name = "solve" if method == "sequential" else "parallel-solve"
            yield _rec(problem, name, d, size, c, r, mem, **extra)
            grad = _loss_grad(
                lambda dg, lw, r, m=method: BlockTridiagonal(dg, lw).solve(r, method=m)
            )
            c, r = time_call(grad, diag, lower, rhs, repeats=3)
            times[method + "+grad"] = r
            extra = {}
            if method == "parallel":
                extra["ratio_to_sequential"] = r / times["sequential+grad"]
            yield _rec(problem, name + "+grad", d, size, c, r, 2 * mem, **extra)
        if d <= _DENSE_MAX:
            dense = BlockTridiagonal(diag, lower).to_dense()
            yield from _dense_records(problem, size, dense, rhs.reshape(-1))


_MAP = {"quick": [(32, 200), (1024, 8)], "full": [(32, 200), (1024, 8), (8192, 8)]}


def _map_records(suite) -> Iterator[dict]:
    rng = np.random.default_rng(2)
    b, n = 6, 3
    for t, batch in _MAP[suite]:
        d = t * n
        band = _random_band(rng, d, b)
        mask = np.zeros((batch, t, n), bool)
        for i, phase in enumerate(rng.integers(0, 8, batch)):
            mask[i, phase::8, 0] = True
        mu, y = (jnp.asarray(rng.normal(size=mask.shape), band.dtype) for _ in "ab")
        m = int(mask.sum(axis=(1, 2)).max())
        size = {"bandwidth": b, "n_times": t, "n_obs": m, "batch": batch}
        times = {}
        for form, max_obs in (("state-space", None), ("observation-space", m)):

            def one(band, mu, y, mask, max_obs=max_obs):
                prior = SymmetricBandMatrix(band)
                out = gaussian.map_covariance(mu, prior, y, mask, 0.01, max_obs=max_obs)
                return out.mean

            run = jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))
            grad = jax.jit(jax.grad(lambda band, *a: jnp.sum(run(band, *a) ** 2)))
            for name, fn in ((form, run), (form + "+grad", grad)):
                c, r = time_call(fn, band, mu, y, jnp.asarray(mask), repeats=5)
                times[name] = r
                extra = {}
                if max_obs is not None:
                    base = times[name.replace(form, "state-space")]
                    extra["ratio_to_state_space"] = r / base
                yield _rec(
                    "map-b6-sparse",
                    name,
                    d,
                    size,
                    c,
                    r,
                    _nbytes(band, mu, y, mask),
                    time_per_window_s=r / batch,
                    **extra,
                )


def records(suite: str) -> Iterator[dict]:
    yield from _band_records(suite)
    yield from _blocktri_records(suite)
    yield from _map_records(suite)
