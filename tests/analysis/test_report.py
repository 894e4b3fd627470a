"""write_report / summary_tables / analyze_runs on synthetic MonteCLoRA and LoRA runs."""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import arviz as az
import numpy as np
import pytest
import xarray as xr

from monteclora_pyro import metrics, runs
from monteclora_pyro.analysis import report, summary
from monteclora_pyro.analysis.analyze import analyze_runs, check_analyzable
from monteclora_pyro.analysis.run_data import read_run_data
from monteclora_pyro.analysis.tables import format_table, format_value

LAYERS = (
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.1.attention.self.value",
)
R, K, CHAINS, DRAWS, N, S = 3, 4, 2, 50, 60, 8
TERMS = (
    "loss",
    "nll",
    "kl_covariance",
    "kl_concentration",
    "kl_weights",
    "kl_noise",
    "cooperative",
)


def make_idata(seed: int = 0) -> az.InferenceData:
    """InferenceData with the schema of ``to_inference_data`` (2 layers, r=3, K=4)."""
    rng = np.random.default_rng(seed)
    groups, dims = {"posterior": {}, "prior": {}}, {"y": ["example"]}
    for group, chains in (("posterior", CHAINS), ("prior", 1)):
        for layer in LAYERS:
            g = rng.normal(size=(chains, DRAWS, R, R + 1))
            groups[group][f"{layer}.covariance"] = g @ np.swapaxes(g, -1, -2)
            groups[group][f"{layer}.concentration"] = rng.gamma(2.0, 0.5, size=(chains, DRAWS, K))
            groups[group][f"{layer}.weights"] = rng.dirichlet(np.ones(K), size=(chains, DRAWS))
            dims[f"{layer}.covariance"] = ["rank", "rank_bis"]
            dims[f"{layer}.concentration"] = dims[f"{layer}.weights"] = ["component"]
    idata = az.from_dict(
        **groups,
        posterior_predictive={"y": rng.integers(0, 2, size=(CHAINS, DRAWS, N))},
        observed_data={"y": rng.integers(0, 2, size=N)},
        log_likelihood={"y": np.log(rng.uniform(0.2, 0.9, size=(CHAINS, DRAWS, N)))},
        dims=dims,
    )
    training = xr.Dataset(
        {t: (("chain", "step"), rng.uniform(0.1, 1.0, size=(CHAINS, 20))) for t in TERMS},
        coords={"chain": np.arange(CHAINS), "step": np.arange(1, 21)},
    )
    idata.add_groups({"training": training}, warn_on_custom_groups=False)
    return idata


def _draws(rng, n: int, s: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, size=n)
    base = np.where(labels[:, None] == np.arange(2), 1.5, -1.5) * (1.0 - shift)
    base = base + rng.normal(scale=1.0 + 2 * shift, size=(n, 2))
    logits = base[None] + rng.normal(scale=0.3 + shift, size=(s, n, 2))
    draws = np.exp(logits - logits.max(-1, keepdims=True))
    return labels, draws / draws.sum(-1, keepdims=True)


def _write_eval(directory: Path, rng, method: str, task: str, s: int, shift: float) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    labels, draws = _draws(rng, N, s, shift)
    mean = draws[0] if s == 1 else draws.mean(0) * 0.9 + 0.05
    runs.write_predictions(directory, runs.Predictions(labels, mean, draws))
    m = {
        "task": task,
        "split": "test" if shift else "validation",
        "method": method,
        "num_examples": N,
        "num_samples": s,
        "posterior_mean": metrics.classification_report(mean, labels),
        "posterior_predictive": metrics.classification_report(draws.mean(0), labels),
    }
    runs.write_metrics(directory, m)
    return m


def make_run(root: Path, name: str, method: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    run = root / name
    s = S if method == "monteclora" else 1
    m = _write_eval(run, rng, method, "sst2", s, 0.0)
    m["steps"] = 20
    runs.write_metrics(run, m)
    _write_eval(runs.evaluation_dir(run, "tweets", "test"), rng, method, "tweets", s, 0.6)
    config = {
        "train": {
            "method": method,
            "task": "sst2",
            "learning_rate": 3e-4,
            "eval_split": "validation",
        },
        "monteclora": {"r": R, "num_components": K, "covariance": "full"},
    }
    runs.write_config(run, config["train"], config["monteclora"])
    if method == "monteclora":
        for group in ("posterior", "prior"):
            samples = {}
            for layer in LAYERS:
                g = rng.normal(size=(s, R, R + 1))
                samples[f"{layer}.covariance"] = g @ np.swapaxes(g, -1, -2)
                samples[f"{layer}.concentration"] = rng.gamma(2.0, 0.5, size=(s, K))
                samples[f"{layer}.weights"] = rng.dirichlet(np.ones(K), size=s)
            runs.write_samples(run, group, samples)
    runs.start_history(run)
    for step in range(1, 21):
        record = {"kind": "train", "step": step, "epoch": 0, "lr": 1e-3, "loss": 1.0 / step}
        record["nll"] = 0.8 / step
        if method == "monteclora":
            record |= {t: 0.01 / step for t in TERMS[2:]}
        runs.append_history(run, record)
    runs.append_history(run, {"kind": "eval", "step": 20, "epoch": 0, "posterior_mean": {}})
    return run


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root, "monteclora-run", "monteclora", 0), make_run(root, "lora-run", "lora", 1)


