"""Convergence figures of a run: the slope of the objective and the change of the guide.

At every evaluation the loop writes one ``{"kind": "convergence", ...}`` record to
``history.jsonl`` for the window of steps since the previous one:

- ``elbo_slope``: the least-squares slope of the logged per-example loss over the window,
  divided by the absolute mean loss (relative change per step);
- ``elbo_change``: the relative change of the mean loss between the window's two halves;
- ``param_change``: for each variational parameter, ‖θ_end − θ_start‖ / max(‖θ_start‖, 1e-8)
  over the window (unconstrained values, named as in the param store), and its maximum;
- ``converged``: every parameter moved by less than :data:`PARAM_TOLERANCE` relative, and the
  mean loss changed by less than :data:`ELBO_TOLERANCE` relative or less than two standard
  errors of the difference of the half means (minibatch noise).

A statistic of the posterior is worth reading only when the last record says ``converged``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PARAM_TOLERANCE = 0.01
ELBO_TOLERANCE = 0.01


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of named parameters: the start of a window."""
    return {name: p.detach().cpu().clone() for name, p in params.items()}


def relative_changes(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]
) -> dict[str, float]:
    """‖θ_end − θ_start‖ / max(‖θ_start‖, 1e-8) per parameter name."""
    changes = {}
    for name, before in start.items():
        after = end[name].detach().cpu()
        changes[name] = float((after - before).norm() / max(float(before.norm()), 1e-8))
    return changes


def elbo_figures(losses: list[float]) -> dict[str, float | bool]:
    """The slope and half-to-half change of the logged losses of a window."""
    y = np.asarray(losses, dtype=np.float64)
    if y.size < 2:
        return {"elbo_slope": math.nan, "elbo_change": math.nan, "elbo_steady": False}
    scale = max(abs(float(y.mean())), 1e-12)
    steps = np.arange(y.size, dtype=np.float64)
    slope = float(np.polyfit(steps, y, 1)[0]) / scale
    first, second = np.array_split(y, 2)
    diff = float(second.mean() - first.mean())
    se = (
        math.sqrt(first.var(ddof=1) / first.size + second.var(ddof=1) / second.size)
        if (first.size > 1 and second.size > 1)
        else math.inf
    )
    steady = abs(diff) < ELBO_TOLERANCE * scale or abs(diff) < 2 * se
    return {"elbo_slope": slope, "elbo_change": diff / scale, "elbo_steady": steady}


def convergence_record(
    step: int,
    epoch: int,
    window: int,
    losses: list[float],
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
) -> dict:
    """The ``convergence`` history record of a window (see the module docstring)."""
    elbo = elbo_figures(losses)
    changes = relative_changes(start, end)
    worst = max(changes.values(), default=0.0)
    return {
        "kind": "convergence",
        "step": step,
        "epoch": epoch,
        "window": window,
        "elbo_slope": elbo["elbo_slope"],
        "elbo_change": elbo["elbo_change"],
        "param_change": changes,
        "max_param_change": worst,
        "converged": bool(elbo["elbo_steady"] and worst < PARAM_TOLERANCE),
    }
