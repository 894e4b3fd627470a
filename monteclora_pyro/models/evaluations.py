"""What an evaluation pass of each likelihood collects, its metrics and its run-directory files.

Every likelihood's :meth:`~monteclora_pyro.models.likelihood.Likelihood.evaluation` returns a
fresh accumulator; :func:`monteclora_pyro.training.evaluation.evaluate` gives it, batch by batch,
the labels and the scores of the plug-in prediction and of S posterior draws, and its
``result()`` is an evaluation with ``num_draws``, ``metrics``, ``save`` and ``summary``:

- :class:`ProbabilityAccumulator` -> :class:`ClassEvaluation` (classification, multiple
  choice): class probabilities, ``predictions.npz``;
- :class:`TokenAccumulator` -> :class:`TokenEvaluation` (next token): per-token NLL and
  perplexity, no file;
- :class:`NormalAccumulator` -> :class:`RegressionEvaluation` (regression): the means and
  precisions of the Normal predictive of each draw, ``predictions.npz``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from monteclora_pyro.metrics import classification_report, regression_report
from monteclora_pyro.models.causal import response_log_probs
from monteclora_pyro.runs import MODES, Predictions, RegressionPredictions, write_predictions

__all__ = [
    "REPORT_METRICS",
    "ClassEvaluation",
    "NormalAccumulator",
    "ProbabilityAccumulator",
    "RegressionEvaluation",
    "TokenAccumulator",
    "TokenEvaluation",
]

REPORT_METRICS = ("mcc", "f1")


def _normalise(probs: np.ndarray) -> np.ndarray:
    return probs / probs.sum(-1, keepdims=True)


@dataclass
class PredictionsEvaluation:
    """An evaluation pass that keeps per-example predictions, saved as ``predictions.npz``."""

    predictions: Predictions | RegressionPredictions

    @property
    def num_draws(self) -> int:
        """S, the posterior draws (1 for a method without a posterior)."""
        return self.predictions.num_draws

    def save(self, directory) -> None:
        """Write ``predictions.npz``."""
        write_predictions(directory, self.predictions)


@dataclass
class ClassEvaluation(PredictionsEvaluation):
    """The class probabilities of an evaluation pass (classification, multiple choice)."""

    predictions: Predictions

    def metrics(self, extra: tuple[str, ...] = ()) -> dict:
        """Accuracy, NLL, ECE (15 equal-width bins), Brier and ``extra`` of both modes."""
        extra = tuple(m for m in extra if m in REPORT_METRICS)
        return {
            mode: classification_report(
                _normalise(self.predictions.mode_probs(mode)), self.predictions.labels, extra=extra
            )
            for mode in MODES
        }

    @staticmethod
    def summary(metrics: dict) -> str:
        """One log line of :meth:`metrics`."""
        mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
        return (
            f"accuracy {mean['accuracy']:.4f} (mean) {pred['accuracy']:.4f} (predictive), "
            f"nll {mean['nll']:.4f} / {pred['nll']:.4f}"
        )


@dataclass
class TokenEvaluation:
    """Per-token log-probabilities of held-out responses (next-token tasks)."""

    mean_log_probs: torch.Tensor  # (T,)
    draw_log_probs: torch.Tensor  # (S, T)

    @property
    def num_draws(self) -> int:
        """S, the posterior draws (1 for a method without a posterior)."""
        return self.draw_log_probs.shape[0]

    def metrics(self, extra: tuple[str, ...] = ()) -> dict:
        """``nll`` (mean over tokens), ``perplexity`` and ``num_tokens`` of both modes.

        The posterior predictive averages each token's probability over the draws.
        """
        draws = self.draw_log_probs
        predictive = draws.logsumexp(0) - math.log(draws.shape[0])
        out = {}
        for mode, log_probs in zip(MODES, (self.mean_log_probs, predictive), strict=True):
            nll = float(-log_probs.mean())
            out[mode] = {
                "nll": nll,
                "perplexity": math.exp(nll),
                "num_tokens": int(log_probs.numel()),
            }
        return out

    def save(self, directory) -> None:
        """Nothing: the per-token metrics are all of it."""

    @staticmethod
    def summary(metrics: dict) -> str:
        """One log line of :meth:`metrics`."""
        mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
        return (
            f"token nll {mean['nll']:.4f} (mean) {pred['nll']:.4f} (predictive), "
            f"perplexity {mean['perplexity']:.3f} / {pred['perplexity']:.3f}"
        )


class ProbabilityAccumulator:
    """Collects class probabilities batch by batch; :meth:`result` gives a ClassEvaluation."""

    def __init__(self):
        self.labels: list[torch.Tensor] = []
        self.mean: list[torch.Tensor] = []
        self.draws: list[torch.Tensor] = []

    def add(
        self, labels: torch.Tensor, mean_scores: torch.Tensor, draw_scores: list[torch.Tensor]
    ) -> None:
        """One batch: the plug-in scores and those of each draw (none: one draw, the mean)."""
        mean = mean_scores.softmax(-1)
        self.labels.append(labels.cpu())
        self.mean.append(mean)
        if draw_scores:
            self.draws.append(torch.stack([s.softmax(-1) for s in draw_scores]))
        else:
            self.draws.append(mean.unsqueeze(0))

    def result(self) -> ClassEvaluation:
        """The pass's predictions."""
        return ClassEvaluation(
            Predictions(
                labels=torch.cat(self.labels).numpy(),
                mean_probs=torch.cat(self.mean).double().cpu().numpy(),
                draw_probs=torch.cat(self.draws, dim=1).double().cpu().numpy(),
            )
        )


