"""Experiment tracking: the training loop's figures sent to TensorBoard or MLflow as well.

``TrainConfig.report_to`` names the backends, comma-separated: ``"none"`` (the default),
``"tensorboard"`` (event files in ``RUN_DIR/tensorboard/``, read with ``tensorboard --logdir
RUN_DIR/tensorboard``) and ``"mlflow"`` (a local file store in ``RUN_DIR/mlruns``, read with
``mlflow ui --backend-store-uri RUN_DIR/mlruns``). The :class:`~monteclora_pyro.training.loop.
Trainer` creates one :class:`Tracker` on rank 0 and logs, at the step they belong to:

- ``train/{term}`` every step: ``loss`` and every loss term of ``history.jsonl``, ``train/lr``
  (the model's parameter group) and ``train/guide_lr`` (the guide's group, when there is one);
- ``eval/{mode}/{metric}`` at every evaluation, for both prediction modes;
- ``convergence/{figure}`` at every evaluation: every number of the ``convergence`` record
  (``elbo_slope``, ``elbo_change``, ``max_param_change``, ``max_grad_snr``, ...; not the
  per-parameter ones, :mod:`~monteclora_pyro.training.convergence`).

``history.jsonl`` stays the record of a run; the trackers are views of it. Tracking draws no
random numbers, so a run trains identically with it on or off.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

NONE = "none"
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


class Tracker(ABC):
    """One tracking backend: scalars at a step, nested metrics, the configuration, close.

    Parameters
    ----------
    run_dir : Path
        The run directory; the backend writes under it.
    resumed_at : int
        The step a resumed run continues from (0 for a new run): figures logged after it by
        the interrupted run are replaced, where the backend allows it.
    """

    name: ClassVar[str]
    module: ClassVar[str]  # the package the backend imports
    requirement: ClassVar[str]  # what pip installs

    @abstractmethod
    def __init__(self, run_dir: Path, resumed_at: int = 0): ...

    @classmethod
    def missing_message(cls) -> str | None:
        """Why the backend cannot run here (its package is missing), or None."""
        if importlib.util.find_spec(cls.module) is not None:
            return None
        return (
            f"report_to={cls.name!r} needs the {cls.module} package: pip install "
            f"'monteclora-pyro[{cls.name}]' (or pip install '{cls.requirement}')"
        )

    @abstractmethod
    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Log named scalars at ``step``."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int, prefix: str) -> None:
        """Log the numbers of a nested dict as ``prefix/key/subkey`` at ``step``."""
        self.log_scalars(flatten(metrics, prefix), step)

    @abstractmethod
    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's configuration (once, at the start of a new run)."""

    @abstractmethod
    def close(self) -> None:
        """Write everything out and release the backend."""


class TensorBoardTracker(Tracker):
    """Event files in ``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard``."""

    name = "tensorboard"
    module = "tensorboard"
    requirement = "tensorboard>=2.15"
    DIRECTORY = "tensorboard"

    def __init__(self, run_dir: Path, resumed_at: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops the events an interrupted run logged after its checkpoint.
        self.writer = SummaryWriter(
            log_dir=str(Path(run_dir) / self.DIRECTORY),
            purge_step=resumed_at + 1 if resumed_at else None,
        )

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", global_step=0)

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run in a local file store, ``RUN_DIR/mlruns`` (experiment ``monteclora``).

    A resumed run continues the MLflow run it started; figures of the steps it repeats are
    logged again (MLflow keeps every value of a metric with its step). MLflow 3 keeps the file
    store only behind ``MLFLOW_ALLOW_FILE_STORE=true``: the tracker sets it around its own
    calls, and reading the store needs it too (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
    --backend-store-uri RUN_DIR/mlruns``).
    """

    name = "mlflow"
    module = "mlflow"
    requirement = "mlflow>=2.10"
    DIRECTORY = "mlruns"
    EXPERIMENT = "monteclora"

    def __init__(self, run_dir: Path, resumed_at: int = 0):
        import mlflow
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        # A client bound to the store, not mlflow.set_tracking_uri: no process-wide state, so
        # several runs (a sweep, the tests) can track in one process.
        self.uri = f"file:{(run_dir / self.DIRECTORY).resolve()}"
        self._metric = mlflow.entities.Metric
        self._param = mlflow.entities.Param
        with _file_store_allowed():
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(self.EXPERIMENT)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(self.EXPERIMENT)
            )
            runs = self.client.search_runs([experiment_id], max_results=1) if resumed_at else []
            self.resumed = bool(runs)
            if runs:
                self.run_id = runs[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                run = self.client.create_run(experiment_id, run_name=run_dir.resolve().name)
                self.run_id = run.info.run_id

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), now, step) for k, v in scalars.items()]
        with _file_store_allowed():
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self.resumed:  # already logged; MLflow refuses to change a parameter
            return
        params = [self._param(k, str(v)[:500]) for k, v in flatten_any(config).items()]
        with _file_store_allowed():
            for start in range(0, len(params), 100):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, params=params[start : start + 100])

    def close(self) -> None:
        with _file_store_allowed():
            self.client.set_terminated(self.run_id)


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    """``MLFLOW_ALLOW_FILE_STORE=true`` for the duration of the block (MLflow 3)."""
    before = os.environ.get(ALLOW_FILE_STORE)
    os.environ[ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ALLOW_FILE_STORE]
        else:
            os.environ[ALLOW_FILE_STORE] = before


TRACKERS: dict[str, type[Tracker]] = {cls.name: cls for cls in (TensorBoardTracker, MLflowTracker)}
REPORT_TO = (NONE, *TRACKERS)


class Trackers(Tracker):
    """Several backends behind one tracker."""

    name = "several"

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_scalars(scalars, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_config(config)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def parse_report_to(value: str) -> tuple[str, ...]:
    """The backends named by a ``report_to`` value (empty for ``"none"``).

    Raises
    ------
    ValueError
        If a name is not one of :data:`REPORT_TO`, or ``"none"`` comes with others.
    """
    if not isinstance(value, str):
        raise ValueError(f"report_to={value!r} is invalid: it must be a string")
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in REPORT_TO]
    if unknown or not names:
        raise ValueError(
            f"report_to={value!r} is invalid: allowed values are "
            f"{', '.join(map(repr, REPORT_TO))}, or several of them comma-separated"
        )
    if NONE in names and len(names) > 1:
        raise ValueError(f"report_to={value!r} is invalid: 'none' cannot come with other backends")
    return tuple(dict.fromkeys(n for n in names if n != NONE))


def check_report_to(value: str) -> tuple[str, ...]:
    """:func:`parse_report_to`, also refusing a backend whose package is not installed."""
    names = parse_report_to(value)
    for name in names:
        message = TRACKERS[name].missing_message()
        if message is not None:
            raise ValueError(message)
    return names


def make_tracker(report_to: str, run_dir: Path, resumed_at: int = 0) -> Tracker | None:
    """The tracker of a ``report_to`` value for ``run_dir``; None for ``"none"``."""
    trackers = [TRACKERS[name](run_dir, resumed_at) for name in check_report_to(report_to)]
    if not trackers:
        return None
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)


def flatten(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a nested dict keyed ``prefix/key/subkey`` (booleans and text left out)."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def flatten_any(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested dict, keyed ``prefix.key.subkey``."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_any(value, name))
        else:
            flat[name] = value
    return flat
