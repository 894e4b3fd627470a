"""Data-parallel training: the shard arithmetic, and 2 processes against 1 on the toy task.

Tolerances. The 2-process run computes the same numbers in another order (a shard's sums, then
the all-reduce), and another CPU or thread count changes the order of float32 reductions again.
Nothing else differs, so every difference is rounding. The largest differences from the
one-process run, measured on an Intel machine (1 thread) and on an AMD EPYC with AVX-512 (1 and
2 threads, fresh and resumed runs, V0 = I/ν0 and guide_lr = lr), were:

- logged loss and NLL 7.5e-7 relative, metrics 5.2e-7 relative, predicted probabilities 4.8e-7
  and μ, B and the head 6e-7 absolute: values computed on the data path, a few float32 units
  in the last place per step;
- variational parameters 1.0e-4 absolute, and the KL and cooperative terms (functions of them
  only) 1.2e-4 relative. Their gradients are tiny (median ~2e-6: the noise is scaled by
  ε = 1e-4, the KL by η = 1e-5) and partly differences of larger terms, so their relative
  rounding error is far above float32's; Adam's step does not depend on the gradient's scale,
  so that error goes into the step (up to lr = 0.03 per step);
- the convergence records' per-parameter figures (relative change, gradient signal-to-noise):
  1.6e-3 relative, as they are built from those gradients and moves.

Each tolerance is 20 times the largest measured value, rounded up (TOLERANCES), to cover CPUs
with other vector widths. All stay far below the error of a wrong shard weighting (the naive
mean of shard gradients is off by more than 1e-4) or of a latent draw that differs between
processes (it moves the variational parameters by ~lr per step).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyro
import pytest
import torch
from conftest import dies_at_step, tiny_hf_model, token_batch, write_tiny_backbone, write_toy_sst2
from safetensors.torch import load_file

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.training import TrainConfig, build_method, train
from monteclora_pyro.training.distributed import (
    from_environment,
    shard_batch,
    shard_bounds,
    shard_weight,
    step_seed,
    weight_shard_loss,
)

HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
def test_shards_partition_every_batch_in_order(num_shards):
    for size in range(10):
        bounds = [shard_bounds(size, num_shards, r) for r in range(num_shards)]
        rows = [i for start, stop in bounds for i in range(start, stop)]
        assert rows == list(range(size))
        lengths = [stop - start for start, stop in bounds]
        assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    with pytest.raises(ValueError, match="rank=2"):
        shard_bounds(4, 2, 2)


def test_shard_weights_turn_shard_means_into_the_batch_mean():
    values = torch.arange(1.0, 8.0) ** 2  # 7 per-example losses; shards of 3, 2, 2
    shards = [shard_batch({"x": values}, 3, r) for r in range(3)]
    means = [s["x"].mean() for s, _ in shards]
    weights = [w for _, w in shards]
    assert weights == pytest.approx([9 / 7, 6 / 7, 6 / 7])
    assert torch.stack(
        [w * m for w, m in zip(weights, means, strict=True)]
    ).mean() == pytest.approx(values.mean().item())
    # The plain mean of shard means is not the batch mean when shards are unequal.
    assert torch.stack(means).mean().item() != pytest.approx(values.mean().item(), rel=1e-3)
    # An empty shard computes on the first row, with weight 0.
    shard, weight = shard_batch({"x": values[:1], "n": 5}, 2, 1)
    assert weight == 0 and shard["x"].tolist() == [1.0] and shard["n"] == 5
    assert shard_weight(0, 1, 2) == 0
    assert step_seed(0, 1, 0) != step_seed(0, 1, 1) and step_seed(0, 1, 0) == step_seed(0, 1, 0)


def test_one_process_needs_nothing_and_several_need_accelerate(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment(seed=0) is None  # a plain run: accelerate is never imported
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"monteclora-pyro\[distributed\]"):
        from_environment(seed=0)


def _shard_objective(method, batch, num_shards, weighted=True):
    """Mean over shards of the shard objectives and of their gradients (what all-reduce does)."""
    losses, grads = [], []
    for rank in range(num_shards):
        shard, weight = shard_batch(batch, num_shards, rank)
        pyro.set_rng_seed(7)  # the same latent draw in every process
        loss, terms = method.loss(shard)
        loss, terms = weight_shard_loss(loss, terms, weight if weighted else 1.0)
        grads.append(torch.autograd.grad(loss, method.params))
        losses.append(loss.detach())
    mean_grads = [torch.stack(g).mean(0) for g in zip(*grads, strict=True)]
    return torch.stack(losses).mean(), mean_grads


@pytest.mark.parametrize("num_shards", [2, 3, 7])
def test_averaged_shard_gradients_equal_the_batch_gradient(num_shards):
    """The real objective (data plate scaled per shard by N/b): exact up to rounding."""
    method = build_method(
        "monteclora", tiny_hf_model(), MonteCLoRAConfig(r=4), num_data=50
    )  # eval mode: no dropout
    with torch.no_grad():
        for layer in method.model.adapters.values():
            layer.lora_B.normal_(0, 0.5)  # let gradients reach A and the guide
    batch = {
        "input_ids": token_batch(batch=5),
        "attention_mask": torch.ones(5, 7, dtype=torch.long),
        "labels": torch.tensor([0, 1, 1, 0, 1]),
    }
    pyro.set_rng_seed(7)
    full_loss, _ = method.loss(batch)
    full_grads = torch.autograd.grad(full_loss, method.params)
    loss, grads = _shard_objective(method, batch, num_shards)
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-6)
    for g, f in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, f, rtol=1e-5, atol=1e-7)
    # Without the weights the gradient is wrong for unequal shards (5 rows in 2, 3 or 7).
    _, naive = _shard_objective(method, batch, num_shards, weighted=False)
    worst = max((g - f).abs().max().item() for g, f in zip(naive, full_grads, strict=True))
    assert worst > 1e-4


# ---------------------------------------------------------------------------------------------
# Two processes against one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assets(root):
    """A dropout-free tiny BERT (dropout draws differ by design) and 37 toy examples.

    37 = 3 · 12 + 1: with batches of 12 the last batch of an epoch has one example, so one of
    two processes has an empty shard; the other shards are 6 and 6.
    """
    model_dir = write_tiny_backbone(root / "tiny-bert")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir, write_toy_sst2(root / "glue", n_train=37, n_dev=24)


TOLERANCES = {
    "data": 2e-5,
    "latent": 3e-3,
    "metrics": 2e-5,
    "predictions": 1e-5,
    "adapter": 2e-5,
    "guide": 2e-3,
    "convergence": 0.05,
}

OPTIONS = {
    "task": "sst2",
    "epochs": 2,
    "batch_size": 12,
    "lr": 3e-2,
    "num_samples": 3,
    "checkpoint_every": 3,
    "seed": 3,
    "guide_lr": 3e-2,  # = lr: the setting the tolerances were measured at
}


def _cli_args(model_dir, data_dir, out, resume=False) -> list[str]:
    args = ["train", "--model", str(model_dir), "--data-dir", str(data_dir)]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    return args + ["--r=4", "--output-dir", str(out)] + (["--resume"] if resume else [])


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


LATENT_TERMS = ("kl_covariance", "kl_concentration", "kl_weights", "kl_noise", "cooperative")


def _relative(a: float, b: float, floor: float) -> float:
    return abs(a - b) / max(abs(a), floor)


def _differences(ref, run) -> dict[str, float]:
    """The largest difference of each group of values between two run directories.

    Groups: ``data`` (logged loss and NLL, relative), ``latent`` (the logged KL and cooperative
    terms, relative), ``metrics`` (every evaluation, relative), ``predictions`` (absolute),
    ``adapter`` and ``guide`` (parameters, absolute). Structure (keys, steps, non-float values,
    the checkpoint's RNG state) must be identical.
    """
    groups = ("data", "latent", "metrics", "predictions", "adapter", "guide", "convergence")
    worst = dict.fromkeys(groups, 0.0)

    def note(group: str, value: float) -> None:
        worst[group] = max(worst[group], value)

    first, second = _history(ref), _history(run)
    assert [(r["kind"], r["step"]) for r in second] == [(r["kind"], r["step"]) for r in first]
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        if a["kind"] == "convergence":  # figures of the guide's gradients and moves
            assert (b["step"], b["window"], b["converged"]) == (
                a["step"],
                a["window"],
                a["converged"],
            )
            for key in ("param_change", "grad_snr"):
                assert b[key].keys() == a[key].keys()
                for name, number in a[key].items():
                    note("convergence", _relative(number, b[key][name], 1e-3))
            continue
        for key, value in a.items():
            if isinstance(value, float) and key != "lr":
                note("latent" if key in LATENT_TERMS else "data", _relative(value, b[key], 1e-7))
            elif isinstance(value, dict):  # one prediction mode of an evaluation
                assert b[key].keys() == value.keys()
                for name, number in value.items():
                    note("metrics", _relative(number, b[key][name], 1e-6))
            else:
                assert b[key] == value, (a["step"], key)
    for name, group in (
        ("adapter_model.safetensors", "adapter"),
        ("guide_params.safetensors", "guide"),
    ):
        a, b = load_file(ref / name), load_file(run / name)
        assert a.keys() == b.keys()
        for key in a:
            note(group, (b[key] - a[key]).abs().max().item())
    metrics = json.loads((ref / "metrics.json").read_text())
    again = json.loads((run / "metrics.json").read_text())
    assert again.keys() == metrics.keys()
    for mode in ("posterior_mean", "posterior_predictive"):
        assert again[mode].keys() == metrics[mode].keys()
        for key, value in metrics[mode].items():
            note("metrics", _relative(value, again[mode][key], 1e-6))
    with np.load(ref / "predictions.npz") as a, np.load(run / "predictions.npz") as b:
        assert a.files == b.files
        np.testing.assert_array_equal(b["labels"], a["labels"])
        for key in ("mean_probs", "draw_probs"):
            note("predictions", float(np.abs(b[key] - a[key]).max()))
    # The shared random stream advanced exactly as in the one-process run.
    rng = [torch.load(d / "checkpoint.pt", weights_only=True)["rng"] for d in (ref, run)]
    assert torch.equal(*rng)
    return worst


def _assert_same_run(ref, run) -> None:
    worst = _differences(ref, run)
    print(f"largest differences from the one-process run: {worst}")
    for group, value in worst.items():
        assert value <= TOLERANCES[group], (group, value, TOLERANCES[group])


@pytest.mark.skipif(not HAS_ACCELERATE, reason="needs the 'distributed' extra (accelerate)")
@pytest.mark.parametrize("threads", [1, 2])
def test_two_processes_equal_one_fresh_and_resumed(tmp_path, threads):
    """``accelerate launch`` with 2 gloo processes on the CPU.

    One launch runs the CLI twice: a fresh run, and the resumption (at step 3, mid-epoch) of a
    one-process run interrupted at step 4. Both must equal the uninterrupted one-process run.
    """
    torch.set_num_threads(threads)  # the fixture restores it
    model_dir, data_dir = _assets(tmp_path)
    config = TrainConfig(model=str(model_dir), data_dir=str(data_dir), **OPTIONS)
    ref = tmp_path / "one"
    train(
        TrainConfig(**{**vars(config), "output_dir": str(ref)}),
        MonteCLoRAConfig(r=4),
        progress=False,
    )

    resumed = tmp_path / "resumed"
    with dies_at_step(4):
        train(
            TrainConfig(**{**vars(config), "output_dir": str(resumed)}),
            MonteCLoRAConfig(r=4),
            progress=False,
        )
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 3

    two = tmp_path / "two"
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            f"""
            from monteclora_pyro.cli import main

            assert main({_cli_args(model_dir, data_dir, two)!r}) == 0
            assert main({_cli_args(model_dir, data_dir, resumed, resume=True)!r}) == 0
            """
        )
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config
    }
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs our Accelerator falls
    # back to the CPU and the gloo backend.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
        str(worker),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data-parallel training on 2 processes (cpu" in done.stderr
    assert done.stdout.count("run directory:") == 2  # rank 0 reports, rank 1 stays quiet
    print(f"2-process launch: {time.perf_counter() - start:.1f} s")

    _assert_same_run(ref, two)
    _assert_same_run(ref, resumed)
    steps = [r for r in _history(two) if r["kind"] == "train"]
    assert len(steps) == 8
    assert steps[0]["loss"] != pytest.approx(steps[-1]["loss"], rel=1e-2)  # it trained
