"""Experiment tracking: TensorBoard event files and an MLflow store hold history.jsonl's figures."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import dies_at_step

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.cli import main
from monteclora_pyro.training import TrainConfig, tracking, train

TERMS = (
    "loss",
    "nll",
    "kl_covariance",
    "kl_concentration",
    "kl_weights",
    "kl_noise",
    "cooperative",
)
FIGURES = ("elbo_slope", "elbo_change", "max_param_change")  # at least these


def _config(toy_assets, out, **overrides) -> TrainConfig:
    model_dir, data_dir = toy_assets
    options = {
        "model": str(model_dir),
        "task": "sst2",
        "data_dir": str(data_dir),
        "epochs": 2,
        "batch_size": 16,
        "lr": 3e-2,
        "guide_lr": 1e-1,
        "max_train_examples": 48,
        "max_eval_examples": 16,
        "num_samples": 2,
        "output_dir": str(out),
    }
    return TrainConfig(**(options | overrides))


def _history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _expected(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per tag, as the loop must have logged them, from history.jsonl."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        if record["kind"] == "train":
            scalars = {f"train/{k}": record[k] for k in (*TERMS, "lr")}
        elif record["kind"] == "eval":
            scalars = tracking.flatten(
                {k: v for k, v in record.items() if isinstance(v, dict)}, "eval"
            )
        else:
            assert set(FIGURES) <= set(record)
            scalars = {
                f"convergence/{k}": v
                for k, v in record.items()
                if k not in ("kind", "step", "epoch", "window")
                and isinstance(v, int | float)
                and not isinstance(v, bool)
            }
        for tag, value in scalars.items():
            expected.setdefault(tag, []).append((record["step"], value))
    return expected


def test_tensorboard_holds_every_term_lr_eval_and_convergence_figure(toy_assets, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain, tracked = tmp_path / "plain", tmp_path / "tracked"
    reference = train(_config(toy_assets, plain), MonteCLoRAConfig(r=4), progress=False)
    config = _config(toy_assets, tracked, report_to="tensorboard")
    metrics = train(config, MonteCLoRAConfig(r=4), progress=False)
    # Tracking changes nothing else, to the bit.
    assert metrics == reference and _history(tracked) == _history(plain)
    assert not (plain / "tensorboard").exists()

    events = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    expected = _expected(_history(tracked))
    assert len(expected["train/nll"]) == 6 and len(expected["eval/posterior_mean/accuracy"]) == 2
    assert {"eval/posterior_predictive/nll", "convergence/max_param_change"} <= set(expected)
    for tag, values in expected.items():
        steps, numbers = zip(*values, strict=True)
        assert [step for step, _ in logged[tag]] == list(steps), tag
        # Event files store float32.
        got = np.array([value for _, value in logged[tag]], dtype=np.float32)
        np.testing.assert_array_equal(got, np.array(numbers, dtype=np.float32), err_msg=tag)
    # The guide's group: 1e-1 at its peak, on the same schedule as the model's.
    guide_lr = np.array([v for _, v in logged["train/guide_lr"]])
    lr = np.array([v for _, v in logged["train/lr"]])
    np.testing.assert_allclose(guide_lr, lr * (1e-1 / 3e-2), rtol=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_store_holds_the_figures(toy_assets, tmp_path, monkeypatch):
    pytest.importorskip(
        "mlflow", reason="mlflow is not installed (the mlflow extra; left out of make install)"
    )
    from mlflow.tracking import MlflowClient

    out = tmp_path / "mlflow-run"
    train(_config(toy_assets, out, report_to="mlflow"), MonteCLoRAConfig(r=4), progress=False)
    monkeypatch.setenv(tracking.ALLOW_FILE_STORE, "true")  # MLflow 3 reads file stores so
    client = MlflowClient(tracking_uri=f"file:{out / 'mlruns'}")
    experiment = client.get_experiment_by_name(tracking.MLflowTracker.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.method"] == "monteclora"
    for tag, values in _expected(_history(out)).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        steps = [step for step, _ in values]
        assert [step for step, _ in history] == steps, tag
        np.testing.assert_allclose(
            [v for _, v in history], [v for _, v in values], rtol=1e-12, err_msg=tag
        )


def test_report_to_is_validated(monkeypatch, capsys):
    assert tracking.parse_report_to("none") == ()
    assert tracking.parse_report_to("tensorboard, mlflow") == ("tensorboard", "mlflow")
    for bad in ("wandb", "", "none,tensorboard"):
        with pytest.raises(ValueError, match=r"TrainConfig\.report_to=.* is invalid"):
            TrainConfig(report_to=bad)
    with pytest.raises(ValueError, match="allowed values are 'none', 'tensorboard', 'mlflow'"):
        TrainConfig(report_to="wandb")
    with pytest.raises(SystemExit):
        main(["train", "--report-to", "wandb"])
    message = capsys.readouterr().err
    assert "wandb" in message and "'none', 'tensorboard', 'mlflow'" in message

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "mlflow") else real(name, *a),
    )
    for backend, requirement in (("tensorboard", "tensorboard>=2.15"), ("mlflow", "mlflow>=2.10")):
        with pytest.raises(ValueError) as err:
            TrainConfig(report_to=backend)
        assert f"pip install 'monteclora-pyro[{backend}]'" in str(err.value)
        assert requirement in str(err.value)


def test_resumed_run_replaces_the_figures_it_repeats(toy_assets, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "resumed"
    config = _config(toy_assets, out, report_to="tensorboard", checkpoint_every=2)
    with dies_at_step(5):
        train(config, MonteCLoRAConfig(r=4), progress=False)
    train(config, MonteCLoRAConfig(r=4), resume=True, progress=False)  # from step 3
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for tag, values in _expected(_history(out)).items():
        logged = [(e.step, np.float32(e.value)) for e in events.Scalars(tag)]
        assert logged == [(s, np.float32(v)) for s, v in values], tag
