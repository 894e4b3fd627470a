"""Convergence figures of a run: the slope of the objective and the change of the guide.

At every evaluation the loop writes one ``{"kind": "convergence", ...}`` record to
``history.jsonl`` for the window of steps since the previous one:

- ``elbo_slope``: the least-squares slope of the logged per-example loss over the window,
  divided by the absolute mean loss (relative change per step);
- ``elbo_change``: the relative change of the mean loss between the window's two halves;
- ``param_change``: for each variational parameter, ‖θ_end − θ_start‖ / max(‖θ_start‖, 1e-8)
  over the window (unconstrained values, named as in the param store), and its maximum;
- ``grad_snr``: for each variational parameter, the signal-to-noise ratio of its gradient over
  the window, √(‖ḡ‖² / Σ se²) with ḡ the mean gradient of the window's steps and se its
  per-coordinate standard error (NaN when fewer than two steps gave it a gradient, as while
  ``guide_delay_ratio`` holds the guide), and its maximum. At an optimum the mean gradient is
  noise, and the ratio is about 1 (its square is a χ²_d / d variable); a parameter still
  pushed one way has a ratio well above 1, however small the learning rate has become;
- ``converged``: no gradient is systematic — for a parameter of d coordinates, ``grad_snr``²
  stays below the 0.999 quantile of χ²_d / d (:func:`snr_threshold`: 3.29 for a scalar, 1.27
  for 64 coordinates), which ``max_grad_excess`` (the largest ``grad_snr`` over its threshold)
  summarises — and the mean loss is steady (it changed by less than :data:`ELBO_TOLERANCE`
  relative, or by less than two standard errors of the difference of the half means).

A small ``param_change`` alone does not mean convergence: with a decaying learning rate every
parameter stops moving at the end of a run. A statistic of the posterior is worth reading only
when the last record says ``converged``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ELBO_TOLERANCE = 0.01
NOISE_QUANTILE_Z = 3.09  # the standard normal's 0.999 quantile


def snr_threshold(dim: int) -> float:
    """The largest ``grad_snr`` pure noise reaches with probability 0.999, for d coordinates.

    Pure noise gives grad_snr² ~ χ²_d / d; its quantile is taken from the Wilson–Hilferty
    approximation (within 2 % of the exact value for d = 1, closer for larger d).
    """
    k = 2.0 / (9.0 * dim)
    return math.sqrt((1.0 - k + NOISE_QUANTILE_Z * math.sqrt(k)) ** 3)


class Window:
    """The running state of one convergence window: where it started and the gradient moments.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        The variational parameters, by name.
    step : int
        The step at which the window starts.
    """

    def __init__(self, params: dict[str, torch.Tensor], step: int):
        self.step = step
        self.start = snapshot(params)
        self.count = 0  # optimisation steps
        self.grad_count = dict.fromkeys(self.start, 0)  # of them, those with a gradient
        self.grad_sum = {n: torch.zeros_like(t) for n, t in self.start.items()}
        self.grad_square = {n: torch.zeros_like(t) for n, t in self.start.items()}

    def add_gradients(self, params: dict[str, torch.Tensor]) -> None:
        """Accumulate the current gradients of the parameters (one optimisation step)."""
        self.count += 1
        for name, param in params.items():
            if param.grad is not None:
                self.grad_count[name] += 1
                grad = param.grad.detach().cpu()
                self.grad_sum[name] += grad
                self.grad_square[name] += grad.square()

    def grad_snr(self) -> dict[str, float]:
        """√(‖ḡ‖² / Σ se²) per parameter over the steps that gave it a gradient (NaN with fewer
        than two: a guide held through the window is not converged)."""
        out = {}
        for name, total in self.grad_sum.items():
            n = self.grad_count[name]
            if n < 2:
                out[name] = math.nan
                continue
            mean = total / n
            variance = (self.grad_square[name] / n - mean.square()).clamp_min(0) * n / (n - 1)
            noise = float(variance.sum()) / n
            signal = float(mean.square().sum())
            out[name] = (
                math.sqrt(signal / noise) if noise > 0 else (0.0 if signal == 0 else math.inf)
            )
        return out

    def state(self) -> dict:
        """What a checkpoint keeps of the window."""
        return {
            "step": self.step,
            "start": self.start,
            "count": self.count,
            "grad_count": self.grad_count,
            "grad_sum": self.grad_sum,
            "grad_square": self.grad_square,
        }

    @classmethod
    def from_state(cls, state: dict) -> Window:
        """The window saved by :meth:`state`."""
        window = cls.__new__(cls)
        window.step = int(state["step"])
        window.start = state["start"]
        window.count = int(state["count"])
        window.grad_count = state.get("grad_count", dict.fromkeys(window.start, window.count))
        window.grad_sum, window.grad_square = state["grad_sum"], state["grad_square"]
        return window


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


def _max(values) -> float:
    """The largest of ``values`` (0 for none), NaN if one is NaN, whatever their order."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=0.0)


def convergence_record(
    step: int, epoch: int, window: Window, losses: list[float], end: dict[str, torch.Tensor]
) -> dict:
    """The ``convergence`` history record of a window (see the module docstring)."""
    elbo = elbo_figures(losses)
    changes = relative_changes(window.start, end)
    snr = window.grad_snr()
    excess = {n: snr[n] / snr_threshold(window.start[n].numel()) for n in snr}
    worst = _max(excess.values())
    steady_guide = not math.isnan(worst) and worst < 1.0
    return {
        "kind": "convergence",
        "step": step,
        "epoch": epoch,
        "window": step - window.step,
        "elbo_slope": elbo["elbo_slope"],
        "elbo_change": elbo["elbo_change"],
        "param_change": changes,
        "max_param_change": max(changes.values(), default=0.0),
        "grad_snr": snr,
        "max_grad_snr": _max(snr.values()),
        "max_grad_excess": worst,
        "converged": bool(elbo["elbo_steady"] and steady_guide),
    }
