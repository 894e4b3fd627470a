"""Regression metrics in closed form: mixtures of Normals, interval coverage, RMSE, correlations."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from monteclora_pyro import metrics

Z95 = NormalDist().inv_cdf(0.95)  # 1.6449: the central 90 % interval is m ± Z95·σ


def _normal_logpdf(y, m, tau):
    return 0.5 * math.log(tau / (2 * math.pi)) - 0.5 * tau * (y - m) ** 2


def test_log_density_of_one_normal_and_of_a_mixture_by_hand():
    y = np.array([0.0, 1.0, 3.0])
    one = metrics.normal_mixture_log_density([0.5, 0.5, 2.0], 4.0, y)
    by_hand = [_normal_logpdf(v, m, 4.0) for v, m in zip(y, [0.5, 0.5, 2.0], strict=True)]
    np.testing.assert_allclose(one, by_hand)
    means = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 5.0]])
    taus = np.array([1.0, 0.25])  # one precision per draw
    expected = [
        math.log(0.5 * sum(math.exp(_normal_logpdf(v, means[s, i], taus[s])) for s in range(2)))
        for i, v in enumerate(y)
    ]
    np.testing.assert_allclose(
        metrics.normal_mixture_log_density(means, taus, y), expected, rtol=1e-12
    )
    # far in a tail the log-sum-exp stays finite where the densities underflow
    far = metrics.normal_mixture_log_density([[0.0], [1.0]], [[1e4], [1e4]], [60.0])
    assert np.isfinite(far).all() and far[0] == pytest.approx(
        _normal_logpdf(60, 1, 1e4) - math.log(2)
    )


def test_cdf_quantile_and_coverage_of_one_normal():
    m, tau = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    sigma = 1 / np.sqrt(tau)
    x = m + 0.7 * sigma
    np.testing.assert_allclose(metrics.normal_mixture_cdf(m, tau, x), NormalDist().cdf(0.7))
    for q in (0.05, 0.5, 0.95):
        np.testing.assert_allclose(
            metrics.normal_mixture_quantile(m, tau, q), m + NormalDist().inv_cdf(q) * sigma
        )
    # labels at 0.1σ, 1.6σ and 1.7σ from the mean: inside the 90 % interval (±1.645σ) or not
    labels = np.array([1.0 + 0.1 * 0.5, 1.0 + 1.6 * 0.5, 1.0 - 1.7 * 0.5])
    covered = metrics.interval_coverage(np.ones(3), 4.0, labels, [0.1, 0.9])
    assert covered[1] == pytest.approx(2 / 3)  # ±1.645σ: 0.1σ and 1.6σ inside
    assert covered[0] == pytest.approx(1 / 3)  # ±0.126σ: only 0.1σ


def test_mixture_quantiles_invert_the_cdf():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5, 40))
    taus = rng.uniform(0.5, 8.0, size=(5, 40))
    for q in (0.05, 0.3, 0.95):
        x = metrics.normal_mixture_quantile(means, taus, q)
        np.testing.assert_allclose(metrics.normal_mixture_cdf(means, taus, x), q, atol=1e-10)
    # a symmetric two-component mixture has its median at the centre
    centre = metrics.normal_mixture_quantile([[-1.0], [3.0]], 2.0, 0.5)
    assert centre[0] == pytest.approx(1.0, abs=1e-10)


def test_coverage_of_a_well_specified_predictive_is_its_level():
    """Labels drawn from the predictive itself: each level p is covered with probability p.

    n = 4000, so each coverage has a binomial standard error √(p(1-p)/n) ≤ 0.0079; the bound
    is 3.5 of them (a family of 9 levels, so that all pass with probability ≈ 0.996); this
    seed lands within 1.2 of them at every level.
    """
    rng = np.random.default_rng(1)
    n, s = 4000, 4
    means = rng.normal(2.5, 1.0, size=(s, n))
    taus = rng.gamma(4.0, 1.0, size=(s, 1))
    component = rng.integers(0, s, size=n)
    labels = rng.normal(means[component, np.arange(n)], 1 / np.sqrt(taus[component, 0]))
    levels = np.array(metrics.COVERAGE_LEVELS)
    covered = metrics.interval_coverage(means, taus, labels, levels)
    se = np.sqrt(levels * (1 - levels) / n)
    assert np.all(np.abs(covered - levels) <= 3.5 * se), covered - levels
    # every σ halved: the mixture's 90 % intervals shrink and cover 0.78 (0.895 above)
    narrow = metrics.interval_coverage(means, 4 * taus, labels, [0.9])[0]
    assert narrow < 0.9 - 10 * se[-1]


def test_regression_report_by_hand():
    labels = np.array([1.0, 2.0, 4.0, 3.0])
    means = np.array([[1.5, 2.0, 3.0, 3.5], [0.5, 2.0, 5.0, 2.5]])
    taus = np.array([[1.0], [4.0]])
    report = metrics.regression_report(means, taus, labels)
    point = means.mean(0)  # [1, 2, 4, 3]: the labels exactly
    assert report["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert report["pearson"] == pytest.approx(1.0) and report["spearman"] == pytest.approx(1.0)
    assert report["nll"] == pytest.approx(
        -metrics.normal_mixture_log_density(means, taus, labels).mean()
    )
    width = metrics.normal_mixture_quantile(means, taus, 0.95) - metrics.normal_mixture_quantile(
        means, taus, 0.05
    )
    assert report["width_90"] == pytest.approx(width.mean())
    assert set(report) == {"pearson", "spearman", "rmse", "nll", "coverage_90", "width_90"}
    one = metrics.regression_report(point + 0.5, 1.0, labels)  # S = 1, every error 0.5
    assert one["rmse"] == pytest.approx(0.5)
    assert one["width_90"] == pytest.approx(2 * Z95)
    assert one["coverage_90"] == 1.0  # 0.5 < 1.645
    assert one["nll"] == pytest.approx(-_normal_logpdf(0.5, 0.0, 1.0))
    assert metrics.rmse([0.0, 0.0], [3.0, 4.0]) == pytest.approx(math.sqrt(12.5))


def test_variance_decomposition_by_hand():
    means = np.array([[0.0, 1.0], [2.0, 1.0]])
    taus = np.array([[1.0, 2.0], [0.5, 4.0]])
    total, aleatoric, epistemic = metrics.variance_decomposition(means, taus)
    np.testing.assert_allclose(aleatoric, [(1 + 2) / 2, (0.5 + 0.25) / 2])
    np.testing.assert_allclose(epistemic, [1.0, 0.0])  # population variance of the means
    np.testing.assert_allclose(total, aleatoric + epistemic)


def test_validation():
    with pytest.raises(ValueError, match="precisions must be positive"):
        metrics.normal_mixture_log_density([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="means cover 2 examples, but there are 3 labels"):
        metrics.regression_report([1.0, 2.0], 1.0, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="do not fit"):
        metrics.normal_mixture_cdf(np.ones((2, 3)), np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        metrics.normal_mixture_cdf([np.nan], 1.0, [0.0])
    with pytest.raises(ValueError, match=r"levels must lie in \(0, 1\)"):
        metrics.interval_coverage([0.0], 1.0, [0.0], [1.0])
    with pytest.raises(ValueError, match=r"q must lie in \(0, 1\)"):
        metrics.normal_mixture_quantile([0.0], 1.0, 0.0)
