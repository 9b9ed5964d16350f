"""Probabilistic scores: the CRPS against its closed form for a Gaussian and against
the pairwise formulas, the fair estimator's unbiasedness, the spread-skill ratio and
the interval coverage of calibrated ensembles (tolerances from the sampling error)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxda.metrics import crps_ensemble, interval_coverage, spread_skill_ratio


def gaussian_crps(mu, sigma, y):
    """The closed form for N(mu, sigma^2) [GR07]:
    sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)), z = (y - mu) / sigma."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


def pairwise_crps(ens, y, fair):
    """The O(N^2) energy forms, member axis 0."""
    n = ens.shape[0]
    first = np.mean(np.abs(ens - y), axis=0)
    pairs = np.abs(ens[:, None] - ens[None]).sum(axis=(0, 1))
    return first - 0.5 * pairs / (n * (n - 1) if fair else n * n)


@eqx.filter_jit
def per_point_crps(ens, y, estimator):
    """The CRPS at each point (vmap over the field axis); `estimator` is static."""
    return jax.vmap(lambda e, t: crps_ensemble(e, t, estimator=estimator), (1, 0))(
        ens, y
    )


def test_crps_equals_the_pairwise_formulas():
    rng = np.random.default_rng(0)
    ens, y = rng.normal(size=(7, 5, 6)), rng.normal(size=(5, 6))
    mask = rng.uniform(size=(5, 6)) < 0.5
    for estimator, fair in (("fair", True), ("pwm", True), ("nrg", False)):
        ref = pairwise_crps(ens, y, fair)
        got = crps_ensemble(jnp.asarray(ens), jnp.asarray(y), estimator=estimator)
        np.testing.assert_allclose(got, ref.mean(), rtol=1e-12)
        got = crps_ensemble(ens, y, jnp.asarray(mask), estimator=estimator)
        np.testing.assert_allclose(got, ref[mask].mean(), rtol=1e-12)


def test_crps_of_a_point_mass_is_the_absolute_error():
    x, y = np.linspace(-2.0, 3.0, 12), np.linspace(1.0, -1.0, 12)
    ens = np.broadcast_to(x, (4, 12))
    for estimator in ("fair", "nrg"):
        got = crps_ensemble(ens, y, estimator=estimator)
        np.testing.assert_allclose(got, np.mean(np.abs(x - y)), rtol=1e-13)


def test_crps_of_a_large_gaussian_ensemble_converges_to_the_closed_form():
    rng = np.random.default_rng(1)
    n, points = 4000, 32
    mu, sigma = rng.normal(size=points), rng.uniform(0.5, 2.0, size=points)
    y = mu + sigma * rng.normal(size=points)
    ens = mu + sigma * rng.normal(size=(n, points))
    exact = gaussian_crps(mu, sigma, y).mean()
    # Standard deviation of each per-point estimate: at most that of its first term,
    # std|X - y| / sqrt(N), plus that of its second, the U-statistic
    # sum_{i != j} |x_i - x_j| / (2 N (N-1)), whose variance is Var(g(X)) / N to
    # leading order (Hoeffding), g(x) = E|x - X'| = CRPS(F, x) + sigma / sqrt(pi).
    g = gaussian_crps(mu, sigma, ens) + sigma / np.sqrt(np.pi)
    sd = np.abs(ens - y).std(axis=0) / np.sqrt(n) + g.std(axis=0) / np.sqrt(n)
    tol = 5 * np.sqrt(np.sum(sd**2)) / points
    for estimator in ("fair", "nrg"):
        got = float(crps_ensemble(ens, y, estimator=estimator))
        assert abs(got - exact) < tol, (estimator, got, exact, tol)


def test_fair_crps_is_unbiased_over_small_ensembles():
    """Over 20000 independent 3-member ensembles the mean fair CRPS is the closed
    form; the energy form overestimates it by E|X - X'| / (2N) = 0.19 here."""
    rng = np.random.default_rng(2)
    n, points = 3, 20000
    y = rng.normal(size=points)
    ens = rng.normal(size=(n, points))
    exact = gaussian_crps(0.0, 1.0, y).mean()
    fair = np.asarray(per_point_crps(jnp.asarray(ens), jnp.asarray(y), "fair"))
    tol = 5 * fair.std() / np.sqrt(points)
    assert abs(fair.mean() - exact) < tol, (fair.mean(), exact, tol)
    nrg = np.asarray(per_point_crps(jnp.asarray(ens), jnp.asarray(y), "nrg"))
    bias = (2 / np.sqrt(np.pi)) / (2 * n)
    assert abs(nrg.mean() - exact - bias) < 5 * nrg.std() / np.sqrt(points)


