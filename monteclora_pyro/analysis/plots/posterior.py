"""Posterior figures: prior against posterior, rank plots across chains, per-layer forests."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from numpy.typing import NDArray

from monteclora_pyro.analysis.inference_data import MATRIX_KINDS, prior_note
from monteclora_pyro.analysis.plots._common import (
    KINDS,
    flat,
    grid,
    hide_unused,
    histograms,
    idata_group,
    layer_sites,
    new_figure,
    short_layer_names,
    wide_positive,
)
from monteclora_pyro.analysis.prior_note import TILTED_KINDS

SUMMARY_LABELS = {
    "covariance": "trace of Σ",
    "concentration": "mean concentration α",
    "weights": "max weight π",
    "precision": "trace of Λ",
    "obs_precision": "observation precision τ",
}
_SUMMARY_SUFFIX = {
    "covariance": "trace",
    "concentration": "mean",
    "weights": "max",
    "precision": "trace",
    "obs_precision": "value",
}
_SCALAR_KINDS = {"concentration": "concentration α", "obs_precision": "observation precision τ"}
_MATRIX_SYMBOL = {"covariance": "Σ", "precision": "Λ"}
PANELS_PER_ROW = 4


def _eigenvalues(da: xr.DataArray) -> NDArray[np.float64]:
    """Eigenvalues of full covariance draws; diagonal covariances are their own."""
    a = np.asarray(da.values, dtype=np.float64)
    if a.ndim >= 4 and a.shape[-1] == a.shape[-2]:
        a = 0.5 * (a + np.swapaxes(a, -1, -2))
        a = a[np.all(np.isfinite(a), axis=(-2, -1))]
        return np.linalg.eigvalsh(a).ravel() if a.size else np.empty(0)
    return flat(a)


def _is_full(da: xr.DataArray) -> bool:
    return da.ndim >= 4 and da.shape[-1] == da.shape[-2]


def _diagonal(da: xr.DataArray) -> NDArray[np.float64]:
    a = np.asarray(da.values, dtype=np.float64)
    return flat(np.diagonal(a, axis1=-2, axis2=-1) if _is_full(da) else a)


def _quantities(da: xr.DataArray, kind: str) -> dict[str, NDArray[np.float64]]:
    """Pooled scalar quantities to compare, prior against posterior, for one site."""
    if kind in MATRIX_KINDS:
        m = _MATRIX_SYMBOL[kind]
        if _is_full(da):
            return {f"diagonal of {m}": _diagonal(da), f"eigenvalues of {m}": _eigenvalues(da)}
        return {f"diagonal (= eigenvalues) of {m}": _diagonal(da)}
    if kind in _SCALAR_KINDS:
        return {_SCALAR_KINDS[kind]: flat(da.values)}
    a = np.asarray(da.values, dtype=np.float64)
    return {"weight π_k": flat(a), "max_k π_k": flat(a.max(axis=-1))}


def _site_summary(da: xr.DataArray, kind: str) -> xr.DataArray:
    """A scalar per (chain, draw): trace of Σ (or Λ), mean α or max π."""
    extra = [d for d in da.dims if d not in ("chain", "draw")]
    if kind in MATRIX_KINDS and _is_full(da):
        values = np.trace(np.asarray(da.values, dtype=np.float64), axis1=-2, axis2=-1)
        return xr.DataArray(
            values,
            dims=("chain", "draw"),
            coords={k: da.coords[k] for k in ("chain", "draw") if k in da.coords},
        )
    if kind in MATRIX_KINDS:
        return da.sum(dim=extra)
    if kind in _SCALAR_KINDS:
        return da.mean(dim=extra)
    return da.max(dim=extra)


def hyperprior_summaries(
    idata: az.InferenceData, kinds: Sequence[str] = KINDS, group: str = "posterior"
) -> xr.Dataset:
    """One scalar per layer and kind: trace of Σ (or Λ), mean concentration, max weight.

    Parameters
    ----------
    idata : arviz.InferenceData
        Samples with the site schema of ``to_inference_data``.
    kinds : sequence of str
        Site kinds to summarise.
    group : str
        ``"posterior"`` or ``"prior"``.

    Returns
    -------
    xarray.Dataset
        Variables ``"{layer}.{kind}.{trace|mean|max}"`` with dims ``("chain", "draw")``.
    """
    out = {}
    for kind in kinds:
        for layer, da in layer_sites(idata, kind, group).items():
            out[f"{layer}.{kind}.{_SUMMARY_SUFFIX[kind]}"] = _site_summary(da, kind)
    return xr.Dataset(out)


def _posterior_and_prior(idata: az.InferenceData, kind: str) -> tuple[dict, dict]:
    post = layer_sites(idata, kind, "posterior")
    if not post:
        raise ValueError(f"idata has no posterior '*.{kind}' variables")
    return post, layer_sites(idata, kind, "prior")


def plot_prior_posterior(
    idata: az.InferenceData, kind: str, max_panels: int = 12, bins: int = 40
) -> Figure:
    """Prior against posterior draws of one site kind, per layer or pooled.

    Covariance (and precision): diagonal entries and eigenvalues of Σ (Λ) (for a diagonal
    matrix the diagonal holds the eigenvalues); concentration: the values; weights: the entries
    and the largest weight. When the ``prior`` group says that its draws omit the cooperative
    tilt (:func:`monteclora_pyro.analysis.inference_data.prior_note`), the weights and
    concentration figures say so under their title.

    One row per layer while ``layers × quantities <= max_panels``, otherwise one row pooled
    over all layers; a single quantity per layer wraps into rows of ``PANELS_PER_ROW``. Widely
    spread positive values (not weights) get log bins.

    Parameters
    ----------
    idata : arviz.InferenceData
        With a ``posterior`` group and, optionally, a ``prior`` group.
    kind : {"covariance", "concentration", "weights", "precision"}
        Site kind.
    max_panels : int
        Largest number of panels before layers are pooled.
    bins : int
        Histogram bins.

    Returns
    -------
    matplotlib.figure.Figure
    """
    post, prior = _posterior_and_prior(idata, kind)
    first = next(iter(post.values()))
    names = list(_quantities(first, kind))
    per_layer = len(post) * len(names) <= max_panels
    if per_layer:
        rows = [
            (label, [layer])
            for label, layer in zip(short_layer_names(list(post)), post, strict=True)
        ]
    else:
        rows = [(f"pooled over {len(post)} layers", list(post))]
    panels = [(label, layers, quantity) for label, layers in rows for quantity in names]
    # One quantity per layer (the concentration) wraps into a grid rather than a thin column.
    cols = len(names) if len(names) > 1 else min(PANELS_PER_ROW, len(panels))
    fig, axes = new_figure(math.ceil(len(panels) / cols), cols)
    hide_unused(axes, len(panels))
    for ax, (label, layers, quantity) in zip(axes.ravel(), panels, strict=False):
        series = {}
        for group, sites in (("prior", prior), ("posterior", post)):
            parts = [_quantities(sites[la], kind)[quantity] for la in layers if la in sites]
            if parts:
                series[group] = np.concatenate(parts)
        histograms(ax, series, bins, allow_log=kind != "weights")
        ax.set_title(f"{label}: {quantity}", fontsize=9)
        ax.set_xlabel(quantity)
        ax.set_ylabel("fraction of draws")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    note = prior_note(idata) if kind in TILTED_KINDS else None
    title = f"{kind}: prior vs posterior"
    if note:
        title += "\n" + textwrap.fill(note, width=max(60, 45 * cols))
    fig.suptitle(title, fontsize=10 if note else None)
    return fig


def _spread(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _rank_dataset(idata: az.InferenceData, var_names, max_panels: int) -> xr.Dataset:
    post = idata_group(idata, "posterior")
    if post is None:
        raise ValueError("idata has no posterior group")
    if var_names is None:
        out = {}
        kinds = [k for k in KINDS if layer_sites(idata, k)]
        if not kinds:
            raise ValueError(f"idata has no variables of the kinds {KINDS}")
        per_kind = max(1, max_panels // len(kinds))
        for kind in kinds:
            sites = layer_sites(idata, kind)
            layers = list(sites)
            short = dict(zip(layers, short_layer_names(layers), strict=True))
            for idx in _spread(len(layers), min(2, per_kind)):
                layer = layers[idx]
                name = f"{short[layer]} {SUMMARY_LABELS[kind]}"
                out[name] = _site_summary(sites[layer], kind)
        return xr.Dataset(out)
    names = [var_names] if isinstance(var_names, str) else list(var_names)
    missing = [n for n in names if n not in post.data_vars]
    if missing:
        raise ValueError(f"variables {missing} are not in the posterior")
    out = {}
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if not extra:
            out[name] = da
            continue
        da = da.transpose("chain", "draw", *extra)
        for index in np.ndindex(*[da.sizes[d] for d in extra]):
            element = da.isel(dict(zip(extra, index, strict=True)))
            out[f"{name}[{','.join(map(str, index))}]"] = element.reset_coords(drop=True)
    return xr.Dataset(dict(list(out.items())[:max_panels]))


def plot_rank(
    idata: az.InferenceData, var_names: str | Sequence[str] | None = None, max_panels: int = 12
) -> Figure:
    """Rank plots across chains (training restarts), via :func:`arviz.plot_rank`.

    Parameters
    ----------
    idata : arviz.InferenceData
        With a ``posterior`` group of at least one chain.
    var_names : str or sequence of str, optional
        Posterior variables; each element becomes a panel. ``None`` plots hyperprior
        summaries (trace of Σ or Λ, mean concentration, max weight) of up to two layers per
        kind.
    max_panels : int
        At most this many panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _rank_dataset(idata, var_names, max_panels)
    n = len(data.data_vars)
    if n == 0:
        raise ValueError("nothing to plot")
    rows, cols = grid(n)
    fig, axes = new_figure(rows, cols, width=4.0, height=2.8)
    az.plot_rank(data, ax=axes.ravel()[:n], kind="bars")
    for ax in axes.ravel()[:n]:
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            text.set_fontsize(9)
    hide_unused(axes, n)
    fig.suptitle("rank plot across chains (independent training restarts, not MCMC chains)")
    return fig


