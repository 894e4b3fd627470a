"""What a finished run directory holds, read through :mod:`monteclora_pyro.runs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.analysis.convergence import last_convergence

__all__ = ["RunData", "read_run_data", "read_runs_data"]


@dataclass
class RunData:
    """The files of one run, as read by :func:`read_run_data`.

    Attributes
    ----------
    path : Path
        The run directory.
    label : str
        Its name in tables and figures.
    config : dict
        ``config.json`` (``{}`` if missing).
    metrics : dict
        ``metrics.json`` of the run's own evaluation (``{}`` if missing).
    predictions : runs.Predictions, runs.RegressionPredictions or None
        Predictions on the run's own evaluation split (class probabilities, or the Normal
        draws of a regression run).
    shifted : dict of str to runs.Predictions or runs.RegressionPredictions
        Predictions of later evaluations, by name ``{task}-{split}``.
    shifted_metrics : dict of str to dict
        The ``metrics.json`` of each later evaluation, by the same names.
    history : dict of str to numpy.ndarray
        Training records per key (:func:`monteclora_pyro.runs.history_arrays`).
    convergence : dict or None
        The last ``convergence`` record of the history (None in older runs).
    """

    path: Path
    label: str
    config: dict
    metrics: dict
    predictions: runs.AnyPredictions | None
    shifted: dict[str, runs.AnyPredictions]
    shifted_metrics: dict[str, dict]
    history: dict[str, np.ndarray]
    convergence: dict | None = None

    @property
    def method(self) -> str:
        """``"monteclora"`` or ``"lora"`` (from the config or metrics)."""
        return self._field("method")

    @property
    def task(self) -> str:
        """The task the run was trained on."""
        return self._field("task")

    def _field(self, name: str) -> str:
        value = self.config.get("train", {}).get(name) or self.metrics.get(name)
        return str(value or "unknown")

    @property
    def regression(self) -> bool:
        """Whether the run's predictions are Normal draws (a regression task)."""
        return isinstance(self.predictions, runs.RegressionPredictions)

    @property
    def single_draw(self) -> bool:
        """Whether there is no posterior predictive beyond the mean (LoRA, or S = 1)."""
        return self.method == "lora" or (
            self.predictions is not None and self.predictions.num_draws == 1
        )


def _read_predictions(directory: Path) -> runs.AnyPredictions | None:
    if not runs.has_predictions(directory):
        return None
    p = runs.read_predictions(directory)
    if isinstance(p, runs.RegressionPredictions):
        arrays = (np.asarray(getattr(p, key), dtype=np.float64) for key in p.KEYS)
        return runs.RegressionPredictions(*arrays)
    return runs.Predictions(
        p.labels.astype(np.int64),
        p.mean_probs.astype(np.float64),
        p.draw_probs.astype(np.float64),
    )


def _read_config(path: Path) -> dict:
    return runs.read_config(path) if runs.is_run(path) else {}


def read_run_data(run_dir: str | Path, label: str | None = None) -> RunData:
    """Read the files of one run directory (missing ones give empty values).

    Parameters
    ----------
    run_dir : str or Path
        A finished run.
    label : str, optional
        Name in tables and figures; the directory name by default.

    Returns
    -------
    RunData
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a run directory")
    evaluations = runs.evaluations(path)
    return RunData(
        path=path,
        label=label or path.name,
        config=_read_config(path),
        metrics=runs.read_metrics(path, missing_ok=True),
        predictions=_read_predictions(path),
        shifted={name: _read_predictions(d) for name, d in evaluations.items()},
        shifted_metrics={
            name: runs.read_metrics(d, missing_ok=True) for name, d in evaluations.items()
        },
        history=runs.history_arrays(path),
        convergence=last_convergence(path),
    )


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def read_runs_data(run_dirs: str | Path | Sequence[str | Path]) -> list[RunData]:
    """Read several runs, labelled by directory name (with the parent's where names repeat).

    Parameters
    ----------
    run_dirs : path or sequence of paths
        Finished run directories.

    Returns
    -------
    list of RunData
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("no run directories given")
    return [read_run_data(p, label) for p, label in zip(paths, _labels(paths), strict=True)]
