"""Ensembles: finished runs (deep ensemble) or a run's kept epochs (checkpoint ensemble).

The ensemble is the equal-weight mixture of its members' posteriors: members with S draws each
(one for a method without a posterior) contribute all of them, so the ensemble's
``predictions.npz`` has ``draw_probs`` of shape (M·S, n, C), its predictive is the average of
the members' predictives, and every analysis of draws (reliability, uncertainty decomposition
with the within-member spread included, OOD scores) applies unchanged; ``mean_probs`` is the
average of the members' plug-in probabilities. When every member holds predictions on the
same carved validation split (the epochs of one run; runs of other seeds hold out other
examples), the ensemble's are written too (``evaluations/{task}-train-validation/``), so
that M and post-hoc calibration are selected there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.data import get_task_spec
from monteclora_pyro.models.likelihood import ClassEvaluation
from monteclora_pyro.runs import Predictions

logger = logging.getLogger(__name__)

ENSEMBLE_METHOD = "deep-ensemble"
CHECKPOINT_ENSEMBLE_METHOD = "checkpoint-ensemble"


def average(members: list[Predictions]) -> Predictions:
    """The equal-weight ensemble of ``members``: every member's draws, plug-in probabilities
    averaged. Members with different numbers of draws contribute one draw each, their
    predictive, so that each still weighs 1/M."""
    if len({p.num_draws for p in members}) == 1:
        draws = np.concatenate([p.draw_probs for p in members])
    else:
        logger.info("the members hold different numbers of draws: one draw per member")
        draws = np.stack([p.predictive_probs for p in members])
    return Predictions(
        labels=members[0].labels,
        mean_probs=np.mean([p.mean_probs for p in members], axis=0),
        draw_probs=draws,
    )


def ensemble_runs(run_dirs: list[str | Path], output_dir: str | Path) -> dict:
    """Average finished runs of one task and split into the run directory ``output_dir``.

    Returns
    -------
    dict
        The ensemble's metrics (also written to ``metrics.json``).

    Raises
    ------
    ValueError
        If fewer than two runs are given, or they differ in task, split or labels.
    FileExistsError
        If ``output_dir`` already holds a run.
    """
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise ValueError(f"an ensemble needs at least two runs, got {len(dirs)}")
    runs.refuse_existing(output_dir)
    members = [runs.read_metrics(d) for d in dirs]
    for key in ("task", "split"):
        values = {m[key] for m in members}
        if len(values) > 1:
            raise ValueError(f"the runs differ in {key}: {sorted(values)}")
    extra = {"members": [str(d) for d in dirs]}
    extra["member_methods"] = sorted({m["method"] for m in members})
    splits = [runs.read_validation_split(d) for d in dirs]
    same = all(s is not None and np.array_equal(s, splits[0]) for s in splits)
    if not same:
        logger.info("the members held out different validation examples: no validation average")
    return _write(dirs, output_dir, ENSEMBLE_METHOD, dirs[0], extra, validation=same)


def checkpoint_ensemble(
    run_dir: str | Path, output_dir: str | Path, members: int | None = None
) -> dict:
    """Average the last ``members`` kept epochs of one run (all kept ones by default).

    The run must have been trained with ``keep_epoch_checkpoints`` >= 2
    (``--keep-epoch-checkpoints``).

    Returns
    -------
    dict
        The ensemble's metrics (also written to ``metrics.json``), with the member ``epochs``.

    Raises
    ------
    ValueError
        If the run kept fewer than two epochs, or fewer than ``members``.
    FileExistsError
        If ``output_dir`` already holds a run.
    """
    run_dir = Path(run_dir)
    kept = runs.epoch_dirs(run_dir)
    if members is not None and members < 2:
        raise ValueError(f"a checkpoint ensemble needs members >= 2, got {members}")
    wanted = len(kept) if members is None else members
    if len(kept) < max(wanted, 2):
        raise ValueError(
            f"{run_dir} kept {len(kept)} epoch(s), a checkpoint ensemble of {max(wanted, 2)} "
            "needs as many: train it with --keep-epoch-checkpoints M (M >= 2) and >= M epochs"
        )
    runs.refuse_existing(output_dir)
    chosen = kept[-wanted:]
    extra = {"source": str(run_dir), "source_method": runs.read_metrics(run_dir)["method"]}
    extra["epochs"] = [runs.read_metrics(d)["epoch"] for d in chosen]
    return _write(chosen, output_dir, CHECKPOINT_ENSEMBLE_METHOD, run_dir, extra)


def _write(
    members: list[Path],
    output_dir: str | Path,
    method: str,
    source: Path,
    extra: dict,
    validation: bool = True,
) -> dict:
    """Average the predictions held in ``members``; ``source`` is a run they come from.

    With ``validation``, the members' validation predictions (of the same held-out examples)
    are averaged too.
    """
    config, first = runs.read_config(source), runs.read_metrics(source)
    predictions = [runs.read_predictions(d) for d in members]
    for d, p in zip(members, predictions, strict=True):
        if not isinstance(p, Predictions):
            raise ValueError(f"{d} holds no class probabilities: ensembles average classifiers")
        if not np.array_equal(p.labels, predictions[0].labels):
            raise ValueError(f"{d} was evaluated on other examples than {members[0]}")
    spec = get_task_spec(first["task"])
    evaluation = ClassEvaluation(average(predictions))
    metrics = {
        "task": first["task"],
        "split": first["split"],
        "method": method,
        "num_examples": first["num_examples"],
        "num_members": len(members),
        "num_samples": evaluation.predictions.num_draws,
        **extra,
        **evaluation.metrics(spec.metrics),
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = {**config["train"], "method": method, "output_dir": str(out)}
    runs.write_config(out, train, config["monteclora"])
    held = [runs.evaluation_dir(d, first["task"], runs.VALIDATION_SPLIT) for d in members]
    if validation and all(runs.has_predictions(d) for d in held):
        held_out = ClassEvaluation(average([runs.read_predictions(d) for d in held]))
        directory = runs.evaluation_dir(out, first["task"], runs.VALIDATION_SPLIT)
        directory.mkdir(parents=True, exist_ok=True)
        held_out.save(directory)
        runs.write_metrics(
            directory,
            {"task": first["task"], "split": runs.VALIDATION_SPLIT, "method": method}
            | {"num_examples": len(held_out.predictions.labels), "num_members": len(members)}
            | {"num_samples": held_out.predictions.num_draws}
            | held_out.metrics(spec.metrics),
        )
    evaluation.save(out)
    runs.write_metrics(out, metrics)
    return metrics
