"""STS-B end to end: `monteclora train`, `evaluate` and `analyze` on a tiny regression model."""

from __future__ import annotations

import numpy as np
import pytest
from regression_assets import write_tiny_regression_backbone, write_toy_stsb

from monteclora_pyro import runs
from monteclora_pyro.cli import main
from monteclora_pyro.data import DataError, load_task

REGRESSION_METRICS = {"pearson", "spearman", "rmse", "nll", "coverage_90", "width_90"}


@pytest.fixture
def stsb_assets(tmp_path):
    return write_tiny_regression_backbone(tmp_path / "tiny-reg"), write_toy_stsb(tmp_path / "glue")


def _train(model_dir, data_dir, out, method: str) -> int:
    return main(
        [
            "--quiet",
            "train",
            "--model",
            str(model_dir),
            "--task",
            "stsb",
            "--data-dir",
            str(data_dir),
            "--method",
            method,
            "--max-steps",
            "6",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--num-samples",
            "4",
            "--r",
            "2",
            "--num-components",
            "2",
            "--output-dir",
            str(out),
        ]
    )


def test_train_evaluate_analyze(stsb_assets, tmp_path, capsys):
    import arviz as az

    model_dir, data_dir = stsb_assets
    run_dirs = {method: tmp_path / method for method in ("monteclora", "lora")}
    for method, out in run_dirs.items():
        assert _train(model_dir, data_dir, out, method) == 0
    printed = capsys.readouterr().out
    assert "pearson" in printed and "coverage_90" in printed and "accuracy" not in printed

    mc, lora = run_dirs["monteclora"], run_dirs["lora"]
    metrics = runs.read_metrics(mc)
    assert metrics["num_examples"] == 48 and metrics["num_samples"] == 4
    for mode in runs.MODES:
        assert set(metrics[mode]) == REGRESSION_METRICS
        assert all(np.isfinite(v) for v in metrics[mode].values())
    predictions = runs.read_predictions(mc)
    assert isinstance(predictions, runs.RegressionPredictions)
    assert predictions.draw_mean.shape == predictions.draw_precision.shape == (4, 48)
    assert len(np.unique(predictions.draw_precision[:, 0])) == 4  # one τ per draw
    posterior = runs.read_samples(mc, "posterior")
    assert posterior["y.obs_precision"].shape == (4,)
    # LoRA: one draw, its precision the maximum-likelihood point estimate (saved and reloaded)
    assert runs.read_predictions(lora).num_draws == 1
    assert runs.read_samples(lora, "posterior") is None

    for out in run_dirs.values():
        assert main(["--quiet", "evaluate", str(out), "--num-samples", "4"]) == 0
        again = runs.read_metrics(runs.evaluation_dir(out, "stsb", "validation"))
        for mode in runs.MODES:  # the reloaded run predicts what the trained one did
            for key, value in runs.read_metrics(out)[mode].items():
                assert again[mode][key] == pytest.approx(value, rel=1e-5), (out.name, key)
    assert "stsb/validation" in capsys.readouterr().out

    report_dir = tmp_path / "report"
    assert main(["--quiet", "analyze", str(mc), str(lora), "--output-dir", str(report_dir)]) == 0
    printed = capsys.readouterr().out
    assert "held-out lppd on validation (n=48, S=4)" in printed
    assert "held-out lppd on validation (n=48, S=1)" in printed  # LoRA
    assert "epistemic variance" in printed and "y.obs_precision" in printed
    html = (report_dir / "report.html").read_text()
    assert "Pearson" in html and "90% coverage" in html and "Figures left out" not in html
    pngs = {p.name for p in report_dir.glob("*.png")}
    assert {"comparison_interval_coverage.png", "prior_posterior_obs_precision.png"} <= pngs
    idata = az.from_netcdf(str(mc / runs.INFERENCE_DATA_FILE))
    assert idata.log_likelihood["y"].shape == (1, 4, 48)
    assert idata.observed_data["y"].dtype.kind == "f"
    assert "y.obs_precision" in idata.posterior and "y.obs_precision" in idata.prior


def test_a_non_numeric_score_is_refused_with_its_row(tmp_path, caplog):
    data_dir = write_toy_stsb(tmp_path / "glue", bad_row=5)
    with pytest.raises(DataError, match=r"STS-B/train\.tsv, line 7: label 'n/a' is not a finite"):
        load_task("stsb", data_dir)  # row 5 of the data is line 7 of the file (after the header)
    model_dir = write_tiny_regression_backbone(tmp_path / "tiny-reg")
    assert _train(model_dir, data_dir, tmp_path / "run", "monteclora") == 2
    assert "line 7: label 'n/a' is not a finite number" in caplog.text


def test_missing_data_says_where_to_put_it(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    model_dir = write_tiny_regression_backbone(tmp_path / "tiny-reg")
    assert _train(model_dir, empty, tmp_path / "run", "monteclora") == 2
    assert "STS-B/train.tsv and STS-B/dev.tsv (standard GLUE TSV layout)" in caplog.text


def test_classification_methods_of_peft_refuse_regression(stsb_assets, tmp_path, caplog):
    model_dir, data_dir = stsb_assets
    assert _train(model_dir, data_dir, tmp_path / "peft", "peft-lora") == 2
    assert "runs classification tasks only, not regression" in caplog.text
