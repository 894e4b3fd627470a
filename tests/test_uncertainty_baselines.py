"""Uncertainty baselines on the same loop: MC dropout, deep and checkpoint ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import toy_config

from monteclora_pyro import MonteCLoRAConfig, metrics, runs
from monteclora_pyro.cli import main
from monteclora_pyro.experiments.ensemble import (
    CHECKPOINT_ENSEMBLE_METHOD,
    ENSEMBLE_METHOD,
    average,
    checkpoint_ensemble,
    ensemble_runs,
)
from monteclora_pyro.training import Trainer, evaluate_run, load_run, train


def _normalised(probs: np.ndarray) -> np.ndarray:
    """Probabilities as the metrics see them: float32 rows renormalised to sum to 1."""
    return probs / probs.sum(-1, keepdims=True)


def test_mc_dropout_draws_differ_and_average_into_the_predictive(toy_assets, tmp_path):
    out = tmp_path / "mc"
    cfg = toy_config(toy_assets, out, method="mc-dropout")
    saved = train(cfg, MonteCLoRAConfig(r=4, lora_dropout=0.2), progress=False)
    predictions = runs.read_predictions(out)
    draws = predictions.draw_probs
    assert draws.shape == (4, 64, 2) and saved["num_samples"] == 4
    # Dropout stays on: every pair of draws differs, and differs from the eval-mode pass.
    assert all(not np.allclose(draws[i], draws[j]) for i in range(4) for j in range(i))
    assert not np.allclose(draws.mean(0), predictions.mean_probs)
    expected = metrics.nll(_normalised(draws.mean(0)), predictions.labels)
    assert saved["posterior_predictive"]["nll"] == pytest.approx(expected, rel=1e-12)
    # The draws are seeded: evaluating again gives them exactly.
    again = evaluate_run(out, progress=False)
    assert again["posterior_predictive"] == saved["posterior_predictive"]


def test_mc_dropout_needs_dropout(toy_assets, tmp_path):
    with pytest.raises(ValueError, match="lora_dropout > 0"):
        Trainer(toy_config(toy_assets, tmp_path / "x", method="mc-dropout"), MonteCLoRAConfig(r=4))


def test_deep_ensemble_averages_its_members(toy_assets, tmp_path, capsys):
    members = []
    for seed in (0, 1):
        out = tmp_path / f"lora-s{seed}"
        train(toy_config(toy_assets, out, method="lora", seed=seed), MonteCLoRAConfig(r=4))
        members.append(out)
    out = tmp_path / "ensemble"
    saved = ensemble_runs(members, out)
    predictions = runs.read_predictions(out)
    member_predictions = [runs.read_predictions(m) for m in members]
    for i, member in enumerate(member_predictions):
        np.testing.assert_array_equal(predictions.draw_probs[i], member.predictive_probs)
    average = np.mean([m.predictive_probs for m in member_predictions], axis=0)
    np.testing.assert_allclose(predictions.predictive_probs, average, rtol=1e-12)
    assert not np.allclose(*[m.mean_probs for m in member_predictions])  # seeds differ
    assert saved["method"] == ENSEMBLE_METHOD and saved["num_samples"] == 2
    assert saved["posterior_predictive"]["nll"] == pytest.approx(
        metrics.nll(_normalised(average), predictions.labels), rel=1e-12
    )
    assert runs.read_config(out)["train"]["method"] == ENSEMBLE_METHOD
    with pytest.raises(FileExistsError, match="already holds a run"):
        ensemble_runs(members, out)
    with pytest.raises(ValueError, match="at least two runs"):
        ensemble_runs(members[:1], tmp_path / "one")
    # The command line writes the same run directory.
    via_cli = tmp_path / "cli"
    assert main(["--quiet", "ensemble", *map(str, members), "--output-dir", str(via_cli)]) == 0
    assert "deep-ensemble of 2" in capsys.readouterr().out
    assert runs.read_metrics(via_cli)["posterior_predictive"] == saved["posterior_predictive"]


def test_checkpoint_ensemble_averages_the_kept_epochs(toy_assets, tmp_path, capsys):
    run = tmp_path / "lora"
    cfg = toy_config(
        toy_assets, run, method="lora", epochs=3, keep_epoch_checkpoints=2, validation_fraction=0.2
    )
    train(cfg, MonteCLoRAConfig(r=4), progress=False)
    kept = runs.epoch_dirs(run)
    assert [d.name for d in kept] == ["epoch-0002", "epoch-0003"]  # epoch 1 was pruned
    # The last kept epoch is the finished run: the same predictions, bit for bit.
    final, last = runs.read_predictions(run), runs.read_predictions(kept[-1])
    np.testing.assert_array_equal(final.mean_probs, last.mean_probs)
    members = [runs.read_predictions(d) for d in kept]
    assert not np.allclose(members[0].mean_probs, members[1].mean_probs)
    out = tmp_path / "ckpt"
    saved = checkpoint_ensemble(run, out)
    predictions = runs.read_predictions(out)
    assert saved["method"] == CHECKPOINT_ENSEMBLE_METHOD and saved["epochs"] == [2, 3]
    for i, member in enumerate(members):
        np.testing.assert_array_equal(predictions.draw_probs[i], member.predictive_probs)
    average = np.mean([m.predictive_probs for m in members], axis=0)
    np.testing.assert_allclose(predictions.predictive_probs, average, rtol=1e-12)
    # The members' validation predictions are averaged too, for selecting M there.
    task = saved["task"]
    held_out = runs.read_predictions(runs.evaluation_dir(out, task, runs.VALIDATION_SPLIT))
    member_held_out = [
        runs.read_predictions(runs.evaluation_dir(d, task, runs.VALIDATION_SPLIT)) for d in kept
    ]
    expected = np.mean([m.predictive_probs for m in member_held_out], axis=0)
    np.testing.assert_allclose(held_out.predictive_probs, expected, rtol=1e-12)
    np.testing.assert_array_equal(held_out.labels.shape, runs.read_validation_split(run).shape)
    # The kept state is the trained adapter: loading the last one restores the final weights.
    state = torch.load(kept[-1] / runs.EPOCH_STATE_FILE, weights_only=False)
    method, _, _ = load_run(run)
    for key, value in method.state().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="kept 2 epoch"):
        checkpoint_ensemble(run, tmp_path / "three", members=3)
    with pytest.raises(FileExistsError, match="already holds a run"):
        checkpoint_ensemble(run, out)
    via_cli = tmp_path / "cli"
    argv = ["--quiet", "checkpoint-ensemble", str(run), "--output-dir", str(via_cli)]
    assert main(argv) == 0
    assert "checkpoint-ensemble of epochs [2, 3]" in capsys.readouterr().out
    assert runs.read_metrics(via_cli)["posterior_predictive"] == saved["posterior_predictive"]


@pytest.mark.parametrize("method", ["lora", "monteclora"])
def test_evaluating_only_at_the_end_trains_the_same_run(toy_assets, tmp_path, method):
    results = {}
    for every in (True, False):
        out = tmp_path / f"{method}-{every}"
        cfg = toy_config(toy_assets, out, method=method, eval_every_epoch=every)
        results[every] = train(cfg, MonteCLoRAConfig(r=4), progress=False)
        timing = runs.read_timing(out)
        assert timing["train_seconds"] > 0 and timing["eval_seconds"] > 0
        evals = runs.read_history(out, kind="eval")
        assert len(evals) == (cfg.epochs if every else 0)
    assert results[True] == results[False]  # evaluations leave the training streams alone


def test_ensembles_average_validation_only_over_the_same_held_out_examples(toy_assets, tmp_path):
    members = []
    for seed in (0, 1):
        out = tmp_path / f"lora-s{seed}"
        cfg = toy_config(toy_assets, out, method="lora", seed=seed, validation_fraction=0.2)
        train(cfg, MonteCLoRAConfig(r=4), progress=False)
        members.append(out)
    splits = [runs.read_validation_split(m) for m in members]
    assert not np.array_equal(*splits)  # each seed holds out its own examples
    saved = ensemble_runs(members, tmp_path / "ensemble")
    held = runs.evaluation_dir(tmp_path / "ensemble", saved["task"], runs.VALIDATION_SPLIT)
    assert not held.exists()


def test_a_fresh_run_clears_the_epochs_of_an_earlier_one(toy_assets, tmp_path):
    out = tmp_path / "lora"
    stale = runs.epoch_dir(out, 9)
    stale.mkdir(parents=True)
    (stale / runs.PREDICTIONS_FILE).write_bytes(b"")
    cfg = toy_config(toy_assets, out, method="lora", keep_epoch_checkpoints=1)
    train(cfg, MonteCLoRAConfig(r=4), resume=True, progress=False)  # no checkpoint: afresh
    assert [d.name for d in runs.epoch_dirs(out)] == ["epoch-0002"]


def test_a_checkpoint_older_than_the_new_options_resumes(toy_assets, tmp_path):
    out = tmp_path / "lora"
    cfg = toy_config(toy_assets, out, method="lora")
    first = train(cfg, MonteCLoRAConfig(r=4), progress=False)
    path = out / runs.CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    for key in ("keep_epoch_checkpoints", "eval_every_epoch"):
        del state["train_config"][key]  # written before these options existed
    torch.save(state, path)
    again = train(cfg, MonteCLoRAConfig(r=4), resume=True, progress=False)
    assert again == first
    with pytest.raises(ValueError, match="keep_epoch_checkpoints: 0 -> 2"):
        train(
            toy_config(toy_assets, out, method="lora", keep_epoch_checkpoints=2),
            MonteCLoRAConfig(r=4),
            resume=True,
            progress=False,
        )


def _members(seed: int, num_members: int, draws: int) -> list[runs.Predictions]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=20)
    found = []
    for _ in range(num_members):
        logits = rng.normal(size=(draws, 20, 3)) + rng.normal(size=(1, 20, 3))
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        found.append(runs.Predictions(labels, probs.mean(0), probs))
    return found


def test_an_ensemble_of_posteriors_keeps_every_draw_of_every_member():
    members = _members(0, num_members=3, draws=5)
    mixture = average(members)
    assert mixture.draw_probs.shape == (15, 20, 3)
    np.testing.assert_array_equal(mixture.draw_probs[5:10], members[1].draw_probs)
    expected = np.mean([m.predictive_probs for m in members], axis=0)
    np.testing.assert_allclose(mixture.predictive_probs, expected, rtol=1e-12)
    # Keeping the draws adds the within-member spread: by the concavity of the entropy, the
    # mixture's mutual information is at least the one-draw-per-member ensemble's.
    one_each = runs.Predictions(
        members[0].labels, mixture.mean_probs, np.stack([m.predictive_probs for m in members])
    )
    within = metrics.mutual_information(mixture.draw_probs)
    between = metrics.mutual_information(one_each.draw_probs)
    assert np.all(within >= between - 1e-12) and within.mean() > between.mean()


def test_members_with_other_numbers_of_draws_weigh_the_same():
    members = _members(1, num_members=2, draws=4)[:1] + _members(2, num_members=1, draws=2)
    members[1] = runs.Predictions(members[0].labels, members[1].mean_probs, members[1].draw_probs)
    mixture = average(members)
    assert mixture.num_draws == 2
    expected = (members[0].predictive_probs + members[1].predictive_probs) / 2
    np.testing.assert_allclose(mixture.predictive_probs, expected, rtol=1e-12)


@pytest.mark.parametrize("found", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("keep", [0, 1, 2, 3, 4])
def test_pruning_epoch_dirs_keeps_the_last_ones(tmp_path, found, keep):
    for epoch in range(1, found + 1):
        runs.epoch_dir(tmp_path, epoch).mkdir(parents=True)
    runs.prune_epoch_dirs(tmp_path, keep)
    left = sorted(p.name for p in (tmp_path / runs.EPOCHS_DIR).glob("epoch-*"))
    expected = [] if keep == 0 else list(range(max(found - keep, 0) + 1, found + 1))
    assert left == [f"epoch-{e:04d}" for e in expected]
