"""Metrics of regression predictions: correlations, errors and mixtures of Normals.

Depends on numpy and the standard library only; :mod:`monteclora_pyro.metrics` re-exports every
name. A predictive of S posterior draws is, per example i, the equal-weight mixture
``(1/S) Σ_s N(m_si, 1/τ_si)``: ``means`` and ``precisions`` have shape (S, n) (a plug-in
prediction is S = 1; a 1-D array is one draw), and ``labels`` shape (n,). Logs are natural.

Central intervals are read off the probability integral transform ``u_i = F_i(y_i)`` of the
mixture's CDF F_i, which is exact in closed form (``erfc``): for a continuous, strictly
increasing F, y lies in the central p-interval ``[F⁻¹((1-p)/2), F⁻¹((1+p)/2)]`` exactly when
``|u - 1/2| <= p/2``, so coverage needs no quantile and no simulation. Widths do need the
mixture's quantiles; they are found by bisection between the smallest and largest component
quantile, to about 1e-12 of the bracket.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "COVERAGE_LEVELS",
    "INTERVAL_LEVEL",
    "average_ranks",
    "interval_coverage",
    "normal_mixture_cdf",
    "normal_mixture_log_density",
    "normal_mixture_quantile",
    "pearson",
    "regression_report",
    "rmse",
    "spearman",
    "variance_decomposition",
]

COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Nominal levels p of the central intervals of a coverage curve."""
INTERVAL_LEVEL = 0.9
"""The level of ``coverage_90`` and ``width_90`` in :func:`regression_report`."""

_ERFC = np.frompyfunc(math.erfc, 1, 1)
_BISECTIONS = 60


def float_vector(x: ArrayLike, name: str) -> NDArray[np.float64]:
    """``x`` as a non-empty, finite, one-dimensional float64 array, or a ValueError."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def check_same_length(a: NDArray, b: NDArray, name_a: str, name_b: str) -> None:
    """Raise a ValueError naming both arrays when their lengths differ."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation coefficient; NaN if either input is constant."""
    a = float_vector(x, "x")
    b = float_vector(y, "y")
    check_same_length(a, b, "x", "y")
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        return float("nan")
    ac = a - a.mean()
    bc = b - b.mean()
    r = np.sum(ac * bc) / np.sqrt(np.sum(ac * ac) * np.sum(bc * bc))
    return float(np.clip(r, -1.0, 1.0))


def average_ranks(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks with ties given their average rank, in O(n log n)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_group = np.concatenate([[True], xs[1:] != xs[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], x.shape[0])
    ranks = np.empty(x.shape[0])
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN if an input is constant."""
    a = float_vector(x, "x")
    b = float_vector(y, "y")
    check_same_length(a, b, "x", "y")
    return pearson(average_ranks(a), average_ranks(b))


def rmse(pred: ArrayLike, labels: ArrayLike) -> float:
    """Root mean squared error ``sqrt((1/n) Σ_i (pred_i - y_i)²)``."""
    p = float_vector(pred, "pred")
    y = float_vector(labels, "labels")
    check_same_length(p, y, "pred", "labels")
    return float(np.sqrt(np.mean((p - y) ** 2)))


def _mixture(
    means: ArrayLike, precisions: ArrayLike, n: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``means`` as (S, n) and ``precisions`` broadcast to it, both checked."""
    m = np.asarray(means, dtype=np.float64)
    m = m[None] if m.ndim == 1 else m
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"means must have shape (S, n) or (n,), got {np.shape(means)}")
    if n is not None and m.shape[1] != n:
        raise ValueError(f"means cover {m.shape[1]} examples, but there are {n} labels")
    t = np.asarray(precisions, dtype=np.float64)
    if t.ndim == 1 and m.shape[0] > 1 and t.shape[0] == m.shape[0]:
        t = t[:, None]  # one precision per draw
    try:
        t = np.broadcast_to(t, m.shape)
    except ValueError as err:
        raise ValueError(
            f"precisions of shape {np.shape(precisions)} do not fit means of shape {m.shape}"
        ) from err
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(t))):
        raise ValueError("means and precisions must be finite")
    if np.any(t <= 0.0):
        raise ValueError("precisions must be positive")
    return m, t


def normal_mixture_log_density(
    means: ArrayLike, precisions: ArrayLike, labels: ArrayLike
) -> NDArray[np.float64]:
    """``log (1/S) Σ_s N(y_i | m_si, 1/τ_si)`` per example, shape (n,) (log-sum-exp)."""
    y = float_vector(labels, "labels")
    m, t = _mixture(means, precisions, y.shape[0])
    log_p = 0.5 * (np.log(t) - math.log(2.0 * math.pi) - t * (y - m) ** 2)
    top = log_p.max(axis=0)
    return top + np.log(np.exp(log_p - top).mean(axis=0))


