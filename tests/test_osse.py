"""Gridded OSSEs (truth, gridded and point observations, splits) and space-time
patches (extraction, weighted recombination)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from jaxda.data import (
    OSSE,
    CovarianceInitialState,
    Dataset,
    PatchLayout,
    make_osse,
    make_osse_splits,
)
from jaxda.grid import Grid, SpectralCovariance
from jaxda.models import AbstractDynamics
from jaxda.obs import CloudPattern, RandomPointsPattern


class Decay(AbstractDynamics):
    """dx/dt = -rate x on a gridded state: x(t) = x(0) exp(-rate t)."""

    rate: float
    shape: tuple[int, ...]

    def vector_field(self, t, x):
        return -self.rate * x

    @property
    def state_shape(self):
        return self.shape


def _translate(x):
    """One cell per step along x (periodic)."""
    return jnp.roll(x, 1, axis=-1)


def test_osse_truth_and_noise_free_observations(getkey):
    grid = Grid(6, 8, 0.5, 0.5, "closed")
    model = Decay(0.5, (2, 6, 8))
    pattern = RandomPointsPattern(grid, n_points=10, on_nodes=False, every=2)
    x0 = jax.random.normal(getkey(), (3, 2, 6, 8))
    osse = make_osse(
        getkey(), model, grid, n_windows=3, n_times=5, dt=0.2,
        initial_state=x0, pattern=pattern, noise_std=0.0, channel=1,
    )  # fmt: skip
    assert isinstance(osse, OSSE) and isinstance(osse.dataset, Dataset)
    assert osse.truth.shape == (3, 5, 2, 6, 8) and osse.point_obs.shape == (3, 5, 10)
    # The default step is RK4: on the decay it multiplies by R(z) = sum z^k / k!,
    # k <= 4, z = -rate dt, exactly.
    z = -0.5 * 0.2
    amp = (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** np.arange(5)
    exact = x0[:, None] * amp[None, :, None, None, None]
    np.testing.assert_allclose(osse.truth, exact, rtol=1e-13)
    # Gridded observations: the truth on the mask (both channels, a point pattern's
    # cells); point observations: the bilinear interpolant of channel 1.
    m = np.asarray(osse.obs.mask)
    np.testing.assert_array_equal(
        np.asarray(osse.obs.values)[m], np.asarray(osse.truth)[m]
    )
    assert m[:, 1::2].sum() == 0 and m[:, ::2].any()
    for i in range(3):
        p = jax.tree.map(lambda a: np.asarray(a[i]), osse.points)
        for t in range(0, 5, 2):
            interp = RegularGridInterpolator(
                (np.asarray(grid.y), np.asarray(grid.x)),
                np.asarray(osse.truth[i, t, 1]),
                bounds_error=False,
                fill_value=None,
            )
            # Clamp to the cell-centre hull (constant extrapolation at the walls).
            yy = np.clip(p.y[t], grid.y[0], grid.y[-1])
            xx = np.clip(p.x[t], grid.x[0], grid.x[-1])
            ref = interp(np.stack([yy, xx], -1))
            np.testing.assert_allclose(osse.point_obs.values[i, t], ref, atol=1e-12)
        np.testing.assert_allclose(
            osse.operator(i).trajectory(osse.truth[i]), osse.point_obs.values[i],
            atol=1e-12,
        )  # fmt: skip
    assert not bool(osse.point_obs.mask[:, 1::2].any())


def test_osse_noise_splits_and_determinism(getkey):
    grid = Grid(16, 16, boundary="periodic")
    model = Decay(0.0, (16, 16))
    kwargs = dict(
        n_times=4, dt=1.0, step=_translate, noise_std=0.3,
        initial_state=CovarianceInitialState(SpectralCovariance(grid, 2.0), 1.0),
        pattern=CloudPattern(grid, 0.3, length_scale=2.0),
    )  # fmt: skip
    train, val, test = make_osse_splits(
        7, model, grid, n_train=20, n_validation=20, n_test=20, **kwargs
    )
    assert (train.n_windows, val.n_windows, test.n_windows) == (20, 20, 20)
    assert [s.dataset.split for s in (train, val, test)] == [
        "train", "validation", "test"
    ]  # fmt: skip
    assert train.dataset.seed == 7 and train.points is None
    # Initial states N(1, B), B Gaussian-correlated with length 2 cells: mean 1,
    # correlation exp(-1/8) = 0.88 at one cell (white noise would give 0). Over 12
    # seeds the standard deviations of these estimates were 0.093 and 0.012.
    x0 = np.asarray(train.truth[:, 0]) - 1.0
    assert abs(x0.mean()) < 0.35
    lag = np.mean(x0[..., 1:] * x0[..., :-1]) / np.mean(x0**2)
    assert abs(lag - np.exp(-1 / 8)) < 0.04
    # Translation by one cell per step, exactly.
    np.testing.assert_array_equal(train.truth[:, 3], jnp.roll(train.truth[:, 0], 3, -1))
    # Noise: std 0.3 on observed entries (20 * 4 * 180 entries: 2 % tolerance).
    m = np.asarray(train.obs.mask)
    err = (np.asarray(train.obs.values) - np.asarray(train.truth))[m]
    assert m.sum() == 20 * 4 * (256 - round(0.3 * 256))
    assert abs(err.std() / 0.3 - 1) < 0.02 and abs(err.mean()) < 0.01
    assert not bool(jnp.allclose(train.truth, val.truth))
    again = make_osse_splits(
        7, model, grid, n_train=20, n_validation=20, n_test=20, **kwargs
    )
    np.testing.assert_array_equal(again[2].obs.values, test.obs.values)
    assert test[1].truth.shape == (1, 4, 16, 16)
    part = test.time_slice(1, 3)
    np.testing.assert_array_equal(part.obs.values, test.obs.values[:, 1:3])
    assert part.truth.shape == (20, 2, 16, 16)


def test_osse_bad_input(getkey):
    grid = Grid(4, 4)
    model = Decay(1.0, (4, 4))
    pattern = RandomPointsPattern(grid, n_points=2)
    kw = dict(n_windows=1, n_times=3, dt=0.1, initial_state=jnp.ones((4, 4)),
              noise_std=0.1)  # fmt: skip
    with pytest.raises(ValueError, match="not on `grid`"):
        make_osse(
            0, model, grid, pattern=RandomPointsPattern(Grid(4, 5), n_points=2), **kw
        )
    with pytest.raises(ValueError, match="states"):
        make_osse(0, Decay(1.0, (5, 4)), grid, pattern=pattern, **kw)
    with pytest.raises(TypeError, match="AbstractGridPattern"):
        make_osse(0, model, grid, pattern=lambda k, t, s: jnp.ones((t, *s), bool), **kw)
    with pytest.raises(RuntimeError, match="non-finite"):
        make_osse(0, model, grid, pattern=pattern, step=lambda x: x / 0.0, **kw)


# ------------------------------------------------------------------------------
# Patches
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("periodic", [False, True])
def test_patches_roundtrip_and_weighted_recombination(periodic):
    rng = np.random.default_rng(0)
    layout = PatchLayout(
        (7, 9, 10), size=(3, 4, 6), stride=(2, 3, 4), periodic=periodic
    )
    x = jnp.asarray(rng.normal(size=(7, 9, 10)))
    patches = layout.extract(x)
    assert patches.shape == (layout.n_patches, 3, 4, 6)
    assert int(layout.coverage().min()) >= 1
    window = rng.uniform(0.1, 1.0, size=(3, 4, 6))
    for w in ("hann", "triangular", "uniform", window):
        np.testing.assert_allclose(layout.recombine(patches, w), x, atol=1e-13)
    # Channels are carried whole.
    xc = jnp.stack([x, 2 * x + 1], 1)
    pc = layout.extract(xc)
    assert pc.shape == (layout.n_patches, 3, 2, 4, 6)
    np.testing.assert_allclose(layout.recombine(pc), xc, atol=1e-13)
    # Different patches: the weighted mean of the covering patches, cell by cell.
    values = jnp.arange(layout.n_patches, dtype=float)
    const = jnp.broadcast_to(values[:, None, None, None], patches.shape)
    out = np.asarray(layout.recombine(const, window))
    starts = np.asarray(layout.starts)
    for cell in [(0, 0, 0), (3, 8, 9), (6, 4, 1)]:
        num = den = 0.0
        for p, (t0, j0, i0) in enumerate(starts):
            dt, dj, di = cell[0] - t0, cell[1] - j0, cell[2] - i0
            if periodic:
                dj, di = dj % 9, di % 10
            if 0 <= dt < 3 and 0 <= dj < 4 and 0 <= di < 6:
                num += float(window[dt, dj, di]) * p
                den += float(window[dt, dj, di])
        np.testing.assert_allclose(out[cell], num / den, rtol=1e-12)


def test_patch_layout_starts_and_errors():
    closed = PatchLayout((5, 10, 10), (5, 4, 4), (1, 3, 3), periodic=False)
    assert sorted({s[1] for s in closed.starts}) == [0, 3, 6]  # 6 = 10 - 4, flush
    per = PatchLayout.from_grid(Grid(10, 10), 5, (5, 4, 4), (1, 3, 3))
    assert sorted({s[1] for s in per.starts}) == [0, 3, 6, 9]  # 9 wraps around
    x = jnp.arange(500.0).reshape(5, 10, 10)
    last = per.extract(x)[-1]
    np.testing.assert_array_equal(last[0], x[0][np.ix_([9, 0, 1, 2], [9, 0, 1, 2])])
    with pytest.raises(ValueError, match="size"):
        PatchLayout((5, 10, 10), (5, 11, 4), (1, 3, 3))
    with pytest.raises(ValueError, match="periodic"):
        PatchLayout((5, 10, 10), (5, 4, 4), (1, 5, 3), periodic=True)
    with pytest.raises(ValueError, match="window"):
        closed.recombine(closed.extract(x), "gaussian")
    with pytest.raises(ValueError, match="patches"):
        closed.recombine(x)
