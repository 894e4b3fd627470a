"""Tests for monteclora_pyro.metrics against hand-computed values."""

import json
import math

import numpy as np
import pytest

from monteclora_pyro import metrics


def binary_probs(confidences, correct):
    """Binary probs whose top class 0 has the given confidence; label 0 iff correct."""
    probs = np.array([[c, 1.0 - c] for c in confidences])
    labels = np.array([0 if ok else 1 for ok in correct])
    return probs, labels


# ------------------------------------------------------------------------------ accuracy


def test_accuracy_by_hand():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    labels = np.array([0, 0, 1])  # argmax is [0, 1, 0]: only the first is right
    assert metrics.accuracy(probs, labels) == pytest.approx(1 / 3)


def test_accuracy_all_correct_all_wrong_and_ties():
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    assert metrics.accuracy(probs, np.array([0, 1])) == 1.0
    assert metrics.accuracy(probs, np.array([1, 0])) == 0.0
    # A tie resolves to the lowest class index.
    assert metrics.accuracy(np.array([[0.5, 0.5]]), np.array([0])) == 1.0


# ----------------------------------------------------------------------------------- nll


def test_nll_by_hand():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    labels = np.array([0, 0, 1])
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.3)) / 3
    assert metrics.nll(probs, labels) == pytest.approx(expected)


def test_nll_clips_at_eps():
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    labels = np.array([1, 0])
    assert metrics.nll(probs, labels) == pytest.approx((-math.log(1e-12) + 0.0) / 2)
    assert metrics.nll(probs, labels, eps=1e-3) == pytest.approx(-math.log(1e-3) / 2)


def test_nll_all_correct_is_zero():
    assert metrics.nll(np.eye(3), np.array([0, 1, 2])) == 0.0


# --------------------------------------------------------------------------------- brier


def test_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 0])
    expected = ((0.9 - 1) ** 2 + 0.1**2 + (0.4 - 1) ** 2 + 0.6**2) / 2
    assert metrics.brier(probs, labels) == pytest.approx(expected)


def test_brier_multiclass_one_class_present_in_labels():
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([0, 0])  # classes 1 and 2 never appear as labels
    expected = ((0.2 - 1) ** 2 + 0.3**2 + 0.5**2 + (0.6 - 1) ** 2 + 0.3**2 + 0.1**2) / 2
    assert metrics.brier(probs, labels) == pytest.approx(expected)


def test_brier_extremes():
    assert metrics.brier(np.eye(2), np.array([0, 1])) == 0.0
    assert metrics.brier(np.eye(2), np.array([1, 0])) == 2.0  # multi-class range is [0, 2]


# ------------------------------------------------------------------------------- ece/bins


