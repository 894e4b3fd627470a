"""PEFT's LoRA and MonteCLoRA on our training loop: one step, the run files, reloading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.peft_interop import require_peft
from monteclora_pyro.runs import MODES, Predictions
from monteclora_pyro.training import TrainConfig, evaluate_run, train
from monteclora_pyro.training.peft import peft_config

pytest.importorskip("peft", reason="the PEFT baselines need the optional extra 'peft'")

COMMON_FILES = {"config.json", "metrics.json", "history.jsonl", "predictions.npz", "checkpoint.pt"}
OUR_METRICS_KEYS = {
    "task",
    "split",
    "method",
    "num_examples",
    "num_train_examples",
    "num_samples",
    "steps",
    "posterior_mean",
    "posterior_predictive",
}


def _train(toy_assets, out, method):
    model_dir, data_dir = toy_assets
    cfg = TrainConfig(
        model=str(model_dir),
        task="sst2",
        data_dir=str(data_dir),
        method=method,
        max_steps=1,
        batch_size=16,
        lr=1e-2,
        num_samples=3,
        output_dir=str(out),
    )
    return train(cfg, MonteCLoRAConfig(r=4, num_components=3), progress=False)


@pytest.mark.parametrize("method", ["peft-lora", "peft-monteclora"])
def test_peft_baseline_runs_one_step_and_writes_our_run_files(toy_assets, tmp_path, method):
    metrics = _train(toy_assets, tmp_path / method, method)
    out = tmp_path / method
    files = {p.name for p in out.iterdir()}
    assert COMMON_FILES <= files  # our methods write these too (tests/test_training.py)
    assert (out / "peft_adapter" / "adapter_config.json").is_file()
    assert "adapter_model.safetensors" not in files  # PEFT's own adapter is in peft_adapter/

    assert set(metrics) == OUR_METRICS_KEYS
    assert metrics["method"] == method and metrics["steps"] == 1 and metrics["num_samples"] == 1
    for mode in MODES:
        assert set(metrics[mode]) == {"accuracy", "nll", "ece", "ece_quantile", "brier"}
    assert metrics["posterior_mean"] == metrics["posterior_predictive"]

    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    step, evaluation, convergence = history
    assert step["kind"] == "train" and evaluation["kind"] == "eval"
    # PEFT's noise has no guide: no variational parameter to watch.
    assert convergence["kind"] == "convergence" and convergence["window"] == 1
    assert convergence["param_change"] == {} and convergence["max_param_change"] == 0.0
    assert step["loss"] == pytest.approx(step["nll"] + step["regularisation"], rel=1e-6)
    assert 0.3 < step["nll"] < 1.2  # cross-entropy of 2 classes near chance
    if method == "peft-lora":
        assert step["regularisation"] == 0.0
    else:
        assert step["regularisation"] > 0.0

    config = json.loads((out / "config.json").read_text())
    assert config["train"]["method"] == method
    assert config["peft"]["r"] == 4 and config["peft"]["target_modules"] == ["query", "value"]
    monte = config["peft"]["monteclora_config"]
    if method == "peft-lora":
        assert monte is None
    else:
        assert monte["num_samples"] == 3 and monte["use_entropy"] is True
        assert monte["sample_scaler"] == 1e-4 and monte["kl_loss_weight"] == 1e-5

    predictions = Predictions.load(out / "predictions.npz")
    assert predictions.draw_probs.shape == (1, 64, 2)
    np.testing.assert_array_equal(predictions.draw_probs[0], predictions.mean_probs)
    again = evaluate_run(out, progress=False)
    for key, value in metrics["posterior_mean"].items():
        assert again["posterior_mean"][key] == pytest.approx(value, abs=1e-6), key


def test_peft_config_shares_our_rank_scaling_and_targets():
    from conftest import tiny_hf_model

    peft = require_peft()
    cfg = MonteCLoRAConfig(
        r=2, lora_alpha=4, num_components=5, cooperative_weight=0.0, kl_loss_weight=None
    )
    lora_cfg = peft_config("peft-monteclora", tiny_hf_model(), cfg)
    assert (lora_cfg.r, lora_cfg.lora_alpha) == (2, 4)
    assert set(lora_cfg.target_modules) == {"query", "value"}
    monte = lora_cfg.monteclora_config
    assert monte.num_samples == 5 and monte.use_entropy is False
    assert monte.kl_loss_weight == peft.MontecloraConfig().kl_loss_weight
    assert peft_config("peft-lora", tiny_hf_model(), cfg).monteclora_config is None
    with pytest.raises(ValueError, match="not a PEFT baseline"):
        peft_config("lora", tiny_hf_model(), cfg)


def test_analyze_refuses_a_peft_run_with_a_clear_error(tmp_path, caplog):
    from monteclora_pyro.cli import main
    from monteclora_pyro.training import save_run_config

    run = tmp_path / "peft-run"
    run.mkdir()
    save_run_config(
        run,
        TrainConfig(task="sst2", method="peft-lora"),
        MonteCLoRAConfig(),
        peft={"peft_type": "LORA"},  # as a PEFT run writes it
    )
    assert main(["--quiet", "analyze", str(run)]) == 2
    assert "PEFT's adapters have no posterior" in caplog.text
