"""Evaluation metrics for classifiers, regressors and Bayesian posterior predictives.

Depends on numpy only. Conventions: ``probs`` is an ``(n, C)`` array of class
probabilities, ``draws`` an ``(S, n, C)`` array of per-draw class probabilities from
``S`` posterior draws, and ``labels`` an ``(n,)`` integer array with values in
``[0, C)``. Entropies use the natural logarithm. Invalid inputs raise ``ValueError``.
The regression metrics (correlations, RMSE, and the NLL, quantiles and interval coverage of
mixtures of Normals) live in :mod:`monteclora_pyro.regression_metrics` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monteclora_pyro.regression_metrics import (
    COVERAGE_LEVELS,
    INTERVAL_LEVEL,
    average_ranks,
    check_same_length,
    float_vector,
    interval_coverage,
    normal_mixture_cdf,
    normal_mixture_log_density,
    normal_mixture_quantile,
    pearson,
    regression_report,
    rmse,
    spearman,
    variance_decomposition,
)

__all__ = [
    "COVERAGE_LEVELS",
    "INTERVAL_LEVEL",
    "ReliabilityBins",
    "UncertaintyDecomposition",
    "accuracy",
    "accuracy_coverage_curve",
    "area_under_accuracy_coverage",
    "auroc",
    "brier",
    "classification_report",
    "ece",
    "expected_entropy",
    "f1_score",
    "interval_coverage",
    "matthews_corrcoef",
    "mutual_information",
    "nll",
    "normal_mixture_cdf",
    "normal_mixture_log_density",
    "normal_mixture_quantile",
    "pearson",
    "predictive_entropy",
    "regression_report",
    "reliability_bins",
    "rmse",
    "spearman",
    "uncertainty_decomposition",
    "variance_decomposition",
]

_SUM_TOL = 1e-4
_ROUNDOFF_TOL = 1e-12
_STRATEGIES = ("uniform", "quantile")
_EXTRA_METRICS = ("mcc", "f1")


# --------------------------------------------------------------------------- validation


def _check_simplex(p: NDArray[np.float64], name: str) -> None:
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains non-finite values")
    if np.any(p < 0.0) or np.any(p > 1.0):
        raise ValueError(f"{name} must contain probabilities in [0, 1]")
    bad = np.abs(p.sum(axis=-1) - 1.0) > _SUM_TOL
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} rows must sum to 1 within {_SUM_TOL:g}; row {where} sums to "
            f"{p.sum(axis=-1)[where]:.6g}"
        )


def _as_probs(probs: ArrayLike) -> NDArray[np.float64]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (n, C), got shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be non-empty, got shape {p.shape}")
    _check_simplex(p, "probs")
    return p


def _as_draws(draws: ArrayLike) -> NDArray[np.float64]:
    d = np.asarray(draws, dtype=np.float64)
    if d.ndim != 3:
        raise ValueError(f"draws must have shape (S, n, C), got shape {d.shape}")
    if 0 in d.shape:
        raise ValueError(f"draws must be non-empty, got shape {d.shape}")
    _check_simplex(d, "draws")
    return d


def _as_int_vector(x: ArrayLike, name: str) -> NDArray[np.int64]:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {a.dtype}")
    return a.astype(np.int64)


def _as_labels(labels: ArrayLike, n: int, n_classes: int) -> NDArray[np.int64]:
    y = _as_int_vector(labels, "labels")
    if y.shape[0] != n:
        raise ValueError(f"labels has length {y.shape[0]} but probs has {n} rows")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    return y


def _as_correct(correct: ArrayLike, n: int) -> NDArray[np.float64]:
    c = np.asarray(correct)
    if c.ndim != 1:
        raise ValueError(f"correct must be one-dimensional, got shape {c.shape}")
    if c.shape[0] != n:
        raise ValueError(f"correct has length {c.shape[0]} but confidence has length {n}")
    if not np.all((c == 0) | (c == 1)):
        raise ValueError("correct must contain only booleans or 0/1 values")
    return c.astype(np.float64)


# ------------------------------------------------------------------- proper scoring rules


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of examples whose argmax class equals the label.

    Ties in ``probs`` resolve to the lowest class index (``np.argmax``).
    """
    p = _as_probs(probs)
    y = _as_labels(labels, *p.shape)
    return float(np.mean(p.argmax(axis=1) == y))


