"""The figure of a robustness sweep: each metric against the learning rate, per method."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from monteclora_pyro.runs import MODES


def plot_sweep(
    records: Sequence[Mapping],
    methods: Sequence[str],
    metrics: Sequence[str],
    modes: Sequence[str] = MODES,
) -> Figure:
    """Each metric against the learning rate, one line per method, one row per mode.

    The line is the median over batch sizes and seeds, the band the min–max range.

    Parameters
    ----------
    records : sequence of mappings
        One per sweep cell: ``method``, ``lr``, ``failed`` and, unless failed,
        ``{mode: {metric: value}}``; failed cells are left out.
    methods : sequence of str
        Methods in legend order.
    metrics : sequence of str
        One column per metric.
    modes : sequence of str
        One row per prediction mode.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(4.2 * len(metrics), 3.4 * len(modes)))
    axes = fig.subplots(len(modes), len(metrics), squeeze=False)
    for row, mode in enumerate(modes):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for method in methods:
                by_lr: dict[float, list[float]] = {}
                for r in records:
                    if r["method"] == method and not r["failed"]:
                        by_lr.setdefault(r["lr"], []).append(r[mode][metric])
                if not by_lr:
                    continue
                lrs = sorted(by_lr)
                med = [statistics.median(by_lr[lr]) for lr in lrs]
                (line,) = ax.plot(lrs, med, marker="o", label=method)
                ax.fill_between(
                    lrs,
                    [min(by_lr[lr]) for lr in lrs],
                    [max(by_lr[lr]) for lr in lrs],
                    color=line.get_color(),
                    alpha=0.2,
                )
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_ylabel(metric)
            ax.set_title(f"{metric} ({mode.replace('_', ' ')})", fontsize=10)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
