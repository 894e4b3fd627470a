"""Figures of predictions: reliability, uncertainty of right and wrong, accuracy–coverage, and
the interval coverage of regression predictives (their reliability diagram)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from monteclora_pyro import metrics
from monteclora_pyro.analysis.plots._common import grid, hide_unused, new_figure


def plot_reliability(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], n_bins: int = 15) -> Figure:
    """Reliability diagram: accuracy against top-class confidence per bin.

    Parameters
    ----------
    curves : mapping of str to (probs, labels)
        Class probabilities ``(n, C)`` and integer labels ``(n,)`` per curve, e.g.
        ``{"posterior mean": ..., "posterior predictive": ..., "LoRA": ...}``.
    n_bins : int
        Uniform confidence bins.

    Returns
    -------
    matplotlib.figure.Figure
        The legend names each curve with its ECE.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    for name, (probs, labels) in curves.items():
        bins = metrics.reliability_bins(probs, labels, n_bins=n_bins)
        filled = bins.count > 0
        error = metrics.ece(probs, labels, n_bins=n_bins)
        ax.plot(
            bins.confidence[filled],
            bins.accuracy[filled],
            "o-",
            ms=4,
            label=f"{name} (ECE {error:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"reliability diagram ({n_bins} bins)")
    return fig


def plot_uncertainty_histograms(
    score: ArrayLike | Mapping[str, ArrayLike],
    correct: ArrayLike,
    score_name: str = "predictive entropy",
    bins: int = 30,
) -> Figure:
    """Histograms of an uncertainty score for correct against wrong predictions.

    Parameters
    ----------
    score : array_like of shape (n,), or mapping of name to array
        Uncertainty per example (higher = more uncertain); a mapping gives one panel
        per score.
    correct : array_like of bool, shape (n,)
        Whether each prediction is right.
    score_name : str
        Axis label of a single score.
    bins : int
        Histogram bins.

    Returns
    -------
    matplotlib.figure.Figure
    """
    scores = dict(score) if isinstance(score, Mapping) else {score_name: score}
    hit = np.asarray(correct).astype(bool)
    rows, cols = grid(len(scores))
    fig, axes = new_figure(rows, cols, width=4.2, height=3.2)
    for ax, (name, values) in zip(axes.ravel(), scores.items(), strict=False):
        v = np.asarray(values, dtype=np.float64)
        if v.shape != hit.shape:
            raise ValueError(f"{name} has shape {v.shape} but correct has shape {hit.shape}")
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 2)
        for mask, label, colour in ((hit, "correct", "C2"), (~hit, "wrong", "C3")):
            part = v[mask]
            if part.size:
                ax.hist(
                    part,
                    bins=edges,
                    weights=np.full(part.size, 1.0 / part.size),
                    alpha=0.5,
                    color=colour,
                    label=f"{label} (n={part.size})",
                )
            else:
                ax.plot([], [], color=colour, label=f"{label} (n=0)")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of examples")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    hide_unused(axes, len(scores))
    title = score_name if len(scores) == 1 else "uncertainty"
    fig.suptitle(f"{title}: correct vs wrong predictions")
    return fig


def plot_accuracy_coverage(curves: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> Figure:
    """Accuracy of the most confident examples against the fraction kept.

    Parameters
    ----------
    curves : mapping of str to (confidence, correct)
        Confidence per example (e.g. the top-class probability) and whether each
        prediction is right.

    Returns
    -------
    matplotlib.figure.Figure
        The legend names each curve with its area under the curve.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, (confidence, correct) in curves.items():
        coverage, acc = metrics.accuracy_coverage_curve(confidence, correct)
        area = metrics.area_under_accuracy_coverage(confidence, correct)
        ax.plot(coverage, acc, lw=1.5, label=f"{name} (area {area:.3f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("coverage")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy–coverage (selective prediction)")
    return fig


def plot_interval_coverage(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, ArrayLike]],
    levels: ArrayLike = metrics.COVERAGE_LEVELS,
) -> Figure:
    """Regression reliability: coverage of central predictive intervals against their level.

    For each level p the fraction of labels inside the central p-interval of their predictive
    (:func:`monteclora_pyro.metrics.interval_coverage`, exact through the PIT); a calibrated
    predictive lies on the diagonal, within the shaded band of ±2 binomial standard errors
    ``2 sqrt(p(1-p)/n)`` (n of the first curve).

    Parameters
    ----------
    curves : mapping of str to (means, precisions, labels)
        Per curve the Normal components, ``means`` and ``precisions`` of shape (S, n) (S = 1
        for a plug-in prediction), and the labels (n,).
    levels : array_like
        The nominal levels p, in (0, 1).

    Returns
    -------
    matplotlib.figure.Figure
        The legend names each curve with its coverage at the highest level.
    """
    if not curves:
        raise ValueError("curves is empty")
    p = np.asarray(levels, dtype=np.float64)
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.subplots()
    n = np.shape(next(iter(curves.values()))[2])[0]
    band = 2.0 * np.sqrt(p * (1.0 - p) / n)
    ax.fill_between(p, p - band, p + band, color="0.85", label=f"±2 s.e. (n={n})")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    for name, (means, precisions, labels) in curves.items():
        covered = metrics.interval_coverage(means, precisions, labels, p)
        ax.plot(p, covered, "o-", ms=4, label=f"{name} ({p[-1]:.0%}: {covered[-1]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level p of the central interval")
    ax.set_ylabel("fraction of labels inside")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("interval coverage of the predictive")
    return fig
