"""The demo's library function and its command, with training and evaluation faked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from monteclora_pyro import MonteCLoRAConfig, runs
from monteclora_pyro.cli import main
from monteclora_pyro.data import DEFAULT_TASK, SHIFT_DOMAINS
from monteclora_pyro.experiments import demo
from monteclora_pyro.training import TrainConfig, preset_training

# Two examples; MonteCLoRA's two draws disagree on the first, so its MI there is
# H(0.5, 0.5) - H(0.9, 0.1) = log 2 + 0.9 log 0.9 + 0.1 log 0.1, and 0 on the second.
_DISAGREE = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])
DRAWS = {
    "monteclora": runs.Predictions(np.array([0, 1]), _DISAGREE.mean(0), _DISAGREE),
    "lora": runs.Predictions(np.array([0, 1]), _DISAGREE[0], _DISAGREE[:1]),
}
EXPECTED_MI = (math.log(2) + 0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / 2
PRESET_KEYS = (*preset_training("uncertainty"), "from_run")  # the TrainConfig fields it sets


def _metrics(accuracy: float) -> dict:
    report = {"accuracy": accuracy, "nll": 0.5, "ece": 0.1, "brier": 0.2}
    return {mode: report for mode in runs.MODES}


@pytest.fixture
def calls(monkeypatch):
    calls = []

    def train(cfg, model_cfg, resume, progress):
        calls.append(("train", cfg.method, cfg.task, resume))
        calls.append(("config", cfg.method, model_cfg))
        calls.append(("settings", cfg.method, {k: getattr(cfg, k) for k in PRESET_KEYS}))
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        runs.write_predictions(cfg.output_dir, DRAWS[cfg.method])
        return _metrics(0.9 if cfg.method == "monteclora" else 0.8)

    def evaluate_run(run_dir, task, split, num_samples, max_examples, progress):
        calls.append(("evaluate", run_dir.name, task, split))
        return _metrics(0.7)

    monkeypatch.setattr(demo, "train", train)
    monkeypatch.setattr(demo, "evaluate_run", evaluate_run)
    return calls


def test_run_demo_trains_both_methods_and_evaluates_every_shifted_domain(calls, tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / runs.CHECKPOINT_FILE).write_bytes(b"")
    result = demo.run_demo(tmp_path, progress=False)
    assert list(result.metrics) == list(demo.DEMO_METHODS)
    assert result.run_dirs == {m: tmp_path / m for m in demo.DEMO_METHODS}
    assert all(list(d) == list(SHIFT_DOMAINS) for d in result.shifted.values())
    assert calls[0] == ("train", "lora", DEFAULT_TASK, True)  # resumes from its checkpoint
    assert ("train", "monteclora", DEFAULT_TASK, False) in calls
    assert ("evaluate", "lora", SHIFT_DOMAINS[0], "test") in calls
    assert result.seconds >= 0
    configs = {c[1]: c[2] for c in calls if c[0] == "config"}
    assert configs["monteclora"] == MonteCLoRAConfig.uncertainty()  # the default for uncertainty
    assert configs["lora"] == MonteCLoRAConfig()
    settings = {c[1]: c[2] for c in calls if c[0] == "settings"}  # the preset's training
    # MonteCLoRA's guide trains around the demo's LoRA run, for the preset's epochs
    around_lora = {"from_run": str(tmp_path / "lora")}
    assert settings["monteclora"] == preset_training("uncertainty") | around_lora
    plain = TrainConfig()
    assert settings["lora"] == {k: getattr(plain, k) for k in PRESET_KEYS} | {"epochs": 3}
    assert result.epochs == {"lora": 3, "monteclora": preset_training("uncertainty")["epochs"]}
    assert result.mutual_information["monteclora"] == pytest.approx(EXPECTED_MI, rel=1e-12)
    assert result.mutual_information["lora"] == 0.0


def test_demo_command_prints_both_tables(calls, tmp_path, capsys):
    assert main(["--quiet", "demo", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "posterior_predictive" in printed and "0.9000" in printed
    assert f"epochs: lora 3, monteclora {preset_training('uncertainty')['epochs']}" in printed
    assert "mutual_information" in printed and f"{EXPECTED_MI:.4f}" in printed
    assert "0.7000 / 0.7000" in printed and all(d in printed for d in SHIFT_DOMAINS)
    assert f"monteclora: {tmp_path / 'monteclora'}" in printed
