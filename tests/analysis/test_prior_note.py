"""The prior group tells the truth: the omitted cooperative tilt, and precision sites."""

from __future__ import annotations

import math
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from test_report import LAYERS, R, make_run

from monteclora_pyro import runs
from monteclora_pyro.analysis.analyze import analyze_runs
from monteclora_pyro.analysis.inference_data import prior_note, to_inference_data
from monteclora_pyro.analysis.prior_note import cooperative_tilt, num_layers, tilt_note


def _config(objective: str | None, weight: float) -> dict:
    monteclora = {"cooperative_weight": weight}
    if objective is not None:
        monteclora["objective"] = objective
    return {"train": {}, "monteclora": monteclora}


def test_cooperative_tilt_and_its_note():
    tilt = cooperative_tilt(_config("paper", 1.0), {"num_train_examples": 800}, 4)
    assert tilt == {
        "cooperative_weight": 1.0,
        "num_train_examples": 800.0,
        "num_layers": 4,
        "tilt_scale": 200.0,
    }
    note = tilt_note(tilt)
    assert note.startswith("prior shown without the cooperative tilt")
    assert "(λ = 1, N/L = 200)" in note
    assert note.endswith("the posterior of the weights is pinned by that tilt, not by the data")
    # older runs: no objective means the paper objective
    assert cooperative_tilt(_config(None, 0.5), {"num_train_examples": 800}, 4) is not None
    assert cooperative_tilt(_config("bayes", 0.0), {"num_train_examples": 800}, 4) is None
    assert cooperative_tilt(_config("paper", 0.0), {}, 4) is None
    assert tilt_note(None) is None
    unknown = cooperative_tilt(_config("paper", 2.0), {}, 4)
    assert math.isnan(unknown["num_train_examples"]) and math.isnan(unknown["tilt_scale"])
    assert "(λ = 2, N/L unknown: metrics.json has no num_train_examples)" in tilt_note(unknown)
    assert num_layers(["a.b.weights", "a.b.covariance", "a.c.weights"]) == 2


def _set_objective(run, objective: str, weight: float, n: int | None = None) -> None:
    config = runs.read_config(run)
    mc = config["monteclora"] | {"objective": objective, "cooperative_weight": weight}
    runs.write_config(run, config["train"], mc)
    if n is not None:
        runs.write_metrics(run, runs.read_metrics(run) | {"num_train_examples": n})


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    paper = make_run(root, "paper-run", "monteclora", 0)
    _set_objective(paper, "paper", 1.0, n=400)
    bayes = make_run(root, "bayes-run", "monteclora", 1)
    _set_objective(bayes, "bayes", 0.0, n=400)
    rng = np.random.default_rng(5)
    for group in ("posterior", "prior"):
        samples = runs.read_samples(bayes, group)
        for layer in LAYERS:
            g = rng.normal(size=(len(samples[f"{layer}.weights"]), R, R + 1))
            samples[f"{layer}.precision"] = g @ np.swapaxes(g, -1, -2)
        runs.write_samples(bayes, group, samples)
    return paper, bayes


def test_the_prior_group_of_the_paper_objective_says_it_omits_the_tilt(run_dirs, tmp_path):
    paper, _ = run_dirs
    idata = to_inference_data(paper)
    attrs = idata.prior.attrs
    assert attrs["cooperative_tilt"] == "omitted" and attrs["tilt_scale"] == 200.0
    assert prior_note(idata) == attrs["prior_note"]
    assert "(λ = 1, N/L = 200)" in prior_note(idata)
    analysis = analyze_runs([shutil.copytree(paper, tmp_path / "paper")], tmp_path / "out")
    assert analysis.methods[0].prior_note == prior_note(idata)
    page = analysis.report.read_text()
    assert "<strong>Note:</strong> prior shown without the cooperative tilt" in page
    assert "weights: prior vs posterior (prior shown without the cooperative tilt" in page
    assert "covariance: prior vs posterior (prior_posterior_covariance.png)" in page


def test_bayes_objective_precision_sites_and_no_tilt(run_dirs, tmp_path):
    _, bayes = run_dirs
    idata = to_inference_data(bayes)
    assert prior_note(idata) is None and "cooperative_tilt" not in idata.prior.attrs
    precision = idata.posterior[f"{LAYERS[0]}.precision"]
    assert precision.dims == ("chain", "draw", "rank", "rank_bis")
    assert idata.prior[f"{LAYERS[0]}.precision"].dims == ("chain", "draw", "rank", "rank_bis")
    analysis = analyze_runs([shutil.copytree(bayes, tmp_path / "bayes")], tmp_path / "out")
    summary = analysis.methods[0].summary
    assert any(".precision[" in str(index) for index in summary.index)
    assert (tmp_path / "out" / "prior_posterior_precision.png").is_file()
    assert (tmp_path / "out" / "forest_precision.png").is_file()
    assert "Figures left out" not in analysis.report.read_text()
    assert analysis.methods[0].prior_note is None