def test_ece_uniform_by_hand_with_empty_bins():
    probs, labels = binary_probs([0.9, 0.9, 0.6, 0.6], [True, True, True, False])
    expected = (abs(0.9 - 1.0) * 2 + abs(0.6 - 0.5) * 2) / 4
    assert metrics.ece(probs, labels, n_bins=5) == pytest.approx(expected)

    bins = metrics.reliability_bins(probs, labels, n_bins=5)
    np.testing.assert_allclose(bins.lower, [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(bins.upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    # 0.6 is an upper edge: it belongs to (0.4, 0.6], not (0.6, 0.8].
    np.testing.assert_array_equal(bins.count, [0, 0, 2, 0, 2])
    np.testing.assert_allclose(bins.confidence, [np.nan, np.nan, 0.6, np.nan, 0.9])
    np.testing.assert_allclose(bins.accuracy, [np.nan, np.nan, 0.5, np.nan, 1.0])


def test_uniform_bins_confidence_exactly_on_edges():
    confidences = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.7 + 1e-9]
    probs, labels = binary_probs(confidences, [True] * len(confidences))
    bins = metrics.reliability_bins(probs, labels, n_bins=10)
    # Bin i is (i/10, (i+1)/10]: 0.5 -> 4, 0.6 -> 5, 0.7 -> 6, ..., 1.0 -> 9, 0.7+ -> 7.
    np.testing.assert_array_equal(bins.count, [0, 0, 0, 0, 1, 1, 1, 2, 1, 1])
    np.testing.assert_allclose(bins.confidence[7], (0.8 + 0.7 + 1e-9) / 2)


def test_uniform_first_bin_includes_its_upper_edge():
    probs = np.full((2, 5), 0.2)  # top-class confidence exactly 0.2
    labels = np.array([0, 3])
    bins = metrics.reliability_bins(probs, labels, n_bins=5)
    np.testing.assert_array_equal(bins.count, [2, 0, 0, 0, 0])
    expected = abs(0.2 - 0.5)  # argmax is class 0, so one of two is right
    assert metrics.ece(probs, labels, n_bins=5) == pytest.approx(expected)


def test_ece_all_correct_confident_is_zero_and_all_wrong_is_confidence():
    probs = np.eye(3)
    assert metrics.ece(probs, np.array([0, 1, 2])) == 0.0
    assert metrics.ece(probs, np.array([1, 2, 0])) == 1.0
    assert metrics.ece(probs, np.array([1, 2, 0]), strategy="quantile") == 1.0


def test_ece_quantile_by_hand():
    probs, labels = binary_probs([0.6, 0.9, 0.7, 0.8], [False, True, True, True])
    # Sorted: 0.6, 0.7 | 0.8, 0.9.
    expected = (abs((0.6 + 0.7) / 2 - 0.5) * 2 + abs((0.8 + 0.9) / 2 - 1.0) * 2) / 4
    assert metrics.ece(probs, labels, n_bins=2, strategy="quantile") == pytest.approx(expected)
    bins = metrics.reliability_bins(probs, labels, n_bins=2, strategy="quantile")
    np.testing.assert_allclose(bins.lower, [0.6, 0.8])
    np.testing.assert_allclose(bins.upper, [0.7, 0.9])
    np.testing.assert_array_equal(bins.count, [2, 2])


def test_ece_quantile_uneven_split_and_fewer_examples_than_bins():
    probs, labels = binary_probs([0.5, 0.6, 0.7, 0.8, 0.9], [True, False, True, True, False])
    # array_split of 5 into 2 gives sizes 3 and 2.
    expected = (abs(0.6 - 2 / 3) * 3 + abs(0.85 - 0.5) * 2) / 5
    assert metrics.ece(probs, labels, n_bins=2, strategy="quantile") == pytest.approx(expected)

    bins = metrics.reliability_bins(probs, labels, n_bins=15, strategy="quantile")
    np.testing.assert_array_equal(bins.count, [1, 1, 1, 1, 1])
    expected = (abs(0.5 - 1) + abs(0.6 - 0) + abs(0.7 - 1) + abs(0.8 - 1) + abs(0.9 - 0)) / 5
    assert metrics.ece(probs, labels, strategy="quantile") == pytest.approx(expected)


def test_ece_quantile_ties_keep_original_order():
    probs, labels = binary_probs([0.8, 0.8, 0.8, 0.8], [True, True, False, False])
    quantile = (abs(0.8 - 1.0) * 2 + abs(0.8 - 0.0) * 2) / 4
    uniform = abs(0.8 - 0.5)
    assert metrics.ece(probs, labels, n_bins=2, strategy="quantile") == pytest.approx(quantile)
    assert metrics.ece(probs, labels, n_bins=2) == pytest.approx(uniform)


def test_quantile_bins_use_a_stable_sort_on_many_ties():
    rng = np.random.default_rng(5)
    confidences = 0.5 + rng.integers(0, 3, size=200) / 4  # only 0.5, 0.75 and 1.0
    correct = rng.random(200) < 0.6
    probs, labels = binary_probs(confidences, correct)
    order = sorted(range(200), key=lambda i: confidences[i])  # Python's sort is stable
    chunks = np.array_split(np.array(order), 7)
    bins = metrics.reliability_bins(probs, labels, n_bins=7, strategy="quantile")
    np.testing.assert_allclose(bins.accuracy, [correct[c].mean() for c in chunks])
    np.testing.assert_allclose(bins.confidence, [confidences[c].mean() for c in chunks])


# ----------------------------------------------------------------------------------- mcc


def test_mcc_binary_by_hand():
    pred = np.array([1, 1, 0, 0, 1])
    labels = np.array([1, 0, 0, 0, 1])
    tp, fp, tn, fn = 2, 1, 2, 0
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews_corrcoef(pred, labels) == pytest.approx(expected)


def test_mcc_multiclass_by_hand():
    labels = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 2, 1, 0, 0, 2])
    correct, n = 3, 6
    t = np.array([2, 2, 2])  # true counts per class
    p = np.array([3, 1, 2])  # predicted counts per class
    expected = (correct * n - t @ p) / math.sqrt((n * n - p @ p) * (n * n - t @ t))
    assert metrics.matthews_corrcoef(pred, labels) == pytest.approx(expected)


