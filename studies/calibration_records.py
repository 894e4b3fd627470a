"""The figures the calibration report reads from each run, kept beside the report.

``docs/calibration/records.json`` holds, per run (``TASK/NAME-sSEED``), what the report takes
from its directory: the scores of its posterior predictive on the reported and the validation
split (and of its plug-in prediction at the posterior mean on the reported one), its training
NLL, the width of its q(A), its times (with those of the LoRA runs timed beside it, the
reference of its cost) and the options it was trained with; a movie-review
run's also its figures on each shifted domain (``calibration_shifted.py``).
``docs/calibration/reliability.npz`` holds the seed-0 predictive probabilities the reliability
diagrams draw. With both committed, ``--report-only`` regenerates the report on a machine where
``runs/`` is gone, and a study can be continued there: a recorded run is not trained again.
A run directory that is present is authoritative; its record is recomputed from it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from pathlib import Path

import numpy as np
from calibration import (
    ENSEMBLE_SEEDS,
    GUIDED,
    MONTECLORA,
    POST_HOC_DIRS,
    REPORTED,
    SHIFTED,
    TRAINED,
    TRAINS,
    run_dir,
    source_of,
    study_options,
    train_options,
)
from calibration_runner import stale_settings
from calibration_scores import chance_scores, plug_in_scores, relative_width, scores, train_nll
from calibration_shifted import ROWS, TASK, shifted_figures

from monteclora_pyro import runs
from monteclora_pyro.files import atomic_write_text

logger = logging.getLogger("calibration")

RECORDS_FILE = "records.json"
PROBS_FILE = "reliability.npz"


def command_seconds(root: Path) -> dict[str, float]:
    """Wall seconds of each logged command, by its output directory."""
    log = root / "commands.log"
    seconds = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        found = re.search(r"--output-dir (\S+).*# rc=0 (\d+)s$", line)
        if found:
            seconds[found.group(1)] = float(found.group(2))
    return seconds


def expected_options(task: str, name: str, seed: int) -> str:
    """The training options a record of ``name`` must carry to be read: its own for a trained
    method, those of the runs it derives from (seed aside; LoRA's, or the default's for
    ``default-temperature``) for a post-hoc baseline, and :data:`GUIDED`'s own after them."""
    if name in TRAINED:
        return " ".join(study_options(task, name, seed))
    source = " ".join(study_options(task, source_of(name), 0))
    return f"{source} | {' '.join(train_options(task, name, 0))}" if name in GUIDED else source


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _finite_scores(found: dict) -> dict:
    return {key: _finite(value) for key, value in found.items()}


TIMES = ("train_seconds", "eval_seconds")


def lora_seconds(root: Path, task: str) -> dict[str, float] | None:
    """Mean training and evaluation seconds of the LoRA runs of ``task`` under ``root`` (the
    runs of the machine and session that times the runs beside them): the reference a run
    recorded there is costed against."""
    found = [runs.read_timing(run_dir(root, task, "lora", s)) or {} for s in ENSEMBLE_SEEDS]
    means = {k: [t[k] for t in found if t.get(k) is not None] for k in TIMES}
    return {k: float(np.mean(v)) for k, v in means.items() if v} or None


def figures_of(
    run: Path,
    predictions,
    task: str,
    name: str,
    seed: int,
    seconds: float | None,
    reference: dict[str, float] | None = None,
) -> dict:
    """The record of the finished ``run`` and its ``predictions`` on the reported split;
    ``reference``: :func:`lora_seconds` where it was timed."""
    validation_dir = runs.evaluation_dir(run, task, runs.VALIDATION_SPLIT)
    validation = chance = None
    if runs.has_predictions(validation_dir):
        held_out = runs.read_predictions(validation_dir)
        validation = _finite_scores(scores(held_out, task))
        chance = _finite_scores(chance_scores(held_out.labels, task))
    trains = name in TRAINS
    source = run if trains else runs.read_metrics(run).get("source")
    timing = runs.read_timing(run) or {}
    return {
        "options": expected_options(task, name, seed),
        "dev": _finite_scores(scores(predictions, task)),
        "dev_plug_in": (
            _finite_scores(plug_in_scores(predictions, task))
            if trains and predictions.num_draws > 1
            else None
        ),
        "validation": validation,
        "validation_chance": chance,
        "train_nll": _finite(train_nll(Path(source))) if source else None,
        "q_width": _finite(relative_width(run)) if name in MONTECLORA else None,
        "train_seconds": timing.get("train_seconds"),
        "eval_seconds": timing.get("eval_seconds"),
        "command_seconds": seconds,
        "lora_seconds": reference,
    }


