"""Optical-flow baselines: Horn-Schunck against a dense solve of its normal equations,
uniform translations recovered (with warping for large ones, with gaps), Lucas-Kanade,
result codes and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import RESULTS
from jaxda.grid import Grid
from jaxda.metrics import endpoint_error
from jaxda.motion import horn_schunck, lucas_kanade


# --- the normal equations, built independently in NumPy ------------------------------


def _centred_matrix(n, h, periodic):
    """The centred-difference matrix: (f[i+1] - f[i-1]) / 2h, one-sided at walls."""
    d = np.zeros((n, n))
    for i in range(n):
        if periodic:
            d[i, (i + 1) % n] += 1
            d[i, (i - 1) % n] -= 1
        elif i == 0:
            d[i, :3] = [-3, 4, -1]
        elif i == n - 1:
            d[i, n - 3 :] = [1, -4, 3]
        else:
            d[i, i + 1], d[i, i - 1] = 1, -1
    return d / (2 * h)


def _forward_matrix(n, h, periodic):
    """Forward differences (f[i+1] - f[i]) / h; the wall face (last row) 0 if closed."""
    d = np.zeros((n, n))
    for i in range(n):
        if i < n - 1 or periodic:
            d[i, (i + 1) % n] += 1
            d[i, i] -= 1
    return d / h


def _dense_horn_schunck(images, times, mask, grid, alpha):
    ny, nx = grid.shape
    dy_c = _centred_matrix(ny, grid.dy, grid.periodic)
    dx_c = _centred_matrix(nx, grid.dx, grid.periodic)

    def observed_stencil(both, d, axis):
        """Each pixel and every pixel its derivative stencil touches observed."""
        out = both.copy()
        for i in range(d.shape[0]):
            support = np.nonzero(d[i])[0]
            take = both[:, support] if axis == 0 else both[support, :]
            line = np.all(take, axis=1 - axis)
            if axis == 0:
                out[:, i] &= line
            else:
                out[i, :] &= line
        return out

    a = np.zeros((2, 2, ny, nx))
    b = np.zeros((2, ny, nx))
    for k in range(len(times) - 1):
        both = mask[k] & mask[k + 1]
        valid = observed_stencil(both, dx_c, 0) & observed_stencil(both, dy_c, 1)
        mean = (
            np.where(mask[k], images[k], 0) + np.where(mask[k + 1], images[k + 1], 0)
        ) / 2
        ix = mean @ dx_c.T
        iy = dy_c @ mean
        it = (images[k + 1] - images[k]) / (times[k + 1] - times[k])
        ix, iy, it = (np.where(valid, f, 0.0) for f in (ix, iy, it))
        a += np.array([[ix * ix, ix * iy], [iy * ix, iy * iy]])
        b -= np.array([ix * it, iy * it])
    fx = _forward_matrix(nx, grid.dx, grid.periodic)
    fy = _forward_matrix(ny, grid.dy, grid.periodic)
    minus_lap = np.kron(np.eye(ny), fx.T @ fx) + np.kron(fy.T @ fy, np.eye(nx))
    n = ny * nx
    system = np.zeros((2 * n, 2 * n))
    for c in range(2):
        for e in range(2):
            system[c * n : (c + 1) * n, e * n : (e + 1) * n] = np.diag(a[c, e].ravel())
        system[c * n : (c + 1) * n, c * n : (c + 1) * n] += alpha * minus_lap
    return np.linalg.solve(system, b.reshape(-1)).reshape(2, ny, nx)


@pytest.mark.parametrize(
    "grid",
    [Grid(8, 8, dy=1.5, dx=1.0, boundary="closed"), Grid(32, 32, boundary="periodic")],
    ids=["closed-8", "periodic-32"],
)
def test_horn_schunck_equals_the_dense_solve_of_its_normal_equations(grid):
    # (the periodic case has the shapes of the translation tests: one compilation)
    rng = np.random.default_rng(0)
    shape = (3, *grid.shape)
    images = rng.standard_normal(shape)
    mask = rng.random(shape) > 0.1
    times = np.array([0.0, 0.7, 2.0])
    reference = _dense_horn_schunck(images, times, mask, grid, alpha=0.3)
    gappy = np.where(mask, images, np.nan)  # unobserved pixels must not be read
    flow = horn_schunck(
        gappy, smoothness=0.3, times=times, mask=mask, grid=grid, rtol=1e-14,
        max_steps=2000,
    )  # fmt: skip
    assert flow.result == RESULTS.successful
    assert flow.reliable is None
    scale = np.max(np.abs(reference))
    assert scale > 0.1  # a non-trivial solution
    np.testing.assert_allclose(np.asarray(flow.velocity), reference, atol=1e-10 * scale)


# --- uniform translations of a smooth periodic pattern -------------------------------

N = 32
GRID = Grid(N, N, boundary="periodic")


def _translated(shift, n_frames=3, k_max=2, seed=0):
    """A random pattern of wavenumbers <= k_max cycles per domain, shifted exactly by
    `shift` = (along x, along y) cells per frame (a Fourier phase shift)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(N, 1 / N)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    band = (np.abs(kx) <= k_max) & (np.abs(ky) <= k_max)
    spectrum = (rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))) * band
    phase = np.exp(-2j * np.pi * (kx * shift[0] + ky * shift[1]) / N)
    frames = np.array(
        [np.real(np.fft.ifft2(spectrum * phase**t)) for t in range(n_frames)]
    )
    return frames / frames[0].std()


def _relative_epe(velocity, shift):
    truth = np.broadcast_to(np.asarray(shift)[:, None, None], (2, N, N))
    return float(endpoint_error(velocity, truth)) / np.hypot(*shift)