def test_mcc_extremes_and_label_values():
    labels = np.array([0, 1, 1, 0])
    assert metrics.matthews_corrcoef(labels, labels) == 1.0
    assert metrics.matthews_corrcoef(1 - labels, labels) == -1.0
    # Only the partition matters, not the integer values of the classes.
    assert metrics.matthews_corrcoef(labels * 7 - 3, labels * 7 - 3) == 1.0


def test_mcc_undefined_is_zero():
    labels = np.array([0, 1, 1, 0])
    assert metrics.matthews_corrcoef(np.zeros(4, dtype=int), labels) == 0.0  # constant pred
    assert metrics.matthews_corrcoef(labels, np.ones(4, dtype=int)) == 0.0  # one label class
    assert metrics.matthews_corrcoef(np.ones(4, dtype=int), np.ones(4, dtype=int)) == 0.0


# ------------------------------------------------------------------------------------ f1


def test_f1_by_hand():
    pred = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 0, 1, 1])
    tp, fp, fn = 2, 1, 1
    assert metrics.f1_score(pred, labels) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    tp0, fp0, fn0 = 2, 1, 1  # positive=0: pred 0 at [2, 3, 5], label 0 at [1, 2, 3]
    expected = 2 * tp0 / (2 * tp0 + fp0 + fn0)
    assert metrics.f1_score(pred, labels, positive=0) == pytest.approx(expected)


def test_f1_edge_cases():
    assert metrics.f1_score(np.array([1, 0]), np.array([1, 0])) == 1.0
    assert metrics.f1_score(np.array([1, 0]), np.array([0, 1])) == 0.0  # all wrong
    zeros = np.zeros(3, dtype=int)
    assert metrics.f1_score(zeros, zeros) == 0.0  # undefined: no positives anywhere


# -------------------------------------------------------------------- pearson / spearman


def test_pearson_by_hand():
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 4.0])
    # Centred: x -> [-1, 0, 1], y -> [-4/3, -1/3, 5/3].
    cov = (-1) * (-4 / 3) + 0 * (-1 / 3) + 1 * (5 / 3)
    var_x = 1 + 0 + 1
    var_y = (16 + 1 + 25) / 9
    assert metrics.pearson(x, y) == pytest.approx(cov / math.sqrt(var_x * var_y))
    assert metrics.pearson(x, -2 * x + 1) == pytest.approx(-1.0)


def test_pearson_and_spearman_constant_input_is_nan():
    assert math.isnan(metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(metrics.spearman([1.0, 2.0, 3.0], [0.1, 0.1, 0.1]))


def test_spearman_average_ranks_for_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0])
    y = np.array([10.0, 20.0, 30.0, 40.0])
    # Ranks: x -> [1, 2.5, 2.5, 4], y -> [1, 2, 3, 4]; centred around 2.5.
    cov = (-1.5) * (-1.5) + 0 * (-0.5) + 0 * 0.5 + 1.5 * 1.5
    var_x = 1.5**2 + 0 + 0 + 1.5**2
    var_y = 1.5**2 + 0.5**2 + 0.5**2 + 1.5**2
    assert metrics.spearman(x, y) == pytest.approx(cov / math.sqrt(var_x * var_y))


def test_spearman_is_one_for_monotone_nonlinear():
    x = np.array([0.1, 0.5, 2.0, 3.0, 10.0])
    assert metrics.spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert metrics.spearman(x, -(x**3)) == pytest.approx(-1.0)


