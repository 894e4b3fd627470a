"""Training curves: the loss and each loss term against the step, per chain."""

from __future__ import annotations

from collections.abc import Mapping

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from numpy.typing import NDArray

from monteclora_pyro.analysis.inference_data import TRAINING_GROUP, TRAINING_TERMS
from monteclora_pyro.analysis.plots._common import grid, hide_unused, idata_group, new_figure

_NOT_TERMS = ("step", "epoch", "lr", "kind", "chain")


def _training_series(history) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray]]:
    """Normalise a history to ``({term: (chains, steps)}, {term: steps})``."""
    if isinstance(history, az.InferenceData):
        history = idata_group(history, TRAINING_GROUP)
        if history is None:
            raise ValueError("idata has no 'training' group")
    terms, steps = {}, {}
    if isinstance(history, xr.Dataset):
        for name, da in history.data_vars.items():
            if str(name) in _NOT_TERMS:
                continue
            other = [d for d in da.dims if d != "step"]
            da = da.transpose(*other, "step") if "step" in da.dims else da
            values = np.asarray(da.values, dtype=np.float64).reshape(-1, da.shape[-1])
            x = da["step"].values if "step" in da.coords else np.arange(da.shape[-1])
            terms[str(name)], steps[str(name)] = values, np.asarray(x)
        return terms, steps
    if not isinstance(history, Mapping):
        raise TypeError(
            f"history must be a mapping or an xarray Dataset, got {type(history).__name__}"
        )
    x = history.get("step")
    for name, values in history.items():
        if name in _NOT_TERMS:
            continue
        a = np.asarray(values)
        if not np.issubdtype(a.dtype, np.number):
            continue
        a = np.atleast_2d(a.astype(np.float64))
        terms[name] = a
        steps[name] = (
            np.asarray(x)
            if x is not None and len(x) == a.shape[-1]
            else np.arange(1, a.shape[-1] + 1)
        )
    return terms, steps


def _smooth(y: NDArray[np.float64]) -> NDArray[np.float64] | None:
    window = y.shape[0] // 50
    if window < 2 or not np.all(np.isfinite(y)):
        return None
    kernel = np.ones(window) / window
    return np.convolve(
        np.pad(y, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid"
    )


def plot_training_curves(history) -> Figure:
    """The loss and each loss term against the training step, one panel per term.

    Parameters
    ----------
    history : mapping of str to array, xarray.Dataset or arviz.InferenceData
        A mapping of term name to values per step (1-D, or ``(chains, steps)``) with an
        optional ``"step"`` entry; or the ``training`` group (dims ``("chain", "step")``),
        or an InferenceData holding it. ``epoch`` and ``lr`` are left out.

    Returns
    -------
    matplotlib.figure.Figure
        Terms whose values are all positive use a log scale; a running mean is
        overlaid on long noisy curves.
    """
    terms, steps = _training_series(history)
    terms = {k: v for k, v in terms.items() if np.any(np.isfinite(v))}
    if not terms:
        raise ValueError("history has no numeric loss terms")
    known = len(TRAINING_TERMS)
    order = sorted(
        terms, key=lambda k: (TRAINING_TERMS.index(k) if k in TRAINING_TERMS else known, k)
    )
    rows, cols = grid(len(order))
    fig, axes = new_figure(rows, cols, width=4.0, height=2.8)
    for ax, name in zip(axes.ravel(), order, strict=False):
        values, x = terms[name], steps[name]
        many = values.shape[0] > 1
        for c, y in enumerate(values):
            colour = f"C{c % 10}"
            smooth = _smooth(y)
            ax.plot(
                x,
                y,
                color=colour,
                lw=0.8,
                alpha=0.4 if smooth is not None else 1.0,
                label=f"restart {c}" if many else None,
            )
            if smooth is not None:
                ax.plot(x, smooth, color=colour, lw=1.5)
        finite = values[np.isfinite(values)]
        if finite.size and np.all(finite > 0):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title("loss (negative ELBO)" if name == "loss" else name, fontsize=10)
        if many:
            ax.legend(fontsize=7)
    hide_unused(axes, len(order))
    fig.suptitle("training curves")
    return fig
