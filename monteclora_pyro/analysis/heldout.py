"""Held-out fit of the posterior predictive: lppd, mutual information, plug-in against predictive.

Everything here is computed on the run's evaluation split, examples the posterior never saw, so
it is an honest estimate of the predictive fit; PSIS-LOO is not (docs/design.md §5). The
per-draw class probabilities ``draw_probs`` (S, n, C) and the plug-in ``mean_probs`` (n, C)
come from ``predictions.npz`` (:class:`monteclora_pyro.runs.Predictions`). Regression runs
(:class:`monteclora_pyro.runs.RegressionPredictions`) get the same diagnostics of their Normal
draws from :mod:`monteclora_pyro.analysis.regression`; :func:`heldout` and
:func:`pool_predictions` take either kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monteclora_pyro import metrics
from monteclora_pyro.analysis.fit import HeldOutFit
from monteclora_pyro.analysis.regression import (
    RegressionHeldOut,
    pool_regression_predictions,
    regression_heldout,
)
from monteclora_pyro.runs import AnyPredictions, Predictions, RegressionPredictions

__all__ = [
    "CLIP",
    "GAP_METRICS",
    "HeldOut",
    "heldout",
    "mutual_information_share",
    "pointwise_lppd",
    "pool_predictions",
]

CLIP = 1e-12
GAP_METRICS = ("nll", "accuracy", "ece")


def pointwise_lppd(draw_probs: ArrayLike, labels: ArrayLike, clip: float = CLIP) -> NDArray:
    """Log pointwise predictive density of each example, ``log (1/S) Σ_s p(y_i | θ_s)``.

    The averaged probability of the true class is clipped below at ``clip`` (as
    :func:`monteclora_pyro.metrics.nll` does), so that ``-pointwise_lppd(...).mean()`` is the
    predictive NLL.

    Parameters
    ----------
    draw_probs : array_like
        Per-draw class probabilities, shape (S, n, C).
    labels : array_like
        True labels, shape (n,).
    clip : float
        Smallest probability of the true class.

    Returns
    -------
    numpy.ndarray
        Shape (n,), in nats; their sum is the lppd.
    """
    draws = np.asarray(draw_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if draws.ndim != 3 or y.shape != draws.shape[1:2]:
        raise ValueError(
            f"draw_probs must have shape (S, n, C) and labels (n,); got {draws.shape} and {y.shape}"
        )
    picked = draws[:, np.arange(y.shape[0]), y]
    return np.log(np.clip(picked.mean(axis=0), clip, None))


def mutual_information_share(draw_probs: ArrayLike) -> tuple[float, float, float]:
    """Mean mutual information, mean predictive entropy and their ratio.

    Parameters
    ----------
    draw_probs : array_like
        Per-draw class probabilities, shape (S, n, C).

    Returns
    -------
    tuple of float
        ``(mean MI, mean total entropy, share)``; the share ``mean MI / mean total`` lies in
        [0, 1], is 0 when all draws agree and NaN when the total entropy is 0.
    """
    decomposition = metrics.uncertainty_decomposition(draw_probs)
    mi, total = float(decomposition.epistemic.mean()), float(decomposition.total.mean())
    share = mi / total if total > 0 else float("nan")
    return mi, total, share


@dataclass
class HeldOut(HeldOutFit):
    """Held-out diagnostics of a classifier: lppd, mutual information, plug-in gaps.

    Attributes
    ----------
    mutual_information : float
        Mean mutual information (nats).
    total_entropy : float
        Mean predictive entropy (nats).

    The other attributes are :class:`~monteclora_pyro.analysis.fit.HeldOutFit`'s; ``plugin`` and
    ``predictive`` hold NLL, accuracy and ECE.
    """

    gap_metrics: ClassVar[tuple[str, ...]] = GAP_METRICS

    mutual_information: float
    total_entropy: float

    @property
    def mi_share(self) -> float:
        """Mean mutual information over mean predictive entropy (NaN if the latter is 0)."""
        if self.total_entropy > 0:
            return self.mutual_information / self.total_entropy
        return float("nan")

    def row(self) -> dict:
        """A plain table row (JSON-serialisable)."""
        return self._row({"MI": self.mutual_information, "MI share": self.mi_share})

    def describe(self) -> str:
        """One line for a terminal."""
        return self._describe(
            f"mean MI {self.mutual_information:.3g} nats = {self.mi_share:.1%} of the "
            "predictive entropy"
        )


def _scores(probs: NDArray, labels: NDArray) -> dict[str, float]:
    return {
        "nll": metrics.nll(probs, labels, eps=CLIP),
        "accuracy": metrics.accuracy(probs, labels),
        "ece": metrics.ece(probs, labels),
    }


def heldout(
    predictions: AnyPredictions, name: str = "", split: str = ""
) -> HeldOut | RegressionHeldOut:
    """The held-out diagnostics of a run's predictions.

    Parameters
    ----------
    predictions : monteclora_pyro.runs.Predictions or RegressionPredictions
        Labels, plug-in and per-draw probabilities on the evaluation split (of a regression
        run: plug-in and per-draw Normals, giving a
        :class:`~monteclora_pyro.analysis.regression.RegressionHeldOut`).
    name : str
        The run's name in tables.
    split : str
        The evaluation split.

    Returns
    -------
    HeldOut or RegressionHeldOut
    """
    if isinstance(predictions, RegressionPredictions):
        return regression_heldout(predictions, name, split)
    draws = np.asarray(predictions.draw_probs, dtype=np.float64)
    labels = np.asarray(predictions.labels, dtype=np.int64)
    mi, total, _ = mutual_information_share(draws)
    return HeldOut(
        name=name,
        split=split,
        num_draws=int(draws.shape[0]),
        pointwise=pointwise_lppd(draws, labels),
        mutual_information=mi,
        total_entropy=total,
        plugin=_scores(np.asarray(predictions.mean_probs, dtype=np.float64), labels),
        predictive=_scores(draws.mean(axis=0), labels),
    )


def pool_predictions(predictions: Sequence[AnyPredictions]) -> AnyPredictions:
    """The predictions of restarts as one mixture: their draws pooled, plug-ins averaged.

    Parameters
    ----------
    predictions : sequence of Predictions
        Of runs evaluated on the same examples.

    Returns
    -------
    Predictions
    """
    if not predictions:
        raise ValueError("no predictions to pool")
    if any(isinstance(p, RegressionPredictions) for p in predictions):
        return pool_regression_predictions(predictions)
    labels = predictions[0].labels
    for p in predictions[1:]:
        if not np.array_equal(p.labels, labels):
            raise ValueError("restarts evaluated on different examples cannot be pooled")
    return Predictions(
        labels,
        np.mean([p.mean_probs for p in predictions], axis=0),
        np.concatenate([p.draw_probs for p in predictions]),
    )
