"""Shared pieces of the figures: site lookup, layer labels, grids and histograms."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from monteclora_pyro.analysis.inference_data import KINDS
from monteclora_pyro.sites import split_site_name

MAX_LABEL = 32


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` unless ``kind`` is a hyperprior site kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def idata_group(idata: az.InferenceData, name: str) -> xr.Dataset | None:
    """The group ``name`` of ``idata``, or ``None``."""
    return getattr(idata, name) if name in idata.groups() else None


def layer_sites(
    idata: az.InferenceData, kind: str, group: str = "posterior"
) -> dict[str, xr.DataArray]:
    """Variables of one site kind, keyed by layer path, in the group's order.

    Parameters
    ----------
    idata : arviz.InferenceData
        Posterior (and prior) samples with variables ``"{layer}.{kind}"``.
    kind : {"covariance", "concentration", "weights", "precision"}
        Site kind.
    group : str
        Group to read (``"posterior"`` or ``"prior"``); a missing group gives ``{}``.

    Returns
    -------
    dict of str to xarray.DataArray
    """
    check_kind(kind)
    ds = idata_group(idata, group)
    if ds is None:
        return {}
    sites = {}
    for name in ds.data_vars:
        layer, site_kind = split_site_name(str(name))
        if site_kind == kind:
            sites[layer] = ds[name]
    return sites


def short_layer_names(layers: Sequence[str], max_len: int = MAX_LABEL) -> list[str]:
    """Shorten dotted layer paths for labels, keeping them distinct.

    Drops the dot-separated segments all paths share at the start (keeping the name in
    front of a layer index, e.g. ``layer.0.attention.self.query``) and abbreviates the
    middle of what is still longer than ``max_len`` characters.

    Parameters
    ----------
    layers : sequence of str
        Layer paths such as ``"bert.encoder.layer.0.attention.self.query"``.
    max_len : int
        Longest label before the middle is replaced by ``…``.

    Returns
    -------
    list of str
    """
    parts = [layer.split(".") for layer in layers]
    if not parts:
        return []
    common = 0
    shortest = min(len(p) for p in parts)
    while (
        len(parts) > 1
        and common < shortest - 1
        and all(p[common] == parts[0][common] for p in parts)
    ):
        common += 1
    if len(parts) == 1:
        common = max(0, len(parts[0]) - 2)
    if common > 0 and parts[0][common].isdigit():
        common -= 1
    names = []
    for full, p in zip(layers, parts, strict=True):
        name = ".".join(p[common:]) or full
        if len(name) > max_len and len(p[common:]) > 3:
            rest = p[common:]
            name = f"{rest[0]}.{rest[1]}…{rest[-1]}"
        names.append(name)
    if len(set(names)) < len(names):
        return list(layers)
    return names


def flat(values: ArrayLike) -> NDArray[np.float64]:
    """The finite values of ``values``, flattened."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """``(rows, cols)`` of a grid of ``n`` panels."""
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def new_figure(rows: int, cols: int, width: float = 4.0, height: float = 3.0):
    """A figure and its ``(rows, cols)`` array of axes."""
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def hide_unused(axes: NDArray, used: int) -> None:
    """Hide the axes after the first ``used``."""
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)


def wide_positive(*arrays: NDArray[np.float64]) -> bool:
    """Whether the values are all positive and span more than two decades."""
    values = np.concatenate([a for a in arrays if a.size] or [np.empty(0)])
    if values.size == 0 or np.any(values <= 0.0):
        return False
    return float(values.max() / values.min()) > 100.0


def histograms(
    ax, series: Mapping[str, NDArray[np.float64]], bins: int, allow_log: bool = True
) -> None:
    """Overlay step histograms (fraction of draws per bin) on shared bins.

    The number of bins shrinks with the smallest sample (about ``2 sqrt(n)``, at least 10).
    """
    filled = {k: v for k, v in series.items() if v.size}
    if not filled:
        ax.text(0.5, 0.5, "no finite draws", ha="center", va="center", transform=ax.transAxes)
        return
    smallest = min(v.size for v in filled.values())
    bins = int(np.clip(2 * np.sqrt(smallest), 10, max(10, bins)))
    values = np.concatenate(list(filled.values()))
    log = allow_log and wide_positive(*filled.values())
    lo, hi = float(values.min()), float(values.max())
    if log:
        edges = np.geomspace(lo, hi, bins + 1)
        ax.set_xscale("log")
    else:
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 2)
    for label, v in filled.items():
        ax.hist(
            v,
            bins=edges,
            weights=np.full(v.size, 1.0 / v.size),
            histtype="step",
            lw=1.5,
            label=label,
        )
