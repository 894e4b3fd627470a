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


def _parse_sweep(*options):
    from monteclora_pyro.cli import build_parser

    return build_parser().parse_args(["sweep", "--lrs", "1e-3", *options])


def test_grid_option_parses_values_with_the_type_of_the_field():
    args = _parse_sweep(
        *("--grid", "sample-scaler=1e-4, 5e-3", "--grid", "objective=paper,bayes"),
        *("--grid", "max_steps=none,3", "--grid", "r=2", "--grid", "eval_every_epoch=false,true"),
        *("--grid", "epochs=0.5,2"),
    )
    assert args.grid == {
        "sample_scaler": [1e-4, 5e-3],
        "objective": ["paper", "bayes"],
        "max_steps": [None, 3],
        "r": [2],
        "eval_every_epoch": [False, True],
        "epochs": [0.5, 2],
    }
    assert isinstance(args.grid["r"][0], int) and isinstance(args.grid["max_steps"][1], int)
    assert isinstance(args.grid["epochs"][1], int)  # a whole number saved as one
    assert _parse_sweep().grid is None


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("samples=2", "unknown field 'samples'; grid fields: checkpoint_every"),
        ("sample_scaler=small", "sample_scaler: 'small' is not a number"),
        ("r=2.5", "r: '2.5' is not an integer"),
        ("epochs=half", "epochs: 'half' is not a number"),
        ("guide_lr=fast", "'fast' is not a number or 'none'"),
        ("r=", "r: the list of values is empty"),
        ("r=2,2", "repeated values"),
        ("lr=1e-3", "lr cannot be a grid axis"),
        ("task=rte", "one sweep per task"),
        ("target_modules=query", "it takes a list"),
        ("sample_scaler", "is not FIELD=V1,V2,..."),
    ],
)
def test_grid_option_refuses_unknown_fields_and_bad_values(option, message, capsys):
    with pytest.raises(SystemExit):
        _parse_sweep("--grid", option)
    error = capsys.readouterr().err
    assert message in error
    if "unknown field" in message:
        assert "sample_scaler" in error and "num_samples" in error and "kl_loss_weight" in error


def test_grid_option_refuses_a_field_twice(capsys):
    with pytest.raises(SystemExit):
        _parse_sweep("--grid", "r=2", "--grid", "r=4")
    assert "r is given twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--grid", "sample_scaler=1e-4,-1"], "sample_scaler-1: MonteCLoRAConfig.sample_scaler"),
        (["--grid", "num_samples=2,0"], "num_samples0: TrainConfig.num_samples=0 is invalid"),
        (["--grid", "objective=paper,bayes"], "method lora runs objective paper only"),
        (["--r", "2", "--grid", "r=2,4"], "r is both set by --r and a --grid axis"),
        (["--epochs", "2", "--grid", "epochs=1,3"], "epochs is both set by --epochs"),
    ],
)
def test_sweep_refuses_invalid_cells_before_running_any(options, message, tmp_path, caplog):
    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "sst2", "--lrs", "1e-3", "--output-dir", str(out), *options]
    assert main(argv) == 2
    assert message in caplog.text
    assert not out.exists()


def test_grid_cells_are_the_full_product_with_stable_names(tmp_path):
    base = TrainConfig(task="sst2")
    axes = {"sample_scaler": [1e-4, 5e-3], "num_samples": [2, 4]}
    cells = sweep.grid_cells(
        base, {"r": 2}, ["lora", "monteclora"], [1e-3], [16], [0], tmp_path, axes
    )
    assert len(cells) == 8  # 2 methods × 2 × 2, lora too: it ignores sample_scaler
    assert [c.train.method for c in cells[:2]] == ["lora", "monteclora"]
    names = [Path(c.train.output_dir).name for c in cells]
    assert names[:4] == [
        "lora-lr0.001-bs16-s0-num_samples2-sample_scaler0.0001",
        "monteclora-lr0.001-bs16-s0-num_samples2-sample_scaler0.0001",
        "lora-lr0.001-bs16-s0-num_samples4-sample_scaler0.0001",
        "monteclora-lr0.001-bs16-s0-num_samples4-sample_scaler0.0001",
    ]
    for cell, name in zip(cells, names, strict=True):
        assert cell.train.output_dir == str(tmp_path.absolute() / name)
        assert cell.axes == {
            "sample_scaler": cell.model.sample_scaler,
            "num_samples": cell.train.num_samples,
        }
        assert cell.model.r == 2 and cell.train.lr == 1e-3
    assert {(c.model.sample_scaler, c.train.num_samples) for c in cells} == {
        (s, n) for s in (1e-4, 5e-3) for n in (2, 4)
    }
    swapped = dict(reversed(axes.items()))  # the order of the axes does not rename cells
    again = sweep.grid_cells(
        base, {"r": 2}, ["lora", "monteclora"], [1e-3], [16], [0], tmp_path, swapped
    )
    assert sorted(c.train.output_dir for c in again) == sorted(c.train.output_dir for c in cells)
    assert sweep.cell_name("lora", 1e-3, 16, 0, {"data_dir": "a b/c"}) == (
        "lora-lr0.001-bs16-s0-data_dira_b_c"
    )
    with pytest.raises(ValueError, match="not a grid field"):
        sweep.grid_cells(base, {}, ["lora"], [1e-3], [16], [0], tmp_path, {"seed": [1]})
    with pytest.raises(ValueError, match="both a set option and a grid axis"):
        sweep.grid_cells(base, {"r": 2}, ["lora"], [1e-3], [16], [0], tmp_path, {"r": [4]})
    with pytest.raises(ValueError, match="the same directory names"):
        sweep.grid_cells(
            base, {}, ["lora"], [1e-3], [16], [0], tmp_path, {"jitter": [1e-6, 1.0000001e-6]}
        )


