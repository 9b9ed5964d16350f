"""Scores of gridded maps: spectra against analytic ones (a sinusoid, white noise,
Parseval), the PSD score of a field plus noise, the 0.5 crossing, gradient RMSE, the
RMSE score; the map and PSD-score figures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import metrics as M, plot
from jaxda.grid import Grid
from jaxda.obs import Observations


def _rings(grid):
    """Ring index round(|k| / dk) of every 2-D mode, and the number of rings."""
    ky = np.fft.fftfreq(grid.ny, grid.dy)
    kx = np.fft.fftfreq(grid.nx, grid.dx)
    dk = max(1 / (grid.nx * grid.dx), 1 / (grid.ny * grid.dy))
    ring = np.floor(np.hypot(ky[:, None], kx[None, :]) / dk + 0.5).astype(int)
    return ring, int(min(1 / (2 * grid.dx), 1 / (2 * grid.dy)) / dk)


def _ring_counts(grid):
    ring, n_max = _rings(grid)
    return np.array([np.sum(ring == n) for n in range(1, n_max + 1)])


def _band_limited(rng, grid, n_times, amplitude):
    """Random-phase fields whose 2-D modes in ring n have power amplitude(n)^2 (same for
    every mode of the ring, none in the corners), real by Hermitian symmetry."""
    ring, n_max = _rings(grid)
    amp = np.where((ring >= 1) & (ring < n_max), amplitude(np.maximum(ring, 1)), 0.0)
    noise = rng.normal(size=(n_times, *grid.shape))
    phase = np.fft.fft2(noise)
    phase /= np.abs(phase)  # unit modulus, Hermitian (noise is real)
    return np.real(np.fft.ifft2(amp * phase)), amp, ring


def test_sinusoid_peaks_at_its_wavenumber_with_its_variance():
    grid = Grid(32, 48, dy=2.0, dx=1.5)  # Ly = 64, Lx = 72: dk = 1/64
    Y, X = (np.asarray(a) for a in grid.meshgrid())
    # kx = 3 / Lx... choose modes on the ring grid: (ky, kx) = (4/64, 0) + (0, 6/72)
    f = 2.0 * np.cos(2 * np.pi * (4 * Y / 64)) + 1.0 * np.sin(2 * np.pi * 6 * X / 72)
    s = M.isotropic_psd(f, grid)  # periodic: no window
    dk = 1 / 64
    np.testing.assert_allclose(np.diff(s.wavenumber), dk)
    ring_y = 4  # |k| = 4/64
    ring_x = int(np.floor((6 / 72) / dk + 0.5))  # 6/72 = 5.33 dk -> ring 5
    expected = np.zeros(s.psd.shape)
    expected[ring_y - 1] += 2.0**2 / 2 / dk
    expected[ring_x - 1] += 1.0**2 / 2 / dk
    np.testing.assert_allclose(s.psd, expected, atol=1e-10)
    # Hann window (closed grid): leakage to the neighbouring rings, peak unmoved
    closed = Grid(32, 48, dy=2.0, dx=1.5, boundary="closed")
    h = M.isotropic_psd(2.0 * np.cos(2 * np.pi * 4 * Y / 64), closed)
    assert int(np.argmax(h.psd)) == ring_y - 1
    assert h.psd[ring_y - 1] > 3 * h.psd[ring_y] > 0  # ring 5: a quarter


def test_parseval_and_white_noise_level():
    rng = np.random.default_rng(0)
    grid = Grid(24, 24, dy=0.5, dx=0.5)
    f, amp, _ = _band_limited(rng, grid, 3, lambda n: 1.0 / n)
    s = M.isotropic_psd(f, grid)
    dk = 1 / 12
    np.testing.assert_allclose(np.sum(s.psd) * dk, np.mean(f**2), rtol=1e-10)
    # white noise: E P(k) = sigma^2 dx dy per 2-D mode; ring n of the 24 x 24 grid
    # holds count_n modes, so E PSD_n = sigma^2 dx dy count_n dkx dky / dk
    noise = 0.3 * rng.normal(size=(400, *grid.shape))
    s = M.isotropic_psd(noise, grid)
    count = _ring_counts(grid)
    expected = 0.09 * 0.25 * count * (1 / 12) ** 2 / dk
    # relative standard error of an average of 400 * count / 2 independent exponential
    # variables (modes k and -k are conjugate)
    rel = 5 / np.sqrt(400 * count.min() / 2)
    np.testing.assert_allclose(s.psd / expected, 1, atol=rel)
    # the Hann window divided by its mean square keeps the white level (a window
    # correlates neighbouring modes: about 4x fewer independent samples in 2-D)
    hann = M.isotropic_psd(noise, grid, window="hann")
    np.testing.assert_allclose(hann.psd / expected, 1, atol=2 * rel)


def test_psd_score_of_field_plus_white_noise_and_its_crossing():
    rng = np.random.default_rng(1)
    grid = Grid(32, 32, dy=1.0, dx=1.0)
    n_times, sigma = 48, 0.05
    # truth power per 2-D mode a(n)^2 = c n^-3: the noise power per mode sigma^2 N
    # (the unnormalised DFT of white noise of variance sigma^2 over N cells) halves it
    # at n = 8
    c = 2 * sigma**2 * grid.size * 8.0**3
    truth, _, _ = _band_limited(rng, grid, n_times, lambda n: np.sqrt(c * n**-3.0))
    estimate = truth + sigma * rng.normal(size=truth.shape)
    s = M.psd_score(estimate, truth, grid)
    n = np.arange(1, len(s.score) + 1)
    expected = 1 - sigma**2 * grid.size / (c * n**-3.0)
    count = _ring_counts(grid)
    # the error PSD of ring n averages n_times * count / 2 independent exponential
    # variables (modes k and -k are conjugate)
    tol = 5 * np.abs(1 - expected) / np.sqrt(n_times * count / 2)
    inside = n < 16  # ring 16 holds no truth power
    np.testing.assert_array_less(np.abs(s.score - expected)[inside], tol[inside])
    # crossing between rings 7 and 9 (wavelengths 32/9 .. 32/7), close to 32/8
    assert 32 / 9 < float(s.resolved_wavelength) < 32 / 7
    np.testing.assert_allclose(float(s.resolved_wavelength), 4.0, rtol=0.06)
    # jit gives the same; vmap over the time axis gives per-time scores
    jitted = jax.jit(lambda e, t: M.psd_score(e, t, grid))(estimate, truth)
    np.testing.assert_allclose(jitted.score[inside], s.score[inside], rtol=1e-12)
    per_time = jax.vmap(lambda e, t: M.psd_score(e, t, grid).score)(estimate, truth)
    assert per_time.shape == (n_times, s.score.size)
    np.testing.assert_allclose(
        per_time[3][inside],
        M.psd_score(estimate[3], truth[3], grid).score[inside],
        rtol=1e-12,
    )
    # an exact reconstruction resolves every scale
    exact = M.psd_score(truth, truth, grid)
    np.testing.assert_allclose(exact.score[inside], 1.0)


def test_crossing_wavelength_of_constructed_scores():
    k = jnp.array([0.1, 0.2, 0.25, 0.5])  # wavelengths 10, 5, 4, 2
    # score linear in wavelength between 5 (0.8) and 4 (0.2): crossing at 4.5
    np.testing.assert_allclose(
        M.crossing_wavelength(k, jnp.array([1, 0.8, 0.2, 0])), 4.5
    )
    # the first crossing from the large scales, even if the score rises again
    np.testing.assert_allclose(
        M.crossing_wavelength(k, jnp.array([0.9, 0.4, 0.9, 0.9])), 10 - 0.4 / 0.5 * 5
    )
    assert float(M.crossing_wavelength(k, jnp.array([0.9, 0.9, 0.9, 0.6]))) == 2.0
    assert float(M.crossing_wavelength(k, jnp.array([0.3, 0.9, 0.9, 0.6]))) == np.inf
    np.testing.assert_allclose(
        M.crossing_wavelength(k, jnp.array([1, 0.8, 0.2, 0]), level=0.8), 5.0
    )
    jitted = jax.jit(M.crossing_wavelength)(k, jnp.array([1, 0.8, 0.2, 0.0]))
    np.testing.assert_allclose(jitted, 4.5)


def test_temporal_psd_and_score():
    dt, n = 0.5, 64
    t = dt * np.arange(n)
    period = 8.0  # f = 1/8 = 4 / (n dt): bin 4
    x = 1.5 * np.cos(2 * np.pi * t / period)[:, None] * np.ones((1, 3))
    s = M.temporal_psd(x, dt, window=None)
    df = 1 / (n * dt)
    np.testing.assert_allclose(s.wavenumber[3], 1 / period)
    np.testing.assert_allclose(s.psd[3] * df, 1.5**2 / 2, rtol=1e-12)
    np.testing.assert_allclose(np.delete(np.asarray(s.psd), 3), 0, atol=1e-12)
    assert int(np.argmax(M.temporal_psd(x, dt).psd)) == 3  # Hann: peak unmoved
    rng = np.random.default_rng(2)
    series = rng.normal(size=(n, 200)).cumsum(axis=0)  # red spectrum
    sw = M.temporal_psd(series, dt, window=None, detrend="constant")
    detrended = series - series.mean(axis=0)
    np.testing.assert_allclose(np.sum(sw.psd) * df, np.mean(detrended**2), rtol=1e-10)
    # truth: unit cosines at the frequency bins m = 1..31; error: cosines of
    # amplitude sqrt(m / 11), random phases: score 1 - m / 11 exactly (no window),
    # crossing between m = 5 (0.545) and m = 6 (0.455), linear in period
    m = np.arange(1, n // 2)  # not the Nyquist frequency (a cosine there is real)
    phase = rng.uniform(0, 2 * np.pi, size=m.size)
    arg = 2 * np.pi * m[None, :] * t[:, None] / (n * dt)
    truth = np.cos(arg).sum(axis=1)[:, None]
    error = (np.sqrt(m / 11) * np.cos(arg + phase)).sum(axis=1)[:, None]
    score = M.psd_score_time(truth + error, truth, dt, window=None)
    np.testing.assert_allclose(score.score[: m.size], 1 - m / 11, atol=1e-10)
    lam5, lam6, s5, s6 = n * dt / 5, n * dt / 6, 1 - 5 / 11, 1 - 6 / 11
    expected = lam5 + (0.5 - s5) * (lam6 - lam5) / (s6 - s5)
    np.testing.assert_allclose(score.resolved_wavelength, expected, rtol=1e-10)


def test_gradient_rmse_and_rmse_score():
    grid = Grid(16, 20, dy=0.5, dx=0.25, boundary="closed")
    Y, X = (np.asarray(a) for a in grid.meshgrid())
    truth = np.stack([X * 2.0 + Y, np.zeros_like(X)])  # grad = (1, 2) and 0
    est = truth + np.stack([3.0 * Y, np.zeros_like(X)])  # grad = (4, 2)
    # linear fields: centred and one-sided differences are exact
    np.testing.assert_allclose(
        M.gradient_rmse(est[:1], truth[:1], grid, of="vector"), 3.0, rtol=1e-12
    )
    np.testing.assert_allclose(
        M.gradient_rmse(est[:1], truth[:1], grid), np.sqrt(20) - np.sqrt(5), rtol=1e-12
    )
    periodic = Grid(16, 16, dy=1 / 16, dx=1 / 16)
    Y, X = (np.asarray(a) for a in periodic.meshgrid())
    f = np.sin(2 * np.pi * X)
    gx_exact = np.sin(2 * np.pi / 16) / (1 / 16) * np.cos(2 * np.pi * X)  # centred
    np.testing.assert_allclose(
        M.gradient_rmse(2 * f, f, periodic, of="vector"),
        np.sqrt(np.mean(gx_exact**2)),
        rtol=1e-12,
    )
    mask = Y < 0.5
    np.testing.assert_allclose(
        M.rmse_score(truth + 0.1, truth + 1.0, None),
        1 - 0.9 / np.sqrt(np.mean((truth + 1.0) ** 2)),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        M.rmse_score(f + 0.5 * mask, f, mask),
        1 - 0.5 / np.sqrt(np.mean(f[mask] ** 2)),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="`of` must be one of"):
        M.gradient_rmse(est, truth, grid, of="curl")
    with pytest.raises(ValueError, match="must have shape"):
        M.psd_score(est[:, :4], truth[:, :4], grid)
    with pytest.raises(ValueError, match="`window` must be one of"):
        M.isotropic_psd(truth, grid, window="hamming")


def test_maps_and_psd_score_figures(tmp_path):
    pytest.importorskip("matplotlib")
    grid = Grid(12, 16, dy=2.0, dx=2.0, units="km")
    rng = np.random.default_rng(3)
    truth = rng.normal(size=grid.shape)
    mask = rng.random(grid.shape) < 0.2
    recs = {"OI": truth + 0.1, "4DVar": truth - 0.2}
    fig = plot.plot_maps(truth, Observations(truth, mask), recs, grid)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6  # truth, obs, 2 x (reconstruction, error)
    assert np.ma.count_masked(images[1].get_array()) == int((~mask).sum())
    assert images[0].get_clim() == images[2].get_clim()
    np.testing.assert_allclose(images[3].get_clim(), (-0.2, 0.2))
    np.testing.assert_allclose(images[5].get_clim(), (-0.2, 0.2))
    score = M.psd_score(np.stack([truth + 0.3 * rng.normal(size=grid.shape)]),
                        truth[None], grid)  # fmt: skip
    fig = plot.plot_psd_score({"OI": score}, units="km")
    assert "OI" in fig.axes[0].lines[0].get_label()
    plot.save_figure(fig, tmp_path / "psd.png")
    with pytest.raises(ValueError, match="one field of shape"):
        plot.plot_maps(truth[None], None, truth, grid)
