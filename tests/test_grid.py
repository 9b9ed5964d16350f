"""Grids: the `Grid` metadata and the finite-difference operators on it.

The operators are checked entry by entry against dense NumPy stencil matrices built
independently (Kronecker products of 1-D difference matrices), their adjoint
identities on those float64 matrices, and the order of accuracy of the centred
operators on smooth fields.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import grid as G


# ------------------------------------------------------------------------------
# Grid
# ------------------------------------------------------------------------------


def test_grid_coordinates_square_and_integral():
    g = G.Grid(3, 4, dy=2.0, dx=0.5)
    assert g.shape == (3, 4) and g.size == 12 and g.spacing == (2.0, 0.5)
    assert g.extent == (6.0, 2.0) and g.periodic
    np.testing.assert_allclose(g.x, [0.25, 0.75, 1.25, 1.75])
    np.testing.assert_allclose(g.y, [1.0, 3.0, 5.0])
    Y, X = g.meshgrid()
    assert Y.shape == X.shape == (3, 4)
    np.testing.assert_allclose(X[2], g.x)
    np.testing.assert_allclose(Y[:, 1], g.y)
    # the integral of 1 is the area; of x, the area times the mean of x
    assert float(g.integral(jnp.ones((3, 4)))) == pytest.approx(12.0)
    assert float(g.integral(X)) == pytest.approx(12.0 * 1.0)
    np.testing.assert_allclose(g.integral(jnp.ones((5, 3, 4))), np.full(5, 12.0))
    s = G.Grid.square(8, 1000.0, boundary="closed", units="km")
    assert (s.ny, s.nx, s.dx, s.dy, s.boundary, s.units) == (
        8, 8, 125.0, 125.0, "closed", "km",
    )  # fmt: skip
    assert not s.periodic and s.extent == (1000.0, 1000.0)
    o = G.Grid(2, 2, x0=-1.0, y0=10.0)
    np.testing.assert_allclose(o.x, [-1.0, 0.0])
    np.testing.assert_allclose(o.y, [10.0, 11.0])
    # faces x_(i+1/2): midway between centres, the last one the east wall
    np.testing.assert_allclose(g.x_faces, [0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(g.y_faces, [2.0, 4.0, 6.0])
    np.testing.assert_allclose(o.x_faces, [-0.5, 0.5])
    assert float(s.x_faces[-1]) == s.extent[1] and float(s.y_faces[-1]) == 1000.0
    # hashable metadata: usable as a static argument
    assert hash(G.Grid(4, 4)) == hash(G.Grid(4, 4))


def test_grid_validation():
    with pytest.raises(ValueError, match="`ny` must be >= 2; got 1"):
        G.Grid(1, 4)
    with pytest.raises(TypeError, match="`nx` must be an int"):
        G.Grid(4, 4.0)
    with pytest.raises(ValueError, match="`dx` must be finite and > 0; got -1.0"):
        G.Grid(4, 4, dx=-1.0)
    with pytest.raises(TypeError, match="`dy` must be a real number"):
        G.Grid(4, 4, dy="1")
    with pytest.raises(ValueError, match="`boundary` must be one of 'periodic'"):
        G.Grid(4, 4, boundary="walls")
    with pytest.raises(ValueError, match="`x0` must be finite"):
        G.Grid(4, 4, x0=float("nan"))
    with pytest.raises(TypeError, match="`units` must be a string"):
        G.Grid(4, 4, units=3)
    with pytest.raises(ValueError, match="`length` must be finite and > 0"):
        G.Grid.square(4, 0.0)
    g = G.Grid(3, 4)
    with pytest.raises(ValueError, match=r"`q` must have shape \(\*, 3, 4\)"):
        g.check_field("q", jnp.zeros((3, 4)), leading=1)
    with pytest.raises(ValueError, match="`q` must be finite"):
        g.check_field("q", jnp.full((3, 4), jnp.nan))
    g.check_field("q", jnp.zeros((2, 3, 4)), leading=1)
    # leading=None: any number of leading axes
    for shape in ((3, 4), (2, 3, 4), (5, 2, 3, 4)):
        g.check_field("q", np.zeros(shape), leading=None)
    with pytest.raises(ValueError, match=r"`q` must have shape \(\.\.\., 3, 4\)"):
        g.check_field("q", np.zeros((2, 4, 3)), leading=None)
    with pytest.raises(ValueError, match=r"`q` must have shape \(\.\.\., 3, 4\)"):
        g.check_field("q", np.zeros(4), leading=None)
    with pytest.raises(ValueError, match="`q` must be finite"):
        g.check_field("q", np.full((2, 3, 4), np.inf), leading=None)
    with pytest.raises(ValueError, match="`leading` must be >= 0"):
        g.check_field("q", np.zeros((3, 4)), leading=-1)


# ------------------------------------------------------------------------------
# Dense references
# ------------------------------------------------------------------------------

NY, NX = 5, 4  # small and different, so that x and y cannot be confused
DY, DX = 0.7, 1.3


def _grid(boundary):
    return G.Grid(NY, NX, dy=DY, dx=DX, boundary=boundary)


def _forward_1d(n, h, periodic):
    """(f[i+1] - f[i]) / h; closed: row n-1 (the wall face) is zero."""
    D = -np.eye(n) + np.eye(n, k=1)
    if periodic:
        D[n - 1, 0] = 1.0
    else:
        D[n - 1] = 0.0
    return D / h


def _average_1d(n, periodic):
    """(f[i] + f[i+1]) / 2; closed: row n-1 (the wall face) is zero."""
    A = np.eye(n) + np.eye(n, k=1)
    if periodic:
        A[n - 1, 0] = 1.0
    else:
        A[n - 1] = 0.0
    return A / 2


def _along(axis, M):
    """The 1-D matrix `M` acting along `axis` of a row-major (NY, NX) field."""
    return np.kron(np.eye(NY), M) if axis == "x" else np.kron(M, np.eye(NX))


def _matrix(op, n_in, shape_in):
    """The dense matrix of a linear map from its action on the unit vectors."""
    basis = jnp.eye(n_in, dtype=jnp.float64).reshape(n_in, *shape_in)
    return np.asarray(jax.vmap(op)(basis)).reshape(n_in, -1).T


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_operators_equal_their_stencil_matrices(boundary):
    g = _grid(boundary)
    periodic = boundary == "periodic"
    n = NY * NX
    ref_fwd = {
        "x": _along("x", _forward_1d(NX, DX, periodic)),
        "y": _along("y", _forward_1d(NY, DY, periodic)),
    }
    ref_avg = {
        "x": _along("x", _average_1d(NX, periodic)),
        "y": _along("y", _average_1d(NY, periodic)),
    }
    for axis in ("x", "y"):
        F = _matrix(lambda f: G.diff_forward(f, g, axis), n, g.shape)
        B = _matrix(lambda f: G.diff_backward(f, g, axis), n, g.shape)
        C2F = _matrix(lambda f: G.centres_to_faces(f, g, axis), n, g.shape)
        F2C = _matrix(lambda f: G.faces_to_centres(f, g, axis), n, g.shape)
        np.testing.assert_allclose(F, ref_fwd[axis], atol=1e-14)
        np.testing.assert_allclose(C2F, ref_avg[axis], atol=1e-14)
        # the adjoint identities, exact in float64
        np.testing.assert_allclose(B, -F.T, atol=1e-12)
        np.testing.assert_allclose(F2C, C2F.T, atol=1e-12)
        # a flux divergence sums to zero (mass conservation)
        np.testing.assert_allclose(B.sum(axis=0), 0.0, atol=1e-12)
    grad = _matrix(lambda f: G.gradient(f, g), n, g.shape)
    div = _matrix(lambda w: G.divergence(w, g), 2 * n, (2, *g.shape))
    np.testing.assert_allclose(grad, np.vstack([ref_fwd["x"], ref_fwd["y"]]))
    np.testing.assert_allclose(div, -grad.T, atol=1e-12)

    L = _matrix(lambda f: G.laplacian(f, g), n, g.shape)
    DtD = ref_fwd["x"].T @ ref_fwd["x"] + ref_fwd["y"].T @ ref_fwd["y"]
    np.testing.assert_allclose(L, -DtD, atol=1e-12)
    np.testing.assert_allclose(L, L.T, atol=1e-12)
    eig = np.linalg.eigvalsh(L)
    assert eig.max() < 1e-12 and abs(eig[-1]) < 1e-12 and eig[-2] < -1e-3
    np.testing.assert_allclose(L @ np.ones(n), 0.0, atol=1e-12)  # constants: null

    kappa = np.random.default_rng(0).uniform(0.5, 2.0, (2, *g.shape))
    W = _matrix(lambda f: G.weighted_laplacian(f, g, jnp.asarray(kappa)), n, g.shape)
    K = [np.diag(k.reshape(-1)) for k in kappa]
    ref = -(ref_fwd["x"].T @ K[0] @ ref_fwd["x"] + ref_fwd["y"].T @ K[1] @ ref_fwd["y"])
    np.testing.assert_allclose(W, ref, atol=1e-12)
    assert np.linalg.eigvalsh(W).max() < 1e-12
    W1 = _matrix(lambda f: G.weighted_laplacian(f, g, 1.0), n, g.shape)
    np.testing.assert_allclose(W1, L, atol=1e-12)


def test_centred_difference_stencils():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(NY, NX))
    periodic, closed = _grid("periodic"), _grid("closed")
    for axis, ax, h in (("x", 1, DX), ("y", 0, DY)):
        got = G.diff_centred(jnp.asarray(f), periodic, axis)
        ref = (np.roll(f, -1, ax) - np.roll(f, 1, ax)) / (2 * h)
        np.testing.assert_allclose(got, ref, atol=1e-13)
        # closed: one-sided second-order stencils at the walls, as np.gradient's
        got = G.diff_centred(jnp.asarray(f), closed, axis)
        np.testing.assert_allclose(got, np.gradient(f, h, axis=ax, edge_order=2))
    C = _matrix(lambda f: G.diff_centred(f, periodic, "x"), NY * NX, (NY, NX))
    np.testing.assert_allclose(C, -C.T, atol=1e-12)  # antisymmetric when periodic
    w = jnp.asarray(rng.normal(size=(2, NY, NX)))
    np.testing.assert_allclose(
        G.divergence(w, closed, "centred"),
        np.gradient(w[0], DX, axis=1, edge_order=2)
        + np.gradient(w[1], DY, axis=0, edge_order=2),
    )


def test_operators_batch_over_leading_axes():
    g = _grid("closed")
    f = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, NY, NX)))
    for op in (G.laplacian, G.gradient, lambda f, g: G.diff_backward(f, g, "y")):
        batched = op(f, g)
        single = jnp.stack([jnp.stack([op(b, g) for b in a]) for a in f])
        np.testing.assert_allclose(batched, single, atol=1e-14)
    assert G.gradient(f, g).shape == (3, 2, 2, NY, NX)
    assert G.divergence(G.gradient(f, g), g).shape == (3, 2, NY, NX)


# ------------------------------------------------------------------------------
# Order of accuracy
# ------------------------------------------------------------------------------


def _rate(errors):
    """The convergence order from errors at n, 2n, 4n: log2 of successive ratios."""
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


@functools.partial(jax.jit, static_argnums=0)
def _operator_errors(n, L=2.0):
    """Max errors of the centred gradient, Laplacians and forward difference on an
    n x n grid against exact derivatives (one compiled program per size)."""
    gp = G.Grid.square(n, L)
    gc = G.Grid.square(n, L, boundary="closed")
    Y, X = gp.meshgrid()
    k = 2 * np.pi / L
    f = jnp.sin(k * X) * jnp.cos(2 * k * Y)
    fx = k * jnp.cos(k * X) * jnp.cos(2 * k * Y)
    fy = -2 * k * jnp.sin(k * X) * jnp.sin(2 * k * Y)
    grad = G.gradient(f, gp, "centred")
    periodic = jnp.maximum(jnp.abs(grad[0] - fx).max(), jnp.abs(grad[1] - fy).max())
    lap_p = jnp.abs(G.laplacian(f, gp) + 5 * k**2 * f).max()
    # the forward difference is second order at the faces it lives on
    fx_face = k * jnp.cos(k * (X + gp.dx / 2)) * jnp.cos(2 * k * Y)
    fwd = jnp.abs(G.diff_forward(f, gp, "x") - fx_face).max()
    # closed: a field that is not periodic nor zero-gradient at the walls
    g_ = jnp.exp(0.3 * X) * jnp.sin(1.1 * Y + 0.4)
    gx = 0.3 * g_
    closed = jnp.abs(G.diff_centred(g_, gc, "x") - gx).max()
    # closed Laplacian on a zero-normal-gradient (Neumann) field
    c = jnp.cos(np.pi * X / L) * jnp.cos(2 * np.pi * Y / L)
    lap_c = jnp.abs(G.laplacian(c, gc) + 5 * (np.pi / L) ** 2 * c).max()
    return jnp.stack([periodic, closed, lap_p, lap_c, fwd])


def test_centred_operators_converge_at_second_order():
    all_errors = np.stack([_operator_errors(n) for n in (32, 64, 128)])
    for errors in all_errors.T:
        rate = _rate(errors)
        assert np.all(rate > 1.9) and np.all(rate < 2.2), (errors, rate)


# ------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------


def test_operator_validation():
    g = _grid("periodic")
    f = jnp.zeros((NY, NX))
    with pytest.raises(TypeError, match="`grid` must be a jaxda.grid.Grid"):
        G.laplacian(f, (NY, NX))
    with pytest.raises(ValueError, match=r"`f` must have shape \(\.\.\., 5, 4\)"):
        G.diff_forward(jnp.zeros((NX, NY)), g)
    with pytest.raises(ValueError, match="`axis` must be one of 'x', 'y'; got 'z'"):
        G.diff_forward(f, g, "z")
    with pytest.raises(ValueError, match="`scheme` must be one of 'forward'"):
        G.gradient(f, g, "backward")
    with pytest.raises(ValueError, match=r"`w` must have shape \(\.\.\., 2, 5, 4\)"):
        G.divergence(f, g)
    with pytest.raises(ValueError, match=r"`kappa` must have shape \(\.\.\., 2,"):
        G.weighted_laplacian(f, g, jnp.ones((NY, NX)))
    with pytest.raises(ValueError, match="needs at least 3 cells"):
        G.diff_centred(jnp.zeros((2, 4)), G.Grid(2, 4, boundary="closed"), "y")
