"""Held-out lppd, mutual-information share and the plug-in against predictive gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monteclora_pyro import metrics
from monteclora_pyro.analysis.heldout import (
    heldout,
    mutual_information_share,
    pointwise_lppd,
    pool_predictions,
)
from monteclora_pyro.runs import Predictions

# 2 draws, 3 examples, 2 classes
DRAWS = np.array(
    [
        [[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]],
        [[0.7, 0.3], [0.2, 0.8], [0.1, 0.9]],
    ]
)
LABELS = np.array([0, 1, 0])


def test_lppd_by_hand():
    # log of the draw-averaged probability of the true class, per example
    expected = [math.log((0.9 + 0.7) / 2), math.log((0.6 + 0.8) / 2), math.log((0.5 + 0.1) / 2)]
    pointwise = pointwise_lppd(DRAWS, LABELS)
    np.testing.assert_allclose(pointwise, expected, rtol=1e-12)
    result = heldout(Predictions(LABELS, DRAWS.mean(0), DRAWS), "run", "validation")
    assert result.lppd == pytest.approx(sum(expected))
    assert result.lppd_per_example == pytest.approx(sum(expected) / 3)
    # lppd/n is the negative predictive NLL, not the mean over draws of the per-draw NLL
    assert -result.lppd_per_example == pytest.approx(metrics.nll(DRAWS.mean(0), LABELS))
    per_draw = np.mean([metrics.nll(d, LABELS) for d in DRAWS])
    assert -result.lppd_per_example < per_draw  # Jensen
    assert result.num_examples == 3 and result.num_draws == 2


def test_lppd_clips_like_the_nll_and_checks_shapes():
    draws = np.array([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert pointwise_lppd(draws, np.array([1]))[0] == pytest.approx(math.log(1e-12))
    with pytest.raises(ValueError, match=r"\(S, n, C\)"):
        pointwise_lppd(draws[0], np.array([1]))


def test_mutual_information_share():
    mi, total, share = mutual_information_share(DRAWS)
    decomposition = metrics.uncertainty_decomposition(DRAWS)
    assert mi == pytest.approx(decomposition.epistemic.mean()) and mi > 0
    assert total == pytest.approx(decomposition.total.mean())
    assert 0.0 < share < 1.0 and share == pytest.approx(mi / total)
    agreeing = np.repeat(DRAWS[:1], 4, axis=0)
    mi, total, share = mutual_information_share(agreeing)
    assert mi == 0.0 and share == 0.0 and total > 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        draws = rng.dirichlet(np.full(3, 0.3), size=(5, 7))
        assert 0.0 <= mutual_information_share(draws)[2] <= 1.0
    certain = np.zeros((2, 3, 2))
    certain[..., 0] = 1.0
    assert math.isnan(mutual_information_share(certain)[2])


def test_gap_signs_on_a_constructed_case():
    # The plug-in is overconfident and wrong on example 2; averaging the draws hedges it.
    labels = np.array([0, 0, 1, 1])
    draws = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.1, 0.9]],
            [[0.9, 0.1], [0.8, 0.2], [0.01, 0.99], [0.1, 0.9]],
        ]
    )
    plugin = np.array([[0.9, 0.1], [0.8, 0.2], [0.99, 0.01], [0.1, 0.9]])
    result = heldout(Predictions(labels, plugin, draws), "run", "validation")
    assert result.gap("nll") > 0  # the predictive has the lower NLL
    assert result.gap("nll") == pytest.approx(
        metrics.nll(plugin, labels) - metrics.nll(draws.mean(0), labels)
    )
    assert result.gap("accuracy") == pytest.approx(0.75 - 1.0)  # the plug-in misses example 2
    assert result.gap("ece") == pytest.approx(
        metrics.ece(plugin, labels) - metrics.ece(draws.mean(0), labels)
    )
    # identical plug-in and predictive: no gap
    same = heldout(Predictions(labels, draws.mean(0), draws))
    assert all(same.gap(m) == 0.0 for m in ("nll", "accuracy", "ece"))
    row = result.row()
    assert row["nll gap"] == result.gap("nll") and row["lppd"] == result.lppd
    assert row["MI share"] == pytest.approx(result.mi_share)
    line = result.describe()
    assert "held-out lppd on validation (n=4, S=2)" in line and "plug-in minus predictive" in line


def test_pool_predictions_of_restarts():
    a = Predictions(LABELS, DRAWS[0], DRAWS[:1])
    b = Predictions(LABELS, DRAWS[1], DRAWS[1:])
    pooled = pool_predictions([a, b])
    np.testing.assert_array_equal(pooled.draw_probs, DRAWS)
    np.testing.assert_allclose(pooled.mean_probs, DRAWS.mean(0))
    with pytest.raises(ValueError, match="different examples"):
        pool_predictions([a, Predictions(1 - LABELS, DRAWS[0], DRAWS[:1])])
    with pytest.raises(ValueError, match="no predictions"):
        pool_predictions([])
