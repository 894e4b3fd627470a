"""InferenceData from real (tiny) runs: schema, netCDF round trip, diagnostics."""

from __future__ import annotations

import shutil

import arviz as az
import numpy as np
import pytest
import torch
from conftest import write_tiny_backbone, write_toy_sst2

from monteclora_pyro import MonteCLoRAConfig, runs
from monteclora_pyro.analysis.heldout import pointwise_lppd
from monteclora_pyro.analysis.inference_data import (
    RESTARTS_NOTE,
    TRAINING_TERMS,
    hyperprior_summary,
    save_inference_data,
    to_inference_data,
)
from monteclora_pyro.sites import split_site_name
from monteclora_pyro.training import TrainConfig, train

DRAWS = 6


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
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


def test_schema_of_restarts(run_dirs):
    idata = to_inference_data([run_dirs["mc0"], run_dirs["mc1"]])
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
    predictions = runs.read_predictions(run_dirs["mc1"])
    probs, labels = predictions.draw_probs, predictions.labels
    expected_ll = np.log(probs[:, np.arange(20), labels])
    np.testing.assert_allclose(idata.log_likelihood["y"].values[1], expected_ll, rtol=1e-6)
    # ... of the held-out evaluation split, and labelled so
    attrs = idata.log_likelihood.attrs
    assert attrs["split"] == "validation" and attrs["held_out"] == 1
    assert "do not apply PSIS-LOO" in attrs["note"]
    # the paper objective with λ = 1: the prior group says that it omits the tilt
    assert idata.prior.attrs["cooperative_tilt"] == "omitted"
    assert idata.prior.attrs["cooperative_weight"] == 1.0 and idata.prior.attrs["num_layers"] == 4
    assert "without the cooperative tilt" in idata.prior.attrs["prior_note"]
    training = idata.training
    # The paper objective's terms, in order; the Bayesian objective's are not logged.
    assert list(training.data_vars) == list(TRAINING_TERMS[:7])
    assert TRAINING_TERMS[7:] == ("kl_precision", "kl_A", "kl_obs_precision")
    assert training["loss"].dims == ("chain", "step") and training.sizes["step"] == 4
    losses = [r["loss"] for r in runs.read_history(run_dirs["mc0"], kind="train")]
    np.testing.assert_allclose(training["loss"].values[0], losses)


def test_posterior_predictive_frequencies_follow_the_draw_probabilities(run_dirs):
    probs = runs.read_predictions(run_dirs["mc0"]).draw_probs
    many = [
        to_inference_data(run_dirs["mc0"], seed=seed).posterior_predictive["y"].values
        for seed in range(60)
    ]
    freq = np.mean(many, axis=0)[0]
    se = np.sqrt(probs[..., 1] * (1 - probs[..., 1]) / 60)
    assert np.all(np.abs(freq - probs[..., 1]) <= 5 * se + 1e-9)


def test_netcdf_round_trip(run_dirs, tmp_path):
    idata = to_inference_data([run_dirs["mc0"], run_dirs["mc1"]])
    path = save_inference_data(idata, tmp_path)
    loaded = az.from_netcdf(str(path))
    assert set(loaded.groups()) == set(idata.groups())
    assert loaded.log_likelihood.attrs["held_out"] == 1
    assert loaded.prior.attrs["prior_note"] == idata.prior.attrs["prior_note"]
    for group in idata.groups():
        for name, value in idata[group].data_vars.items():
            np.testing.assert_array_equal(loaded[group][name].values, value.values)
    assert loaded.attrs["method"] == "monteclora"


def test_lora_run_has_no_posterior_and_mixed_methods_fail(run_dirs):
    idata = to_inference_data(run_dirs["lora"])
    assert "posterior" not in idata.groups() and "posterior_predictive" in idata.groups()
    assert idata.log_likelihood.sizes["draw"] == 1
    assert "prior" not in idata.groups()
    with pytest.raises(ValueError, match="mix methods"):
        to_inference_data([run_dirs["mc0"], run_dirs["lora"]])
    with pytest.raises(ValueError, match="no posterior"):
        hyperprior_summary(idata)


def test_diagnostics_compare_restarts(run_dirs, monkeypatch):
    monkeypatch.setattr(az, "loo", lambda *a, **k: pytest.fail("az.loo called on held-out data"))
    idata = to_inference_data([run_dirs["mc0"], run_dirs["mc1"]])
    summary = hyperprior_summary(idata)
    assert {"r_hat", "ess_bulk", "mean", "sd"} <= set(summary.columns)
    assert summary.attrs["caption"] == RESTARTS_NOTE
    kinds = {split_site_name(index.split("[")[0])[1] for index in summary.index}
    assert kinds == {"covariance", "concentration", "weights"}
    assert np.isfinite(summary["r_hat"]).all()
    # the held-out lppd of a chain from its log-likelihood group
    log_lik = idata.log_likelihood["y"].values[0]
    predictions = runs.read_predictions(run_dirs["mc0"])
    from_probs = pointwise_lppd(predictions.draw_probs, predictions.labels)
    from_log_lik = np.log(np.exp(log_lik).mean(axis=0))
    np.testing.assert_allclose(from_probs, from_log_lik, rtol=1e-6)


def test_missing_and_inconsistent_runs(run_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        to_inference_data(tmp_path)
    with pytest.raises(ValueError, match="at least one run"):
        to_inference_data([])
    finished = shutil.copytree(run_dirs["lora"], tmp_path / "no-probabilities")
    (finished / runs.PREDICTIONS_FILE).unlink()
    with pytest.raises(ValueError, match="no-probabilities is a next-token run: it has no class"):
        to_inference_data(finished)
    (finished / runs.METRICS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="has the run finished"):
        to_inference_data(finished)