def nll(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the labels, natural log.

    The probability of the true class is clipped below at ``eps`` so that a
    confident mistake gives a large finite loss.
    """
    if not eps > 0.0:
        raise ValueError(f"eps must be positive, got {eps}")
    p = _as_probs(probs)
    y = _as_labels(labels, *p.shape)
    p_true = p[np.arange(y.shape[0]), y]
    return float(-np.mean(np.log(np.clip(p_true, eps, 1.0))))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score.

    Mean over examples of ``sum_c (p_c - onehot_c)^2``; ranges over ``[0, 2]``
    (not the binary ``[0, 1]`` variant that scores only the positive class).
    """
    p = _as_probs(probs)
    y = _as_labels(labels, *p.shape)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# ---------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin summary of top-class confidence against accuracy.

    Attributes
    ----------
    lower, upper : ndarray
        Bin edges. Uniform bins are ``(lower, upper]`` (the first also holds
        confidence 0); quantile bins report the smallest and largest confidence
        they contain.
    count : ndarray of int
        Number of examples per bin.
    confidence, accuracy : ndarray
        Mean top-class confidence and accuracy per bin; NaN for empty bins.
    """

    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    count: NDArray[np.int64]
    confidence: NDArray[np.float64]
    accuracy: NDArray[np.float64]


def reliability_bins(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityBins:
    """Bin examples by top-class confidence.

    Parameters
    ----------
    probs, labels
        Class probabilities ``(n, C)`` and integer labels ``(n,)``.
    n_bins : int
        Number of bins. With ``"quantile"`` and ``n < n_bins``, ``n`` bins are used.
    strategy : {"uniform", "quantile"}
        ``"uniform"``: bin ``i`` is ``(i/B, (i+1)/B]``, confidence exactly 0 goes to
        bin 0. ``"quantile"``: equal-mass bins from ``np.array_split`` of the
        examples stably sorted by confidence (equal confidences may straddle bins).

    Returns
    -------
    ReliabilityBins
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    p = _as_probs(probs)
    y = _as_labels(labels, *p.shape)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)

    if strategy == "uniform":
        edges = np.arange(n_bins + 1) / n_bins
        idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
        count = np.bincount(idx, minlength=n_bins)
        nonempty = count > 0
        safe = np.where(nonempty, count, 1)
        mean_conf = np.where(nonempty, np.bincount(idx, conf, n_bins) / safe, np.nan)
        mean_acc = np.where(nonempty, np.bincount(idx, hit, n_bins) / safe, np.nan)
        return ReliabilityBins(edges[:-1], edges[1:], count, mean_conf, mean_acc)

    order = np.argsort(conf, kind="stable")
    chunks = np.array_split(order, min(n_bins, conf.shape[0]))
    return ReliabilityBins(
        lower=np.array([conf[c].min() for c in chunks]),
        upper=np.array([conf[c].max() for c in chunks]),
        count=np.array([c.shape[0] for c in chunks], dtype=np.int64),
        confidence=np.array([conf[c].mean() for c in chunks]),
        accuracy=np.array([hit[c].mean() for c in chunks]),
    )


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Expected calibration error of the top-class confidence.

    ``sum_b (n_b / n) * |acc_b - conf_b|`` over the bins of :func:`reliability_bins`;
    empty bins contribute nothing.
    """
    bins = reliability_bins(probs, labels, n_bins=n_bins, strategy=strategy)
    filled = bins.count > 0
    weight = bins.count[filled] / bins.count.sum()
    return float(np.sum(weight * np.abs(bins.accuracy[filled] - bins.confidence[filled])))


# ------------------------------------------------------------------ task-specific scores


def matthews_corrcoef(pred: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient, binary or multi-class (Gorodkin's R_K).

    Returns 0 when undefined (a zero denominator, e.g. a constant prediction),
    as scikit-learn does.
    """
    yp = _as_int_vector(pred, "pred")
    yt = _as_int_vector(labels, "labels")
    check_same_length(yp, yt, "pred", "labels")
    classes, codes = np.unique(np.concatenate([yt, yp]), return_inverse=True)
    n = yt.shape[0]
    true_counts = np.bincount(codes[:n], minlength=classes.shape[0]).astype(np.float64)
    pred_counts = np.bincount(codes[n:], minlength=classes.shape[0]).astype(np.float64)
    n_correct = float(np.sum(yt == yp))
    s = float(n)
    cov_tp = n_correct * s - true_counts @ pred_counts
    cov_pp = s * s - pred_counts @ pred_counts
    cov_tt = s * s - true_counts @ true_counts
    if cov_pp == 0.0 or cov_tt == 0.0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_pp * cov_tt))


