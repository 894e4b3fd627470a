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

import numpy as np
from numpy.typing import NDArray

from monteclora_pyro import metrics
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
class RegressionHeldOut:
    """Held-out diagnostics of a regression run (or of the pooled draws of restarts).

    Attributes
    ----------
    name, split : str
        The run (or the pooled runs) and the evaluation split.
    num_draws : int
        S, the posterior draws behind the predictive.
    pointwise : numpy.ndarray
        lppd of each example, ``log (1/S) Σ_s N(y_i | m_si, 1/τ_si)``, shape (n,).
    epistemic_variance, total_variance : float
        Mean variance of the draws' means, and mean predictive variance (label units²).
    plugin, predictive : dict of str to float
        NLL, RMSE and 90 % interval coverage of the plug-in and of the posterior predictive.
    """

    name: str
    split: str
    num_draws: int
    pointwise: NDArray[np.float64]
    epistemic_variance: float
    total_variance: float
    plugin: dict[str, float]
    predictive: dict[str, float]

    @property
    def num_examples(self) -> int:
        """n, the held-out examples."""
        return int(self.pointwise.shape[0])

    @property
    def lppd(self) -> float:
        """Σ_i log (1/S) Σ_s N(y_i | m_si, 1/τ_si) (nats)."""
        return float(self.pointwise.sum())

    @property
    def lppd_per_example(self) -> float:
        """lppd / n, the negative of the predictive NLL."""
        return float(self.pointwise.mean())

    @property
    def epistemic_share(self) -> float:
        """Mean epistemic over mean total predictive variance (NaN if the latter is 0)."""
        if self.total_variance > 0:
            return self.epistemic_variance / self.total_variance
        return float("nan")

    def gap(self, metric: str) -> float:
        """Plug-in minus posterior predictive of ``metric`` (nll, rmse or coverage_90)."""
        return self.plugin[metric] - self.predictive[metric]

    def row(self) -> dict:
        """A plain table row (JSON-serialisable)."""
        return {
            "run": self.name,
            "split": self.split,
            "n": self.num_examples,
            "S": self.num_draws,
            "lppd": self.lppd,
            "lppd/n": self.lppd_per_example,
            "epistemic var": self.epistemic_variance,
            "epistemic share": self.epistemic_share,
            **{f"{m} gap": self.gap(m) for m in REGRESSION_GAP_METRICS},
        }

    def describe(self) -> str:
        """One line for a terminal."""
        return (
            f"held-out lppd on {self.split} (n={self.num_examples}, S={self.num_draws}): "
            f"{self.lppd:.2f} ({self.lppd_per_example:.4f} per example); mean epistemic "
            f"variance {self.epistemic_variance:.3g} = {self.epistemic_share:.1%} of the "
            f"predictive variance; plug-in minus predictive: NLL {self.gap('nll'):+.4f}, RMSE "
            f"{self.gap('rmse'):+.4f}, 90% coverage {self.gap('coverage_90'):+.4f}"
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
