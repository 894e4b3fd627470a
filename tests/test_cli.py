"""The ``monteclora`` command end to end on a tiny model."""

from __future__ import annotations

import dataclasses

import pytest

from monteclora_pyro import MonteCLoRAConfig, runs
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
    captured = capsys.readouterr()
    printed = captured.out
    assert "%|" not in captured.err  # --quiet: no bar, the tokenisers' (datasets) included
    assert "posterior_mean" in printed and "posterior_predictive" in printed
    assert str(out) in printed
    config = runs.read_config(out)
    assert config["train"]["max_steps"] == 6 and config["train"]["num_samples"] == 3
    assert config["monteclora"]["covariance"] == "diagonal"
    assert config["monteclora"]["kl_loss_weight"] is None
    assert config["monteclora"]["r"] == 4
    metrics = runs.read_metrics(out)
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
    evaluation = runs.read_metrics(runs.evaluation_dir(out, "sst2", "train"))
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


def test_analyze_writes_netcdf_plots_and_report(toy_assets, tmp_path, capsys):
    import arviz as az

    model_dir, data_dir = toy_assets
    run_dirs = []
    for method, seed in (("monteclora", 0), ("monteclora", 1), ("lora", 0)):
        out = tmp_path / f"{method}-{seed}"
        assert (
            main(
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
                    method,
                    "--max-steps",
                    "4",
                    "--lr",
                    "0.03",
                    "--num-samples",
                    "4",
                    "--r",
                    "2",
                    "--num-components",
                    "2",
                    "--seed",
                    str(seed),
                    "--output-dir",
                    str(out),
                    "--max-eval-examples",
                    "24",
                ]
            )
            == 0
        )
        run_dirs.append(out)
    report_dir = tmp_path / "report"
    capsys.readouterr()
    assert main(["--quiet", "analyze", *map(str, run_dirs), "--output-dir", str(report_dir)]) == 0
    printed = capsys.readouterr().out
    assert "monteclora: 2 run(s) as chains" in printed and "lora: 1 run(s)" in printed
    assert "PSIS-LOO elpd" not in printed and "r_hat" in printed
    assert "held-out lppd on validation (n=24, S=8)" in printed  # 2 restarts x 4 draws pooled
    assert "held-out lppd on validation (n=24, S=1)" in printed  # LoRA
    assert "Chains are independent training restarts (different seeds)" in printed
    assert "ESS counts independent guide draws" in printed
    assert "held-out" in printed and "MI share" in printed
    combined = az.from_netcdf(str(report_dir / "inference_data-monteclora.nc"))
    assert combined.posterior.sizes["chain"] == 2
    for run in run_dirs:
        single = az.from_netcdf(str(run / runs.INFERENCE_DATA_FILE))
        assert single.log_likelihood.sizes["chain"] == 1
    html = (report_dir / "report.html").read_text()
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert len(pngs) >= 5
    assert html.count("data:image/png;base64,") >= len(pngs)
    assert "monteclora-0" in html and "lora-0" in html
