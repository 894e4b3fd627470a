"""The training loop on a tiny model: learning, artefacts, reloading, resume and failures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import dies_at_step, toy_config

import monteclora_pyro.training.methods as training
from monteclora_pyro import LoRAGuide, MonteCLoRAConfig, MonteCLoRAGuide
from monteclora_pyro.runs import Predictions
from monteclora_pyro.training import (
    TrainConfig,
    Trainer,
    TrainingError,
    evaluate_run,
    load_run,
    train,
)

RUN_FILES = {
    "config.json",
    "monteclora_config.json",
    "adapter_meta.json",
    "adapter_model.safetensors",
    "metrics.json",
    "history.jsonl",
    "predictions.npz",
    "checkpoint.pt",
    "timing.json",
}


def _config(toy_assets, out, **overrides) -> TrainConfig:
    return toy_config(toy_assets, out, **{"epochs": 6, "batch_size": 16, **overrides})


def _history(run_dir, kind="train"):
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize("method", ["monteclora", "lora"])
def test_training_learns_writes_every_file_and_reloads(toy_assets, tmp_path, method):
    out = tmp_path / method
    metrics = train(_config(toy_assets, out, method=method), MonteCLoRAConfig(r=4), progress=False)
    expected = RUN_FILES | ({"guide_params.safetensors"} if method == "monteclora" else set())
    assert expected <= {p.name for p in out.iterdir()}
    steps = _history(out)
    assert len(steps) == 6 * 8 == metrics["steps"]
    nll = [s["nll"] for s in steps]
    assert np.mean(nll[-4:]) < np.mean(nll[:4]) - 0.1
    for term in ("kl_covariance", "kl_concentration", "kl_weights", "kl_noise", "cooperative"):
        assert all(np.isfinite(s[term]) for s in steps)
        if method == "lora":
            assert all(s[term] == 0 for s in steps)
    evals = _history(out, "eval")
    assert [e["epoch"] for e in evals] == list(range(6))
    for mode in ("posterior_mean", "posterior_predictive"):
        assert metrics[mode]["accuracy"] >= 0.75
        assert set(metrics[mode]) == {"accuracy", "nll", "ece", "ece_quantile", "brier"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    predictions = Predictions.load(out / "predictions.npz")
    samples = 4 if method == "monteclora" else 1
    assert predictions.draw_probs.shape == (samples, 64, 2)
    assert predictions.mean_probs.shape == (64, 2)
    np.testing.assert_allclose(predictions.draw_probs.sum(-1), 1.0, atol=1e-6)
    if method == "monteclora":
        assert not np.allclose(predictions.draw_probs[0], predictions.draw_probs[1])

    method_, _, cfg = load_run(out)
    model, guide = method_.model, method_.guide
    assert cfg == _config(toy_assets, out, method=method)
    assert type(guide) is (MonteCLoRAGuide if method == "monteclora" else LoRAGuide)
    assert model.num_data == 128 and model.config.r == 4
    again = evaluate_run(out, progress=False)
    for mode in ("posterior_mean", "posterior_predictive"):
        for key, value in metrics[mode].items():
            assert again[mode][key] == pytest.approx(value, abs=1e-6), (mode, key)
    reloaded = Predictions.load(out / "evaluations" / "sst2-validation" / "predictions.npz")
    np.testing.assert_allclose(reloaded.mean_probs, predictions.mean_probs, atol=1e-6)
    np.testing.assert_allclose(reloaded.draw_probs, predictions.draw_probs, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_killed_and_resumed_run_equals_uninterrupted(toy_assets, tmp_path, threads):
    """Bit-identical on one machine and thread count, whichever that is."""
    torch.set_num_threads(threads)  # the fixture restores it
    overrides = {"epochs": 3, "checkpoint_every": 3}
    reference = train(
        _config(toy_assets, tmp_path / "ref", **overrides), MonteCLoRAConfig(r=4), progress=False
    )

    out = tmp_path / "resumed"
    with dies_at_step(8):
        train(_config(toy_assets, out, **overrides), MonteCLoRAConfig(r=4), progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6  # the last checkpoint before step 8 (steps 3 and 6)
    assert len(_history(out)) == 7
    resumed = train(
        _config(toy_assets, out, **overrides), MonteCLoRAConfig(r=4), resume=True, progress=False
    )
    assert resumed == reference
    assert _history(out) == _history(tmp_path / "ref")
    # The convergence window survives the interruption (its start is in the checkpoint).
    assert _history(out, "convergence") == _history(tmp_path / "ref", "convergence")
    first = Predictions.load(tmp_path / "ref" / "predictions.npz")
    second = Predictions.load(out / "predictions.npz")
    np.testing.assert_array_equal(first.draw_probs, second.draw_probs)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(toy_assets, tmp_path, monkeypatch):
    original = training.elbo_terms
    calls = {"n": 0}

    def nan_at_step_5(*args, **kwargs):
        calls["n"] += 1
        loss, terms = original(*args, **kwargs)
        if calls["n"] == 5:
            terms = {**terms, "nll": terms["nll"] * float("nan")}
            return sum(terms.values()), terms
        return loss, terms

    monkeypatch.setattr(training, "elbo_terms", nan_at_step_5)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match="non-finite loss or gradient at step 5") as err:
        train(
            _config(toy_assets, out, checkpoint_every=2, epochs=3),
            MonteCLoRAConfig(r=4),
            progress=False,
        )
    assert str(out / "checkpoint.pt") in str(err.value)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4


def test_real_nan_from_the_elbo_is_reported(toy_assets, tmp_path, monkeypatch):
    original = training.elbo_terms

    def poisoned(model, guide, *args, **kwargs):
        with torch.no_grad():
            next(iter(model.adapters.values())).lora_A.fill_(float("nan"))
        return original(model, guide, *args, **kwargs)

    monkeypatch.setattr(training, "elbo_terms", poisoned)
    with pytest.raises(TrainingError, match="step 1.*no checkpoint was written yet"):
        train(_config(toy_assets, tmp_path / "poisoned"), MonteCLoRAConfig(r=4), progress=False)


def test_corrupt_and_mismatched_checkpoints_are_refused_untouched(toy_assets, tmp_path):
    out = tmp_path / "run"
    train(_config(toy_assets, out, epochs=1), MonteCLoRAConfig(r=4), progress=False)
    checkpoint = out / "checkpoint.pt"
    good = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="another configuration.*lr: 0.03 -> 0.02"):
        Trainer(
            _config(toy_assets, out, epochs=1, lr=2e-2), MonteCLoRAConfig(r=4), progress=False
        ).train(resume=True)
    with pytest.raises(ValueError, match="another configuration.*r: 4 -> 2"):
        Trainer(_config(toy_assets, out, epochs=1), MonteCLoRAConfig(r=2), progress=False).train(
            resume=True
        )
    assert checkpoint.read_bytes() == good
    checkpoint.write_bytes(good[: len(good) // 2])
    history = (out / "history.jsonl").read_bytes()
    with pytest.raises(ValueError, match="checkpoint .*checkpoint.pt is corrupt"):
        train(
            _config(toy_assets, out, epochs=1), MonteCLoRAConfig(r=4), resume=True, progress=False
        )
    assert checkpoint.read_bytes() == good[: len(good) // 2]
    assert (out / "history.jsonl").read_bytes() == history


def test_existing_run_directory_is_not_overwritten(toy_assets, tmp_path):
    out = tmp_path / "run"
    train(_config(toy_assets, out, epochs=1), MonteCLoRAConfig(r=4), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train(_config(toy_assets, out, epochs=1), MonteCLoRAConfig(r=4), progress=False)
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_evaluating_on_a_task_with_another_label_set_fails(toy_assets, tmp_path):
    out = tmp_path / "run"
    train(_config(toy_assets, out, epochs=1), MonteCLoRAConfig(r=4), progress=False)
    with pytest.raises(ValueError, match="task mnli has 3 labels.*trained on sst2 with 2"):
        evaluate_run(out, "mnli", progress=False)
    with pytest.raises(ValueError, match="no split 'test'"):
        evaluate_run(out, "sst2", "test", progress=False)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("method", "bayes", "'monteclora', 'lora'"),
        ("lr", 0.0, "> 0"),
        ("batch_size", 0, ">= 1"),
        ("optimizer", "sgd", "'adamw', 'clipped_adam'"),
        ("warmup_ratio", 1.0, "[0, 1)"),
        ("guide_delay_ratio", 1.0, "[0, 1)"),
        ("guide_delay_ratio", -0.1, "[0, 1)"),
        ("guide_lr_restart", True, "guide_delay_ratio, which is 0"),
        ("guide_lr_restart", 1, "True or False"),
        ("freeze_adapter_after_delay", True, "holds the adapter after guide_delay_ratio"),
        ("freeze_adapter_after_delay", "yes", "True or False"),
        ("device", "gpu0", "a torch device"),
        ("epochs", 0, "> 0"),
        ("epochs", float("inf"), "finite number > 0"),
        ("epochs", True, "a number"),
        ("epochs", "3", "a number"),
    ],
)
def test_invalid_train_config(field, value, fragment):
    with pytest.raises(
        ValueError,
        match=f"TrainConfig.{field}=.*{fragment}".replace("[", r"\[")
        .replace("(", r"\(")
        .replace(")", r"\)"),
    ):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown task 'glue-9'|glue-9"):
        TrainConfig(task="glue-9")


def test_a_fraction_of_an_epoch_is_the_run_of_as_many_steps_rounded_up(toy_assets, tmp_path):
    """1.3 epochs of 8 steps are 11 steps (10.4 rounded up): the same run, losses, schedule
    and predictions, as ``max_steps=11``; it evaluates at the first epoch's end and its last
    step."""
    assert TrainConfig(epochs=0.1).total_steps(30) == 3  # 0.1 x 30 is 3.0000000000000004
    assert TrainConfig(epochs=0.5, max_steps=7).total_steps(113) == 7
    settings = {"a": {"epochs": 1.3}, "b": {"max_steps": 11}}
    fraction, steps = (
        train(_config(toy_assets, tmp_path / d, **o), MonteCLoRAConfig(r=4), progress=False)
        for d, o in settings.items()
    )
    assert fraction["steps"] == steps["steps"] == 11
    keys = ("step", "epoch", "lr", "loss")
    assert [[r[k] for k in keys] for r in _history(tmp_path / "a")] == [
        [r[k] for k in keys] for r in _history(tmp_path / "b")
    ]
    assert [r["step"] for r in _history(tmp_path / "a", "eval")] == [8, 11]
    probs = [Predictions.load(tmp_path / d / "predictions.npz").draw_probs for d in settings]
    np.testing.assert_array_equal(*probs)


def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(toy_assets, tmp_path):
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"TrainConfig.device='cuda:7' is invalid: .* CUDA"):
        train(_config(toy_assets, out, epochs=1, device="cuda:7"), MonteCLoRAConfig(r=4))
    assert not out.exists()


def test_the_device_may_change_on_resume(toy_assets, tmp_path):
    """A checkpoint written on another device resumes here: the device is not compared."""
    out = tmp_path / "run"
    cfg = _config(toy_assets, out, max_steps=4, checkpoint_every=2)
    with dies_at_step(3):
        train(cfg, MonteCLoRAConfig(r=4), progress=False)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2
    checkpoint["train_config"]["device"] = "cuda"
    torch.save(checkpoint, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="another configuration"):  # a real difference still is
        train(dataclasses.replace(cfg, lr=cfg.lr * 2), MonteCLoRAConfig(r=4), resume=True)
    metrics = train(cfg, MonteCLoRAConfig(r=4), resume=True, progress=False)
    assert metrics["steps"] == 4