def f1_score(pred: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """Binary F1 score of class ``positive`` against all other classes.

    ``2 TP / (2 TP + FP + FN)``; 0 when undefined (no positive labels or predictions).
    """
    yp = _as_int_vector(pred, "pred")
    yt = _as_int_vector(labels, "labels")
    check_same_length(yp, yt, "pred", "labels")
    tp = np.sum((yp == positive) & (yt == positive))
    fp = np.sum((yp == positive) & (yt != positive))
    fn = np.sum((yp != positive) & (yt == positive))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else 0.0


# --------------------------------------------------------------- uncertainty decomposition


def _entropy(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Entropy over the last axis, natural log, with ``0 log 0 = 0``."""
    return -np.sum(p * np.log(np.where(p > 0.0, p, 1.0)), axis=-1)


def predictive_entropy(draws: ArrayLike) -> NDArray[np.float64]:
    """Total uncertainty: entropy of the posterior-mean prediction, shape ``(n,)``."""
    return _entropy(_as_draws(draws).mean(axis=0))


def expected_entropy(draws: ArrayLike) -> NDArray[np.float64]:
    """Aleatoric uncertainty: mean over draws of the per-draw entropy, shape ``(n,)``."""
    return _entropy(_as_draws(draws)).mean(axis=0)


def mutual_information(draws: ArrayLike) -> NDArray[np.float64]:
    """Epistemic uncertainty: predictive minus expected entropy, shape ``(n,)``.

    Nonnegative in exact arithmetic; negative round-off above ``-1e-12`` is set to 0.
    """
    d = _as_draws(draws)
    mi = _entropy(d.mean(axis=0)) - _entropy(d).mean(axis=0)
    return np.where((mi < 0.0) & (mi > -_ROUNDOFF_TOL), 0.0, mi)


@dataclass(frozen=True)
class UncertaintyDecomposition:
    """Per-example ``total = aleatoric + epistemic`` (nats), each of shape ``(n,)``."""

    total: NDArray[np.float64]
    aleatoric: NDArray[np.float64]
    epistemic: NDArray[np.float64]


def uncertainty_decomposition(draws: ArrayLike) -> UncertaintyDecomposition:
    """Split predictive entropy into expected entropy and mutual information."""
    d = _as_draws(draws)
    return UncertaintyDecomposition(
        total=predictive_entropy(d),
        aleatoric=expected_entropy(d),
        epistemic=mutual_information(d),
    )


# ------------------------------------------------------------------ selective prediction


def accuracy_coverage_curve(
    confidence: ArrayLike, correct: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Accuracy among the ``k`` most confident examples, for ``k = 1..n``.

    Examples are ordered by a stable sort on ``-confidence``: descending confidence,
    ties kept in their original order.

    Returns
    -------
    coverage, accuracy : ndarray
        ``coverage[k-1] = k / n`` and the accuracy of the ``k`` retained examples.
    """
    conf = float_vector(confidence, "confidence")
    hit = _as_correct(correct, conf.shape[0])
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, conf.shape[0] + 1)
    return k / conf.shape[0], np.cumsum(hit[order]) / k


def area_under_accuracy_coverage(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the accuracy-coverage curve with a step rule.

    The mean of the accuracies at coverages ``k/n``, ``k = 1..n`` (ties as in
    :func:`accuracy_coverage_curve`); equals ``1 - AURC`` with the risk being the
    selective error rate.
    """
    return float(np.mean(accuracy_coverage_curve(confidence, correct)[1]))


def auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """AUROC for detecting out-of-distribution examples, higher score = more OOD.

    The Mann-Whitney ``U`` of ``scores_out`` over ``scores_in`` divided by
    ``n_in * n_out``, ties counting 1/2; computed from average ranks in O(n log n).
    """
    s_in = float_vector(scores_in, "scores_in")
    s_out = float_vector(scores_out, "scores_out")
    n_in, n_out = s_in.shape[0], s_out.shape[0]
    ranks = average_ranks(np.concatenate([s_in, s_out]))
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


# --------------------------------------------------------------------------------- report


def classification_report(
    probs: ArrayLike, labels: ArrayLike, extra: Iterable[str] = ()
) -> dict[str, float]:
    """Standard metric bundle as plain floats (JSON-serialisable).

    Keys ``accuracy``, ``nll``, ``ece`` (15 uniform bins), ``ece_quantile`` (15
    quantile bins) and ``brier``, plus any of ``"mcc"`` and ``"f1"`` (binary only,
    positive class 1) named in ``extra``, computed on argmax predictions.
    """
    names = (extra,) if isinstance(extra, str) else tuple(extra)
    unknown = [name for name in names if name not in _EXTRA_METRICS]
    if unknown:
        raise ValueError(f"unknown extra metrics {unknown}; choose from {_EXTRA_METRICS}")
    p = _as_probs(probs)
    y = _as_labels(labels, *p.shape)
    if "f1" in names and p.shape[1] != 2:
        raise ValueError(f"extra metric 'f1' needs binary probs (C == 2), got C = {p.shape[1]}")
    report = {
        "accuracy": accuracy(p, y),
        "nll": nll(p, y),
        "ece": ece(p, y, n_bins=15, strategy="uniform"),
        "ece_quantile": ece(p, y, n_bins=15, strategy="quantile"),
        "brier": brier(p, y),
    }
    pred = p.argmax(axis=1)
    for name in names:
        report[name] = matthews_corrcoef(pred, y) if name == "mcc" else f1_score(pred, y)
    return report
