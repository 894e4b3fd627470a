"""A validation split carved from the training set, and temperature scaling fitted on it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dies_at_step, toy_config

from monteclora_pyro import MonteCLoRAConfig, metrics, runs
from monteclora_pyro.cli import main
from monteclora_pyro.experiments.temperature import (
    TEMPERATURE_METHOD,
    fit_temperature,
    scaled_nll,
    temperature_scale,
)
from monteclora_pyro.training import TrainConfig, Trainer, train


def _config(toy_assets, out, **overrides) -> TrainConfig:
    return toy_config(toy_assets, out, **{"validation_fraction": 0.25, **overrides})


def _rows(dataset) -> list[tuple]:
    return [(tuple(r["input_ids"]), int(r["labels"])) for r in dataset]


def test_validation_fraction_is_checked():
    for bad in (-0.1, 0.5, 0.9, True, "0.1"):
        with pytest.raises(ValueError, match="validation_fraction"):
            TrainConfig(validation_fraction=bad)
    assert TrainConfig().validation_fraction == 0.0


def test_the_carved_split_is_seeded_disjoint_and_stored(toy_assets, tmp_path):
    pool = _rows(Trainer(_config(toy_assets, tmp_path / "all", validation_fraction=0.0)).train_set)
    assert len(pool) == 128
    trainer = Trainer(_config(toy_assets, tmp_path / "a"))
    held = trainer.validation_indices
    assert len(held) == 32 and len(set(held.tolist())) == 32  # ceil(0.25 * 128)
    kept, carved = _rows(trainer.train_set), _rows(trainer.validation_set)
    assert carved == [pool[i] for i in held]
    assert kept == [pool[i] for i in range(128) if i not in set(held.tolist())]
    assert trainer.method.model.num_data == 96  # N, the likelihood scale
    same = Trainer(_config(toy_assets, tmp_path / "b")).validation_indices
    other = Trainer(_config(toy_assets, tmp_path / "c", seed=1)).validation_indices
    np.testing.assert_array_equal(same, held)
    assert not np.array_equal(other, held)
    # 0.3 of 128 is 38.4: the split rounds up.
    assert (
        len(
            Trainer(_config(toy_assets, tmp_path / "d", validation_fraction=0.3)).validation_indices
        )
        == 39
    )


def test_a_killed_and_resumed_run_keeps_its_split(toy_assets, tmp_path):
    cfg = _config(toy_assets, tmp_path / "run", checkpoint_every=2)
    held = Trainer(cfg).validation_indices
    with dies_at_step(3):
        train(cfg, MonteCLoRAConfig(r=4), progress=False)
    np.testing.assert_array_equal(runs.read_validation_split(cfg.output_dir), held)
    saved = train(cfg, MonteCLoRAConfig(r=4), resume=True, progress=False)
    assert saved["steps"] == 6 and saved["num_train_examples"] == 96
    assert runs.read_metrics(cfg.output_dir)["num_train_examples"] == 96
    np.testing.assert_array_equal(runs.read_validation_split(cfg.output_dir), held)
    validation_dir = runs.evaluation_dir(cfg.output_dir, "sst2", runs.VALIDATION_SPLIT)
    validation = runs.read_predictions(validation_dir)
    assert validation.draw_probs.shape == (4, 32, 2)
    assert runs.read_metrics(validation_dir)["num_examples"] == 32
    labels = np.array([label for _, label in _rows(Trainer(cfg).validation_set)])
    np.testing.assert_array_equal(validation.labels, labels)


def test_a_run_without_the_option_carves_nothing(toy_assets, tmp_path):
    out = tmp_path / "plain"
    saved = train(
        _config(toy_assets, out, validation_fraction=0.0, epochs=1), MonteCLoRAConfig(r=4)
    )
    assert saved["num_train_examples"] == 128
    assert runs.read_validation_split(out) is None and runs.evaluations(out) == {}
    with pytest.raises(ValueError, match="--validation-fraction"):
        temperature_scale(out, tmp_path / "t")


def _brute_force(probs, labels, grid):
    """Mean NLL of softmax(log p / T) at each T of ``grid``, written out independently;
    ``probs`` of shape (S, n, C) are draws, whose tempered probabilities are averaged."""
    logp = np.log(probs.astype(np.float64))
    values = []
    for t in grid:
        z = logp / t
        log_norm = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
        log_q = z - log_norm[..., None]
        if log_q.ndim == 3:
            log_q = np.log(np.exp(log_q).mean(0))
        values.append(-np.mean(log_q[np.arange(len(labels)), labels]))
    return np.array(values)


def test_the_draws_temperature_is_fitted_to_their_average():
    rng = np.random.default_rng(0)
    n, draws = 400, 16
    labels = rng.integers(0, 2, n)
    # An overconfident plug-in (logit 4 toward a label that is right 80 % of the time) whose
    # draws scatter around it: their average is softer than the plug-in.
    right = np.where(rng.random(n) < 0.8, labels, 1 - labels)
    logit = 4.0 * np.where(right == 1, 1.0, -1.0)
    noise = rng.normal(0.0, 3.0, (draws, n))

    def probs(z):
        return np.stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], -1)

    plug_in, draw_probs = probs(logit), probs(logit + noise)
    log_grid = np.linspace(np.log(1e-2), np.log(1e2), 4001)
    step = log_grid[1] - log_grid[0]
    t_plug, t_pred = fit_temperature(plug_in, labels), fit_temperature(draw_probs, labels)
    by_grid = _brute_force(draw_probs, labels, np.exp(log_grid))
    assert abs(np.log(t_pred) - log_grid[np.argmin(by_grid)]) <= step
    assert scaled_nll(draw_probs, labels, t_pred) <= by_grid.min() + 1e-9
    assert scaled_nll(draw_probs, labels, 1.0) == pytest.approx(by_grid[2000], rel=1e-12)
    # The draws have done part of the softening: the plug-in's T over-softens them.
    assert t_pred < t_plug - 10 * step
    assert scaled_nll(draw_probs, labels, t_pred) < scaled_nll(draw_probs, labels, t_plug)
    # One draw equal to the plug-in: the same fit.
    assert fit_temperature(plug_in[None], labels) == fit_temperature(plug_in, labels)


def test_a_temperature_at_the_search_bound_is_returned_with_a_warning(caplog):
    labels = np.tile([0, 1], 50)
    confident = np.tile([[0.9, 0.1]], (100, 1))  # right on half the examples: chance
    with caplog.at_level("WARNING", logger="monteclora_pyro.experiments.temperature"):
        assert fit_temperature(confident, labels) == pytest.approx(1e2, rel=1e-12)
    assert "is a bound of its search interval" in caplog.text
    caplog.clear()
    always_right = np.where(labels[:, None] == np.arange(2), 0.6, 0.4)
    with caplog.at_level("WARNING", logger="monteclora_pyro.experiments.temperature"):
        assert fit_temperature(always_right, labels) == pytest.approx(1e-2, rel=1e-12)
    assert "is a bound of its search interval" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="monteclora_pyro.experiments.temperature"):
        fit_temperature(np.tile([[0.7, 0.3]], (100, 1)), np.r_[np.zeros(70, int), np.ones(30, int)])
    assert caplog.text == ""  # T = 1 is right for 70 % confidence at 70 % accuracy


@pytest.mark.parametrize("method", ["monteclora", "lora"])
def test_temperature_scaling_lowers_the_validation_nll(toy_assets, tmp_path, capsys, method):
    run = tmp_path / "run"
    train(_config(toy_assets, run, method=method), MonteCLoRAConfig(r=4), progress=False)
    out = tmp_path / "scaled"
    saved = temperature_scale(run, out)
    source = runs.read_predictions(run)
    scaled = runs.read_predictions(out)
    validation = runs.read_predictions(runs.evaluation_dir(run, "sst2", runs.VALIDATION_SPLIT))
    val_probs = validation.mean_probs / validation.mean_probs.sum(-1, keepdims=True)
    before = metrics.nll(val_probs, validation.labels)
    assert saved["validation_nll_before"] == pytest.approx(before, rel=1e-5)
    assert saved["validation_nll_after"] < saved["validation_nll_before"] - 1e-4
    temperature = saved["temperature"]
    assert temperature > 0 and temperature != pytest.approx(1.0, abs=1e-3)
    log_grid = np.linspace(np.log(1e-2), np.log(1e2), 4001)
    nlls = _brute_force(val_probs, validation.labels, np.exp(log_grid))
    step = log_grid[1] - log_grid[0]
    assert abs(np.log(temperature) - log_grid[np.argmin(nlls)]) <= step
    assert saved["validation_nll_after"] <= nlls.min() + 1e-9
    # T_pred minimises the NLL of the tempered draws' average.
    predictive = saved["predictive_temperature"]
    draw_nlls = _brute_force(validation.draw_probs, validation.labels, np.exp(log_grid))
    assert abs(np.log(predictive) - log_grid[np.argmin(draw_nlls)]) <= step
    assert saved["validation_predictive_nll_before"] == pytest.approx(draw_nlls[2000], rel=1e-9)
    assert saved["validation_predictive_nll_after"] <= draw_nlls.min() + 1e-9
    if method == "lora":  # one draw, its plug-in: one temperature
        assert predictive == pytest.approx(temperature, rel=1e-6)
    # T scales the plug-in and T_pred every draw; the draws are then averaged.
    tempered = np.exp(np.log(source.draw_probs.astype(np.float64)) / predictive)
    tempered /= tempered.sum(-1, keepdims=True)
    plug_in = np.exp(np.log(source.mean_probs.astype(np.float64)) / temperature)
    np.testing.assert_allclose(
        scaled.mean_probs, plug_in / plug_in.sum(-1, keepdims=True), rtol=1e-6
    )
    np.testing.assert_allclose(scaled.draw_probs, tempered, rtol=1e-6)
    assert saved["posterior_predictive"]["nll"] == pytest.approx(
        metrics.nll(tempered.mean(0), source.labels), rel=1e-6
    )
    original = runs.read_metrics(run)
    modes = ("posterior_mean", "posterior_predictive") if method == "lora" else ("posterior_mean",)
    for mode in modes:  # argmax is invariant (for the predictive, when the draws agree: lora's)
        assert saved[mode]["accuracy"] == original[mode]["accuracy"]
        np.testing.assert_array_equal(
            scaled.mode_probs(mode).argmax(-1), source.mode_probs(mode).argmax(-1)
        )
    assert saved["method"] == TEMPERATURE_METHOD and saved["source_method"] == method
    assert runs.read_config(out)["train"]["method"] == TEMPERATURE_METHOD
    assert runs.read_metrics(out) == saved
    with pytest.raises(FileExistsError, match="already holds a run"):
        temperature_scale(run, out)
    via_cli = tmp_path / "cli"
    assert main(["--quiet", "calibrate", str(run), "--output-dir", str(via_cli)]) == 0
    assert "temperature" in capsys.readouterr().out
    assert runs.read_metrics(via_cli)["posterior_predictive"] == saved["posterior_predictive"]


def test_temperature_scaling_refuses_a_regression_run(tmp_path):
    run = tmp_path / "stsb"
    run.mkdir()
    runs.write_config(run, {"task": "stsb", "method": "lora"}, {})
    with pytest.raises(ValueError, match="regression run: temperature scaling calibrates class"):
        temperature_scale(run, tmp_path / "out")
    assert main(["--quiet", "calibrate", str(run), "--output-dir", str(tmp_path / "o")]) == 2
