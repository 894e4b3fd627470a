"""Where a setting's posterior predictive loses accuracy: its plug-in prediction against the
average of k of its posterior draws.

    python studies/draw_spread.py [--root runs/calibration] [--name lora-guide0.5] \
        [--tasks mrpc cola rte movie-reviews]

Reads the predictions on the reported split (GLUE dev; movie reviews' evaluation split) of the
calibration study's finished runs of one setting and prints, per task and seed, the score the
study holds the setting to (MCC on CoLA, accuracy elsewhere) of the plug-in prediction (A = μ),
of the average of k of its S draws (the mean over every k-subset, or over ``--subsets`` random
ones where there are more), and the range over single draws of the fraction predicted positive
(class 1), next to the plug-in's. Where the k-draw averages approach the plug-in's score as k
grows, the predictive's loss is Monte Carlo noise that more draws would remove; where they do
not, it is the predictive's own.
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import calibration
import numpy as np
from calibration_scores import scores, selected_figure

from monteclora_pyro import runs
from monteclora_pyro.analysis.tables import format_table

KS = (1, 2, 5)  # subset sizes besides S itself


def score(probs: np.ndarray, labels: np.ndarray, task: str) -> float:
    """The task's selected figure (:func:`calibration_scores.selected_figure`) of ``probs``."""
    return scores(runs.Predictions(labels, probs, probs[None]), task)[selected_figure(task)]


def subsets(num_draws: int, k: int, limit: int, rng: np.random.Generator) -> list[tuple]:
    """Every k-subset of the draws where there are at most ``limit``, else ``limit`` random."""
    if math.comb(num_draws, k) <= limit:
        return list(itertools.combinations(range(num_draws), k))
    return [tuple(rng.choice(num_draws, size=k, replace=False)) for _ in range(limit)]


def spread(predictions: runs.Predictions, task: str, limit: int = 200, seed: int = 0) -> dict:
    """One run's row: plug-in score, mean score of k-draw averages, positive-rate range."""
    rng = np.random.default_rng(seed)
    labels, draws = predictions.labels, predictions.draw_probs
    row = {"plug_in": score(predictions.mean_probs, labels, task)}
    for k in (*(k for k in KS if k < len(draws)), len(draws)):
        found = [
            score(draws[list(s)].mean(0), labels, task) for s in subsets(len(draws), k, limit, rng)
        ]
        row[f"k={k}"] = float(np.mean(found))
    positive = (draws.argmax(-1) == 1).mean(-1)
    row["positive_draws"] = f"{positive.min():.2f}–{positive.max():.2f}"
    row["positive_plug_in"] = f"{(predictions.mean_probs.argmax(-1) == 1).mean():.2f}"
    return row


def spread_rows(root: Path, name: str, tasks, limit: int = 200) -> list[dict]:
    """:func:`spread` of every finished seed of ``name`` on each task (missing seeds skipped)."""
    rows = []
    for task in tasks:
        for seed in calibration.SEEDS:
            run = calibration.run_dir(root, task, name, seed)
            if runs.has_predictions(run):
                found = spread(runs.read_predictions(run), task, limit, seed)
                rows.append({"task": task, "seed": seed, **found})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/calibration", help="the study's run directory")
    parser.add_argument("--name", default=calibration.PACKAGE_DEFAULT, help="a study setting")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "cola", "rte", "movie-reviews"])
    parser.add_argument("--subsets", type=int, default=200, help="random k-subsets at most")
    args = parser.parse_args(argv)
    rows = spread_rows(Path(args.root), args.name, args.tasks, args.subsets)
    if not rows:
        raise SystemExit(f"no finished runs of {args.name} under {args.root}")
    print(format_table(rows, list(rows[0]), digits=4))


if __name__ == "__main__":
    main()