def test_read_run_data(run_dirs):
    run = read_run_data(run_dirs[0])
    assert (run.method, run.task, run.single_draw) == ("monteclora", "sst2", False)
    assert set(run.history) == {"step", "epoch", "lr", *TERMS}
    np.testing.assert_array_equal(run.history["step"], np.arange(1, 21))
    assert run.predictions.num_draws == S and list(run.shifted) == ["tweets-test"]
    assert run.shifted_metrics["tweets-test"]["split"] == "test"
    lora = read_run_data(run_dirs[1], label="baseline")
    assert lora.label == "baseline" and lora.single_draw
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        read_run_data(run_dirs[0] / "missing")


def test_format_table_text_and_markdown():
    rows = [{"name": "a", "value": 0.5, "n": 3}, {"name": "bb", "value": None, "n": 10}]
    assert format_table(rows, title="t").splitlines() == [
        "t",
        "name   value   n",
        "----------------",
        "a     0.5000   3",
        "bb         –  10",
    ]
    assert format_table(rows, ["name", "value"], markdown=True).splitlines() == [
        "| name | value |",
        "|---|---|",
        "| a | 0.5000 |",
        "| bb | – |",
    ]
    assert format_value(float("nan")) == "nan"


def test_summary_tables(run_dirs):
    tables = summary.summary_tables(run_dirs)
    assert [r["run"] for r in tables["runs"]] == ["monteclora-run", "lora-run"]
    assert [r["method"] for r in tables["runs"]] == ["monteclora", "lora"]
    saved = runs.read_metrics(run_dirs[0])
    rows = [r for r in tables["metrics"] if r["run"] == "monteclora-run"]
    assert [r["mode"] for r in rows] == ["posterior mean", "posterior predictive"]
    assert rows[1]["nll"] == pytest.approx(saved["posterior_predictive"]["nll"])
    assert {(r["run"], r["split"]) for r in tables["shifted"]} == {
        ("monteclora-run", "tweets-test"),
        ("lora-run", "tweets-test"),
    }
    ood = [r for r in tables["ood"] if r["run"] == "monteclora-run"]
    assert [r["score"] for r in ood] == list(summary.OOD_SCORES)
    assert all(r["domain"] == "tweets" and 0.5 < r["auroc"] <= 1.0 for r in ood)
    lora_mi = [r for r in tables["ood"] if r["run"] == "lora-run" and "mutual" in r["score"]]
    assert lora_mi[0]["auroc"] == pytest.approx(0.5)
    unc = {(r["run"], r["split"]): r for r in tables["uncertainty"]}
    mc = unc[("monteclora-run", "in-domain")]
    assert mc["total"] == pytest.approx(mc["aleatoric"] + mc["epistemic"])
    assert mc["epistemic"] > 0 and unc[("lora-run", "in-domain")]["epistemic"] == 0
    assert len(tables["selective"]) == 4
    text = summary.format_summary(tables)
    assert "monteclora-run" in text and "auroc" in text
    json.dumps(tables)