def test_horn_schunck_recovers_a_uniform_translation():
    shift = (0.3, -0.2)
    flow = horn_schunck(_translated(shift), smoothness=0.01, grid=GRID)
    # smoothness small against |grad I|^2 ~ 0.2; the linearised, centred-difference
    # constraint is biased by O(k^2 h^2): 2.5 % here
    assert _relative_epe(flow.velocity, shift) < 0.04
    assert flow.steps > 0
    single = horn_schunck(
        _translated(shift).astype(np.float32), smoothness=0.01, grid=GRID
    )
    assert single.velocity.dtype == jnp.float32
    assert single.result == RESULTS.successful
    np.testing.assert_allclose(single.velocity, flow.velocity, rtol=0, atol=1e-4)


def test_warping_recovers_a_translation_of_more_than_a_pixel():
    shift = (1.5, 0.0)
    images = _translated(shift)
    one = _relative_epe(
        horn_schunck(images, smoothness=0.01, grid=GRID).velocity, shift
    )
    three = horn_schunck(images, smoothness=0.01, grid=GRID, warps=3)
    assert three.result == RESULTS.successful
    err = _relative_epe(three.velocity, shift)
    assert err < 0.01
    assert one > 5 * err and one > 0.04


def test_horn_schunck_with_gaps():
    shift = (0.3, -0.2)
    rng = np.random.default_rng(1)
    mask = rng.random((3, N, N)) > 0.3  # 30 % of the pixels of every frame missing
    images = np.where(mask, _translated(shift), 0.0)
    flow = horn_schunck(images, smoothness=0.1, mask=mask, grid=GRID)
    assert _relative_epe(flow.velocity, shift) < 0.04


def test_lucas_kanade_recovers_the_translation_and_flags_the_aperture_problem():
    shift = (0.3, -0.2)
    flow = lucas_kanade(_translated(shift), window_std=2.0, grid=GRID)
    assert flow.result == RESULTS.successful
    assert bool(jnp.all(flow.reliable))
    assert _relative_epe(flow.velocity, shift) < 0.04
    # a pattern varying along x only: rank-one structure tensors everywhere
    x = np.arange(N)
    stripes = np.stack(
        [
            np.broadcast_to(np.sin(2 * np.pi * (x - 0.3 * t) / N), (N, N))
            for t in range(3)
        ]
    )
    flat = lucas_kanade(stripes, window_std=2.0, grid=GRID)
    assert not bool(jnp.any(flat.reliable))
    assert bool(jnp.all(flat.velocity == 0))


def test_max_steps_too_small_is_reported_not_returned_as_converged():
    images = _translated((0.3, -0.2))
    flow = horn_schunck(images, smoothness=0.1, grid=GRID, max_steps=3, throw=False)
    assert flow.result == RESULTS.max_steps_reached
    assert int(flow.steps) == 3
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver steps"):
        horn_schunck(images, smoothness=0.1, grid=GRID, max_steps=3)


def test_values_checked_under_jit_are_reported_in_the_result():
    images = np.random.default_rng(2).standard_normal((3, 8, 8))
    images[1, 4, 4] = np.nan  # observed and non-finite

    @jax.jit
    def result(images):
        return lucas_kanade(images, window_std=1.0, throw=False).result

    assert result(images) == RESULTS.invalid_input
    assert result(np.nan_to_num(images)) == RESULTS.successful


def test_bad_input():
    images = np.zeros((3, 8, 8))
    images[:, 3, 3] = 1.0
    ok = dict(smoothness=1.0)
    with pytest.raises(ValueError, match=r"images.*\(T, ny, nx\) with T >= 2"):
        horn_schunck(images[0], **ok)
    with pytest.raises(ValueError, match="T >= 2"):
        horn_schunck(images[:1], **ok)
    with pytest.raises(TypeError, match="images"):
        horn_schunck("frames", **ok)
    with pytest.raises(ValueError, match="times.*strictly increasing"):
        horn_schunck(images, times=[0.0, 2.0, 1.0], **ok)
    with pytest.raises(ValueError, match=r"times.*shape \(T,\)"):
        horn_schunck(images, times=[0.0, 1.0], **ok)
    with pytest.raises(ValueError, match="mask.*shape"):
        horn_schunck(images, mask=np.ones((3, 8, 7), bool), **ok)
    with pytest.raises(TypeError, match="mask.*boolean"):
        horn_schunck(images, mask=np.ones((3, 8, 8)), **ok)
    with pytest.raises(ValueError, match="smoothness.*> 0"):
        horn_schunck(images, smoothness=-1.0)
    with pytest.raises(ValueError, match="smoothness.*> 0"):
        horn_schunck(images, smoothness=0.0)
    bad = images.copy()
    bad[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match="images.*finite where `mask`"):
        horn_schunck(bad, **ok)
    with pytest.raises(ValueError, match="grid.*does not match"):
        horn_schunck(images, grid=Grid(8, 9), **ok)
    with pytest.raises(TypeError, match="grid"):
        horn_schunck(images, grid=(8, 8), **ok)
    alternate = np.zeros((3, 8, 8), bool)
    alternate[::2] = True  # never two consecutive frames observed
    with pytest.raises(ValueError, match="no pixel observed in two consecutive"):
        horn_schunck(images, mask=alternate, **ok)
    with pytest.raises(ValueError, match="warps"):
        horn_schunck(images, warps=0, **ok)
    with pytest.raises(ValueError, match="window_std"):
        lucas_kanade(images, window_std=0.0)
    with pytest.raises(ValueError, match="min_eigenvalue"):
        lucas_kanade(images, window_std=1.0, min_eigenvalue=-1.0)
