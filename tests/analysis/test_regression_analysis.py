"""The analysis of regression runs: predictions file, held-out lppd, ArviZ groups and figures."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import arviz as az
import numpy as np
import pytest
from matplotlib.figure import Figure

from monteclora_pyro import metrics, runs
from monteclora_pyro.analysis import plots
from monteclora_pyro.analysis.heldout import heldout, pool_predictions
from monteclora_pyro.analysis.prior_note import num_layers
from monteclora_pyro.analysis.regression import normal_groups
from monteclora_pyro.runs import Predictions, RegressionPredictions

LABELS = np.array([1.0, 2.0, 4.0])
DRAW_MEAN = np.array([[1.0, 2.5, 3.0], [2.0, 1.5, 4.0]])
DRAW_PRECISION = np.array([[1.0, 1.0, 1.0], [4.0, 4.0, 4.0]])


def _predictions() -> RegressionPredictions:
    return RegressionPredictions(
        LABELS, DRAW_MEAN.mean(0), np.full(3, 2.5), DRAW_MEAN, DRAW_PRECISION
    )


def _logpdf(y, m, tau):
    return 0.5 * math.log(tau / (2 * math.pi)) - 0.5 * tau * (y - m) ** 2


def test_predictions_file_round_trip_and_kind(tmp_path):
    runs.write_predictions(tmp_path, _predictions())
    back = runs.read_predictions(tmp_path)
    assert isinstance(back, RegressionPredictions) and back.num_draws == 2
    for key in RegressionPredictions.KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(_predictions(), key))
    means, precisions = back.mode_params("posterior_mean")
    assert means.shape == precisions.shape == (1, 3)
    classes = Predictions(np.array([0, 1]), np.full((2, 2), 0.5), np.full((1, 2, 2), 0.5))
    (tmp_path / "c").mkdir()
    runs.write_predictions(tmp_path / "c", classes)
    assert isinstance(runs.read_predictions(tmp_path / "c"), Predictions)


def test_heldout_lppd_by_hand():
    result = heldout(_predictions(), "run", "validation")
    expected = [
        math.log(
            sum(math.exp(_logpdf(y, DRAW_MEAN[s, i], DRAW_PRECISION[s, i])) for s in (0, 1)) / 2
        )
        for i, y in enumerate(LABELS)
    ]
    np.testing.assert_allclose(result.pointwise, expected, rtol=1e-12)
    assert result.lppd == pytest.approx(sum(expected))
    assert -result.lppd_per_example == pytest.approx(
        metrics.regression_report(DRAW_MEAN, DRAW_PRECISION, LABELS)["nll"]
    )
    # epistemic: variance of the two means, [0.25, 0.25, 0.25]; aleatoric (1 + 1/4)/2
    assert result.epistemic_variance == pytest.approx(0.25)
    assert result.epistemic_share == pytest.approx(0.25 / (0.25 + 0.625))
    plug_in = metrics.regression_report(DRAW_MEAN.mean(0), 2.5, LABELS)
    assert result.gap("nll") == pytest.approx(plug_in["nll"] + result.lppd_per_example)
    row = result.row()
    assert row["n"] == 3 and row["S"] == 2 and "coverage_90 gap" in row
    assert "held-out lppd on validation (n=3, S=2)" in result.describe()


def test_pooling_concatenates_draws_and_refuses_a_mix():
    pooled = pool_predictions([_predictions(), _predictions()])
    assert pooled.num_draws == 4 and pooled.draw_precision.shape == (4, 3)
    classes = Predictions(np.array([0, 1, 0]), np.full((3, 2), 0.5), np.full((1, 3, 2), 0.5))
    with pytest.raises(ValueError, match="cannot be pooled"):
        pool_predictions([_predictions(), classes])


def test_normal_groups_hold_the_per_draw_log_likelihood():
    means, precisions = DRAW_MEAN[None], DRAW_PRECISION[None]  # one chain
    groups = normal_groups(means, precisions, LABELS, np.random.default_rng(0))
    log_lik = groups["log_likelihood"]["y"]
    assert log_lik.shape == (1, 2, 3)
    assert log_lik[0, 1, 2] == pytest.approx(_logpdf(4.0, 4.0, 4.0))
    assert groups["posterior_predictive"]["y"].shape == (1, 2, 3)
    np.testing.assert_array_equal(groups["observed_data"]["y"], LABELS)


def test_interval_coverage_figure():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 300))
    labels = rng.normal(means[0], 1.0)
    fig = plots.plot_interval_coverage(
        {"posterior predictive": (means, 1.0, labels), "posterior mean": (means[:1], 1.0, labels)}
    )
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("nominal level") and ax.get_ylabel().startswith("fraction")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    covered = metrics.interval_coverage(means[:1], 1.0, labels, [0.9])[0]
    assert f"posterior mean (90%: {covered:.3f})" in texts and "±2 s.e. (n=300)" in texts
    with pytest.raises(ValueError, match="empty"):
        plots.plot_interval_coverage({})


def test_posterior_figures_show_the_precision_site_and_it_is_not_a_layer():
    rng = np.random.default_rng(0)
    layer = "bert.encoder.layer.0.attention.self.query"
    idata = az.from_dict(
        posterior={
            f"{layer}.concentration": rng.gamma(2.0, 0.5, size=(2, 30, 4)),
            "y.obs_precision": rng.gamma(50.0, 0.1, size=(2, 30)),
        },
        prior={
            f"{layer}.concentration": rng.gamma(2.0, 0.5, size=(1, 30, 4)),
            "y.obs_precision": rng.gamma(2.0, 0.5, size=(1, 30)),
        },
        dims={f"{layer}.concentration": ["component"]},
    )
    assert num_layers(idata.posterior.data_vars) == 1
    assert list(plots.layer_sites(idata, "obs_precision")) == ["y"]
    fig = plots.plot_prior_posterior(idata, "obs_precision")
    assert fig.get_suptitle() == "obs_precision: prior vs posterior"
    assert fig.axes[0].get_xlabel() == "observation precision τ"
    forest = plots.plot_forest_layers(idata, "obs_precision")
    assert [t.get_text() for t in forest.axes[0].get_yticklabels()] == ["y"]
    summary = plots.hyperprior_summaries(idata)
    assert "y.obs_precision.value" in summary.data_vars
