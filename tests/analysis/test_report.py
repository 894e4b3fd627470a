"""write_report / summary_tables on synthetic MonteCLoRA and LoRA run directories."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import arviz as az
import numpy as np
import pytest
import xarray as xr

from monteclora_pyro import metrics
from monteclora_pyro.analysis import report

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
    np.savez(directory / "predictions.npz", labels=labels, mean_probs=mean, draw_probs=draws)
    m = {
        "task": task,
        "split": "test" if shift else "validation",
        "method": method,
        "num_examples": N,
        "num_samples": s,
        "posterior_mean": metrics.classification_report(mean, labels),
        "posterior_predictive": metrics.classification_report(draws.mean(0), labels),
    }
    (directory / "metrics.json").write_text(json.dumps(m))
    return m


def make_run(root: Path, name: str, method: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    run = root / name
    s = S if method == "monteclora" else 1
    m = _write_eval(run, rng, method, "sst2", s, 0.0)
    m["steps"] = 20
    (run / "metrics.json").write_text(json.dumps(m))
    _write_eval(run / "evaluations" / "tweets-test", rng, method, "tweets", s, 0.6)
    config = {
        "train": {
            "method": method,
            "task": "sst2",
            "learning_rate": 3e-4,
            "eval_split": "validation",
        },
        "monteclora": {"r": R, "num_components": K, "covariance": "full"},
    }
    (run / "config.json").write_text(json.dumps(config))
    lines = []
    for step in range(1, 21):
        record = {"kind": "train", "step": step, "epoch": 0, "lr": 1e-3, "loss": 1.0 / step}
        record["nll"] = 0.8 / step
        if method == "monteclora":
            record |= {t: 0.01 / step for t in TERMS[2:]}
        lines.append(json.dumps(record))
    lines.append(json.dumps({"kind": "eval", "step": 20, "epoch": 0, "posterior_mean": {}}))
    (run / "history.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root, "monteclora-run", "monteclora", 0), make_run(root, "lora-run", "lora", 1)


def test_read_history(runs):
    history = report.read_history(runs[0])
    assert set(history) == {"step", "epoch", "lr", *TERMS}
    np.testing.assert_array_equal(history["step"], np.arange(1, 21))
    assert report.read_history(runs[0] / "missing") == {}


def test_summary_tables(runs):
    tables = report.summary_tables(runs)
    assert [r["run"] for r in tables["runs"]] == ["monteclora-run", "lora-run"]
    assert [r["method"] for r in tables["runs"]] == ["monteclora", "lora"]
    saved = json.loads((runs[0] / "metrics.json").read_text())
    rows = [r for r in tables["metrics"] if r["run"] == "monteclora-run"]
    assert [r["mode"] for r in rows] == ["posterior mean", "posterior predictive"]
    assert rows[1]["nll"] == pytest.approx(saved["posterior_predictive"]["nll"])
    assert {(r["run"], r["split"]) for r in tables["shifted"]} == {
        ("monteclora-run", "tweets-test"),
        ("lora-run", "tweets-test"),
    }
    ood = [r for r in tables["ood"] if r["run"] == "monteclora-run"]
    assert [r["score"] for r in ood] == list(report.OOD_SCORES)
    assert all(r["domain"] == "tweets" and 0.5 < r["auroc"] <= 1.0 for r in ood)
    lora_mi = [r for r in tables["ood"] if r["run"] == "lora-run" and "mutual" in r["score"]]
    assert lora_mi[0]["auroc"] == pytest.approx(0.5)
    unc = {(r["run"], r["split"]): r for r in tables["uncertainty"]}
    mc = unc[("monteclora-run", "in-domain")]
    assert mc["total"] == pytest.approx(mc["aleatoric"] + mc["epistemic"])
    assert mc["epistemic"] > 0 and unc[("lora-run", "in-domain")]["epistemic"] == 0
    assert len(tables["selective"]) == 4
    text = report.format_summary(tables)
    assert "monteclora-run" in text and "auroc" in text
    json.dumps(tables)


def test_write_report(runs, tmp_path):
    out = tmp_path / "report"
    path = report.write_report(runs, out, idata=make_idata())
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
    for run in runs:
        saved = json.loads((run / "metrics.json").read_text())
        for mode in ("posterior_mean", "posterior_predictive"):
            for key in ("accuracy", "nll", "ece", "brier"):
                assert f">{saved[mode][key]:.4f}<" in page
        config = json.loads((run / "config.json").read_text())
        assert html.escape(json.dumps(config, indent=2, sort_keys=True)) in page
    assert "<h2>Comparison</h2>" in page
    assert "Out-of-distribution detection (AUROC)" in page
    assert '<td class="text">tweets</td>' in page
    for score in report.OOD_SCORES:
        assert f">{html.escape(score)}<" in page
    ood = report.summary_tables(runs)["ood"][0]
    assert f">{ood['auroc']:.4f}<" in page
    assert "Uncertainty decomposition" in page and "epistemic" in page


def test_write_report_single_lora_run_without_idata(runs, tmp_path):
    path = report.write_report(runs[1], tmp_path / "lora")
    page = path.read_text()
    assert "<h2>Comparison</h2>" not in page
    assert "no posterior samples given" in page
    assert (tmp_path / "lora" / "comparison_reliability.png").is_file()
    assert not list((tmp_path / "lora").glob("forest_*.png"))
    with pytest.raises(FileNotFoundError):
        report.write_report([tmp_path / "nowhere"], tmp_path / "x")