def test_spread_skill_of_a_calibrated_ensemble_is_one():
    """Members and truth drawn from N(mu_i, 1.3^2): the relative standard deviation
    of the ratio is about sqrt(2 / (P (N-1)) + 2 / P) / 2 = 0.0053 (P = 20000
    points, N = 10); the uncorrected ratio sqrt(N / (N+1)) = 0.953 is 9 of them
    away."""
    rng = np.random.default_rng(3)
    n, points, sigma = 10, 20000, 1.3
    mu = rng.normal(size=points) * 5
    truth = mu + sigma * rng.normal(size=points)
    ens = mu + sigma * rng.normal(size=(n, points))
    tol = 5 * 0.5 * np.sqrt(2 / (points * (n - 1)) + 2 / points)
    ratio = float(spread_skill_ratio(ens, truth))
    assert abs(ratio - 1.0) < tol, (ratio, tol)
    raw = float(spread_skill_ratio(ens, truth, finite_ensemble_correction=False))
    assert abs(raw - np.sqrt(n / (n + 1))) < tol
    # An ensemble with half the spread scores about 0.5 (with the correction:
    # sqrt((N+1)/N) * 0.5 sigma / (sigma sqrt(1 + 1/(4N)))).
    narrow = mu + 0.5 * sigma * rng.normal(size=(n, points))
    expected = np.sqrt((n + 1) / n) * 0.5 / np.sqrt(1 + 0.25 / n)
    assert abs(float(spread_skill_ratio(narrow, truth)) - expected) < tol


def test_interval_coverage_of_a_calibrated_ensemble():
    """N = 19 members: the 90 % interval between the 1st and 19th members covers an
    exchangeable truth with probability 18/20 = 0.9 exactly; binomial tolerance (5
    standard deviations, 0.011 at P = 20000 points). Linearly interpolated quantiles
    would give about 0.81."""
    rng = np.random.default_rng(4)
    n, points = 19, 20000
    mu = rng.normal(size=points)
    truth = mu + rng.normal(size=points)
    ens = mu + rng.normal(size=(n, points))
    tol = 5 * np.sqrt(0.9 * 0.1 / points)
    got = float(interval_coverage(ens, truth, 0.9))
    assert abs(got - 0.9) < tol, (got, tol)
    # The Gaussian predictive interval (Student t) is exact for Gaussian members,
    # also for 5 of them.
    small = ens[:5]
    got = float(interval_coverage(small, truth, 0.9, method="gaussian"))
    assert abs(got - 0.9) < tol, (got, tol)
    # 50 % with 39 members: positions 10 and 30 -> 20/40.
    ens39 = mu + rng.normal(size=(39, points))
    got = float(interval_coverage(ens39, truth, 0.5))
    assert abs(got - 0.5) < 5 * np.sqrt(0.25 / points)
    # The mask counts the selected points only.
    mask = np.zeros(points, bool)
    mask[:10] = True
    inside = (truth >= np.sort(ens, 0)[0]) & (truth <= np.sort(ens, 0)[-1])
    got = interval_coverage(ens, truth, 0.9, jnp.asarray(mask))
    np.testing.assert_allclose(got, inside[:10].mean())


def test_scores_jit_vmap_and_float32():
    rng = np.random.default_rng(5)
    ens = jnp.asarray(rng.normal(size=(6, 3, 8)), jnp.float32)
    truth = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)

    @eqx.filter_jit
    def scores(ens, truth):
        return jax.vmap(
            lambda e, t: (
                crps_ensemble(e, t),
                spread_skill_ratio(e, t),
                interval_coverage(e, t, 0.8),
            ),
            in_axes=(1, 0),
        )(ens, truth)

    crps, ssr, cov = scores(ens, truth)
    assert crps.shape == (3,) and crps.dtype == jnp.float32
    assert ssr.dtype == jnp.float32 and cov.dtype == jnp.float32
    ref = [
        pairwise_crps(np.asarray(ens[:, i], np.float64), truth[i], True).mean()
        for i in range(3)
    ]
    np.testing.assert_allclose(crps, ref, rtol=1e-5)


def test_bad_input():
    ens, truth = jnp.zeros((4, 5)), jnp.zeros(5)
    for score in (crps_ensemble, spread_skill_ratio, interval_coverage):
        with pytest.raises(ValueError, match="`ensemble` must have shape"):
            score(jnp.zeros((4, 6)), truth)
        with pytest.raises(ValueError, match="at least 2 members"):
            score(jnp.zeros((1, 5)), truth)
        with pytest.raises(TypeError, match="`mask` must be a boolean"):
            score(ens, truth, mask=jnp.ones(5))
        with pytest.raises(ValueError, match="`mask` must have the shape"):
            score(ens, truth, mask=jnp.ones(4, bool))
    with pytest.raises(ValueError, match="`estimator` must be one of"):
        crps_ensemble(ens, truth, estimator="qd")
    with pytest.raises(ValueError, match="`level` must be in"):
        interval_coverage(ens, truth, 1.0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        interval_coverage(ens, truth, method="t")
