"""The summary tables of finished runs: metrics, domain shift, OOD detection, uncertainty.

Regression runs fill the same tables with their own columns (:data:`REGRESSION_COLUMNS`), their
held-out row (:class:`~monteclora_pyro.analysis.regression.RegressionHeldOut`) and a variance
decomposition; selective prediction and OOD detection need class probabilities and skip them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monteclora_pyro import metrics
from monteclora_pyro.analysis.convergence import convergence_row
from monteclora_pyro.analysis.heldout import heldout
from monteclora_pyro.analysis.regression import REGRESSION_COLUMNS, uncertainty_row
from monteclora_pyro.analysis.run_data import RunData, read_runs_data
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.domains import SHIFT_DOMAINS
from monteclora_pyro.runs import MODES, AnyPredictions, Predictions, RegressionPredictions

__all__ = [
    "METRIC_COLUMNS",
    "METRIC_HEADERS",
    "MODE_NAMES",
    "OOD_SCORES",
    "REGRESSION_COLUMNS",
    "format_summary",
    "ood_scores",
    "summary_tables",
]

MODE_NAMES = dict(zip(MODES, ("posterior mean", "posterior predictive"), strict=True))
METRIC_COLUMNS = ("accuracy", "nll", "ece", "brier")
METRIC_HEADERS = {
    "accuracy": "accuracy",
    "nll": "NLL",
    "ece": "ECE",
    "brier": "Brier",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "rmse": "RMSE",
    "coverage_90": "90% coverage",
    "width_90": "90% width",
}
OOD_SCORES = ("predictive entropy", "mutual information", "1 - max prob")


def ood_scores(draw_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Uncertainty scores per example (higher = more out-of-distribution), by name."""
    decomposition = metrics.uncertainty_decomposition(draw_probs)
    return {
        "predictive entropy": decomposition.total,
        "mutual information": decomposition.epistemic,
        "1 - max prob": 1.0 - draw_probs.mean(0).max(axis=1),
    }


def _ood_domains(run: RunData, domains: Sequence[str]) -> list[tuple[str, Predictions]]:
    found = []
    for domain in domains:
        shifted = run.shifted.get(f"{domain}-test")
        if shifted is not None and domain != run.task:
            found.append((domain, shifted))
    return found


def _mode_values(predictions: AnyPredictions | None, mode: str, saved: dict) -> dict:
    """Accuracy, NLL, ECE and Brier of a mode (regression: :data:`REGRESSION_COLUMNS`): saved
    in metrics.json, else computed."""
    block = saved.get(mode)
    regression = isinstance(predictions, RegressionPredictions) or (
        predictions is None and isinstance(block, dict) and "pearson" in block
    )
    columns = REGRESSION_COLUMNS if regression else METRIC_COLUMNS
    if not (isinstance(block, dict) and all(k in block for k in columns)):
        if predictions is None:
            return {}
        if regression:
            block = metrics.regression_report(*predictions.mode_params(mode), predictions.labels)
        else:
            block = metrics.classification_report(predictions.mode_probs(mode), predictions.labels)
    return {k: float(block[k]) for k in columns}


def _run_row(run: RunData) -> dict:
    m, p = run.metrics, run.predictions
    return {
        "run": run.label,
        "method": run.method,
        "task": run.task,
        "split": m.get("split", run.config.get("train", {}).get("eval_split", "")),
        "num_examples": m.get("num_examples", None if p is None else len(p.labels)),
        "num_samples": m.get("num_samples", None if p is None else p.num_draws),
        "steps": m.get("steps"),
        "path": str(run.path),
    }


