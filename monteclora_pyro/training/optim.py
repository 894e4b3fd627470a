"""The training loop's optimiser and its step schedules: the learning rate and the weight of
the KL terms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.optim.clipped_adam import ClippedAdam

from monteclora_pyro.training.config import TrainConfig


def make_optimizer(
    params: list[torch.nn.Parameter], variational: set[int], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW or ClippedAdam over ``params``; those whose ``id`` is in ``variational`` (the
    guide's) in a second group at ``guide_lr``."""
    groups = [{"params": [p for p in params if id(p) not in variational]}]
    if variational:
        guide_params = [p for p in params if id(p) in variational]
        groups.append({"params": guide_params, "lr": cfg.guide_lr or cfg.lr})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return ClippedAdam(
        groups, lr=cfg.lr, weight_decay=cfg.weight_decay, clip_norm=cfg.max_grad_norm
    )


def linear_lr(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup`` steps, then
    linear decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass(frozen=True)
class Phases:
    """The fields of :class:`TrainConfig` the schedules below read, for a trainer without one
    (:class:`monteclora_pyro.hf_trainer.MonteCLoRATrainer`)."""

    warmup_ratio: float = 0.0
    guide_lr_restart: bool = False
    freeze_adapter_after_delay: bool = False


def phase_schedules(cfg: TrainConfig | Phases, total: int, delay: int) -> tuple[Callable, Callable]:
    """Learning-rate multipliers of the adapter and of the guide: :func:`linear_lr` over all
    ``total`` steps, except the adapter's under ``freeze_adapter_after_delay``, which runs over
    the first ``delay`` steps, and the guide's under ``guide_lr_restart``, which runs over the
    steps after them."""
    warmup = int(cfg.warmup_ratio * total)
    adapter = guide = lambda s: linear_lr(s, warmup, total)
    if cfg.freeze_adapter_after_delay:
        adapter_warmup = int(cfg.warmup_ratio * delay)
        adapter = lambda s: linear_lr(s, adapter_warmup, delay)  # noqa: E731
    if cfg.guide_lr_restart:
        guide_steps = total - delay
        guide_warmup = int(cfg.warmup_ratio * guide_steps)
        guide = lambda s: linear_lr(max(0, s - delay), guide_warmup, guide_steps)  # noqa: E731
    return adapter, guide


def lr_schedules(cfg: TrainConfig, total: int, delay: int, groups: int) -> list[Callable]:
    """Learning-rate multipliers of :func:`make_optimizer`'s ``groups`` parameter groups (the
    adapter's, then the guide's if there is one): :func:`phase_schedules`."""
    return list(phase_schedules(cfg, total, delay))[:groups]


def kl_factor(step: int, delay: int, warmup: int) -> float:
    """Weight of the KL terms at ``step`` (0-based): 0 for the first ``delay`` steps, then
    growing linearly to 1 over ``warmup`` steps (at once when ``warmup`` is 0)."""
    if step < delay:
        return 0.0
    if warmup == 0:
        return 1.0
    return min(1.0, (step - delay + 1) / warmup)


def held_parameters(
    cfg: TrainConfig | Phases,
    step: int,
    delay: int,
    params: list[torch.nn.Parameter],
    variational: set[int],
) -> list[torch.nn.Parameter]:
    """The parameters the optimiser skips at ``step``, moments and all: the guide's (those whose
    ``id`` is in ``variational``) before ``delay``, the others after it under
    ``freeze_adapter_after_delay``."""
    if step < delay:
        return [p for p in params if id(p) in variational]
    if cfg.freeze_adapter_after_delay:
        return [p for p in params if id(p) not in variational]
    return []
