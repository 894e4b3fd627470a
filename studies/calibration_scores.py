"""The figures the calibration report gives each run: scores of its posterior predictive,
its training NLL, the width of its q(A), and how a figure is printed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from monteclora_pyro import io, metrics, runs
from monteclora_pyro.data import get_task_spec

ACCURACY_SLACK = 0.005  # "accuracy within 0.5 points of LoRA's"


def normalised(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(-1, keepdims=True)


def selected_figure(task: str) -> str:
    """The figure (of :func:`scores`) a setting must keep within 0.5 points of LoRA's:
    accuracy, and on CoLA its own score, MCC (accuracy there rewards the majority class)."""
    return "score" if "mcc" in get_task_spec(task).metrics else "accuracy"


def scores(predictions, task: str) -> dict:
    """The reported figures of one run's posterior predictive; ``score`` is the task's own
    metric (its spec's first, e.g. MCC for CoLA), accuracy for a task without one."""
    probs, labels = normalised(predictions.predictive_probs), predictions.labels
    extra = get_task_spec(task).metrics
    report = metrics.classification_report(probs, labels, extra)
    correct = probs.argmax(-1) == labels
    return {
        "score": report[extra[0]] if extra else report["accuracy"],
        "accuracy": report["accuracy"],
        "ece15": report["ece"],
        "ece10": metrics.ece(probs, labels, n_bins=10),
        "nll": report["nll"],
        "brier": report["brier"],
        "sel_auc": metrics.area_under_accuracy_coverage(probs.max(-1), correct),
        "mutual_information": float(
            metrics.mutual_information(normalised(predictions.draw_probs)).mean()
        ),
    }


def plug_in_scores(predictions, task: str) -> dict:
    """:func:`scores`' accuracy, task score, ECE (15 bins), NLL and Brier of the plug-in
    prediction at the posterior mean (A = μ; dropout off), to which the predictive is compared."""
    plug_in = runs.Predictions(
        predictions.labels, predictions.mean_probs, predictions.mean_probs[None]
    )
    found = scores(plug_in, task)
    return {key: found[key] for key in ("score", "accuracy", "ece15", "nll", "brier")}


def chance_scores(labels: np.ndarray, task: str) -> dict:
    """``accuracy`` and ``score`` of always predicting the most frequent class: its share, and
    the task's score of that constant (MCC 0 on CoLA)."""
    labels = np.asarray(labels)
    classes = get_task_spec(task).num_labels
    probs = np.full((len(labels), classes), 0.5 / classes)
    probs[:, np.bincount(labels, minlength=classes).argmax()] += 0.5
    found = scores(runs.Predictions(labels, probs, probs[None]), task)
    return {"accuracy": found["accuracy"], "score": found["score"]}


def train_nll(run: Path) -> float:
    """Mean training-batch NLL over the last epoch of a trained run."""
    history = runs.read_history(run, kind="train")
    if not history:
        return math.nan
    last = history[-1]["epoch"]
    return float(np.mean([r["nll"] for r in history if r["epoch"] == last]))


def relative_width(run: Path) -> float:
    """How wide q(A) is against its mean: the posterior sd of an entry of A, σ‖π‖√Σ_ii over
    the saved draws of π and Σ, divided by the root mean square of μ_A; the mean over layers.
    NaN for a run without a latent A (the paper's objective, LoRA)."""
    guide_file, adapter_file = run / io.GUIDE_FILE, run / io.ADAPTER_FILE
    samples = runs.read_samples(run, "posterior")
    if not guide_file.is_file() or samples is None:
        return math.nan
    guide, adapter = load_file(guide_file), load_file(adapter_file)
    suffix = ".A.scale_unconstrained"
    ratios = []
    for key in (k for k in guide if k.endswith(suffix)):
        layer = key[: -len(suffix)]
        sigma = np.exp(guide[key])
        pi_norm = np.linalg.norm(samples[f"{layer}.weights"], axis=-1)[:, None]
        variances = np.diagonal(samples[f"{layer}.covariance"], axis1=-2, axis2=-1)
        mean = next(v for k, v in adapter.items() if k.startswith(f"{layer}.lora_A"))
        sd = (sigma * pi_norm * np.sqrt(variances)).mean()
        ratios.append(sd / np.sqrt((mean**2).mean()))
    return float(np.mean(ratios)) if ratios else math.nan


def number(value: float | None) -> float:
    """A recorded figure as a float: NaN where it was not defined (recorded as null)."""
    return math.nan if value is None else float(value)


def cell(value, digits: int = 3) -> str:
    if isinstance(value, tuple):
        mean, sd = value
        if math.isnan(mean):
            return "—"
        return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.2f}×"
    return str(value)
