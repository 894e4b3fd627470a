"""The run directory: the names of its files, and the one module that reads and writes them.

A run directory holds ``config.json`` (training and MonteCLoRA configuration), ``metrics.json``,
``history.jsonl`` (one JSON record per training step and per evaluation), ``predictions.npz``
(labels, plug-in and per-draw class probabilities; for a regression task the plug-in and
per-draw means and precisions of the Normal predictive), ``posterior_samples.npz`` and
``prior_samples.npz`` (draws of the hyperprior sites), ``checkpoint.pt``,
``validation_split.json`` (the training indices held out as a validation split), the adapter
files of :mod:`monteclora_pyro.io` (or PEFT's ``peft_adapter/``), and
``evaluations/{task}-{split}/`` with the ``metrics.json`` and ``predictions.npz`` of later
evaluations.

This module depends on numpy and the standard library only, so that the analysis can read runs
without importing training code. Every write is atomic.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monteclora_pyro.files import atomic_write, atomic_write_text

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
PREDICTIONS_FILE = "predictions.npz"
POSTERIOR_SAMPLES_FILE = "posterior_samples.npz"
PRIOR_SAMPLES_FILE = "prior_samples.npz"
CHECKPOINT_FILE = "checkpoint.pt"
INFERENCE_DATA_FILE = "inference_data.nc"
VALIDATION_SPLIT_FILE = "validation_split.json"
TIMING_FILE = "timing.json"  # wall times: kept apart from the reproducible artefacts
VALIDATION_SPLIT = "train-validation"  # the split name of the carved validation evaluation
EVALUATIONS_DIR = "evaluations"
EPOCHS_DIR = "epochs"  # the kept epoch-end states and predictions (a checkpoint ensemble)
EPOCH_STATE_FILE = "state.pt"
MODES = ("posterior_mean", "posterior_predictive")


@dataclass
class Predictions:
    """Class probabilities on an evaluation set.

    Attributes
    ----------
    labels : np.ndarray
        True labels, shape (n,).
    mean_probs : np.ndarray
        Plug-in probabilities at the posterior mean (A = μ), shape (n, C).
    draw_probs : np.ndarray
        Per-draw probabilities of S posterior draws (or ensemble members), shape (S, n, C);
        their average is the posterior predictive. A method without a posterior has one draw,
        equal to the plug-in prediction.
    """

    labels: np.ndarray
    mean_probs: np.ndarray
    draw_probs: np.ndarray

    @property
    def predictive_probs(self) -> np.ndarray:
        """Bayesian model average of the draws, shape (n, C)."""
        return self.draw_probs.mean(0)

    @property
    def num_draws(self) -> int:
        """S, the number of draws."""
        return self.draw_probs.shape[0]

    def mode_probs(self, mode: str) -> np.ndarray:
        """Probabilities of a prediction mode of :data:`MODES`."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is invalid: allowed values are {MODES}")
        return self.mean_probs if mode == "posterior_mean" else self.predictive_probs

    def save(self, path: str | Path) -> None:
        """Write ``labels``, ``mean_probs`` and ``draw_probs`` to an ``.npz`` file."""
        write_arrays(
            path,
            {"labels": self.labels, "mean_probs": self.mean_probs, "draw_probs": self.draw_probs},
        )

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """Read a file written by :meth:`save`."""
        with np.load(path) as data:
            return cls(data["labels"], data["mean_probs"], data["draw_probs"])