class TokenAccumulator:
    """Collects response-token log-probabilities; :meth:`result` gives a TokenEvaluation."""

    def __init__(self):
        self.mean: list[torch.Tensor] = []
        self.draws: list[torch.Tensor] = []

    def add(
        self, labels: torch.Tensor, mean_scores: torch.Tensor, draw_scores: list[torch.Tensor]
    ) -> None:
        """One batch: token logits of the plug-in prediction and of each draw."""
        labels = labels.to(mean_scores.device)
        self.mean.append(response_log_probs(mean_scores, labels).double())
        draws = [response_log_probs(s, labels) for s in draw_scores]
        self.draws.append(torch.stack(draws).double() if draws else self.mean[-1][None])

    def result(self) -> TokenEvaluation:
        """The pass's log-probabilities."""
        if not self.mean:
            raise ValueError("the evaluation got an empty loader: there are no held-out responses")
        return TokenEvaluation(torch.cat(self.mean), torch.cat(self.draws, dim=1))


@dataclass
class RegressionEvaluation(PredictionsEvaluation):
    """The Normal predictives of an evaluation pass (regression).

    ``predictions.npz`` holds the labels and the plug-in and per-draw means and precisions.
    """

    predictions: RegressionPredictions

    def metrics(self, extra: tuple[str, ...] = ()) -> dict:
        """Pearson, Spearman, RMSE, NLL, 90 % interval coverage and width of both modes.

        :func:`monteclora_pyro.metrics.regression_report`: the plug-in is one Normal, the
        posterior predictive the mixture of the S draws' Normals. ``extra`` is not needed:
        Pearson and Spearman are always there.
        """
        p = self.predictions
        return {mode: regression_report(*p.mode_params(mode), p.labels) for mode in MODES}

    @staticmethod
    def summary(metrics: dict) -> str:
        """One log line of :meth:`metrics`."""
        mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
        return (
            f"pearson {mean['pearson']:.4f} (mean) {pred['pearson']:.4f} (predictive), "
            f"nll {mean['nll']:.4f} / {pred['nll']:.4f}, "
            f"90% coverage {mean['coverage_90']:.3f} / {pred['coverage_90']:.3f}"
        )


class NormalAccumulator:
    """Collects the (mean, precision) scores of a regression head; gives a RegressionEvaluation.

    Scores are (batch, 2): column 0 the mean, column 1 the precision of each example's Normal.
    """

    def __init__(self):
        self.labels: list[torch.Tensor] = []
        self.mean: list[torch.Tensor] = []
        self.draws: list[torch.Tensor] = []

    def add(
        self, labels: torch.Tensor, mean_scores: torch.Tensor, draw_scores: list[torch.Tensor]
    ) -> None:
        """One batch: the plug-in scores and those of each draw (none: one draw, the mean)."""
        mean = mean_scores.detach().double().cpu()
        self.labels.append(labels.detach().double().cpu())
        self.mean.append(mean)
        if draw_scores:
            self.draws.append(torch.stack([s.detach().double().cpu() for s in draw_scores]))
        else:
            self.draws.append(mean.unsqueeze(0))

    def result(self) -> RegressionEvaluation:
        """The pass's predictions."""
        if not self.mean:
            raise ValueError("the evaluation got an empty loader: there are no examples")
        mean = torch.cat(self.mean).numpy()
        draws = torch.cat(self.draws, dim=1).numpy()
        return RegressionEvaluation(
            RegressionPredictions(
                labels=torch.cat(self.labels).numpy(),
                mean_pred=mean[:, 0],
                mean_precision=mean[:, 1],
                draw_mean=draws[..., 0],
                draw_precision=draws[..., 1],
            )
        )
