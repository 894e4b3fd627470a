"""Laplace-LoRA: a Laplace posterior around a finished LoRA run, its prior chosen on validation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import toy_config, write_tiny_backbone, write_toy_sst2

from monteclora_pyro import MonteCLoRAConfig, metrics, runs
from monteclora_pyro.cli import main
from monteclora_pyro.experiments import laplace as laplace_lora
from monteclora_pyro.training import train

pytest.importorskip("laplace", reason="laplace-torch (the 'laplace' extra) is not installed")
# torch.func's Jacobians of the attention fall back to a slow path on CPU; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A finished tiny LoRA run that carved 32 of its 128 training examples for validation."""
    root = tmp_path_factory.mktemp("laplace")
    assets = write_tiny_backbone(root / "tiny-bert"), write_toy_sst2(root / "glue")
    cfg = toy_config(assets, root / "run", method="lora", validation_fraction=0.25)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, MonteCLoRAConfig(r=4), progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


@pytest.mark.parametrize(
    ("hessian", "predictive", "subset"),
    [("kron", "glm", "adapter"), ("diag", "mc", "adapter"), ("kron", "mc", "last_layer")],
)
def test_the_predictive_variance_shrinks_as_the_prior_precision_grows(
    lora_run, hessian, predictive, subset
):
    fit = laplace_lora.fit_run(lora_run, hessian, subset)
    assert fit.subset == subset
    batches = fit.batches["validation"]
    options = {"predictive": predictive, "num_samples": 8, "seed": 0}
    labels, plug_in, draws = laplace_lora.predictive_draws(
        fit.laplace, batches, [1e-2, 1e2], **options
    )
    assert draws.shape == (2, 8, 32, 2) and plug_in.shape == (32, 2) and labels.shape == (32,)
    spread = draws.var(axis=1).sum(-1).mean(-1)  # variance over the draws, per prior precision
    assert spread[0] > spread[1] > 0
    # The same seed gives the same draws, whatever else is on the grid.
    again = laplace_lora.predictive_draws(fit.laplace, batches, [1e2], **options)[2]
    np.testing.assert_array_equal(again[0], draws[1])
    if predictive == "glm":  # the functional variance J (H + λI)⁻¹ Jᵀ itself
        js, _ = fit.laplace.backend.jacobians(batches[0])
        traces = []
        for precision in (1e-2, 1.0, 1e2):
            fit.laplace.prior_precision = precision
            traces.append(fit.laplace.functional_variance(js).diagonal(dim1=1, dim2=2).sum())
        assert traces[0] > traces[1] > traces[2] > 0