@dataclass
class RegressionPredictions:
    """Normal predictives on an evaluation set (a regression task).

    Draw s predicts ``y_i ~ N(draw_mean[s, i], 1 / draw_precision[s, i])``, so the posterior
    predictive of example i is the mixture ``(1/S) Σ_s N(draw_mean[s, i], 1/draw_precision[s, i])``.

    Attributes
    ----------
    labels : np.ndarray
        True scores, shape (n,).
    mean_pred : np.ndarray
        Plug-in mean at the posterior mean (A = μ), shape (n,).
    mean_precision : np.ndarray
        Plug-in precision (the guide's mean of the observation precision), shape (n,).
    draw_mean, draw_precision : np.ndarray
        Mean and precision of each of S posterior draws, shape (S, n). A method without a
        posterior has one draw, equal to the plug-in prediction.
    """

    labels: np.ndarray
    mean_pred: np.ndarray
    mean_precision: np.ndarray
    draw_mean: np.ndarray
    draw_precision: np.ndarray

    KEYS = ("labels", "mean_pred", "mean_precision", "draw_mean", "draw_precision")

    @property
    def num_draws(self) -> int:
        """S, the number of draws."""
        return self.draw_mean.shape[0]

    def mode_params(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """Means and precisions, shape (S, n), of a prediction mode of :data:`MODES`.

        The plug-in mode is one component (S = 1).
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is invalid: allowed values are {MODES}")
        if mode == "posterior_mean":
            return self.mean_pred[None], self.mean_precision[None]
        return self.draw_mean, self.draw_precision

    def save(self, path: str | Path) -> None:
        """Write the arrays of :attr:`KEYS` to an ``.npz`` file."""
        write_arrays(path, {key: getattr(self, key) for key in self.KEYS})

    @classmethod
    def load(cls, path: str | Path) -> RegressionPredictions:
        """Read a file written by :meth:`save`."""
        with np.load(path) as data:
            return cls(*(data[key] for key in cls.KEYS))


AnyPredictions = Predictions | RegressionPredictions


def load_predictions(path: str | Path) -> AnyPredictions:
    """Read a ``predictions.npz`` of either kind (regression files hold ``draw_mean``)."""
    with np.load(path) as data:
        regression = "draw_mean" in data.files
    return (RegressionPredictions if regression else Predictions).load(path)


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays to an ``.npz`` file atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(Path(path), write)


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file."""
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _json_text(data: dict, sort_keys: bool = False) -> str:
    return json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n"


def write_config(
    run_dir: str | Path, train: dict, monteclora: dict, peft: dict | None = None
) -> None:
    """Write ``config.json``: the training and MonteCLoRA configuration (and PEFT's)."""
    data = {"train": train, "monteclora": monteclora}
    if peft is not None:
        data["peft"] = peft
    atomic_write_text(Path(run_dir) / CONFIG_FILE, _json_text(data, sort_keys=True))


def is_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (its ``config.json``)."""
    return (Path(run_dir) / CONFIG_FILE).is_file()


def refuse_existing(output_dir: str | Path) -> None:
    """Raise FileExistsError if ``output_dir`` holds a run: a new run never overwrites one."""
    if is_run(output_dir):
        raise FileExistsError(f"{output_dir} already holds a run (nothing was overwritten)")


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run, with keys ``train``, ``monteclora`` (and ``peft``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a valid run configuration: {err}") from err
    if not isinstance(data, dict) or not {"train", "monteclora"} <= data.keys():
        raise ValueError(f"{path} is not a valid run configuration: it lacks 'train'/'monteclora'")
    return data


def write_metrics(directory: str | Path, metrics: dict) -> None:
    """Write ``metrics.json`` into a run or evaluation directory."""
    atomic_write_text(Path(directory) / METRICS_FILE, _json_text(metrics))


def read_metrics(directory: str | Path, missing_ok: bool = False) -> dict:
    """The ``metrics.json`` of a run or evaluation directory (``{}`` if missing and allowed)."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        if missing_ok:
            return {}
        raise FileNotFoundError(f"{path} not found: has the run finished?")
    return json.loads(path.read_text())


def write_predictions(directory: str | Path, predictions: AnyPredictions) -> None:
    """Write ``predictions.npz`` into a run or evaluation directory."""
    predictions.save(Path(directory) / PREDICTIONS_FILE)


def has_predictions(directory: str | Path) -> bool:
    """Whether a run or evaluation directory holds ``predictions.npz``."""
    return (Path(directory) / PREDICTIONS_FILE).is_file()


def read_predictions(directory: str | Path) -> AnyPredictions:
    """The ``predictions.npz`` of a run or evaluation directory (either kind)."""
    path = Path(directory) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: has the run finished?")
    return load_predictions(path)


def write_samples(run_dir: str | Path, group: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the ``posterior`` or ``prior`` draws of latent sites (one array per site)."""
    write_arrays(_samples_path(run_dir, group), arrays)


def read_samples(run_dir: str | Path, group: str) -> dict[str, np.ndarray] | None:
    """The ``posterior`` or ``prior`` draws of a run, or ``None`` when it has none."""
    path = _samples_path(run_dir, group)
    return read_arrays(path) if path.is_file() else None


def _samples_path(run_dir: str | Path, group: str) -> Path:
    files = {"posterior": POSTERIOR_SAMPLES_FILE, "prior": PRIOR_SAMPLES_FILE}
    if group not in files:
        raise ValueError(f"group={group!r} is invalid: allowed values are {sorted(files)}")
    return Path(run_dir) / files[group]


def start_history(run_dir: str | Path) -> None:
    """Create an empty ``history.jsonl``."""
    (Path(run_dir) / HISTORY_FILE).write_text("")


def append_history(run_dir: str | Path, record: dict) -> None:
    """Append one record to ``history.jsonl``."""
    with (Path(run_dir) / HISTORY_FILE).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_history(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The records of ``history.jsonl`` (of one ``kind``, e.g. ``"train"``); ``[]`` if none."""
    path = Path(run_dir) / HISTORY_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return records if kind is None else [r for r in records if r.get("kind", "train") == kind]


def truncate_history(run_dir: str | Path, step: int) -> None:
    """Drop the records after ``step`` (those of an interrupted run past its checkpoint)."""
    path = Path(run_dir) / HISTORY_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [line for line in lines if line and json.loads(line)["step"] <= step]
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{k}\n" for k in kept)))


def history_arrays(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Numeric fields of the training records, as arrays per key (``step`` included).

    A value missing from a record is NaN; empty when there is no history.
    """
    records = read_history(run_dir, kind="train")
    keys: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in keys and isinstance(value, int | float) and not isinstance(value, bool):
                keys.append(key)
    return {
        key: np.array([float(r.get(key, math.nan)) for r in records], dtype=np.float64)
        for key in keys
    }


def write_validation_split(run_dir: str | Path, indices: np.ndarray, num_pool: int) -> None:
    """Write ``validation_split.json``: the training indices (of ``num_pool``) held out."""
    data = {"num_pool": int(num_pool), "indices": [int(i) for i in indices]}
    atomic_write_text(Path(run_dir) / VALIDATION_SPLIT_FILE, _json_text(data))


def read_validation_split(run_dir: str | Path) -> np.ndarray | None:
    """The held-out training indices of a run, or ``None`` when it carved none."""
    path = Path(run_dir) / VALIDATION_SPLIT_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["indices"], dtype=np.int64)


def evaluation_dir(run_dir: str | Path, task: str, split: str) -> Path:
    """Where an evaluation of a finished run on ``task``/``split`` is written."""
    return Path(run_dir) / EVALUATIONS_DIR / f"{task}-{split}"


def evaluations(run_dir: str | Path) -> dict[str, Path]:
    """The evaluation directories of a run that hold predictions, by name ``{task}-{split}``."""
    root = Path(run_dir) / EVALUATIONS_DIR
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and has_predictions(d)}


def epoch_dir(run_dir: str | Path, epoch: int) -> Path:
    """Where the state and predictions kept at the end of ``epoch`` (from 1) are written."""
    return Path(run_dir) / EPOCHS_DIR / f"epoch-{epoch:04d}"


def epoch_dirs(run_dir: str | Path) -> list[Path]:
    """The kept epoch directories of a run that hold predictions, oldest first."""
    root = Path(run_dir) / EPOCHS_DIR
    if not root.is_dir():
        return []
    return [d for d in sorted(root.glob("epoch-*")) if d.is_dir() and has_predictions(d)]


def prune_epoch_dirs(run_dir: str | Path, keep: int) -> None:
    """Delete all but the last ``keep`` epoch directories of a run (all of them for 0)."""
    root = Path(run_dir) / EPOCHS_DIR
    found = sorted(root.glob("epoch-*")) if root.is_dir() else []
    stale = found[: max(len(found) - keep, 0)] if keep else found
    for directory in stale:
        shutil.rmtree(directory)


def write_timing(run_dir: str | Path, train_seconds: float, eval_seconds: float | None) -> None:
    """Write ``timing.json``: the wall time of the training steps and of the final evaluation."""
    data = {"train_seconds": train_seconds, "eval_seconds": eval_seconds}
    atomic_write_text(Path(run_dir) / TIMING_FILE, _json_text(data))


def read_timing(run_dir: str | Path) -> dict | None:
    """The wall times written by :func:`write_timing`, or ``None`` when the run has none."""
    path = Path(run_dir) / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else None
