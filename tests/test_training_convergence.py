"""Convergence figures, the guide's learning rate, KL warm-up, the guide's delay and the
Bayesian objective's runs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import toy_config

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.training import TrainConfig, Trainer, train
from monteclora_pyro.training.convergence import (
    Window,
    convergence_record,
    elbo_figures,
    relative_changes,
    snr_threshold,
)
from monteclora_pyro.training.optim import held_parameters, kl_factor, linear_lr, lr_schedules


def _config(toy_assets, out, **overrides) -> TrainConfig:
    return toy_config(toy_assets, out, **{"num_samples": 3, **overrides})


def _records(run_dir, kind):
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_elbo_figures_of_a_line_and_of_noise():
    steps = np.arange(40)
    line = elbo_figures(list(10.0 - 0.1 * steps))
    mean = float((10.0 - 0.1 * steps).mean())
    assert line["elbo_slope"] == pytest.approx(-0.1 / mean)
    # Half means 9.0 and 7.0 (each half's mean of a line): change -2 / mean.
    assert line["elbo_change"] == pytest.approx(-2.0 / mean)
    assert not line["elbo_steady"]
    noise = np.random.default_rng(0).normal(5.0, 1.0, size=400)
    flat = elbo_figures(list(noise))
    assert flat["elbo_steady"] and abs(flat["elbo_slope"]) < 1e-3
    assert math.isnan(elbo_figures([1.0])["elbo_slope"])


def test_snr_threshold_is_the_noise_quantile():
    # χ²_d 0.999 quantiles (tables): d = 1: 10.828, d = 4: 18.467, d = 64: 104.716.
    for d, quantile in ((1, 10.828), (4, 18.467), (64, 104.716)):
        assert snr_threshold(d) == pytest.approx(math.sqrt(quantile / d), rel=0.02)


def test_relative_changes_gradient_snr_and_the_converged_flag():
    start = {"a": torch.tensor([3.0, 4.0]), "b": torch.zeros(2)}
    end = {"a": torch.tensor([3.0, 4.5]), "b": torch.tensor([0.0, 1e-9])}
    changes = relative_changes(start, end)
    assert changes["a"] == pytest.approx(0.5 / 5.0)
    assert changes["b"] == pytest.approx(1e-9 / 1e-8)  # the floor of the norm

    def window_with(grads_a, grads_b):
        params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
        window = Window(params, step=0)
        for ga, gb in zip(grads_a, grads_b, strict=True):
            params["a"].grad, params["b"].grad = ga, gb
            window.add_gradients(params)
        return window

    rng = torch.Generator().manual_seed(0)
    n = 400
    noise = [torch.randn(2, generator=rng) for _ in range(2 * n)]
    # Pure noise: snr² ~ χ²_2 / 2 (mean 1); a constant push of 1 in noise of sd 1 over n steps
    # has snr ≈ √n.
    window = window_with(noise[:n], noise[n:])
    snr = window.grad_snr()
    assert snr["a"] < snr_threshold(2) and snr["b"] < snr_threshold(2)
    record = convergence_record(n, 0, window, [1.0] * n, end)
    assert record["converged"] and record["window"] == n
    assert record["max_param_change"] == pytest.approx(0.1)
    pushed = window_with([g + 1.0 for g in noise[:n]], noise[n:])
    assert pushed.grad_snr()["a"] == pytest.approx(math.sqrt(n), rel=0.15)
    assert not convergence_record(n, 0, pushed, [1.0] * n, end)["converged"]
    # A window restored from a checkpoint continues where it stopped.
    again = Window.from_state(pushed.state())
    assert again.grad_snr() == pushed.grad_snr() and again.count == n
    # A guide held through the window (no gradients) is not converged, however flat the loss;
    # one held for the window's first half is judged on its second.
    none = [None] * n
    held = window_with(none, none)
    assert all(math.isnan(v) for v in held.grad_snr().values())
    record = convergence_record(n, 0, held, [1.0] * n, end)
    assert not record["converged"] and math.isnan(record["max_grad_excess"])
    half = window_with(none + noise[:n], none + noise[n:])
    assert half.count == 2 * n and half.grad_snr() == pytest.approx(window.grad_snr())
    assert convergence_record(2 * n, 0, half, [1.0] * 2 * n, end)["converged"]


def test_every_evaluation_writes_a_convergence_record_of_the_guide(toy_assets, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_config(toy_assets, out, guide_lr=0.1), MonteCLoRAConfig(r=4))
    groups = trainer.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [3e-2, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in trainer.variational.values()}
    trainer.train()
    records = _records(out, "convergence")
    per_epoch = trainer.steps_per_epoch
    assert [(r["step"], r["window"]) for r in records] == [
        (per_epoch, per_epoch),
        (2 * per_epoch, per_epoch),
    ]
    assert set(records[0]["param_change"]) == set(trainer.variational)
    # The first window starts at the initial parameters.
    first = records[0]["param_change"]
    name = next(iter(first))
    assert first[name] > 0
    assert records[0]["max_param_change"] == max(first.values())
    losses = [r["loss"] for r in _records(out, "train")][:per_epoch]
    assert records[0]["elbo_slope"] == pytest.approx(
        np.polyfit(np.arange(per_epoch), losses, 1)[0] / abs(np.mean(losses))
    )


def test_kl_warm_up_scales_the_first_steps_kl(toy_assets, tmp_path):
    kwargs = {"max_steps": 1, "epochs": 1}
    plain = train(_config(toy_assets, tmp_path / "plain", **kwargs), MonteCLoRAConfig(r=4))
    assert plain["steps"] == 1
    warm = _config(toy_assets, tmp_path / "warm", kl_warmup_steps=4, **kwargs)
    train(warm, MonteCLoRAConfig(r=4), progress=False)
    (a,), (b,) = _records(tmp_path / "plain", "train"), _records(tmp_path / "warm", "train")
    for term in ("kl_covariance", "kl_concentration", "kl_weights", "kl_noise"):
        assert b[term] == pytest.approx(a[term] / 4, rel=1e-5), term
    assert b["nll"] == pytest.approx(a["nll"], rel=1e-6)


def test_kl_factor_is_off_through_the_delay_then_warms_up_from_its_end():
    assert [kl_factor(s, 0, 0) for s in range(3)] == [1.0, 1.0, 1.0]
    assert [kl_factor(s, 0, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [kl_factor(s, 2, 0) for s in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert [kl_factor(s, 2, 2) for s in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    # The learning rate: warm-up to the peak over 2 of 6 steps, then linear decay to 0.
    assert [linear_lr(s, 2, 6) for s in range(7)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0]
    )


def test_guide_delay_holds_the_guide_and_switches_the_kl_off(toy_assets, tmp_path):
    out = tmp_path / "delay"
    config = _config(toy_assets, out, max_steps=4, epochs=1, guide_delay_ratio=0.5)
    trainer = Trainer(config, MonteCLoRAConfig.bayes(r=4), progress=False)
    assert trainer.guide_delay == 2
    trainer.train()
    kl = [sum(v for k, v in r.items() if k.startswith("kl_")) for r in _records(out, "train")]
    assert kl[:2] == [0.0, 0.0] and all(abs(v) > 0 for v in kl[2:]), kl
    # The optimiser skipped the guide, moments and all, on the two delayed steps only.
    guide = {id(p) for p in trainer.variational.values()}
    state = trainer.optimizer.state
    assert {int(state[p]["step"]) for p in trainer.params if id(p) in guide} == {2}
    assert {int(state[p]["step"]) for p in trainer.params if id(p) not in guide} == {4}
    lora = _config(toy_assets, tmp_path / "lora", method="lora", guide_delay_ratio=0.5)
    with pytest.raises(ValueError, match="guide_delay_ratio=0.5 .* method 'lora' has none"):
        Trainer(lora, MonteCLoRAConfig(r=4), progress=False)


def test_guide_lr_restart_runs_the_guides_schedule_over_the_steps_after_the_delay():
    adapter = [linear_lr(s, 2, 8) for s in range(8)]
    shared = TrainConfig(warmup_ratio=0.25, guide_delay_ratio=0.5)
    for schedule in lr_schedules(shared, 8, 4, 2):
        assert [schedule(s) for s in range(8)] == adapter
    restart = dataclasses.replace(shared, guide_lr_restart=True)
    first, guide = lr_schedules(restart, 8, 4, 2)
    assert [first(s) for s in range(8)] == adapter
    # Over the last 4 steps: warm-up over int(0.25 * 4) = 1 step, then decay to 0 at step 8.
    assert [guide(s) for s in range(4, 8)] == pytest.approx([0.5, 1.0, 2 / 3, 1 / 3])
    assert len(lr_schedules(restart, 8, 4, 1)) == 1  # no guide: the adapter schedule only


def test_guide_lr_restart_gives_the_guide_its_peak_rate_after_the_delay(toy_assets, tmp_path):
    kwargs = {"max_steps": 4, "epochs": 1, "warmup_ratio": 0.0, "guide_delay_ratio": 0.5}
    config = _config(toy_assets, tmp_path / "r", guide_lr_restart=True, **kwargs)
    trainer = Trainer(config, MonteCLoRAConfig.bayes(r=4), progress=False)
    guide_lr = trainer.optimizer.param_groups[1]["initial_lr"]
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups])
        trainer.optimizer.step()  # no gradients: a no-op that keeps the scheduler's order
        trainer.scheduler.step()
    # The adapter decays from step 0; the guide's first step after the delay is at its peak.
    assert [g for _, g in lrs[2:]] == pytest.approx([guide_lr, guide_lr / 2])
    assert [a for a, _ in lrs] == pytest.approx([config.lr * f for f in (1, 0.75, 0.5, 0.25)])


def test_freeze_adapter_after_delay_runs_the_adapters_schedule_over_the_delay_then_holds_it():
    cfg = TrainConfig(warmup_ratio=0.25, guide_delay_ratio=0.5, freeze_adapter_after_delay=True)
    adapter, guide = lr_schedules(cfg, 8, 4, 2)
    # Over the first 4 steps: warm-up over int(0.25 * 4) = 1 step, then decay to 0 at step 4.
    assert [adapter(s) for s in range(8)] == pytest.approx([0.5, 1, 2 / 3, 1 / 3, 0, 0, 0, 0])
    assert [guide(s) for s in range(8)] == [linear_lr(s, 2, 8) for s in range(8)]
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    variational = {id(params[2])}
    assert held_parameters(cfg, 3, 4, params, variational) == params[2:]
    assert held_parameters(cfg, 4, 4, params, variational) == params[:2]
    shared = dataclasses.replace(cfg, freeze_adapter_after_delay=False)
    assert held_parameters(shared, 4, 4, params, variational) == []


def test_freeze_adapter_after_delay_trains_only_the_guide_after_the_delay(toy_assets, tmp_path):
    kwargs = {"max_steps": 4, "epochs": 1, "guide_delay_ratio": 0.5, "guide_lr_restart": True}
    out = tmp_path / "frozen"
    config = _config(toy_assets, out, freeze_adapter_after_delay=True, **kwargs)
    trainer = Trainer(config, MonteCLoRAConfig.bayes(r=4), progress=False)
    guide = trainer.variational_ids
    adapter = [p for p in trainer.params if id(p) not in guide]
    after_step = []
    trainer.optimizer.register_step_post_hook(
        lambda *_: after_step.append([p.detach().clone() for p in adapter])
    )
    trainer.train()
    # The adapter took the two delayed steps only, the guide the two after them.
    state = trainer.optimizer.state
    assert {int(state[p]["step"]) for p in trainer.params if id(p) in guide} == {2}
    assert {int(state[p]["step"]) for p in adapter} == {2}
    moved = [not torch.equal(a, b) for a, b in zip(after_step[0], after_step[1], strict=True)]
    assert len(after_step) == 4 and any(moved)
    for later in after_step[2:]:
        assert all(torch.equal(a, b) for a, b in zip(after_step[1], later, strict=True))


def test_the_first_of_two_phases_trains_the_adapter_as_lora_does(toy_assets, tmp_path):
    """With dropout off, a negligible q(A) (μ + δ rounds to μ in float32) and the guide held,
    the first phase is LoRA step for step: the same seed, batches, schedule and clipping give
    the same adapter. With dropout on, the two differ only in their dropout masks, since the
    guide's draws take their turn in the random stream."""
    kwargs = {"epochs": 1, "warmup_ratio": 0.25, "max_grad_norm": 0.05}
    lora = Trainer(
        _config(toy_assets, tmp_path / "lora", method="lora", max_steps=4, **kwargs),
        MonteCLoRAConfig(r=4),
        progress=False,
    )
    phases = _config(
        toy_assets,
        tmp_path / "two-phase",
        max_steps=8,
        guide_delay_ratio=0.5,
        guide_lr_restart=True,
        freeze_adapter_after_delay=True,
        **kwargs,
    )
    two_phase = Trainer(phases, MonteCLoRAConfig.bayes(r=4, sample_scaler=1e-12), progress=False)
    after_step = []
    adapter = [p for p in two_phase.params if id(p) not in two_phase.variational_ids]
    two_phase.optimizer.register_step_post_hook(
        lambda *_: after_step.append([p.detach().clone() for p in adapter])
    )
    initial = [p.detach().clone() for p in adapter]
    for trainer in (lora, two_phase):
        for module in trainer.method.network.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trainer.train()
    nll = [[r["nll"] for r in _records(t.run_dir, "train")] for t in (lora, two_phase)]
    assert nll[0] == nll[1][:4]
    assert len(lora.params) == len(adapter)
    for mine, theirs in zip(after_step[3], lora.params, strict=True):
        assert torch.equal(mine, theirs.detach())
    assert sum(not torch.equal(a, b) for a, b in zip(initial, after_step[3], strict=True)) > 1


def test_the_bayesian_objective_trains_end_to_end_and_lora_refuses_it(toy_assets, tmp_path):
    out = tmp_path / "bayes"
    metrics = train(
        _config(toy_assets, out, guide_lr=0.05), MonteCLoRAConfig.bayes(r=4), progress=False
    )
    step = _records(out, "train")[0]
    assert {"kl_precision", "kl_covariance", "kl_A", "nll"} <= set(step)
    assert "kl_noise" not in step and "cooperative" not in step
    samples = np.load(out / "posterior_samples.npz")
    assert any(name.endswith(".precision") for name in samples.files)
    assert not any(name.endswith(".A") for name in samples.files)  # too large to keep
    assert metrics["num_samples"] == 3
    with pytest.raises(ValueError, match="runs objective 'paper'"):
        Trainer(_config(toy_assets, tmp_path / "lora", method="lora"), MonteCLoRAConfig.bayes())
    with pytest.raises(ValueError, match="cooperative_weight"):
        MonteCLoRAConfig(objective="bayes")
