"""The draw-spread probe (studies/draw_spread.py): its scores follow by hand from four examples
and two draws, and it reads the calibration study's run layout."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from monteclora_pyro import runs

sys.path.insert(0, str(Path(__file__).parents[2] / "studies"))

import calibration
import draw_spread

LABELS = np.array([1, 1, 0, 0])
PLUG_IN = [0.6, 0.4, 0.4, 0.6]  # p(class 1): predicts 1, 0, 0, 1 (2 of 4 right)
DRAWS = [[0.9, 0.9, 0.9, 0.9], [0.7, 0.2, 0.2, 0.2]]  # all 1 (2 right); 1, 0, 0, 0 (3 right)


def binary(p1) -> np.ndarray:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p1, p1], axis=-1)


PREDICTIONS = runs.Predictions(LABELS, binary(PLUG_IN), binary(DRAWS))


def test_a_runs_row_follows_by_hand_from_its_draws():
    row = draw_spread.spread(PREDICTIONS, "mrpc")
    # the two draws' average, p1 = 0.8, 0.55, 0.55, 0.55, predicts 1 everywhere: 2 of 4 right
    assert row == {
        "plug_in": 0.5,
        "k=1": pytest.approx((0.5 + 0.75) / 2, abs=1e-15),
        "k=2": 0.5,
        "positive_draws": "0.25–1.00",
        "positive_plug_in": "0.50",
    }


def test_cola_is_scored_by_its_mcc():
    row = draw_spread.spread(PREDICTIONS, "cola")
    # plug-in: one of each of TP, FN, TN, FP → MCC 0; draw 0 is constant (MCC 0 by
    # convention); draw 1: TP 1, FN 1, TN 2, FP 0 → 2 / √(1·2·2·3)
    assert row["plug_in"] == 0.0
    assert row["k=1"] == pytest.approx((0 + 2 / math.sqrt(12)) / 2, abs=1e-12)
    assert row["k=2"] == 0.0


def test_subsets_are_all_of_them_where_few_and_seeded_random_ones_where_many():
    rng = np.random.default_rng(0)
    assert draw_spread.subsets(5, 2, 10, rng) == [(i, j) for i in range(5) for j in range(i + 1, 5)]
    many = draw_spread.subsets(10, 5, 200, np.random.default_rng(3))
    assert len(many) == 200 and all(len(set(s)) == 5 for s in many)
    assert many == draw_spread.subsets(10, 5, 200, np.random.default_rng(3))
    # ten draws: k = 1, 2, 5 and 10 (the predictive itself, which one subset gives)
    ten = runs.Predictions(LABELS, binary(PLUG_IN), binary(DRAWS * 5))
    row = draw_spread.spread(ten, "mrpc")
    assert [k for k in row if k.startswith("k=")] == ["k=1", "k=2", "k=5", "k=10"]
    assert row["k=10"] == 0.5


def test_rows_are_read_from_the_studys_run_directories_skipping_missing_seeds(tmp_path, capsys):
    for seed in (0, 2):
        runs.write_predictions(
            calibration.run_dir(tmp_path, "rte", "lora-guide0.5", seed), PREDICTIONS
        )
    rows = draw_spread.spread_rows(tmp_path, "lora-guide0.5", ["rte", "mrpc"])
    assert [(r["task"], r["seed"], r["k=2"]) for r in rows] == [("rte", 0, 0.5), ("rte", 2, 0.5)]
    draw_spread.main(["--root", str(tmp_path), "--tasks", "rte"])
    assert capsys.readouterr().out.count("rte") == 2
    with pytest.raises(SystemExit, match="no finished runs of lora-guide1"):
        draw_spread.main(["--root", str(tmp_path), "--name", "lora-guide1"])
