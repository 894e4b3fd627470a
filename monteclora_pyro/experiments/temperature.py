"""Temperature scaling: one temperature fitted on a run's carved validation split.

A run trained with ``validation_fraction > 0`` (``--validation-fraction``) holds the plug-in and
per-draw class probabilities of the examples it held out of training
(``evaluations/{task}-train-validation/``). :func:`temperature_scale` fits T > 0 minimising the
NLL of ``softmax(log p / T)`` on the validation plug-in probabilities, applies it to the
evaluation split's plug-in probabilities and to every draw, and writes an ordinary run
directory. The plug-in prediction's argmax (so its accuracy) is unchanged; the posterior
predictive averages the scaled draws, whose argmax is unchanged when the draws agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.data import resolve_task_spec
from monteclora_pyro.models.evaluations import ProbabilityAccumulator
from monteclora_pyro.models.likelihood import ClassEvaluation, get_likelihood
from monteclora_pyro.runs import Predictions

TEMPERATURE_METHOD = "temperature"
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))  # the search interval of log T


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log probs / T)`` over the last axis, in float64."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)) / temperature
    logits -= logits.max(-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(-1, keepdims=True)


def scale_predictions(predictions: Predictions, temperature: float) -> Predictions:
    """``predictions`` with :func:`scale` applied to the plug-in and to every draw."""
    return Predictions(
        labels=predictions.labels,
        mean_probs=scale(predictions.mean_probs, temperature),
        draw_probs=scale(predictions.draw_probs, temperature),
    )


def scaled_nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``labels`` under :func:`scale` (``probs``, ``temperature``)."""
    scaled = scale(probs, temperature)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(scaled, 1e-300, None))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, grid: int = 201) -> float:
    """The T minimising :func:`scaled_nll`: a grid on log T, then golden-section refinement."""
    lo, hi = LOG_T_BOUNDS
    points = np.linspace(lo, hi, grid)
    values = [scaled_nll(probs, labels, math.exp(t)) for t in points]
    best = int(np.argmin(values))
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
    """Fit T on a run's carved validation split; write the scaled run to ``output_dir``.

    Returns
    -------
    dict
        The scaled run's metrics (also written to ``metrics.json``), with ``temperature``,
        ``validation_nll_before`` (T = 1) and ``validation_nll_after``.

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
    scaled = scale_predictions(predictions, temperature)
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
        **evaluation.metrics(spec.metrics),
    }
    out.mkdir(parents=True, exist_ok=True)
    train = {**config["train"], "method": TEMPERATURE_METHOD, "output_dir": str(out)}
    runs.write_config(out, train, config["monteclora"])
    evaluation.save(out)
    runs.write_metrics(out, metrics)
    return metrics
