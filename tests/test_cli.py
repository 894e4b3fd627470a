"""The ``monteclora`` command end to end on a tiny model."""

from __future__ import annotations

import dataclasses
import json

import pytest

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.cli import main
from monteclora_pyro.training import TrainConfig


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for cls in (TrainConfig, MonteCLoRAConfig):
        for field in dataclasses.fields(cls):
            assert "--" + field.name.replace("_", "-") in text, field.name
    assert "--resume" in text
    for command in ("evaluate", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = capsys.readouterr().out
        assert "--num-samples" in help_text and "--max-eval-examples" in help_text


def test_train_then_evaluate_from_the_command_line(toy_assets, tmp_path, capsys):
    model_dir, data_dir = toy_assets
    out = tmp_path / "cli-run"
    code = main(
        [
            "--quiet",
            "train",
            "--model",
            str(model_dir),
            "--task",
            "sst2",
            "--data-dir",
            str(data_dir),
            "--method",
            "monteclora",
            "--max-steps",
            "6",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--num-samples",
            "3",
            "--r",
            "4",
            "--covariance",
            "diagonal",
            "--kl-loss-weight",
            "none",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "posterior_mean" in printed and "posterior_predictive" in printed
    assert str(out) in printed
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["max_steps"] == 6 and config["train"]["num_samples"] == 3
    assert config["monteclora"]["covariance"] == "diagonal"
    assert config["monteclora"]["kl_loss_weight"] is None
    assert config["monteclora"]["r"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["num_samples"] == 3

    code = main(
        [
            "--quiet",
            "evaluate",
            str(out),
            "--split",
            "train",
            "--num-samples",
            "2",
            "--max-eval-examples",
            "10",
        ]
    )
    assert code == 0
    evaluation = json.loads((out / "evaluations" / "sst2-train" / "metrics.json").read_text())
    assert evaluation["num_examples"] == 10 and evaluation["num_samples"] == 2
    assert "sst2/train" in capsys.readouterr().out


def test_errors_exit_2_with_a_message(toy_assets, tmp_path, caplog):
    model_dir, data_dir = toy_assets
    code = main(
        [
            "--quiet",
            "train",
            "--model",
            str(model_dir),
            "--task",
            "sst2",
            "--data-dir",
            str(data_dir),
            "--r",
            "0",
            "--output-dir",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2
    assert "MonteCLoRAConfig.r=0 is invalid" in caplog.text
    code = main(
        [
            "--quiet",
            "train",
            "--model",
            str(model_dir),
            "--task",
            "sst2",
            "--data-dir",
            str(data_dir),
            "--target-modules",
            "qkv",
            "--output-dir",
            str(tmp_path / "y"),
        ]
    )
    assert code == 2
    assert "'qkv' is not a linear module" in caplog.text and "query" in caplog.text
    code = main(["--quiet", "evaluate", str(tmp_path / "nowhere")])
    assert code == 2
    assert "not a run directory" in caplog.text
