"""InferenceData from real (tiny) runs: schema, netCDF round trip, diagnostics."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest
import torch
from conftest import write_tiny_backbone, write_toy_sst2

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.analysis.inference_data import (
    TERMS,
    hyperprior_summary,
    psis_loo,
    save_inference_data,
    site_kind,
    to_inference_data,
)
from monteclora_pyro.training import TrainConfig, train

DRAWS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two MonteCLoRA restarts (seeds 0 and 1) and one LoRA run on the toy task."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("idata")
    model_dir = write_tiny_backbone(root / "model")
    data_dir = write_toy_sst2(root / "data", n_train=32, n_dev=20)
    dirs = {}
    for name, method, seed in (
        ("mc0", "monteclora", 0),
        ("mc1", "monteclora", 1),
        ("lora", "lora", 0),
    ):
        cfg = TrainConfig(
            model=str(model_dir),
            task="sst2",
            data_dir=str(data_dir),
            method=method,
            epochs=2,
            batch_size=16,
            lr=3e-2,
            seed=seed,
            num_samples=DRAWS,
            output_dir=str(root / name),
        )
        train(cfg, MonteCLoRAConfig(r=3, num_components=2), progress=False)
        dirs[name] = root / name
    torch.set_num_threads(threads)
    return dirs


def test_schema_of_restarts(runs):
    idata = to_inference_data([runs["mc0"], runs["mc1"]])
    assert {
        "posterior",
        "prior",
        "posterior_predictive",
        "observed_data",
        "log_likelihood",
        "training",
    } <= set(idata.groups())
    post = idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == DRAWS
    layers = [
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    ]
    expected = {
        f"{layer}.{kind}" for layer in layers for kind in ("covariance", "concentration", "weights")
    }
    assert set(post.data_vars) == expected
    cov = post[f"{layers[0]}.covariance"]
    assert cov.dims == ("chain", "draw", "rank", "rank_bis") and cov.shape[2:] == (3, 3)
    assert np.all(np.linalg.eigvalsh(cov.values) > 0)
    weights = post[f"{layers[0]}.weights"]
    assert weights.dims == ("chain", "draw", "component")
    np.testing.assert_allclose(weights.sum("component"), 1.0, atol=1e-5)
    assert idata.prior.sizes["chain"] == 1 and set(idata.prior.data_vars) == expected
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "example")
    assert idata.posterior_predictive["y"].shape == (2, DRAWS, 20)
    assert set(np.unique(idata.posterior_predictive["y"])) <= {0, 1}
    assert idata.observed_data["y"].dims == ("example",)
    assert idata.log_likelihood["y"].shape == (2, DRAWS, 20)
    # log-likelihood is the log of the saved per-draw probability of the observed label
    with np.load(runs["mc1"] / "predictions.npz") as data:
        probs, labels = data["draw_probs"], data["labels"]
    expected_ll = np.log(probs[:, np.arange(20), labels])
    np.testing.assert_allclose(idata.log_likelihood["y"].values[1], expected_ll, rtol=1e-6)
    training = idata.training
    assert set(training.data_vars) == set(TERMS)
    assert training["loss"].dims == ("chain", "step") and training.sizes["step"] == 4
    records = [
        json.loads(line) for line in (runs["mc0"] / "history.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    np.testing.assert_allclose(training["loss"].values[0], losses)


def test_posterior_predictive_frequencies_follow_the_draw_probabilities(runs):
    with np.load(runs["mc0"] / "predictions.npz") as data:
        probs = data["draw_probs"]
    many = [
        to_inference_data(runs["mc0"], seed=s).posterior_predictive["y"].values for s in range(60)
    ]
    freq = np.mean(many, axis=0)[0]
    se = np.sqrt(probs[..., 1] * (1 - probs[..., 1]) / 60)
    assert np.all(np.abs(freq - probs[..., 1]) <= 5 * se + 1e-9)


def test_netcdf_round_trip(runs, tmp_path):
    idata = to_inference_data([runs["mc0"], runs["mc1"]])
    path = save_inference_data(idata, tmp_path)
    loaded = az.from_netcdf(str(path))
    assert set(loaded.groups()) == set(idata.groups())
    for group in idata.groups():
        for name, value in idata[group].data_vars.items():
            np.testing.assert_array_equal(loaded[group][name].values, value.values)
    assert loaded.attrs["method"] == "monteclora"


def test_lora_run_has_no_posterior_and_mixed_methods_fail(runs):
    idata = to_inference_data(runs["lora"])
    assert "posterior" not in idata.groups() and "posterior_predictive" in idata.groups()
    assert idata.log_likelihood.sizes["draw"] == 1
    loo, messages = psis_loo(idata)
    assert loo is None and "at least two posterior draws" in messages[0]
    with pytest.raises(ValueError, match="mix methods"):
        to_inference_data([runs["mc0"], runs["lora"]])
    with pytest.raises(ValueError, match="no posterior"):
        hyperprior_summary(idata)


def test_diagnostics_compare_restarts(runs, caplog):
    idata = to_inference_data([runs["mc0"], runs["mc1"]])
    summary = hyperprior_summary(idata)
    assert {"r_hat", "ess_bulk", "mean", "sd"} <= set(summary.columns)
    kinds = {site_kind(index.split("[")[0]) for index in summary.index}
    assert kinds == {"covariance", "concentration", "weights"}
    assert np.isfinite(summary["r_hat"]).all()
    loo, messages = psis_loo(idata)
    assert loo is not None and loo.pareto_k.size == 20
    assert np.isfinite(loo.elpd_loo)
    bad = int((loo.pareto_k > 0.7).sum())
    if bad:
        assert any("Pareto k > 0.7" in m for m in messages)
        assert "Pareto k > 0.7" in caplog.text


def test_missing_and_inconsistent_runs(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        to_inference_data(tmp_path)
    with pytest.raises(ValueError, match="at least one run"):
        to_inference_data([])