def summary_tables(run_dirs, ood_domains: Sequence[str] = SHIFT_DOMAINS) -> dict[str, list[dict]]:
    """The report's tables as lists of plain rows (JSON-serialisable).

    Parameters
    ----------
    run_dirs : path or sequence of paths
        Finished run directories.
    ood_domains : sequence of str
        Domains ``d`` whose ``evaluations/{d}-test`` predictions count as
        out-of-distribution against the run's own evaluation split.

    Returns
    -------
    dict
        ``"runs"`` (run, method, task, split, num_examples, num_samples, steps, path),
        ``"metrics"`` (run, method, mode, accuracy, nll, ece, brier; both prediction
        modes; regression runs: :data:`REGRESSION_COLUMNS` instead of the four),
        ``"shifted"`` (the same per ``evaluations/*`` split), ``"ood"`` (run,
        domain, score, auroc, n_in, n_out: AUROC of predictive entropy, mutual
        information and 1 - max probability, in-domain against each domain),
        ``"uncertainty"`` (run, split, mean total, aleatoric and epistemic entropy of the
        posterior predictive, in nats; regression runs: the mean predictive variance and its
        parts, with ``unit = "variance"``) and ``"selective"`` (run, mode, area under the
        accuracy-coverage curve of the top-class probability), ``"held-out"`` (run, method,
        split, n, S, lppd, lppd/n, MI, MI share, and the plug-in minus predictive gaps of NLL,
        accuracy and ECE: :meth:`monteclora_pyro.analysis.heldout.HeldOut.row`) and
        ``"convergence"`` (the last convergence record of each run:
        :func:`monteclora_pyro.analysis.convergence.convergence_row`).
    """
    names = ("runs", "metrics", "held-out", "shifted", "ood", "uncertainty", "selective")
    names += ("convergence",)
    tables: dict[str, list[dict]] = {name: [] for name in names}
    for run in read_runs_data(run_dirs):
        who = {"run": run.label, "method": run.method}
        tables["runs"].append(_run_row(run))
        tables["convergence"].append(convergence_row(run.label, run.method, run.convergence))
        ev = run.predictions
        for mode, mode_name in MODE_NAMES.items():
            values = _mode_values(ev, mode, run.metrics)
            if values:
                tables["metrics"].append(who | {"mode": mode_name} | values)
        for name, shifted in run.shifted.items():
            for mode, mode_name in MODE_NAMES.items():
                values = _mode_values(shifted, mode, run.shifted_metrics[name])
                tables["shifted"].append(who | {"split": name, "mode": mode_name} | values)
        if ev is None:
            continue
        split = run.metrics.get("split") or run.config.get("train", {}).get("eval_split", "")
        row = heldout(ev, run.label, str(split)).row()
        tables["held-out"].append({"run": row.pop("run"), "method": run.method} | row)
        if isinstance(ev, RegressionPredictions):
            for name, source in [("in-domain", ev), *run.shifted.items()]:
                tables["uncertainty"].append(who | {"split": name} | uncertainty_row(source))
            continue
        for split, source in [("in-domain", ev), *run.shifted.items()]:
            decomposition = metrics.uncertainty_decomposition(source.draw_probs)
            tables["uncertainty"].append(
                who
                | {
                    "split": split,
                    "total": float(decomposition.total.mean()),
                    "aleatoric": float(decomposition.aleatoric.mean()),
                    "epistemic": float(decomposition.epistemic.mean()),
                }
            )
        for mode, mode_name in MODE_NAMES.items():
            probs = ev.mode_probs(mode)
            area = metrics.area_under_accuracy_coverage(
                probs.max(axis=1), probs.argmax(axis=1) == ev.labels
            )
            tables["selective"].append(who | {"mode": mode_name, "area": area})
        scores_in = ood_scores(ev.draw_probs)
        for domain, shifted in _ood_domains(run, ood_domains):
            scores_out = ood_scores(shifted.draw_probs)
            for score in OOD_SCORES:
                tables["ood"].append(
                    who
                    | {
                        "domain": domain,
                        "score": score,
                        "auroc": metrics.auroc(scores_in[score], scores_out[score]),
                        "n_in": len(ev.labels),
                        "n_out": len(shifted.labels),
                    }
                )
    return tables


def format_summary(tables: dict[str, list[dict]]) -> str:
    """Plain-text rendering of :func:`summary_tables` (for a terminal), paths left out.

    Parameters
    ----------
    tables : dict
        As returned by :func:`summary_tables`.

    Returns
    -------
    str
    """
    return "\n\n".join(
        format_table(rows, [c for c in _columns(rows) if c != "path"], title=name)
        for name, rows in tables.items()
        if rows
    )


def _columns(rows: list[dict]) -> list[str]:
    """Every key of the rows, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))