def test_objective_axis_gives_each_cell_its_preset_with_set_options_overriding(tmp_path):
    base = TrainConfig(task="sst2")
    axes = {"objective": ["paper", "bayes"]}
    cells = sweep.grid_cells(
        base, {"sample_scaler": 2e-3}, ["monteclora"], [1e-3], [16], [0], tmp_path, axes
    )
    paper, bayes = (c.model for c in cells)
    assert paper == MonteCLoRAConfig(sample_scaler=2e-3)
    assert bayes == MonteCLoRAConfig.bayes(sample_scaler=2e-3)
    assert (bayes.kl_loss_weight, bayes.cooperative_weight) == (None, 0.0)
    options = {"kl_loss_weight": 0.5}  # set explicitly: it overrides the bayes preset
    cells = sweep.grid_cells(base, options, ["monteclora"], [1e-3], [16], [0], tmp_path, axes)
    assert [(c.model.objective, c.model.kl_loss_weight) for c in cells] == [
        ("paper", 0.5),
        ("bayes", 0.5),
    ]
    assert cells[1].model.cooperative_weight == 0.0


def test_summary_has_a_row_per_method_and_axis_value():
    records = [
        {**_record("lora", lr, acc, 0.7, 0.1), "axes": {"sample_scaler": s}}
        for s, lr, acc in [
            (5e-3, 1e-4, 0.5),
            (5e-3, 1e-3, 0.7),
            (1e-4, 1e-4, 0.6),
            (1e-4, 1e-3, 0.6),
        ]
    ]
    records.append({**_record("monteclora", 1e-4, 0.8, 0.6, 0.1), "axes": {"sample_scaler": 1e-4}})
    summary = sweep.summarize(records)
    assert list(summary) == [
        "monteclora sample_scaler=0.0001",
        "lora sample_scaler=0.0001",
        "lora sample_scaler=0.005",
    ]
    entry = summary["lora sample_scaler=0.005"]
    assert entry["method"] == "lora" and entry["axes"] == {"sample_scaler": 5e-3}
    assert entry["cells"] == 2 and entry["posterior_mean"]["accuracy"]["spread"] == pytest.approx(
        0.2
    )
    table = sweep.format_summary(summary, "posterior_mean")
    assert table.splitlines()[0].startswith("| method | sample_scaler | mode | cells |")
    assert "| lora | 0.005 | posterior_mean | 2 | 0.7000 | 0.6000 | 0.2000 |" in table
    assert "| monteclora | 0.0001 | posterior_mean | 1 | 0.8000 |" in table


def test_sweep_with_a_grid_axis_summarises_resumes_and_reports(toy_assets, tmp_path, capsys):
    model_dir, data_dir = toy_assets
    out = tmp_path / "sweep"
    argv = ["--quiet", "sweep", "--model", str(model_dir), "--data-dir", str(data_dir)]
    argv += ["--output-dir", str(out), *"--task sst2 --methods lora,monteclora --lrs 3e-2".split()]
    argv += "--batch-sizes 32 --max-steps 1 --max-eval-examples 16 --num-samples 2 --r 2".split()
    argv += "--threads 1 --grid sample_scaler=1e-4,5e-3".split()
    assert main(argv) == 0
    cells = [
        f"{method}-lr0.03-bs32-s0-sample_scaler{value}"
        for method in ("lora", "monteclora")
        for value in ("0.0001", "0.005")
    ]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == cells
    assert "4 run now, 0 already finished" in capsys.readouterr().out
    scalers = [runs.read_config(out / c)["monteclora"]["sample_scaler"] for c in cells]
    assert scalers == [1e-4, 5e-3, 1e-4, 5e-3]
    stamps = [(out / c / runs.METRICS_FILE).stat().st_mtime_ns for c in cells]

    assert main(argv) == 0  # resumed: every cell is finished, nothing is trained again
    printed = capsys.readouterr().out
    assert "0 run now, 4 already finished" in printed
    assert [(out / c / runs.METRICS_FILE).stat().st_mtime_ns for c in cells] == stamps

    data = json.loads((out / "summary.json").read_text())
    assert list(data["summary"]) == [
        "monteclora sample_scaler=0.0001",
        "monteclora sample_scaler=0.005",
        "lora sample_scaler=0.0001",
        "lora sample_scaler=0.005",
    ]
    assert all(entry["cells"] == 1 for entry in data["summary"].values())
    by_cell = {r["run_dir"]: r["axes"] for r in data["cells"]}
    assert by_cell[cells[1]] == {"sample_scaler": 5e-3}
    mc = runs.read_metrics(out / cells[3])["posterior_mean"]["accuracy"]
    entry = data["summary"]["monteclora sample_scaler=0.005"]
    assert entry["posterior_mean"]["accuracy"]["best"] == mc
    table = (out / "summary.md").read_text()
    assert table.startswith("| method | sample_scaler | mode | cells |")
    assert "| lora | 0.005 | posterior_mean | 1 |" in table and "| lora | 0.005 |" in printed

    page = write_results([out], tmp_path / "docs" / "results.md", command="monteclora sweep-report")
    text = page.read_text()
    assert "--grid sample_scaler=0.0001,0.005" in text and "--sample-scaler" not in text
    assert "; sample_scaler 0.0001, 0.005." in text
    assert "- monteclora sample_scaler=0.005: accuracy" in text
    assert "| monteclora | 0.0001 | posterior_predictive | 1 |" in text