def test_write_report(run_dirs, tmp_path):
    out = tmp_path / "report"
    path = report.write_report(run_dirs, out, idata=make_idata())
    assert path == out / "report.html"
    page = path.read_text()
    pngs = sorted(out.glob("*.png"))
    names = {p.stem for p in pngs}
    expected = {
        "comparison_reliability",
        "comparison_accuracy_coverage",
        "rank",
        "training_chains",
        *(f"prior_posterior_{k}" for k in ("covariance", "concentration", "weights")),
        *(f"forest_{k}" for k in ("covariance", "concentration", "weights")),
        *(
            f"{run}_{fig}"
            for run in ("monteclora-run", "lora-run")
            for fig in ("training", "uncertainty", "reliability_shifted")
        ),
    }
    assert names == expected
    for png in pngs:
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in page
    assert "Figures left out" not in page
    for run in run_dirs:
        saved = runs.read_metrics(run)
        for mode in ("posterior_mean", "posterior_predictive"):
            for key in ("accuracy", "nll", "ece", "brier"):
                assert f">{saved[mode][key]:.4f}<" in page
        config = runs.read_config(run)
        assert html.escape(json.dumps(config, indent=2, sort_keys=True)) in page
    assert "<h2>Comparison</h2>" in page
    assert "Out-of-distribution detection (AUROC)" in page
    assert '<td class="text">tweets</td>' in page
    for score in summary.OOD_SCORES:
        assert f">{html.escape(score)}<" in page
    ood = summary.summary_tables(run_dirs)["ood"][0]
    assert f">{ood['auroc']:.4f}<" in page
    assert "Uncertainty decomposition" in page and "epistemic" in page
    # held-out fit, in place of PSIS-LOO
    assert "<h2>Held-out fit</h2>" in page and "PSIS-LOO is not reported" in page
    held = summary.summary_tables(run_dirs)["held-out"]
    assert [r["run"] for r in held] == ["monteclora-run", "lora-run"]
    for row in held:
        assert f">{row['lppd']:.4f}<" in page and f">{row['nll gap']:.4f}<" in page
        predictions = runs.read_predictions(
            run_dirs[0] if row["method"] == "monteclora" else run_dirs[1]
        )
        assert row["lppd/n"] == pytest.approx(
            -metrics.nll(predictions.predictive_probs, predictions.labels)
        )
    assert held[1]["MI"] == 0.0 and held[0]["MI"] > 0 and 0 < held[0]["MI share"] < 1
    # restarts are not chains: the sentence stands next to the posterior table
    assert "R-hat measures the disagreement between restarts" in page
    assert "<h2>Convergence</h2>" in page and "no convergence record" in page


def test_write_report_single_lora_run_without_idata(run_dirs, tmp_path):
    path = report.write_report(run_dirs[1], tmp_path / "lora")
    page = path.read_text()
    assert "<h2>Comparison</h2>" not in page
    assert "no posterior samples given" in page
    assert (tmp_path / "lora" / "comparison_reliability.png").is_file()
    assert not list((tmp_path / "lora").glob("forest_*.png"))
    with pytest.raises(FileNotFoundError):
        report.write_report([tmp_path / "nowhere"], tmp_path / "x")


def test_analyze_runs_writes_inference_data_tables_and_report(run_dirs, tmp_path):
    copies = [shutil.copytree(d, tmp_path / d.name) for d in run_dirs]
    analysis = analyze_runs(copies)
    assert [m.method for m in analysis.methods] == ["monteclora", "lora"]
    mc, lora = analysis.methods
    assert not hasattr(mc, "loo")
    assert mc.heldout.num_draws == S and lora.heldout.num_draws == 1
    assert lora.heldout.mutual_information == 0.0 and mc.heldout.mutual_information > 0
    assert mc.convergence == ["monteclora-run: no convergence record"] and not mc.warnings
    assert lora.summary is None and len(mc.weakest(3)) == 3
    assert mc.summary["ess_bulk"].min() == mc.weakest(1)["ess_bulk"].iloc[0]
    assert analysis.report == copies[0] / "analysis" / "report.html"
    assert all((d / runs.INFERENCE_DATA_FILE).is_file() for d in copies)
    assert [r["run"] for r in analysis.tables["runs"]] == ["monteclora-run", "lora-run"]


def test_analysis_refuses_runs_it_cannot_read(run_dirs, tmp_path):
    assert check_analyzable(run_dirs[0]) == "monteclora"
    next_token = shutil.copytree(run_dirs[0], tmp_path / "next-token")
    (next_token / runs.PREDICTIONS_FILE).unlink()
    with pytest.raises(ValueError, match="next-token task sst2: `monteclora analyze` needs"):
        check_analyzable(next_token)
    unfinished = shutil.copytree(next_token, tmp_path / "unfinished")
    (unfinished / runs.METRICS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="has the run finished"):
        check_analyzable(unfinished)
    peft = shutil.copytree(run_dirs[1], tmp_path / "peft")
    config = runs.read_config(peft)
    runs.write_config(peft, config["train"] | {"method": "peft-lora"}, {}, peft={"r": 2})
    with pytest.raises(ValueError, match="peft-lora run: PEFT's adapters have no posterior"):
        check_analyzable(peft)
    with pytest.raises(ValueError, match="next-token"):
        analyze_runs([run_dirs[0], next_token], tmp_path / "out")
    assert not (tmp_path / "out").exists()
