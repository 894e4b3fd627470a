"""Golden runs: the pipeline still trains, evaluates and writes what it wrote when they were made.

``tests/golden/make_golden.py`` made ``tests/golden/runs`` from a tiny committed backbone and toy
data (2 epochs of 3 steps, seed 5) for every method. This test repeats those runs and compares
``metrics.json``, ``history.jsonl`` and ``predictions.npz``: structure and every non-float value
exactly, floats to the tolerances below. With ``MONTECLORA_GOLDEN_EXACT=1`` every float must be
equal to the bit (use it on the machine that made the files, e.g. to check a refactoring).

Tolerances. Another CPU or thread count changes only the order of float32 reductions. The
2-process against 1-process comparison of tests/test_distributed.py measures what a reordering
does to the same kind of run, on two CPUs and 1 and 2 threads: at most 7.5e-7 relative on the
data-path values (loss, NLL, metrics) and 4.8e-7 absolute on probabilities, but 1.2e-4 relative
on the KL and cooperative terms, which depend only on the variational parameters (tiny
gradients under Adam's scale-free step). The golden runs are shorter (6 steps against 8) at a
smaller learning rate (1e-2 against 3e-2), so the same bounds hold; as there, each tolerance is
20 times the measured bound.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from monteclora_pyro.training import train

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from make_golden import GOLDEN_FILES, METHODS, golden_config  # noqa: E402

EXACT = os.environ.get("MONTECLORA_GOLDEN_EXACT") == "1"
LATENT_TERMS = ("kl_covariance", "kl_concentration", "kl_weights", "kl_noise", "cooperative")
RELATIVE = {"data": 2e-5, "latent": 3e-3}
PROBABILITY_ATOL = 1e-5


def _same_float(expected: float, got: float, group: str) -> bool:
    if EXACT:
        return got == expected
    return math.isclose(got, expected, rel_tol=RELATIVE[group], abs_tol=1e-7)


def _compare(expected, got, where: str) -> None:
    """Recursively compare JSON values: floats to tolerance, everything else exactly."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key, value in expected.items():
            group_where = f"{where}.{key}"
            if isinstance(value, float):
                group = "latent" if key in LATENT_TERMS else "data"
                assert _same_float(value, got[key], group), (group_where, value, got[key])
            else:
                _compare(value, got[key], group_where)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (value, other) in enumerate(zip(expected, got, strict=True)):
            _compare(value, other, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert _same_float(expected, got, "data"), (where, expected, got)
    else:
        assert got == expected, (where, expected, got)


# History records added after the golden runs were made (convergence figures, docs/design.md
# §9; metrics.json also gained num_train_examples, checked below); the rest is unchanged.
ADDED_KINDS = ("convergence",)


def _read_json_lines(path: Path) -> list:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r.get("kind") not in ADDED_KINDS]


@pytest.mark.parametrize("method", METHODS)
def test_run_equals_its_golden_run(tmp_path, method):
    if method.startswith("peft") and importlib.util.find_spec("peft") is None:
        pytest.skip("needs the 'peft' extra")
    out = tmp_path / method
    train(*golden_config(method, out), progress=False)
    expected = GOLDEN / "runs" / method
    assert sorted(p.name for p in expected.iterdir()) == sorted(GOLDEN_FILES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.pop("num_train_examples") == 40  # the golden training set
    _compare(json.loads((expected / "metrics.json").read_text()), metrics, "metrics.json")
    _compare(
        _read_json_lines(expected / "history.jsonl"),
        _read_json_lines(out / "history.jsonl"),
        "history.jsonl",
    )
    with np.load(expected / "predictions.npz") as a, np.load(out / "predictions.npz") as b:
        assert a.files == b.files
        for key in a.files:
            assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape, key
            if EXACT or key == "labels":
                np.testing.assert_array_equal(b[key], a[key], err_msg=key)
            else:
                np.testing.assert_allclose(
                    b[key], a[key], rtol=0, atol=PROBABILITY_ATOL, err_msg=key
                )
