"""Motion scores: end-point / angular errors and the velocity gradient / divergence
norms, against hand-computed values and a NumPy transcription of [FBC23]'s formulas."""

import math

import equinox as eqx
import jax
import numpy as np
import pytest

from jaxda.grid import Grid
from jaxda.metrics import (
    angular_error,
    divergence_error,
    endpoint_error,
    gradient_error,
    velocity_divergence_norm,
    velocity_gradient_norm,
)


# --- [FBC23]'s formulas (their code's utils/metrics.py), transcribed in NumPy ---------
# Their arrays put u along axis 0 and v along axis 1: ours transposed in (y, x).


def _theirs(w):
    return np.swapaxes(np.asarray(w, dtype=np.float64), -1, -2)


def _ref_epe(w, w_hat):
    u, v, uh, vh = w[0], w[1], w_hat[0], w_hat[1]
    return np.mean(np.sqrt((u - uh) ** 2 + (v - vh) ** 2))


def _ref_ae(w, w_hat):
    u, v, uh, vh = w[0], w[1], w_hat[0], w_hat[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (u * uh + v * vh) / (np.sqrt(u**2 + v**2) * np.sqrt(uh**2 + vh**2))
    ae = (180 / math.pi) * np.arccos(np.clip(cos, -1, 1))
    ae[ae == np.inf] = np.nan
    return np.mean(ae[ae == ae])


def _ref_grad_mat(m, dx, dy):
    m_ij = m[1:-1, 1:-1]
    return (m[2:, 1:-1] - m_ij) / dx, (m[1:-1, 2:] - m_ij) / dy


def _ref_norm_gradw(w, dx=1, dy=1):
    gux, guy = _ref_grad_mat(w[0], dx, dy)
    gvx, gvy = _ref_grad_mat(w[1], dx, dy)
    return np.sqrt(np.sum(gux**2) + np.sum(guy**2) + np.sum(gvx**2) + np.sum(gvy**2))


def _ref_norm_divw(w, dx=1, dy=1):
    u, v = w[0], w[1]
    div = (u[2:, 1:-1] - u[1:-1, 1:-1]) / dx + (v[1:-1, 2:] - v[1:-1, 1:-1]) / dy
    return np.sqrt(np.sum(div**2))


def test_matches_the_authors_formulas_on_random_fields():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((2, 7, 9))
    estimate = rng.standard_normal((2, 7, 9))
    truth[:, 2, 3] = 0.0  # zero vectors: left out of the angular error
    estimate[:, 5, 1] = 0.0
    t, e = _theirs(truth), _theirs(estimate)
    for ours, ref in [
        (endpoint_error(estimate, truth), _ref_epe(t, e)),
        (angular_error(estimate, truth), _ref_ae(t, e)),
        (velocity_gradient_norm(truth), _ref_norm_gradw(t)),
        (velocity_divergence_norm(truth), _ref_norm_divw(t)),
        (gradient_error(estimate, truth), _ref_norm_gradw(e - t)),
        (divergence_error(estimate, truth), _ref_norm_divw(e - t)),
    ]:
        np.testing.assert_allclose(float(ours), ref, rtol=1e-12, atol=0)


def test_endpoint_error_of_a_uniform_offset_is_its_length():
    truth = np.random.default_rng(1).standard_normal((3, 2, 5, 6))
    offset = np.array([3.0, -4.0])[:, None, None]
    assert float(endpoint_error(truth + offset, truth)) == pytest.approx(5.0, 1e-14)


def _rotate(w, theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([c * w[..., 0, :, :] - s * w[..., 1, :, :],
                     s * w[..., 0, :, :] + c * w[..., 1, :, :]], axis=-3)  # fmt: skip


def test_a_rotation_gives_its_angle_and_zero_vectors_are_left_out():
    truth = np.random.default_rng(2).standard_normal((2, 2, 6, 6))
    truth[0, :, 1, 1] = 0.0
    estimate = _rotate(truth, math.radians(30.0)) * 2.5  # scale does not matter
    assert float(angular_error(estimate, truth)) == pytest.approx(30.0, abs=1e-10)
    radians = angular_error(estimate, truth, degrees=False)
    assert float(radians) == pytest.approx(math.pi / 6, abs=1e-12)
    # an opposite vector at one pixel: 180 deg there, pooled with 30 elsewhere
    flipped = estimate.copy()
    flipped[1, :, 0, 0] = -truth[1, :, 0, 0]
    n_valid = 2 * 36 - 1
    expected = (30.0 * (n_valid - 1) + 180.0) / n_valid
    # arccos at -1 + eps keeps half the digits: sqrt(2 eps) = 2e-8 rad at that pixel
    assert float(angular_error(flipped, truth)) == pytest.approx(expected, abs=1e-6)
    assert np.isnan(float(angular_error(estimate, np.zeros_like(truth))))


def test_spatiotemporal_angular_error_hand_values():
    ones = np.ones((4, 4))
    truth = np.stack([ones, 0 * ones])  # (1, 0, 1)
    estimate = np.stack([0 * ones, ones])  # (0, 1, 1): cos = 1/2
    kind = "spatiotemporal"
    assert float(angular_error(estimate, truth, kind=kind)) == pytest.approx(60.0)
    # a zero vector counts: (0, 0, 1) against (1, 0, 1) is 45 degrees
    zero = np.zeros_like(truth)
    assert float(angular_error(truth, zero, kind=kind)) == pytest.approx(45.0)
    assert np.isnan(float(angular_error(truth, zero)))  # planar: no pixel left


def test_masks_select_pixels_and_broadcast_over_leading_axes():
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((3, 2, 5, 5))
    estimate = rng.standard_normal((3, 2, 5, 5))
    mask = rng.random((3, 5, 5)) < 0.5
    err = np.sqrt(np.sum((estimate - truth) ** 2, axis=1))
    expected = err[mask].mean()
    assert float(endpoint_error(estimate, truth, mask)) == pytest.approx(
        expected, 1e-12
    )
    pixels = mask[0]
    expected = err[:, pixels].mean()
    assert float(endpoint_error(estimate, truth, pixels)) == pytest.approx(
        expected, 1e-12
    )
    ae = angular_error(estimate, truth, mask)
    per_pixel = np.degrees(
        np.arccos(
            np.clip(
                np.sum(estimate * truth, axis=1)
                / (np.linalg.norm(estimate, axis=1) * np.linalg.norm(truth, axis=1)),
                -1,
                1,
            )
        )
    )
    assert float(ae) == pytest.approx(per_pixel[mask].mean(), rel=1e-12)
    empty = np.zeros((3, 5, 5), bool)
    assert np.isnan(float(endpoint_error(estimate, truth, empty)))


def test_norms_of_linear_fields_in_physical_units():
    grid = Grid(6, 7, dy=3.0, dx=2.0, boundary="closed")
    y, x = np.meshgrid(np.asarray(grid.y), np.asarray(grid.x), indexing="ij")
    a, b = 0.5, -2.0
    w = np.stack([a * x, b * y])  # du/dx = a, dv/dy = b, the rest 0
    n_inner = (6 - 2) * (7 - 2)
    grad = velocity_gradient_norm(w, grid)
    assert float(grad) == pytest.approx(math.sqrt(n_inner * (a**2 + b**2)), 1e-12)
    div = velocity_divergence_norm(w, grid)
    assert float(div) == pytest.approx(math.sqrt(n_inner) * abs(a + b), 1e-12)
    # grid units: the differences of the coordinates are dx and dy
    grad_units = velocity_gradient_norm(w)
    expected = math.sqrt(n_inner * ((a * 2.0) ** 2 + (b * 3.0) ** 2))
    assert float(grad_units) == pytest.approx(expected, 1e-12)
    # the error forms are the norms of the difference field
    truth = np.random.default_rng(4).standard_normal(w.shape)
    assert float(gradient_error(truth + w, truth, grid)) == pytest.approx(float(grad))
    assert float(divergence_error(truth + w, truth, grid)) == pytest.approx(float(div))


def test_vmap_gives_per_sample_scores_and_jit_agrees():
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((4, 2, 5, 5))
    estimate = rng.standard_normal((4, 2, 5, 5))

    @eqx.filter_jit
    def per_sample(e, t):
        return jax.vmap(endpoint_error)(e, t), jax.vmap(angular_error)(e, t)

    epe, ae = (np.asarray(s) for s in per_sample(estimate, truth))
    for i in range(4):
        t, e = _theirs(truth[i]), _theirs(estimate[i])
        assert float(epe[i]) == pytest.approx(_ref_epe(t, e), rel=1e-12)
        assert float(ae[i]) == pytest.approx(_ref_ae(t, e), rel=1e-12)
    # pooled over the samples: the mean of per-sample EPEs (same pixel count each)
    assert float(endpoint_error(estimate, truth)) == pytest.approx(float(epe.mean()))


def test_bad_input():
    w = np.zeros((2, 5, 5))
    with pytest.raises(ValueError, match="estimate.*velocity field of shape"):
        endpoint_error(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="truth.*velocity field"):
        endpoint_error(w, np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="same shape"):
        angular_error(w, np.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match="mask"):
        endpoint_error(w, w, np.ones((4, 5), bool))
    with pytest.raises(TypeError, match="mask.*boolean"):
        endpoint_error(w, w, np.ones((5, 5)))
    with pytest.raises(ValueError, match="kind"):
        angular_error(w, w, kind="3d")
    with pytest.raises(TypeError, match="estimate.*real"):
        endpoint_error(w.astype(bool), w)
    with pytest.raises(ValueError, match="grid.*does not match"):
        velocity_gradient_norm(w, Grid(5, 6))
    with pytest.raises(TypeError, match="grid"):
        velocity_divergence_norm(w, grid=1.0)
    with pytest.raises(ValueError, match="3 x 3"):
        velocity_gradient_norm(np.zeros((2, 2, 5)))