# ------------------------------------------------------------- uncertainty decomposition


def entropy(p):
    return -sum(q * math.log(q) for q in p if q > 0)


def test_decomposition_disagreeing_certain_draws():
    draws = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # S=2, n=1, C=2
    np.testing.assert_allclose(metrics.predictive_entropy(draws), [math.log(2)])
    np.testing.assert_allclose(metrics.expected_entropy(draws), [0.0])
    np.testing.assert_allclose(metrics.mutual_information(draws), [math.log(2)])


def test_decomposition_by_hand():
    draws = np.array([[[0.5, 0.5], [1.0, 0.0]], [[0.9, 0.1], [1.0, 0.0]]])  # S=2, n=2
    total = entropy([0.7, 0.3])
    aleatoric = (entropy([0.5, 0.5]) + entropy([0.9, 0.1])) / 2
    result = metrics.uncertainty_decomposition(draws)
    np.testing.assert_allclose(result.total, [total, 0.0])
    np.testing.assert_allclose(result.aleatoric, [aleatoric, 0.0])
    np.testing.assert_allclose(result.epistemic, [total - aleatoric, 0.0])


def test_decomposition_identity_on_random_dirichlet_draws():
    rng = np.random.default_rng(1234)
    draws = rng.dirichlet(np.full(5, 0.7), size=(30, 40))  # S=30, n=40, C=5
    result = metrics.uncertainty_decomposition(draws)
    for values in (result.total, result.aleatoric, result.epistemic):
        assert values.shape == (40,)
    np.testing.assert_allclose(result.total, result.aleatoric + result.epistemic, atol=1e-12)
    assert np.all(result.epistemic >= 0.0)
    assert np.all(result.epistemic > 0.0)  # draws genuinely disagree


def test_mutual_information_zero_when_draws_agree():
    rng = np.random.default_rng(7)
    single = rng.dirichlet(np.ones(4), size=25)  # n=25, C=4
    draws = np.repeat(single[None], 9, axis=0)
    mi = metrics.mutual_information(draws)
    assert np.all(mi >= 0.0)
    np.testing.assert_allclose(mi, 0.0, atol=1e-12)
    np.testing.assert_allclose(
        metrics.expected_entropy(draws), metrics.predictive_entropy(draws), atol=1e-12
    )


# ------------------------------------------------------------------ selective prediction


def test_accuracy_coverage_curve_with_ties():
    confidence = np.array([0.9, 0.5, 0.7, 0.5])
    correct = np.array([True, False, False, True])
    coverage, acc = metrics.accuracy_coverage_curve(confidence, correct)
    np.testing.assert_allclose(coverage, [1 / 4, 2 / 4, 3 / 4, 4 / 4])
    # Order: 0.9 (right), 0.7 (wrong), then the tied 0.5s in original order: wrong, right.
    np.testing.assert_allclose(acc, [1 / 1, 1 / 2, 1 / 3, 2 / 4])
    area = metrics.area_under_accuracy_coverage(confidence, correct)
    assert area == pytest.approx((1 / 1 + 1 / 2 + 1 / 3 + 2 / 4) / 4)

    # Swapping the tied examples changes the k=3 point: ties follow the original order.
    _, acc_swapped = metrics.accuracy_coverage_curve(confidence, correct[[0, 3, 2, 1]])
    np.testing.assert_allclose(acc_swapped, [1 / 1, 1 / 2, 2 / 3, 2 / 4])


def test_accuracy_coverage_curve_many_ties_keep_original_order():
    rng = np.random.default_rng(11)
    confidence = rng.integers(0, 3, size=200) / 4
    correct = rng.random(200) < 0.5
    order = sorted(range(200), key=lambda i: -confidence[i])  # Python's sort is stable
    k = np.arange(1, 201)
    _, acc = metrics.accuracy_coverage_curve(confidence, correct)
    np.testing.assert_allclose(acc, np.cumsum(correct[order]) / k)


