"""The analysis of regression runs: held-out fit, summary rows and ArviZ groups of Normal draws.

A regression run's ``predictions.npz`` holds :class:`monteclora_pyro.runs.RegressionPredictions`:
per draw s a Normal ``N(m_si, 1/τ_si)`` per example. What classification reads off class
probabilities is read here off that mixture (docs/design.md §5):

- held-out lppd: ``Σ_i log (1/S) Σ_s N(y_i | m_si, 1/τ_si)``;
- reliability: the coverage of central p-intervals against p
  (:func:`monteclora_pyro.metrics.interval_coverage`);
- uncertainty: the law of total variance, expected noise variance (aleatoric) plus the
  variance of the draws' means (epistemic), in label units squared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from monteclora_pyro import metrics
from monteclora_pyro.analysis.fit import HeldOutFit
from monteclora_pyro.runs import MODES, RegressionPredictions

__all__ = [
    "REGRESSION_COLUMNS",
    "REGRESSION_GAP_METRICS",
    "RegressionHeldOut",
    "normal_groups",
    "pool_regression_predictions",
    "regression_heldout",
    "uncertainty_row",
]

REGRESSION_COLUMNS = ("pearson", "spearman", "rmse", "nll", "coverage_90", "width_90")
REGRESSION_GAP_METRICS = ("nll", "rmse", "coverage_90")


@dataclass
class RegressionHeldOut(HeldOutFit):
    """Held-out diagnostics of a regression run: lppd, epistemic variance, plug-in gaps.

    ``pointwise`` is ``log (1/S) Σ_s N(y_i | m_si, 1/τ_si)``; ``plugin`` and ``predictive``
    hold NLL, RMSE and 90 % interval coverage.

    Attributes
    ----------
    epistemic_variance, total_variance : float
        Mean variance of the draws' means, and mean predictive variance (label units²).
    """

    gap_metrics: ClassVar[tuple[str, ...]] = REGRESSION_GAP_METRICS

    epistemic_variance: float
    total_variance: float

    @property
    def epistemic_share(self) -> float:
        """Mean epistemic over mean total predictive variance (NaN if the latter is 0)."""
        if self.total_variance > 0:
            return self.epistemic_variance / self.total_variance
        return float("nan")

    def row(self) -> dict:
        """A plain table row (JSON-serialisable)."""
        return self._row(
            {"epistemic var": self.epistemic_variance, "epistemic share": self.epistemic_share}
        )

    def describe(self) -> str:
        """One line for a terminal."""
        return self._describe(
            f"mean epistemic variance {self.epistemic_variance:.3g} = "
            f"{self.epistemic_share:.1%} of the predictive variance"
        )


def _scores(predictions: RegressionPredictions, mode: str) -> dict[str, float]:
    report = metrics.regression_report(*predictions.mode_params(mode), predictions.labels)
    return {m: report[m] for m in REGRESSION_GAP_METRICS}


def regression_heldout(
    predictions: RegressionPredictions, name: str = "", split: str = ""
) -> RegressionHeldOut:
    """The held-out diagnostics of a regression run's predictions."""
    labels = np.asarray(predictions.labels, dtype=np.float64)
    means, precisions = predictions.draw_mean, predictions.draw_precision
    total, _, epistemic = metrics.variance_decomposition(means, precisions)
    return RegressionHeldOut(
        name=name,
        split=split,
        num_draws=int(predictions.num_draws),
        pointwise=metrics.normal_mixture_log_density(means, precisions, labels),
        epistemic_variance=float(epistemic.mean()),
        total_variance=float(total.mean()),
        plugin=_scores(predictions, MODES[0]),
        predictive=_scores(predictions, MODES[1]),
    )


def pool_regression_predictions(
    predictions: Sequence[RegressionPredictions],
) -> RegressionPredictions:
    """The predictions of restarts as one mixture: draws pooled, plug-in means and precisions
    averaged."""
    if not all(isinstance(p, RegressionPredictions) for p in predictions):
        raise ValueError("regression and classification runs cannot be pooled")
    labels = predictions[0].labels
    if any(not np.array_equal(p.labels, labels) for p in predictions[1:]):
        raise ValueError("restarts evaluated on different examples cannot be pooled")
    return RegressionPredictions(
        labels,
        np.mean([p.mean_pred for p in predictions], axis=0),
        np.mean([p.mean_precision for p in predictions], axis=0),
        np.concatenate([p.draw_mean for p in predictions]),
        np.concatenate([p.draw_precision for p in predictions]),
    )


def uncertainty_row(predictions: RegressionPredictions) -> dict[str, float | str]:
    """Mean total, aleatoric and epistemic predictive variance (label units²)."""
    total, aleatoric, epistemic = metrics.variance_decomposition(
        predictions.draw_mean, predictions.draw_precision
    )
    return {
        "total": float(total.mean()),
        "aleatoric": float(aleatoric.mean()),
        "epistemic": float(epistemic.mean()),
        "unit": "variance",
    }


def normal_groups(
    means: np.ndarray, precisions: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> dict[str, dict[str, np.ndarray]]:
    """The ``posterior_predictive``, ``log_likelihood`` and ``observed_data`` of variable ``y``.

    ``means`` and ``precisions`` have shape (chains, draws, n): each draw is one Normal per
    example; ``y_rep`` is one draw from it and the log-likelihood is ``log N(y | m, 1/τ)``.
    """
    scale = 1.0 / np.sqrt(precisions)
    y = np.asarray(labels, dtype=np.float64)
    log_lik = 0.5 * (np.log(precisions) - np.log(2.0 * np.pi) - precisions * (y - means) ** 2)
    return {
        "posterior_predictive": {"y": rng.normal(means, scale)},
        "log_likelihood": {"y": log_lik},
        "observed_data": {"y": y},
    }
