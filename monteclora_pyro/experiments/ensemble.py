"""Deep ensembles: M finished runs (e.g. seeds) averaged into an ordinary run directory.

Each member contributes its posterior predictive probabilities (its plug-in probabilities for a
method without a posterior) as one draw, so the ensemble's ``predictions.npz`` has
``draw_probs`` of shape (M, n, C) and every analysis of draws (reliability, uncertainty
decomposition, OOD scores) applies unchanged; ``mean_probs`` is the average of the members'
plug-in probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.data import get_task_spec
from monteclora_pyro.models.likelihood import ClassEvaluation
from monteclora_pyro.runs import Predictions

ENSEMBLE_METHOD = "deep-ensemble"


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
    out = Path(output_dir)
    if runs.is_run(out):
        raise FileExistsError(f"{out} already holds a run (nothing was overwritten)")
    configs = [runs.read_config(d) for d in dirs]
    members = [runs.read_metrics(d) for d in dirs]
    predictions = [runs.read_predictions(d) for d in dirs]
    for key in ("task", "split"):
        values = {m[key] for m in members}
        if len(values) > 1:
            raise ValueError(f"the runs differ in {key}: {sorted(values)}")
    for d, p in zip(dirs, predictions, strict=True):
        if not isinstance(p, Predictions):
            raise ValueError(f"{d} holds no class probabilities: ensembles average classifiers")
    for d, p in zip(dirs[1:], predictions[1:], strict=True):
        if not np.array_equal(p.labels, predictions[0].labels):
            raise ValueError(f"{d} was evaluated on other examples than {dirs[0]}")
    ensemble = Predictions(
        labels=predictions[0].labels,
        mean_probs=np.mean([p.mean_probs for p in predictions], axis=0),
        draw_probs=np.stack([p.predictive_probs for p in predictions]),
    )
    evaluation = ClassEvaluation(ensemble)
    first = members[0]
    metrics = {
        "task": first["task"],
        "split": first["split"],
        "method": ENSEMBLE_METHOD,
        "num_examples": first["num_examples"],
        "num_samples": len(dirs),
        "members": [str(d) for d in dirs],
        "member_methods": sorted({m["method"] for m in members}),
        **evaluation.metrics(get_task_spec(first["task"]).metrics),
    }
    out.mkdir(parents=True, exist_ok=True)
    train = {**configs[0]["train"], "method": ENSEMBLE_METHOD, "output_dir": str(out)}
    runs.write_config(out, train, configs[0]["monteclora"])
    evaluation.save(out)
    runs.write_metrics(out, metrics)
    return metrics