def test_accuracy_coverage_all_correct_all_wrong_and_int_flags():
    confidence = np.array([0.3, 0.2, 0.1])
    assert metrics.area_under_accuracy_coverage(confidence, [1, 1, 1]) == 1.0
    assert metrics.area_under_accuracy_coverage(confidence, [0, 0, 0]) == 0.0
    # Perfect ranking (right ones most confident) beats the reversed ranking.
    best = metrics.area_under_accuracy_coverage(confidence, [1, 0, 0])
    worst = metrics.area_under_accuracy_coverage(confidence, [0, 0, 1])
    assert best == pytest.approx((1 / 1 + 1 / 2 + 1 / 3) / 3)
    assert worst == pytest.approx((0 / 1 + 0 / 2 + 1 / 3) / 3)


# --------------------------------------------------------------------------------- auroc


def test_auroc_by_hand_with_ties():
    scores_in = np.array([0.1, 0.4, 0.35])
    scores_out = np.array([0.8, 0.4])
    # 0.8 beats all three in-scores; 0.4 beats 0.1 and 0.35 and ties 0.4.
    expected = (3 + (1 + 0.5 + 1)) / (3 * 2)
    assert metrics.auroc(scores_in, scores_out) == pytest.approx(expected)


def test_auroc_extremes():
    assert metrics.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert metrics.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert metrics.auroc([0.5, 0.5], [0.5]) == 0.5


def test_auroc_matches_brute_force_pair_count():
    rng = np.random.default_rng(2024)
    for _ in range(20):
        scores_in = rng.integers(0, 8, size=rng.integers(1, 30)).astype(float)
        scores_out = rng.integers(0, 8, size=rng.integers(1, 30)).astype(float)
        wins = sum(1.0 if o > i else 0.5 if o == i else 0.0 for o in scores_out for i in scores_in)
        expected = wins / (len(scores_in) * len(scores_out))
        assert metrics.auroc(scores_in, scores_out) == pytest.approx(expected)


# -------------------------------------------------------------------------------- report


def test_classification_report_values_and_types():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 0, 1, 1])
    report = metrics.classification_report(probs, labels, extra=("mcc", "f1"))
    assert list(report) == ["accuracy", "nll", "ece", "ece_quantile", "brier", "mcc", "f1"]
    assert all(type(value) is float for value in report.values())
    json.dumps(report)
    assert report["accuracy"] == pytest.approx(2 / 4)
    expected_nll = -(math.log(0.9) + math.log(0.4) + math.log(0.3) + math.log(0.8)) / 4
    assert report["nll"] == pytest.approx(expected_nll)
    # 15 uniform bins: 0.6 and 0.7 land in separate bins, 0.8 and 0.9 too.
    assert report["ece"] == pytest.approx((0.1 + 0.6 + 0.7 + 0.2) / 4)
    assert report["ece_quantile"] == pytest.approx(report["ece"])  # one example per bin
    expected_brier = (2 * 0.1**2 + 2 * 0.6**2 + 2 * 0.7**2 + 2 * 0.2**2) / 4
    assert report["brier"] == pytest.approx(expected_brier)
    # Argmax pred [0, 1, 0, 1] against [0, 0, 1, 1]: tp = tn = fp = fn = 1.
    assert report["mcc"] == 0.0
    assert report["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_classification_report_extra_as_single_string():
    report = metrics.classification_report(np.eye(3), np.array([0, 1, 2]), extra="mcc")
    assert report["mcc"] == 1.0
    assert "f1" not in report


# ---------------------------------------------------------------------------- validation


GOOD_PROBS = np.array([[0.7, 0.3], [0.2, 0.8]])
GOOD_LABELS = np.array([0, 1])


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.7, 0.3]), GOOD_LABELS, r"shape \(n, C\)"),
        (np.zeros((0, 2)), np.array([], dtype=int), "non-empty"),
        (np.array([[np.nan, 1.0], [0.2, 0.8]]), GOOD_LABELS, "non-finite"),
        (np.array([[1.2, -0.2], [0.2, 0.8]]), GOOD_LABELS, r"in \[0, 1\]"),
        (np.array([[0.7, 0.2], [0.2, 0.8]]), GOOD_LABELS, "sum to 1"),
        (GOOD_PROBS, np.array([0, 1, 1]), "length 3 but probs has 2 rows"),
        (GOOD_PROBS, np.array([0, 2]), r"labels must lie in \[0, 2\)"),
        (GOOD_PROBS, np.array([0, -1]), r"labels must lie in \[0, 2\)"),
        (GOOD_PROBS, np.array([0.0, 1.0]), "integer dtype"),
        (GOOD_PROBS, np.array([[0], [1]]), "labels must be one-dimensional"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        metrics.accuracy,
        metrics.nll,
        metrics.brier,
        metrics.ece,
        metrics.reliability_bins,
        metrics.classification_report,
    ],
)
def test_probs_and_labels_validation(fn, probs, labels, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, labels)


