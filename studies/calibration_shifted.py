"""The shifted-domain section of docs/calibration.md: movie-review runs evaluated on tweets,
amazon and nyt reviews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from calibration import ENSEMBLE_SEEDS, SEEDS, SHIFTED, SHIFTED_EXAMPLES, TASKS, TRAINED, run_dir
from calibration_scores import cell, scores

from monteclora_pyro import metrics, runs
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.experiments.ensemble import average
from monteclora_pyro.experiments.temperature import scale_predictions

TASK = "movie-reviews"


def _shifted_members(root: Path, name: str) -> list[tuple[object, dict]]:
    """(in-domain predictions, {domain: predictions}) per seed of a method on movie reviews.

    Temperature scaling applies each LoRA run's validation temperature; the deep ensemble of
    four averages the LoRA runs' predictions, in domain and on each shifted domain.
    """

    def read(run: Path):
        if not (run / runs.METRICS_FILE).is_file():
            return None
        shifted = {d: runs.evaluation_dir(run, d, "test") for d in SHIFTED}
        found = {d: runs.read_predictions(p) for d, p in shifted.items() if runs.has_predictions(p)}
        return runs.read_predictions(run), found

    if name == "temperature":
        members = []
        for seed in SEEDS:
            calibrated = run_dir(root, TASK, "temperature", seed)
            lora = read(run_dir(root, TASK, "lora", seed))
            if lora is None or not (calibrated / runs.METRICS_FILE).is_file():
                continue
            fitted = runs.read_metrics(calibrated)
            temperatures = fitted["temperature"], fitted.get("predictive_temperature")
            members.append(
                (
                    runs.read_predictions(calibrated),
                    {d: scale_predictions(p, *temperatures) for d, p in lora[1].items()},
                )
            )
        return members
    if name == "deep-ensemble-m4":
        ensemble = run_dir(root, TASK, name, 0)
        loras = [read(run_dir(root, TASK, "lora", s)) for s in ENSEMBLE_SEEDS]
        if not (ensemble / runs.METRICS_FILE).is_file() or any(x is None for x in loras):
            return []
        domains = set.intersection(*(set(x[1]) for x in loras))
        shifted = {d: average([x[1][d] for x in loras]) for d in SHIFTED if d in domains}
        return [(runs.read_predictions(ensemble), shifted)]
    return [m for s in SEEDS if (m := read(run_dir(root, TASK, name, s))) is not None]


def shifted_section(root: Path) -> str:
    rows = []
    for name in (*TRAINED, "temperature", "deep-ensemble-m4"):
        members = [m for m in _shifted_members(root, name) if m[1]]
        if not members:
            continue
        row = {"method": name, "seeds": len(members)}
        for domain in SHIFTED:
            found = [(inside, shifted[domain]) for inside, shifted in members if domain in shifted]
            if not found:
                continue
            per_seed = [
                (
                    scores(out, domain),
                    metrics.auroc(
                        metrics.predictive_entropy(inside.draw_probs),
                        metrics.predictive_entropy(out.draw_probs),
                    ),
                )
                for inside, out in found
            ]
            for key, values in (
                ("acc", [s["accuracy"] for s, _ in per_seed]),
                ("ECE", [s["ece15"] for s, _ in per_seed]),
                ("AUROC", [a for _, a in per_seed]),
            ):
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
