"""Post-hoc MonteCLoRA around one of our finished LoRA runs (``train --from-run``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import dies_at_step
from safetensors.torch import load_file

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, runs
from monteclora_pyro.cli import main
from monteclora_pyro.training import TrainConfig, load_run, preset_training, save_run_config
from monteclora_pyro.training.from_run import ADAPTER_FIELDS, source_run

LORA = ["--method", "lora", "--r", "4", "--max-steps", "4"]
GUIDE = ["--method", "monteclora", "--objective", "bayes", "--max-steps", "3"]


@pytest.fixture
def lora_run(toy_assets, tmp_path):
    """(common options, a finished LoRA run with a carved validation split)."""
    model_dir, data_dir = toy_assets
    common = ["--quiet", "train", "--model", str(model_dir), "--task", "sst2"]
    common += ["--data-dir", str(data_dir), "--batch-size", "16", "--lr", "0.01"]
    common += ["--num-samples", "4", "--max-eval-examples", "32", "--validation-fraction", "0.25"]
    run = tmp_path / "lora"
    assert main([*common, *LORA, "--seed", "3", "--output-dir", str(run)]) == 0
    return common, run


def test_the_guide_trains_around_the_lora_run_whose_adapter_stays_as_it_was(lora_run, tmp_path):
    common, run = lora_run
    out = tmp_path / "guide"
    command = [*common, *GUIDE, "--seed", "3", "--from-run", str(run), "--output-dir", str(out)]
    assert main(command) == 0

    config = json.loads((out / "config.json").read_text())
    source = json.loads((run / "config.json").read_text())
    assert config["train"]["from_run"] == str(run)
    for field in ("r", "lora_alpha", "target_modules", "modules_to_save"):
        assert config["monteclora"][field] == source["monteclora"][field], field
    assert config["monteclora"]["r"] == 4 and config["monteclora"]["objective"] == "bayes"
    before = load_file(str(run / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert (out / runs.VALIDATION_SPLIT_FILE).read_bytes() == (
        run / runs.VALIDATION_SPLIT_FILE
    ).read_bytes()

    method = load_run(out)[0]
    initial = MonteCLoRAGuide(method.model).state_dict()
    assert all(not torch.equal(v, initial[k]) for k, v in method.guide.state_dict().items())
    # Same weights, data and code: the plug-in prediction is the LoRA run's, to the bit; the
    # draws' average is another prediction.
    for directory in ("", runs.evaluation_dir("", "sst2", runs.VALIDATION_SPLIT)):
        lora, guided = (runs.read_predictions(r / directory) for r in (run, out))
        np.testing.assert_array_equal(guided.mean_probs, lora.mean_probs)
        assert guided.num_draws == 4 and lora.num_draws == 1
        assert not np.array_equal(guided.predictive_probs, lora.predictive_probs)


def test_a_source_run_that_does_not_fit_is_refused_and_nothing_is_written(
    lora_run, tmp_path, caplog
):
    common, run = lora_run
    out = tmp_path / "guide"
    start = [*common, *GUIDE, "--from-run", str(run), "--output-dir", str(out)]
    cases = [
        (["--seed", "4"], "another validation split than"),
        (["--seed", "3", "--r", "2"], "r=2 (the run has 4)"),
        (["--seed", "3", "--target-modules", "query"], "target_modules adapting"),
        (["--seed", "3", "--validation-fraction", "0.1"], "pass its seed (3)"),
    ]
    for extra, message in cases:
        caplog.clear()
        assert main([*start, *extra]) == 2, extra
        assert message in caplog.text, (extra, caplog.text)
        assert not out.exists()
    caplog.clear()
    lora = [*common, "--method", "lora", "--from-run", str(run), "--output-dir", str(out)]
    assert main(lora) == 2 and "from_run (post-hoc training) needs" in caplog.text
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    caplog.clear()
    assert main([*common, *GUIDE, "--from-run", str(unfinished), "--output-dir", str(out)]) == 2
    assert "not a run directory" in caplog.text
    (run / "adapter_model.safetensors").unlink()
    caplog.clear()
    assert main([*start, "--seed", "3"]) == 2 and "is the run finished?" in caplog.text
    assert not out.exists()


def test_from_run_is_refused_with_from_peft_and_for_a_peft_run(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(from_run=str(tmp_path), from_peft=str(tmp_path))
    with pytest.raises(ValueError, match="needs it to be one of"):
        TrainConfig(method="lora", from_run=str(tmp_path))
    peft_run = tmp_path / "peft"
    peft_run.mkdir()
    save_run_config(
        peft_run, TrainConfig(method="peft-lora"), MonteCLoRAConfig(), peft={"peft_type": "LORA"}
    )
    with pytest.raises(ValueError, match="peft_adapter"):
        source_run(peft_run)


def test_an_interrupted_guide_resumes_to_the_uninterrupted_runs_guide(lora_run, tmp_path):
    """Bit-identical on one machine and thread count: the source is read again on resume."""
    common, run = lora_run
    start = [*common, *GUIDE, "--seed", "3", "--from-run", str(run), "--checkpoint-every", "1"]
    reference, out = tmp_path / "reference", tmp_path / "resumed"
    assert main([*start, "--output-dir", str(reference)]) == 0
    with dies_at_step(3):
        main([*start, "--output-dir", str(out)])
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    assert main([*start, "--output-dir", str(out), "--resume"]) == 0
    guides = [load_file(str(d / "guide_params.safetensors")) for d in (reference, out)]
    assert guides[0].keys() == guides[1].keys()
    for name, value in guides[0].items():
        assert torch.equal(value, guides[1][name]), name


def test_the_uncertainty_preset_trains_its_guide_around_the_run(lora_run, tmp_path, caplog):
    common, run = lora_run
    out = tmp_path / "preset"
    preset = [*common, "--preset", "uncertainty", "--seed", "3", "--output-dir", str(out)]
    assert main(preset) == 2 and "trains the guide around a finished LoRA run" in caplog.text
    assert not out.exists()
    assert main([*preset, "--from-run", str(run)]) == 0
    config = json.loads((out / "config.json").read_text())
    source = json.loads((run / "config.json").read_text())["monteclora"]
    adapter = {f: source[f] for f in ADAPTER_FIELDS}
    assert config["monteclora"] == MonteCLoRAConfig.uncertainty(**adapter).to_dict()
    train = {k: config["train"][k] for k in (*preset_training("uncertainty"), "from_run")}
    assert train == preset_training("uncertainty") | {"from_run": str(run)}
    whole = tmp_path / "one-epoch"
    one_epoch = [*preset[:-1], str(whole), "--from-run", str(run), "--epochs", "1"]
    assert main(one_epoch) == 0
    half, one = (len(runs.read_history(d, "train")) for d in (out, whole))
    assert half == math.ceil(one / 2) and one > 1, (half, one)  # the preset's half epoch
