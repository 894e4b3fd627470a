"""The shifted-domain section of docs/calibration.md: movie-review runs evaluated on tweets,
amazon and nyt reviews.

:func:`shifted_figures` computes one run's figures on each shifted domain from the run
directories; the records keep them (``calibration_records.py``), and :func:`shifted_section`
reads them from there, so the section regenerates where ``runs/`` is gone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from calibration import (
    ENSEMBLE_SEEDS,
    GUIDED,
    SEEDS,
    SHIFTED,
    SHIFTED_EXAMPLES,
    TASKS,
    TRAINED,
    run_dir,
)
from calibration_scores import cell, number, scores

from monteclora_pyro import metrics, runs
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.experiments.ensemble import average
from monteclora_pyro.experiments.temperature import scale_predictions

TASK = "movie-reviews"
ROWS = (*TRAINED, *GUIDED, "temperature", "deep-ensemble-m4")  # the section's rows (with runs)


def row_seeds(name: str) -> tuple[int, ...]:
    return (0,) if name == "deep-ensemble-m4" else SEEDS


def _read(run: Path) -> tuple[runs.Predictions, dict] | None:
    """A finished run's predictions in domain and, by domain, on each shifted domain it was
    evaluated on."""
    if not (run / runs.METRICS_FILE).is_file():
        return None
    shifted = {d: runs.evaluation_dir(run, d, "test") for d in SHIFTED}
    found = {d: runs.read_predictions(p) for d, p in shifted.items() if runs.has_predictions(p)}
    return runs.read_predictions(run), found


def _member(root: Path, name: str, seed: int) -> tuple[runs.Predictions, dict] | None:
    """(in-domain predictions, {domain: predictions}) of one seed of a row.

    Temperature scaling applies the LoRA run's validation temperature to its shifted
    predictions; the deep ensemble of four averages the LoRA runs', in domain and out.
    """
    if name == "temperature":
        calibrated, lora = run_dir(root, TASK, name, seed), _read(run_dir(root, TASK, "lora", seed))
        if lora is None or not (calibrated / runs.METRICS_FILE).is_file():
            return None
        fitted = runs.read_metrics(calibrated)
        temperatures = fitted["temperature"], fitted.get("predictive_temperature")
        scaled = {d: scale_predictions(p, *temperatures) for d, p in lora[1].items()}
        return runs.read_predictions(calibrated), scaled
    if name == "deep-ensemble-m4":
        ensemble = run_dir(root, TASK, name, seed)
        loras = [_read(run_dir(root, TASK, "lora", s)) for s in ENSEMBLE_SEEDS]
        if not (ensemble / runs.METRICS_FILE).is_file() or any(x is None for x in loras):
            return None
        domains = set.intersection(*(set(x[1]) for x in loras))
        shifted = {d: average([x[1][d] for x in loras]) for d in SHIFTED if d in domains}
        return runs.read_predictions(ensemble), shifted
    return _read(run_dir(root, TASK, name, seed))


def shifted_figures(root: Path, name: str, seed: int) -> dict[str, dict[str, float]]:
    """``{domain: {"accuracy", "ece15", "auroc"}}`` of a movie-review run under ``root``, for
    each shifted domain it was evaluated on (none for a name outside :data:`ROWS`). AUROC: how
    well the predictive entropy separates the domain's examples from the run's in-domain
    evaluation split."""
    found = _member(root, name, seed) if name in ROWS else None
    if found is None:
        return {}
    inside, shifted = found
    figures = {}
    for domain, out in shifted.items():
        found_scores = scores(out, domain)
        figures[domain] = {
            "accuracy": found_scores["accuracy"],
            "ece15": found_scores["ece15"],
            "auroc": metrics.auroc(
                metrics.predictive_entropy(inside.draw_probs),
                metrics.predictive_entropy(out.draw_probs),
            ),
        }
    return figures


def shifted_section(records) -> str:
    """The section, from the ``shifted`` figures of the records (``Records.get``)."""
    rows = []
    for name in ROWS:
        members = [
            found["shifted"]
            for seed in row_seeds(name)
            if (found := records.get(TASK, name, seed)) is not None and found.get("shifted")
        ]
        if not members:
            continue
        row = {"method": name, "seeds": len(members)}
        for domain in SHIFTED:
            per_seed = [m[domain] for m in members if domain in m]
            for key, figure in (("acc", "accuracy"), ("ECE", "ece15"), ("AUROC", "auroc")):
                values = [number(s[figure]) for s in per_seed]
                if values:
                    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
                    row[f"{domain} {key}"] = cell((float(np.mean(values)), sd))
        rows.append(row)
    if not rows:
        return "## Shifted domains\n\nNot run yet (`--tasks movie-reviews`).\n"
    columns = ["method", "seeds"] + [f"{d} {k}" for d in SHIFTED for k in ("acc", "ECE", "AUROC")]
    setting, table = TASKS[TASK], format_table(rows, columns, markdown=True)
    size = setting.max_train_examples
    return (
        "## Shifted domains\n\nTrained on movie reviews "
        f"({f'first {size:,}' if size else 'all'} training examples, {setting.epochs} "
        f"epochs); evaluated on the first {SHIFTED_EXAMPLES} test examples of each shifted "
        "domain (mean ± sd over seeds). OOD AUROC: how well the predictive entropy separates "
        "the domain's examples from the movie-review evaluation split (0.5: not at all). "
        "Temperature scaling applies each LoRA run's validation temperature; the deep "
        f"ensemble averages the four LoRA runs.\n\n{table}\n"
    )
