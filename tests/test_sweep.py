"""The sweep driver: the grid, resuming, the summary statistics and the results page."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import monteclora_pyro.experiments.sweep as sweep
from monteclora_pyro import MonteCLoRAConfig, runs
from monteclora_pyro.cli import main
from monteclora_pyro.experiments.results import write_results
from monteclora_pyro.training import TrainConfig, TrainingError


def _metrics(acc: float, nll: float, ece: float) -> dict:
    return {"accuracy": acc, "nll": nll, "ece": ece}


def _record(method, lr, acc, nll, ece, seconds=10.0, predictive=None):
    return {
        "method": method,
        "lr": lr,
        "batch_size": 16,
        "seed": 0,
        "failed": False,
        "seconds": seconds,
        "posterior_mean": _metrics(acc, nll, ece),
        "posterior_predictive": predictive or _metrics(acc, nll, ece),
    }


def test_summary_statistics_match_hand_computed_values():
    records = [
        _record("lora", 1e-4, 0.50, 0.90, 0.20, seconds=10.0),
        _record("lora", 3e-4, 0.70, 0.50, 0.05, seconds=14.0),
        _record("lora", 1e-3, 0.60, 0.70, 0.10, seconds=12.0),
        _record(
            "monteclora",
            1e-4,
            0.62,
            0.66,
            0.08,
            seconds=20.0,
            predictive=_metrics(0.64, 0.60, 0.03),
        ),
        _record("monteclora", 3e-4, 0.66, 0.62, 0.02, seconds=30.0),
        {"method": "monteclora", "lr": 1e-3, "batch_size": 16, "seed": 0, "failed": True},
    ]
    summary = sweep.summarize(records)
    assert list(summary) == ["monteclora", "lora"]  # ALL_METHODS order
    lora = summary["lora"]
    assert lora["cells"] == 3 and lora["failed"] == 0 and lora["seconds_median"] == 12.0
    acc = lora["posterior_mean"]["accuracy"]
    # accuracies 0.5, 0.7, 0.6: best = max, median = 0.6, spread = 0.7 - 0.5
    assert acc["best"] == 0.70 and acc["median"] == 0.60
    assert acc["spread"] == pytest.approx(0.20)
    nll = lora["posterior_mean"]["nll"]
    # lower is better: best = min
    assert nll["best"] == 0.50 and nll["median"] == 0.70 and nll["spread"] == pytest.approx(0.40)
    ece = lora["posterior_predictive"]["ece"]
    assert ece["best"] == 0.05 and ece["median"] == 0.10 and ece["spread"] == pytest.approx(0.15)
    mc = summary["monteclora"]
    # the diverged cell is counted but left out of the statistics; two values: median = mean
    assert mc["cells"] == 3 and mc["failed"] == 1 and mc["seconds_median"] == 25.0
    assert mc["posterior_mean"]["accuracy"]["median"] == pytest.approx(0.64)
    assert mc["posterior_mean"]["accuracy"]["spread"] == pytest.approx(0.04)
    pred = mc["posterior_predictive"]
    assert pred["accuracy"]["best"] == 0.66 and pred["accuracy"]["spread"] == pytest.approx(0.02)
    assert pred["nll"]["best"] == 0.60 and pred["ece"]["median"] == pytest.approx(0.025)
    ratio = sweep.spread_ratio(summary, "monteclora", "lora", "accuracy", "posterior_mean")
    assert ratio == pytest.approx(0.04 / 0.20)
    table = sweep.format_summary(summary)
    assert "| lora | posterior_mean | 3 | 0.7000 | 0.6000 | 0.2000 | 0.5000 |" in table
    assert "| monteclora | posterior_mean | 2 (+1 diverged) | 0.6600 | 0.6400 | 0.0400 |" in table


def test_grid_names_orders_and_validates_cells(tmp_path):
    base = TrainConfig(task="sst2")
    cells = sweep.grid(base, ["lora", "monteclora"], [1e-4, 3e-4], [16, 32], [0], tmp_path)
    assert len(cells) == 8
    assert [c.method for c in cells[:2]] == ["lora", "monteclora"]
    assert (cells[0].lr, cells[0].batch_size, cells[2].batch_size) == (1e-4, 16, 32)
    assert cells[1].output_dir == str(tmp_path.absolute() / "monteclora-lr0.0001-bs16-s0")
    assert all(c.task == "sst2" for c in cells)
    with pytest.raises(ValueError, match="unknown methods"):
        sweep.grid(base, ["lora", "bayes"], [1e-4], [16], [0], tmp_path)
    with pytest.raises(ValueError, match="repeated"):
        sweep.grid(base, ["lora"], [1e-4, 1e-4], [16], [0], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        sweep.grid(base, ["lora"], [], [16], [0], tmp_path)
    with pytest.raises(ValueError, match="workers"):
        sweep.run_sweep(cells, MonteCLoRAConfig(), workers=0)
    with pytest.raises(ValueError, match="backend"):
        sweep.run_sweep(cells, MonteCLoRAConfig(), backend="slurm")


def test_diverged_cell_is_recorded_and_not_rerun(tmp_path, monkeypatch):
    def diverge(*args, **kwargs):
        raise TrainingError("non-finite loss or gradient at step 3")

    monkeypatch.setattr(sweep, "train", diverge)
    cfg = TrainConfig(task="sst2", output_dir=str(tmp_path / "cell"))
    record = sweep.run_cell(cfg.__dict__, MonteCLoRAConfig().to_dict())
    assert record["status"] == "failed"
    assert "step 3" in json.loads((tmp_path / "cell" / "failed.json").read_text())["error"]
    assert sweep.is_finished(tmp_path / "cell")
    assert sweep.run_cell(cfg.__dict__, MonteCLoRAConfig().to_dict())["status"] == "skipped"


def test_cell_killed_before_its_first_checkpoint_is_run_again(toy_assets, tmp_path):
    model_dir, data_dir = toy_assets
    cfg = TrainConfig(
        model=str(model_dir),
        task="sst2",
        data_dir=str(data_dir),
        max_steps=2,
        max_eval_examples=16,
        output_dir=str(tmp_path / "cell"),
    )
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / runs.CONFIG_FILE).write_text("{}")  # what a cell killed at step 1 leaves behind
    (cell / runs.HISTORY_FILE).write_text('{"step": 1}\n')
    record = sweep.run_cell(dataclasses.asdict(cfg), MonteCLoRAConfig(r=2).to_dict(), threads=1)
    assert record["status"] == "finished"
    assert runs.read_metrics(cell)["steps"] == 2
    assert len(runs.read_history(cell)) > 1


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    cells = sweep.grid(TrainConfig(task="sst2"), ["lora"], [1e-4], [16], [0], tmp_path)
    with pytest.raises(RuntimeError, match=r"monteclora-pyro\[ray\]"):
        sweep.run_sweep(cells, MonteCLoRAConfig(), backend="ray")


def test_sweep_command_runs_a_2x1_grid_resumes_and_reports(toy_assets, tmp_path, capsys):
    model_dir, data_dir = toy_assets
    out = tmp_path / "sweep"
    argv = [
        "--quiet",
        "sweep",
        "--model",
        str(model_dir),
        "--task",
        "sst2",
        "--data-dir",
        str(data_dir),
        "--methods",
        "lora",
        "--lrs",
        "1e-2,3e-2",
        "--batch-sizes",
        "32",
        "--max-steps",
        "2",
        "--max-eval-examples",
        "32",
        "--r",
        "4",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    cells = ["lora-lr0.01-bs32-s0", "lora-lr0.03-bs32-s0"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == cells
    assert "2 run now, 0 already finished" in capsys.readouterr().out
    metrics = [runs.read_metrics(out / c) for c in cells]
    assert [m["steps"] for m in metrics] == [2, 2]
    assert [runs.read_config(out / c)["train"]["lr"] for c in cells] == [
        0.01,
        0.03,
    ]
    stamps = [(out / c / runs.METRICS_FILE).stat().st_mtime_ns for c in cells]

    assert main(argv) == 0  # resumed: every cell is finished, nothing is trained again
    assert "0 run now, 2 already finished" in capsys.readouterr().out
    assert [(out / c / runs.METRICS_FILE).stat().st_mtime_ns for c in cells] == stamps

    summary = json.loads((out / "summary.json").read_text())["summary"]["lora"]
    for mode in ("posterior_mean", "posterior_predictive"):
        for metric, best in (("accuracy", max), ("nll", min), ("ece", min)):
            values = [m[mode][metric] for m in metrics]
            stats = summary[mode][metric]
            assert stats["best"] == best(values)
            assert stats["median"] == pytest.approx(sum(values) / 2)
            assert stats["spread"] == pytest.approx(max(values) - min(values))
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "| lora | posterior_mean | 2 |" in (out / "summary.md").read_text()

    page = write_results([out], tmp_path / "docs" / "results.md", command="monteclora sweep-report")
    text = page.read_text()
    assert "monteclora sweep-report" in text and "## SST2" in text
    assert "`max_steps=2`" in text and "](sweep-sst2.png)" in text
    assert (tmp_path / "docs" / "sweep-sst2.png").stat().st_size > 10_000
    assert "lora-lr0.03-bs32-s0" in text


class _FakeTune:
    """The slice of Ray Tune's API the sweep uses; runs the trials one after another here."""

    def __init__(self):
        self.resources = []
        self.concurrency = None

    @staticmethod
    def grid_search(values):
        return {"grid_search": values}

    def with_resources(self, trainable, resources):
        self.resources.append(resources)
        return trainable

    def TuneConfig(self, max_concurrent_trials):
        self.concurrency = max_concurrent_trials
        return max_concurrent_trials

    def Tuner(self, trainable, param_space, tune_config):
        class Tuner:
            def fit(self):
                return [
                    SimpleNamespace(
                        error=None, metrics=trainable({"train": t, "model": param_space["model"]})
                    )
                    for t in param_space["train"]["grid_search"]
                ]

        return Tuner()


