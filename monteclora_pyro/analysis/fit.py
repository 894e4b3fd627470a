"""What every likelihood's held-out diagnostics share: the lppd and the plug-in gaps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray


@dataclass
class HeldOutFit:
    """Held-out fit of one run (or of the pooled draws of several restarts).

    Attributes
    ----------
    name, split : str
        The run (or the pooled runs) and the evaluation split (e.g. ``"validation"``).
    num_draws : int
        S, the posterior draws behind the predictive.
    pointwise : numpy.ndarray
        lppd of each example, ``log (1/S) Σ_s p(y_i | θ_s)``, shape (n,).
    plugin, predictive : dict of str to float
        The metrics of :attr:`gap_metrics` for the plug-in and for the posterior predictive.
    """

    gap_metrics: ClassVar[tuple[str, ...]] = ()

    name: str
    split: str
    num_draws: int
    pointwise: NDArray[np.float64]
    plugin: dict[str, float]
    predictive: dict[str, float]

    @property
    def num_examples(self) -> int:
        """n, the held-out examples."""
        return int(self.pointwise.shape[0])

    @property
    def lppd(self) -> float:
        """Σ_i log (1/S) Σ_s p(y_i | θ_s) (nats)."""
        return float(self.pointwise.sum())

    @property
    def lppd_per_example(self) -> float:
        """lppd / n, the negative of the predictive NLL."""
        return float(self.pointwise.mean())

    def gap(self, metric: str) -> float:
        """Plug-in minus posterior predictive of ``metric``."""
        return self.plugin[metric] - self.predictive[metric]

    def _row(self, uncertainty: dict) -> dict:
        """A plain table row (JSON-serialisable) with the likelihood's uncertainty columns."""
        return {
            "run": self.name,
            "split": self.split,
            "n": self.num_examples,
            "S": self.num_draws,
            "lppd": self.lppd,
            "lppd/n": self.lppd_per_example,
            **uncertainty,
            **{f"{m} gap": self.gap(m) for m in self.gap_metrics},
        }

    def _describe(self, uncertainty: str) -> str:
        """One line for a terminal, with the likelihood's uncertainty sentence."""
        gaps = ", ".join(f"{m} {self.gap(m):+.4f}" for m in self.gap_metrics)
        return (
            f"held-out lppd on {self.split} (n={self.num_examples}, S={self.num_draws}): "
            f"{self.lppd:.2f} ({self.lppd_per_example:.4f} per example); {uncertainty}; "
            f"plug-in minus predictive: {gaps}"
        )