def normal_mixture_cdf(
    means: ArrayLike, precisions: ArrayLike, values: ArrayLike
) -> NDArray[np.float64]:
    """``F_i(x_i) = (1/S) Σ_s Φ((x_i - m_si)·√τ_si)`` per example, shape (n,).

    At the labels this is the probability integral transform (PIT) of the predictive.
    """
    x = float_vector(values, "values")
    m, t = _mixture(means, precisions, x.shape[0])
    return _cdf(m, t, x)


def _cdf(m: NDArray, t: NDArray, x: NDArray) -> NDArray[np.float64]:
    z = (x - m) * np.sqrt(t)
    return (0.5 * _ERFC(-z / math.sqrt(2.0)).astype(np.float64)).mean(axis=0)


def normal_mixture_quantile(means: ArrayLike, precisions: ArrayLike, q: float) -> NDArray:
    """The q-quantile of each example's mixture, shape (n,), by bisection.

    The quantile lies between the smallest and the largest component q-quantile (there the
    mixture CDF is at most, and at least, q); the bracket is halved until it is below 1e-12
    (relative to the quantile), at most 60 times.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    m, t = _mixture(means, precisions)
    component = m + NormalDist().inv_cdf(q) / np.sqrt(t)
    low, high = component.min(axis=0), component.max(axis=0)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (low + high)
        below = _cdf(m, t, mid) < q
        low, high = np.where(below, mid, low), np.where(below, high, mid)
        if np.all(high - low <= 1e-12 * (1.0 + np.abs(mid))):
            break
    return 0.5 * (low + high)


def interval_coverage(
    means: ArrayLike,
    precisions: ArrayLike,
    labels: ArrayLike,
    levels: ArrayLike = COVERAGE_LEVELS,
) -> NDArray[np.float64]:
    """Fraction of labels inside the central p-interval of their predictive, per level p.

    Exact through the PIT (module docstring): ``mean_i 1[|F_i(y_i) - 1/2| <= p/2]``. A
    calibrated predictive covers a fraction p, within a binomial standard error
    ``sqrt(p(1-p)/n)``.
    """
    p = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    if np.any((p <= 0.0) | (p >= 1.0)):
        raise ValueError(f"levels must lie in (0, 1), got {p.tolist()}")
    u = normal_mixture_cdf(means, precisions, labels)
    return (np.abs(u[None, :] - 0.5) <= p[:, None] / 2.0).mean(axis=1)


def variance_decomposition(
    means: ArrayLike, precisions: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(total, aleatoric, epistemic)`` variance of each example's mixture, shape (n,) each.

    The law of total variance: ``Var[y] = (1/S) Σ_s 1/τ_s + (1/S) Σ_s (m_s - m̄)²``, the
    expected noise variance (aleatoric) plus the variance of the draws' means (epistemic);
    the analogue of the entropy decomposition of class probabilities, in label units squared.
    """
    m, t = _mixture(means, precisions)
    aleatoric = (1.0 / t).mean(axis=0)
    epistemic = m.var(axis=0)
    return aleatoric + epistemic, aleatoric, epistemic


def regression_report(
    means: ArrayLike, precisions: ArrayLike, labels: ArrayLike
) -> dict[str, float]:
    """The metric bundle of a (mixture) Normal predictive, as plain floats.

    The point prediction is the predictive mean ``(1/S) Σ_s m_si``. Keys: ``pearson``,
    ``spearman`` and ``rmse`` of the point prediction, ``nll`` (mean negative log predictive
    density, nats), ``coverage_90`` (fraction of labels inside their central 90 % predictive
    interval) and ``width_90`` (mean width of that interval).
    """
    y = float_vector(labels, "labels")
    m, t = _mixture(means, precisions, y.shape[0])
    point = m.mean(axis=0)
    tail = (1.0 - INTERVAL_LEVEL) / 2.0
    width = normal_mixture_quantile(m, t, 1.0 - tail) - normal_mixture_quantile(m, t, tail)
    return {
        "pearson": pearson(point, y),
        "spearman": spearman(point, y),
        "rmse": rmse(point, y),
        "nll": float(-normal_mixture_log_density(m, t, y).mean()),
        "coverage_90": float(interval_coverage(m, t, y, INTERVAL_LEVEL)[0]),
        "width_90": float(width.mean()),
    }