def test_row_sums_within_tolerance_are_accepted():
    probs = np.array([[0.7, 0.3 + 5e-5], [0.2, 0.8]])
    assert metrics.accuracy(probs, GOOD_LABELS) == 1.0


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_ece_rejects_bad_n_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        metrics.ece(GOOD_PROBS, GOOD_LABELS, n_bins=n_bins)


def test_ece_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="strategy must be one of"):
        metrics.reliability_bins(GOOD_PROBS, GOOD_LABELS, strategy="equal")


def test_nll_rejects_nonpositive_eps():
    with pytest.raises(ValueError, match="eps must be positive"):
        metrics.nll(GOOD_PROBS, GOOD_LABELS, eps=0.0)


@pytest.mark.parametrize(
    ("draws", "match"),
    [
        (np.full((2, 2), 0.5), r"shape \(S, n, C\)"),
        (np.zeros((0, 2, 2)), "non-empty"),
        (np.array([[[0.5, 0.6]]]), "sum to 1"),
        (np.array([[[1.5, -0.5]]]), r"in \[0, 1\]"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        metrics.predictive_entropy,
        metrics.expected_entropy,
        metrics.mutual_information,
        metrics.uncertainty_decomposition,
    ],
)
def test_draws_validation(fn, draws, match):
    with pytest.raises(ValueError, match=match):
        fn(draws)


@pytest.mark.parametrize("fn", [metrics.matthews_corrcoef, metrics.f1_score])
def test_pred_label_validation(fn):
    with pytest.raises(ValueError, match="pred and labels must have the same length"):
        fn(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="pred must have an integer dtype"):
        fn(np.array([0.0, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be non-empty"):
        fn(np.array([0]), np.array([], dtype=int))


@pytest.mark.parametrize("fn", [metrics.pearson, metrics.spearman])
def test_regression_validation(fn):
    with pytest.raises(ValueError, match="x and y must have the same length"):
        fn([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="y contains non-finite values"):
        fn([1.0, 2.0], [1.0, np.inf])
    with pytest.raises(ValueError, match="x must be one-dimensional"):
        fn([[1.0, 2.0]], [1.0, 2.0])
    with pytest.raises(ValueError, match="x must be non-empty"):
        fn([], [])


def test_selective_prediction_validation():
    with pytest.raises(ValueError, match="correct has length 2 but confidence has length 3"):
        metrics.accuracy_coverage_curve([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="correct must contain only booleans or 0/1"):
        metrics.area_under_accuracy_coverage([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="confidence contains non-finite values"):
        metrics.accuracy_coverage_curve([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="confidence must be non-empty"):
        metrics.accuracy_coverage_curve([], [])


def test_auroc_rejects_empty_sets():
    with pytest.raises(ValueError, match="scores_in must be non-empty"):
        metrics.auroc([], [0.1])
    with pytest.raises(ValueError, match="scores_out must be non-empty"):
        metrics.auroc([0.1], [])


def test_classification_report_rejects_bad_extra():
    with pytest.raises(ValueError, match="unknown extra metrics"):
        metrics.classification_report(GOOD_PROBS, GOOD_LABELS, extra=("auc",))
    with pytest.raises(ValueError, match="'f1' needs binary probs"):
        metrics.classification_report(np.eye(3), np.array([0, 1, 2]), extra=("f1",))
