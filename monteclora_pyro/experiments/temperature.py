"""Temperature scaling: temperatures fitted on a run's carved validation split.

A run trained with ``validation_fraction > 0`` (``--validation-fraction``) holds the plug-in and
per-draw class probabilities of the examples it held out of training
(``evaluations/{task}-train-validation/``). :func:`temperature_scale` fits two temperatures
T > 0 there, each minimising the validation NLL of what it scales: T on the plug-in
probabilities, applied to the evaluation split's plug-in; T_pred on the posterior predictive,
the average of ``softmax(log p_s / T_pred)`` over the draws, applied to every draw. The draws
of a posterior (or of MC dropout) already soften the predictive, so T_pred is usually the
smaller; for a method whose one draw is its plug-in the two coincide. The plug-in prediction's
argmax (so its accuracy) is unchanged; the predictive's too when the draws agree. The result is
an ordinary run directory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.data import resolve_task_spec
from monteclora_pyro.models.evaluations import ProbabilityAccumulator
from monteclora_pyro.models.likelihood import ClassEvaluation, get_likelihood
from monteclora_pyro.runs import Predictions

logger = logging.getLogger(__name__)

TEMPERATURE_METHOD = "temperature"
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))  # the search interval of log T


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log probs / T)`` over the last axis, in float64."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)) / temperature
    logits -= logits.max(-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(-1, keepdims=True)


def scale_predictions(
    predictions: Predictions, temperature: float, predictive_temperature: float | None = None
) -> Predictions:
    """``predictions`` with :func:`scale` at ``temperature`` applied to the plug-in and at
    ``predictive_temperature`` (default: ``temperature``) to every draw."""
    draw_temperature = temperature if predictive_temperature is None else predictive_temperature
    return Predictions(
        labels=predictions.labels,
        mean_probs=scale(predictions.mean_probs, temperature),
        draw_probs=scale(predictions.draw_probs, draw_temperature),
    )


def scaled_nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``labels`` under :func:`scale` (``probs``, ``temperature``).

    ``probs`` of shape (n, C) is one prediction; of shape (S, n, C), S draws whose scaled
    probabilities are averaged (the posterior predictive) before the NLL is taken.
    """
    scaled = scale(probs, temperature)
    if scaled.ndim == 3:
        scaled = scaled.mean(0)
    picked = scaled[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-300, None))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, grid: int = 201) -> float:
    """The T minimising :func:`scaled_nll` (of one prediction, or of the average of draws):
    a grid on log T, then golden-section refinement. A minimum at a bound of
    :data:`LOG_T_BOUNDS` is returned with a warning."""
    lo, hi = LOG_T_BOUNDS
    points = np.linspace(lo, hi, grid)
    values = [scaled_nll(probs, labels, math.exp(t)) for t in points]
    best = int(np.argmin(values))
    if best in (0, grid - 1):
        logger.warning(
            "the fitted temperature %.3g is a bound of its search interval [%.3g, %.3g]: the "
            "NLL keeps falling beyond it (at the upper bound the scaled prediction is nearly "
            "uniform, no better than chance on these labels; at the lower, nearly one-hot)",
            math.exp(points[best]), math.exp(lo), math.exp(hi),
        )  # fmt: skip
    a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # the bracket shrinks by 0.618 per step
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if scaled_nll(probs, labels, math.exp(c)) <= scaled_nll(probs, labels, math.exp(d)):
            b = d
        else:
            a = c
    refined = (a + b) / 2
    if scaled_nll(probs, labels, math.exp(refined)) > values[best]:
        refined = points[best]
    return math.exp(refined)


def temperature_scale(run_dir: str | Path, output_dir: str | Path) -> dict:
    """Fit the plug-in's and the draws' temperatures on a run's carved validation split;
    write the scaled run to ``output_dir``.

    Returns
    -------
    dict
        The scaled run's metrics (also written to ``metrics.json``), with ``temperature`` (the
        plug-in's), ``validation_nll_before`` (T = 1) and ``validation_nll_after``, and
        ``predictive_temperature`` with ``validation_predictive_nll_before`` and ``_after``
        (the NLL of the draws' average).

    Raises
    ------
    ValueError
        If the run is not a classifier's, or carved no validation split.
    FileExistsError
        If ``output_dir`` already holds a run.
    """
    run_dir, out = Path(run_dir), Path(output_dir)
    config = runs.read_config(run_dir)
    spec = resolve_task_spec(config["train"]["task"])
    if not isinstance(get_likelihood(spec.likelihood).evaluation(), ProbabilityAccumulator):
        raise ValueError(
            f"{run_dir} is a {spec.likelihood} run: temperature scaling calibrates class "
            "probabilities (classification or multiple choice)"
        )
    runs.refuse_existing(out)
    source = runs.read_metrics(run_dir)
    validation_dir = runs.evaluation_dir(run_dir, source["task"], runs.VALIDATION_SPLIT)
    if not runs.has_predictions(validation_dir):
        raise ValueError(
            f"{run_dir} has no predictions on a carved validation split ({validation_dir}): "
            "train it with --validation-fraction > 0 (TrainConfig.validation_fraction)"
        )
    validation = runs.read_predictions(validation_dir)
    predictions = runs.read_predictions(run_dir)
    temperature = fit_temperature(validation.mean_probs, validation.labels)
    predictive_temperature = fit_temperature(validation.draw_probs, validation.labels)
    scaled = scale_predictions(predictions, temperature, predictive_temperature)
    evaluation = ClassEvaluation(scaled)
    metrics = {
        "task": source["task"],
        "split": source["split"],
        "method": TEMPERATURE_METHOD,
        "num_examples": source["num_examples"],
        "num_samples": scaled.num_draws,
        "source": str(run_dir),
        "source_method": source["method"],
        "temperature": temperature,
        "num_validation_examples": len(validation.labels),
        "validation_nll_before": scaled_nll(validation.mean_probs, validation.labels, 1.0),
        "validation_nll_after": scaled_nll(validation.mean_probs, validation.labels, temperature),
        "predictive_temperature": predictive_temperature,
        "validation_predictive_nll_before": scaled_nll(
            validation.draw_probs, validation.labels, 1.0
        ),
        "validation_predictive_nll_after": scaled_nll(
            validation.draw_probs, validation.labels, predictive_temperature
        ),
        **evaluation.metrics(spec.metrics),
    }
    out.mkdir(parents=True, exist_ok=True)
    train = {**config["train"], "method": TEMPERATURE_METHOD, "output_dir": str(out)}
    runs.write_config(out, train, config["monteclora"])
    evaluation.save(out)
    runs.write_metrics(out, metrics)
    return metrics