class Records:
    """The recorded figures of a study's runs, read through :meth:`get`, which recomputes the
    record of a run whose directory is present under ``root``."""

    def __init__(self, directory: Path, root: Path):
        self.directory, self.root = directory, root
        path = directory / RECORDS_FILE
        self.figures: dict[str, dict] = {}
        self.probs: dict[str, np.ndarray] = {}
        try:
            if path.is_file():
                self.figures = json.loads(path.read_text())
            path = directory / PROBS_FILE
            if path.is_file():
                with np.load(path) as saved:
                    self.probs = {key: saved[key] for key in saved.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise SystemExit(
                f"{path} cannot be read ({err}); restore it (git checkout -- {path}) or "
                "remove it to record afresh"
            ) from err
        self.seconds = command_seconds(root)
        self._refreshed: set[str] = set()
        self._lora_seconds: dict[str, dict | None] = {}  # by task: lora_seconds, read once

    @staticmethod
    def key(task: str, name: str, seed: int) -> str:
        return f"{task}/{name}-s{seed}"

    def recorded(self, task: str, name: str, seed: int) -> bool:
        """Whether a run has a record :meth:`get` reads, with, for a movie-review row of the
        shifted-domain section, its figures on every shifted domain (the study's predicate
        for a step done elsewhere)."""
        found = self.get(task, name, seed) if task in (*REPORTED, TASK) else None
        if found is None or task in REPORTED or name not in ROWS:
            return found is not None
        return set(found.get("shifted", {})) == set(SHIFTED)

    def get(self, task: str, name: str, seed: int) -> dict | None:
        """The figures of a run: recomputed from its directory when present (and trained with
        the study's options), else recorded (with the study's current options), else None."""
        key, run = self.key(task, name, seed), run_dir(self.root, task, name, seed)
        if key not in self._refreshed and (run / runs.METRICS_FILE).is_file():
            self._refreshed.add(key)
            stale = []
            if name in TRAINS:
                command = ["monteclora", *train_options(task, name, seed)]
                stale = stale_settings(command, runs.read_config(run))
            if stale:
                logger.warning("%s trained with other settings, not read: %s", run, stale)
                self.figures.pop(key, None)
            else:
                before = self.figures.get(key) or {}
                predictions = runs.read_predictions(run)
                seconds = self.seconds.get(str(run))
                if task not in self._lora_seconds:
                    self._lora_seconds[task] = lora_seconds(self.root, task)
                self.figures[key] = figures_of(
                    run, predictions, task, name, seed, seconds, self._lora_seconds[task]
                )
                if task == TASK:  # a domain not evaluated here keeps its recorded figures
                    same = before.get("options") == self.figures[key]["options"]
                    shifted = shifted_figures(self.root, name, seed)
                    self.figures[key]["shifted"] = {
                        **(before.get("shifted", {}) if same else {}),
                        **{domain: _finite_scores(found) for domain, found in shifted.items()},
                    }
                elif seed == 0:
                    self.probs[f"{key}/probs"] = np.asarray(predictions.predictive_probs)
                    self.probs[f"{key}/labels"] = np.asarray(predictions.labels)
        found = self.figures.get(key)
        if found is not None and found["options"] != expected_options(task, name, seed):
            if key not in self._refreshed:
                logger.warning("%s recorded with other settings than the study's: not read", key)
            return None
        return found

    def seed_probs(self, task: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Seed 0's predictive probabilities and labels on the reported split, for a figure."""
        key = self.key(task, name, 0)
        if self.get(task, name, 0) is None:
            return None
        if f"{key}/probs" not in self.probs:
            logger.warning("seed 0's predictions of %s are not recorded: not drawn", key)
            return None
        return self.probs[f"{key}/probs"], self.probs[f"{key}/labels"]

    def record_present(self) -> int:
        """Record every finished run of a reported task or of movie reviews under ``root``
        (with a reported task's seed-0 probabilities, :meth:`get`), as the report would; the
        number recorded."""
        count = 0
        for task in (*REPORTED, TASK):
            for run in sorted((self.root / task).glob("*-s[0-9]*")):
                name, seed = run.name.rsplit("-s", 1)
                if name in (*TRAINED, *POST_HOC_DIRS) and seed.isdigit():
                    count += self.get(task, name, int(seed)) is not None
        return count

    def save(self) -> None:
        """Write both files, with the seed-0 probabilities of every recorded run (not only of
        those the report draws now: another selection may draw them where the runs are gone)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.figures, indent=1, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_text(self.directory / RECORDS_FILE, text)
        kept = {k: v for k, v in self.probs.items() if k.rsplit("/", 1)[0] in self.figures}
        np.savez_compressed(self.directory / PROBS_FILE, **dict(sorted(kept.items())))