def plot_forest_layers(
    idata: az.InferenceData, kind: str = "covariance", hdi_prob: float = 0.94
) -> Figure:
    """Forest plot of a per-layer scalar summary, one colour per chain.

    The summary is the trace of Σ (covariance) or Λ (precision), the mean concentration or
    the largest mixture weight; each chain (an independent training restart) shows its mean
    (dot) and HDI (line), and the prior, when present, is drawn in grey.

    Parameters
    ----------
    idata : arviz.InferenceData
        With a ``posterior`` (and optionally a ``prior``) group.
    kind : {"covariance", "concentration", "weights", "precision"}
        Site kind.
    hdi_prob : float
        Probability mass of the intervals.

    Returns
    -------
    matplotlib.figure.Figure
    """
    post, prior = _posterior_and_prior(idata, kind)
    layers = list(post)
    n_chains = max(int(da.sizes.get("chain", 1)) for da in post.values())
    fig = Figure(
        figsize=(7.5, 1.2 + 0.45 * len(layers) * (n_chains + bool(prior))), layout="constrained"
    )
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(n_chains)]
    series = [(f"restart {c}", colours[c], "posterior", c) for c in range(n_chains)]
    if prior:
        series.append(("prior", "0.55", "prior", None))
    step = 0.7 / max(1, len(series))
    labelled = set()
    all_values = []
    for i, layer in enumerate(layers):
        for j, (label, colour, group, chain) in enumerate(series):
            sites = post if group == "posterior" else prior
            if layer not in sites:
                continue
            summary = _site_summary(sites[layer], kind)
            if chain is not None:
                if chain >= summary.sizes.get("chain", 1):
                    continue
                summary = summary.isel(chain=chain)
            values = flat(summary.values)
            if values.size == 0:
                continue
            all_values.append(values)
            low, high = (
                az.hdi(values, hdi_prob=hdi_prob) if values.size > 1 else (values[0], values[0])
            )
            y = i - 0.35 + step * (j + 0.5)
            kw = {"label": label} if label not in labelled else {}
            labelled.add(label)
            ax.plot([low, high], [y, y], color=colour, lw=2)
            ax.plot([values.mean()], [y], "o", color=colour, ms=5, **kw)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(short_layer_names(layers))
    ax.set_ylim(len(layers) - 0.5, -0.5)
    if all_values and wide_positive(*all_values):
        ax.set_xscale("log")
    ax.set_xlabel(SUMMARY_LABELS[kind])
    ax.set_ylabel("layer")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{kind} per layer: mean and {hdi_prob:.0%} HDI by restart (chain)")
    return fig