def test_laplace_writes_a_run_chosen_on_the_validation_split(lora_run, tmp_path, capsys):
    out = tmp_path / "laplace"
    saved = laplace_lora.laplace_run(lora_run, out)
    assert runs.read_metrics(out) == saved
    assert runs.read_config(out)["train"]["method"] == laplace_lora.LAPLACE_METHOD
    assert saved["source_method"] == "lora" and saved["laplace_subset"] == "adapter"
    assert (saved["hessian"], saved["predictive"]) == ("kron", "glm")
    source = runs.read_predictions(lora_run)
    predictions = runs.read_predictions(out)
    assert predictions.draw_probs.shape == (4, 64, 2)  # the run's S = 4
    tolerance = 8 * predictions.draw_probs.shape[-1] * np.finfo(predictions.draw_probs.dtype).eps
    np.testing.assert_allclose(predictions.draw_probs.sum(-1), 1.0, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(predictions.labels, source.labels)
    # The MAP is the run's own plug-in prediction: the adapter re-expressed for KFAC is the same.
    np.testing.assert_allclose(predictions.mean_probs, source.mean_probs, rtol=1e-5, atol=1e-6)
    nlls = saved["validation_nll_by_prior_precision"]
    assert sorted(map(float, nlls)) == sorted(laplace_lora.PRIOR_PRECISIONS)
    best = min(nlls, key=nlls.get)
    assert float(best) == saved["prior_precision"]
    validation_dir = runs.evaluation_dir(out, "sst2", runs.VALIDATION_SPLIT)
    validation = runs.read_predictions(validation_dir)
    assert validation.draw_probs.shape == (4, 32, 2)
    source_validation = runs.evaluation_dir(lora_run, "sst2", runs.VALIDATION_SPLIT)
    np.testing.assert_array_equal(
        validation.labels, runs.read_predictions(source_validation).labels
    )
    recomputed = metrics.nll(validation.predictive_probs, validation.labels)
    assert recomputed == pytest.approx(nlls[best], rel=1e-9)
    assert runs.read_metrics(validation_dir)["method"] == laplace_lora.LAPLACE_METHOD
    with pytest.raises(FileExistsError, match="already holds a run"):
        laplace_lora.laplace_run(lora_run, out)
    via_cli = tmp_path / "cli"
    command = ["--quiet", "laplace", str(lora_run), "--output-dir", str(via_cli)]
    options = ["--hessian", "diag", "--predictive", "mc", "--num-samples", "3"]
    assert main(command + options) == 0
    assert "laplace (adapter, diag, mc)" in capsys.readouterr().out
    written = runs.read_metrics(via_cli)
    assert (written["hessian"], written["predictive"], written["num_samples"]) == ("diag", "mc", 3)
    assert runs.read_predictions(via_cli).draw_probs.shape == (3, 64, 2)


def test_laplace_refuses_what_it_cannot_take(lora_run, tmp_path):
    other = tmp_path / "monteclora"
    other.mkdir()
    runs.write_config(other, {"task": "sst2", "method": "monteclora"}, {})
    with pytest.raises(ValueError, match="'monteclora' run: Laplace-LoRA takes .* of 'lora'"):
        laplace_lora.laplace_run(other, tmp_path / "a")
    assert main(["--quiet", "laplace", str(other), "--output-dir", str(tmp_path / "b")]) == 2
    uncarved = tmp_path / "uncarved"
    uncarved.mkdir()
    runs.write_config(uncarved, {"task": "sst2", "method": "lora"}, {})
    with pytest.raises(ValueError, match="no validation split .* --validation-fraction > 0"):
        laplace_lora.laplace_run(uncarved, tmp_path / "c")
    regression = tmp_path / "stsb"
    regression.mkdir()
    runs.write_config(regression, {"task": "stsb", "method": "lora"}, {})
    with pytest.raises(ValueError, match="regression run"):
        laplace_lora.laplace_run(regression, tmp_path / "d")
    for options, message in [
        ({"hessian": "full"}, "hessian='full' is invalid"),
        ({"predictive": "probit"}, "predictive='probit' is invalid"),
        ({"subset": "subnetwork"}, "subset='subnetwork' is invalid"),
        ({"prior_precisions": [1.0, 0.0]}, "non-empty and positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            laplace_lora.laplace_run(lora_run, tmp_path / "e", **options)
    assert not runs.is_run(tmp_path / "e")


def test_auto_falls_back_to_the_last_layer(lora_run, monkeypatch):
    import laplace

    real = laplace.Laplace

    def no_adapter(model, subset_of_weights, **options):
        if subset_of_weights == "all":
            raise NotImplementedError("Found parameters in un-supported layers.")
        return real(model, subset_of_weights=subset_of_weights, **options)

    monkeypatch.setattr(laplace, "Laplace", no_adapter)
    assert laplace_lora.fit_run(lora_run, "diag", "auto").subset == "last_layer"
    with pytest.raises(ValueError, match="cannot take the adapter .* subset='last_layer'"):
        laplace_lora.fit_run(lora_run, "diag", "adapter")


def test_a_missing_laplace_torch_names_the_extra(lora_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "laplace", None)
    with pytest.raises(RuntimeError, match=r"pip install 'monteclora-pyro\[laplace\]'"):
        laplace_lora.fit_run(lora_run)