def test_ray_backend_runs_the_same_cells_with_the_same_results(toy_assets, tmp_path, monkeypatch):
    model_dir, data_dir = toy_assets
    base = TrainConfig(
        model=str(model_dir), task="sst2", data_dir=str(data_dir), max_steps=2, max_eval_examples=16
    )
    tune = _FakeTune()
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(tune=tune))
    results = {}
    for backend in ("local", "ray"):
        cells = sweep.grid(base, ["lora"], [1e-2], [32], [0], tmp_path / backend)
        records = sweep.run_sweep(cells, MonteCLoRAConfig(r=2), backend=backend, threads=1)
        assert [r["status"] for r in records] == ["finished"]
        results[backend] = runs.read_metrics(tmp_path / backend / "lora-lr0.01-bs32-s0")
    assert tune.resources == [{"cpu": 1}] and tune.concurrency == 1
    assert results["ray"] == results["local"]


def test_real_ray_tune_runs_the_same_cells_with_the_same_results(toy_assets, tmp_path):
    """The same check with Ray Tune itself: a local Ray cluster runs two trials."""
    pytest.importorskip("ray.tune", reason="Ray Tune is an optional extra (monteclora-pyro[ray])")
    import ray

    model_dir, data_dir = toy_assets
    base = TrainConfig(
        model=str(model_dir), task="sst2", data_dir=str(data_dir), max_steps=2, max_eval_examples=16
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = {}
        for backend in ("local", "ray"):
            cells = sweep.grid(base, ["lora", "monteclora"], [1e-2], [32], [0], tmp_path / backend)
            records = sweep.run_sweep(
                cells, MonteCLoRAConfig(r=2), backend=backend, workers=2, threads=1
            )
            assert sorted(r["status"] for r in records) == ["finished", "finished"]
            results[backend] = {
                Path(c.output_dir).name: runs.read_metrics(c.output_dir) for c in cells
            }
    finally:
        ray.shutdown()
    assert results["ray"] == results["local"]
