"""Observations on grids: the bilinear interpolation operator (adjoint, exactness,
dense matrix, selection on nodes, bad input) and the grid patterns (random points,
satellite tracks and swaths, clouds)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from jaxda.grid import Grid
from jaxda.obs import (
    BilinearInterpolation,
    CloudPattern,
    GridPoints,
    RandomPointsPattern,
    Satellite,
    SatelliteTracks,
    SelectionOperator,
)


def _random_points(rng, grid, shape, inside_hull=False):
    """Uniform positions in the domain (or in the hull of the cell centres)."""
    if inside_hull:
        lo_y, hi_y = grid.y0, grid.y0 + (grid.ny - 1) * grid.dy
        lo_x, hi_x = grid.x0, grid.x0 + (grid.nx - 1) * grid.dx
    else:
        lo_y, hi_y = grid.y0 - grid.dy / 2, grid.y0 + (grid.ny - 0.5) * grid.dy
        lo_x, hi_x = grid.x0 - grid.dx / 2, grid.x0 + (grid.nx - 0.5) * grid.dx
    return rng.uniform(lo_y, hi_y, shape), rng.uniform(lo_x, hi_x, shape)


# ------------------------------------------------------------------------------
# BilinearInterpolation
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_bilinear_adjoint_matrix_and_gram(boundary):
    rng = np.random.default_rng(0)
    grid = Grid(5, 6, 0.7, 1.3, boundary, y0=-1.0, x0=2.0)
    T, M, shape = 3, 7, (2, 5, 6)
    y, x = _random_points(rng, grid, (T, M))
    valid = rng.uniform(size=(T, M)) < 0.7
    op = BilinearInterpolation(grid, GridPoints(y, x, valid), shape, channel=1)
    assert op.n_times == T and op.obs_shape == (M,) and op.state_shape == shape
    for t in range(T):
        dx = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.normal(size=M))
        lhs = float(jnp.vdot(op(dx, t), w))
        rhs = float(jnp.vdot(dx, op.transpose(w, t)))
        assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)
        h = np.asarray(op.matrix(t))
        assert h.shape == (M, math.prod(shape))
        np.testing.assert_allclose(h @ np.ravel(dx), op(dx, t), atol=1e-13)
        np.testing.assert_allclose(h.T @ np.asarray(w), np.ravel(op.transpose(w, t)))
        # Rows: four weights summing to one on valid slots, zero rows on padding;
        # only channel 1 is touched.
        np.testing.assert_allclose(h.sum(1), valid[t].astype(float), atol=1e-14)
        assert np.all(h[:, : 5 * 6] == 0)
        r = rng.uniform(0.5, 2.0, size=M)
        np.testing.assert_allclose(op.gram(r, t), h.T @ (r[:, None] * h), atol=1e-13)


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_bilinear_agrees_with_scipy_and_is_exact_on_bilinear_fields(boundary):
    rng = np.random.default_rng(1)
    grid = Grid(6, 8, 0.5, 0.25, boundary)
    y, x = _random_points(rng, grid, (40,), inside_hull=True)
    op = BilinearInterpolation(grid, GridPoints(y, x))
    field = rng.normal(size=grid.shape)
    ref = RegularGridInterpolator((np.asarray(grid.y), np.asarray(grid.x)), field)(
        np.stack([y, x], -1)
    )
    np.testing.assert_allclose(op(jnp.asarray(field)), ref, atol=1e-13)
    Y, X = (np.asarray(a) for a in grid.meshgrid())
    bilinear = 0.3 - 1.2 * X + 2.0 * Y + 0.7 * X * Y
    exact = 0.3 - 1.2 * x + 2.0 * y + 0.7 * x * y
    np.testing.assert_allclose(op(jnp.asarray(bilinear)), exact, atol=1e-12)


def test_bilinear_periodic_wrap_and_closed_border():
    grid_p = Grid(4, 5, 1.0, 1.0, "periodic")  # centres 0.5 ... 4.5
    field = np.arange(20.0).reshape(4, 5) ** 1.5
    # Between the last column (x = 4.5) and the first (x = 0.5 + 5): b = 0.3.
    p = GridPoints(jnp.array([1.5]), jnp.array([4.8]))
    want = 0.7 * field[1, 4] + 0.3 * field[1, 0]
    np.testing.assert_allclose(BilinearInterpolation(grid_p, p)(field), [want])
    # Coordinates one period away give the same value.
    p2 = GridPoints(jnp.array([1.5 - 4.0]), jnp.array([4.8 + 5.0]))
    np.testing.assert_allclose(BilinearInterpolation(grid_p, p2)(field), [want])
    # Closed: the half-cell band beyond the outermost centres extrapolates constant.
    grid_c = Grid(4, 5, 1.0, 1.0, "closed")
    p3 = GridPoints(jnp.array([1.5, 0.1]), jnp.array([4.9, 0.2]))
    out = BilinearInterpolation(grid_c, p3)(field)
    np.testing.assert_allclose(out, [field[1, 4], field[0, 0]])


def test_points_on_nodes_reduce_to_selection():
    grid = Grid(4, 6, 2.0, 0.5, "closed", y0=1.0, x0=-3.0)
    cells = np.array([[0, 5, 23, 7], [11, 11, 2, 18]])
    y = grid.y0 + grid.dy * (cells // grid.nx)
    x = grid.x0 + grid.dx * (cells % grid.nx)
    op = BilinearInterpolation(grid, GridPoints(y, x))
    sel = SelectionOperator(cells, grid.shape)
    for t in range(2):
        np.testing.assert_allclose(op.matrix(t), sel.matrix(t), atol=1e-14)
    # compact: valid slots first, M cut to the largest count.
    sparse = GridPoints(y, x, np.array([[True, False, True, False], [False] * 4]))
    small = sparse.compact()
    assert small.max_count == 2 and small.valid.tolist() == [[True, True], [False] * 2]
    np.testing.assert_array_equal(small.x[0], x[0, [0, 2]])
    rows, valid = GridPoints(y, x).rows(jnp.array([10.0, 20.0]))
    np.testing.assert_array_equal(rows[5], [20.0, y[1, 1], x[1, 1]])
    assert rows.shape == (8, 3) and bool(valid.all())
    # Nearest-node mask of the same points.
    mask = np.asarray(GridPoints(y, x).nearest_mask(grid)).reshape(2, -1)
    assert sorted(np.flatnonzero(mask[1])) == [2, 11, 18]


def test_bilinear_under_jit_and_float32():
    rng = np.random.default_rng(2)
    grid = Grid(5, 5, boundary="periodic")
    y, x = _random_points(rng, grid, (3, 4))
    op = BilinearInterpolation(grid, GridPoints(y, x))
    traj = jnp.asarray(rng.normal(size=(3, 5, 5)))
    eager = op.trajectory(traj)
    np.testing.assert_allclose(jax.jit(lambda o, z: o.trajectory(z))(op, traj), eager)
    out32 = op(traj[0].astype(jnp.float32), 0)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, eager[0], rtol=1e-6)


def test_bilinear_bad_input():
    grid = Grid(4, 4, boundary="closed")  # domain [0, 4] x [0, 4]
    ok = GridPoints(jnp.array([1.0]), jnp.array([1.0]))
    with pytest.raises(ValueError, match="inside the closed domain"):
        BilinearInterpolation(grid, GridPoints(jnp.array([1.0]), jnp.array([4.2])))
    # An invalid (padding) slot may hold anything.
    BilinearInterpolation(
        grid, GridPoints(jnp.array([1.0, 9.0]), jnp.array([1.0, 9.0]), [True, False])
    )
    with pytest.raises(ValueError, match="state_shape"):
        BilinearInterpolation(grid, ok, (4, 5))
    with pytest.raises(ValueError, match="channel"):
        BilinearInterpolation(grid, ok, (2, 4, 4), channel=2)
    with pytest.raises(TypeError, match="GridPoints"):
        BilinearInterpolation(grid, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="same shape"):
        GridPoints(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(TypeError, match="boolean"):
        GridPoints(jnp.zeros(3), jnp.zeros(3), jnp.ones(3))
    with pytest.raises(ValueError, match="finite"):
        GridPoints(jnp.array([np.nan]), jnp.zeros(1))
    op = BilinearInterpolation(
        grid, GridPoints(jnp.zeros((2, 1)) + 1, jnp.ones((2, 1)))
    )
    with pytest.raises(ValueError, match="time index"):
        op(jnp.zeros((4, 4)))


# ------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------


def test_random_points_pattern(getkey):
    grid = Grid(6, 7, boundary="closed")
    pat = RandomPointsPattern(grid, n_points=9, every=3, offset=1, channels=(0,))
    mask = np.asarray(pat(getkey(), 8, (2, 6, 7)))
    assert mask.shape == (8, 2, 6, 7)
    counts = mask[:, 0].sum(axis=(1, 2))
    np.testing.assert_array_equal(counts, [0, 9, 0, 0, 9, 0, 0, 9])
    assert not mask[:, 1].any()
    assert pat.max_count(8, (2, 6, 7)) == 27
    fixed = np.asarray(
        RandomPointsPattern(grid, fraction=0.25, fixed=True)(getkey(), 4, grid.shape)
    )
    assert fixed[0].sum() == round(0.25 * 42) and (fixed == fixed[0]).all()
    off = RandomPointsPattern(grid, n_points=5, on_nodes=False)
    pts = off.points(getkey(), 3)
    assert pts.y.shape == (3, 5) and bool(pts.valid.all())
    BilinearInterpolation(grid, pts)  # inside the closed domain
    with pytest.raises(ValueError, match="exactly one"):
        RandomPointsPattern(grid)
    with pytest.raises(ValueError, match="state_shape"):
        pat(getkey(), 3, (6, 6))


def _nadir(**kw):
    args = dict(
        inclination=60.0,
        repeat_days=10.0,
        revolutions=127,
        along_track_spacing=7.0,
        x_node=500.0,
    )
    return Satellite(**(args | kw))


def _sorted_rows(points, t):
    v = np.asarray(points.valid[t])
    yx = np.stack([np.asarray(points.y[t])[v], np.asarray(points.x[t])[v]], 1)
    return yx[np.lexsort(yx.T[::-1])]


def test_satellite_tracks_repeat_cycle_and_geometry():
    grid = Grid(40, 50, 25.0, 25.0, "closed", units="km")  # 1000 x 1250 km
    sat = _nadir()
    pat = SatelliteTracks(grid, (sat,), dt=1.0, circumference=127 * 40.0)
    table = pat.table(20)
    assert int(table.count.sum()) > 0
    for t in range(10):  # revolution k + N retraces revolution k, R days later
        np.testing.assert_allclose(
            _sorted_rows(table, t), _sorted_rows(table, t + 10), atol=1e-6
        )
    # Each pass is a straight line at the inclination, sampled every 7 km.
    times = np.asarray(table.time)[np.asarray(table.valid)]
    ys, xs = (np.asarray(a)[np.asarray(table.valid)] for a in (table.y, table.x))
    headings = set()
    for tp in np.unique(times):
        on = times == tp
        p = np.stack([xs[on], ys[on]], 1)
        p = p[np.argsort(p[:, 1])]
        if len(p) < 3:
            continue
        steps = np.diff(p, axis=0)
        np.testing.assert_allclose(np.hypot(*steps.T), 7.0, rtol=1e-9)
        angle = np.degrees(np.arctan2(steps[:, 1], steps[:, 0]))
        headings.add(round(float(np.mean(angle)), 6))
        np.testing.assert_allclose(angle, angle[0], atol=1e-9)
    assert headings == {60.0, 120.0}  # ascending, and descending traversed upward


def test_satellite_tracks_fill_the_cycle_evenly():
    """Polar tracks (vertical lines): over one repeat cycle the N ascending tracks
    are spaced L / N apart and, with N - D odd, the descending ones fall halfway
    between them."""
    grid = Grid(10, 60, 1.0, 1.0, "closed", units="km")
    sat = Satellite(90.0, 10.0, 127, along_track_spacing=1.0, nodal_days=10)
    pat = SatelliteTracks(grid, sat, dt=0.5, circumference=127 * 3.0)
    table = pat.table(20)  # days -0.25 to 9.75: one cycle
    xs = np.unique(np.round(np.asarray(table.x)[np.asarray(table.valid)], 6))
    assert xs.size == 40
    np.testing.assert_allclose(np.diff(xs), 1.5, atol=1e-6)


def test_swath_offsets_and_random_start(getkey):
    grid = Grid(30, 30, 10.0, 10.0, "periodic", units="km")
    swot = Satellite.preset("swot", "km", along_track_km=10.0, x_node=100.0)
    pat = SatelliteTracks(grid, (swot,), dt=1.0, latitude=35.0)
    table = pat.table(25)
    offsets = swot.cross_track_offsets()
    assert offsets.size == 1 + 2 * 25 and offsets[0] == 0.0
    np.testing.assert_allclose(np.sort(np.abs(offsets[1:]))[[0, -1]], [11.0, 59.0])
    inc = math.radians(swot.inclination)
    # Signed distances of a pass's points to its ground track (through its nadir
    # points) are the instrument's offsets: 0, or within [gap/2, gap/2 + width].
    times = np.asarray(table.time)[np.asarray(table.valid)]
    ys, xs = (np.asarray(a)[np.asarray(table.valid)] for a in (table.y, table.x))
    n_checked = 0
    for tp in np.unique(times):
        on = times == tp
        pts = np.stack([xs[on], ys[on]], 1)
        matched = False
        for sign in (1.0, -1.0):
            d = pts @ np.array([-sign * math.sin(inc), math.cos(inc)])
            for c in d[0] - offsets:
                gap = np.abs((d - c)[:, None] - offsets[None, :]).min(1)
                if np.all(gap < 1e-6):
                    matched = True
        assert matched, "swath points off the instrument's cross-track offsets"
        n_checked += 1
    assert n_checked >= 2
    # Random start: a window of the pattern is a window of the table.
    n_t = 5
    full = np.asarray(pat.table(pat.n_start_steps + n_t - 1).nearest_mask(grid))
    for key in (getkey(), getkey()):
        mask = np.asarray(pat(key, n_t, grid.shape))
        assert any((full[o : o + n_t] == mask).all() for o in range(pat.n_start_steps))
        assert mask.sum() <= pat.max_count(n_t, grid.shape)
    op = pat.operator(getkey(), n_t)
    assert op.n_times == n_t


def test_satellite_bad_input():
    with pytest.raises(ValueError, match="coprime"):
        _nadir(revolutions=120)
    with pytest.raises(ValueError, match="inclination"):
        _nadir(inclination=190.0)
    with pytest.raises(ValueError, match="circumference"):
        SatelliteTracks(Grid(4, 4, units="deg"), _nadir(), dt=1.0)
    with pytest.raises(ValueError, match="name"):
        Satellite.preset("topex")


def test_cloud_pattern(getkey):
    grid = Grid(16, 16, boundary="periodic")
    pat = CloudPattern(grid, 0.4, length_scale=2.0, velocity=(0.0, 1.0), every=2)
    mask = np.asarray(pat(getkey(), 6, grid.shape))
    counts = mask.sum(axis=(1, 2))
    np.testing.assert_array_equal(counts, [256 - 102, 0] * 3)
    # Frozen clouds drifting one cell per step in x: the mask rolls exactly.
    np.testing.assert_array_equal(mask[2], np.roll(mask[0], 2, axis=1))
    # Changing clouds (AR(1) in time) on a closed grid: unit marginal variance,
    # correlation exp(-1/tau) at one step and exp(-dx^2 / 2 l^2) at one cell (their
    # standard deviations over 8 seeds were 0.016, 0.004, 0.003: the tolerances
    # are over 3 of them).
    pat2 = CloudPattern(
        Grid(64, 64, boundary="closed"), 0.5, 1.5, correlation_steps=3.0
    )
    fields = np.asarray(pat2.fields(getkey(), 50))
    assert fields.shape == (50, 64, 64)
    assert abs(fields.var() - 1.0) < 0.06
    lag_t = np.mean(fields[1:] * fields[:-1]) / fields.var()
    assert abs(lag_t - math.exp(-1 / 3)) < 0.03
    lag_x = np.mean(fields[..., 1:] * fields[..., :-1]) / fields.var()
    assert abs(lag_x - math.exp(-1 / (2 * 1.5**2))) < 0.02
    with pytest.raises(ValueError, match="cloud_fraction"):
        CloudPattern(grid, 1.5, 2.0)


@pytest.mark.slow  # about 10 s of compilation on 2 cores
def test_bilinear_operator_in_the_dense_gaussian_map():
    """The operator plugs into `jaxda.gaussian` (per-time rows, padding masked):
    the MAP equals the NumPy covariance-form formula on the valid rows."""
    from jaxda.gaussian import map_dense

    rng = np.random.default_rng(3)
    grid = Grid(4, 5, boundary="closed")
    y, x = _random_points(rng, grid, (2, 3))
    valid = np.array([[True, True, False], [True, False, True]])
    op = BilinearInterpolation(grid, GridPoints(y, x, valid))
    d = 2 * grid.size
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + np.eye(d)
    mu, obs = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 3))
    got = map_dense(mu, obs, 0.3, mask=jnp.asarray(valid), operator=op, cov=cov)
    rows = [
        np.concatenate([np.asarray(op.matrix(t))[k] if s == t else np.zeros(20)
                        for s in range(2)])
        for t in range(2) for k in range(3) if valid[t, k]
    ]  # fmt: skip
    h = np.stack(rows)
    s = h @ cov @ h.T + 0.3 * np.eye(len(rows))
    ref = mu.ravel() + cov @ h.T @ np.linalg.solve(s, obs[valid] - h @ mu.ravel())
    np.testing.assert_allclose(np.ravel(got.mean), ref, atol=1e-12)
