"""Figures for MonteCLoRA posteriors, predictions and training curves.

Every function takes data and returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no GUI, no global figure registry), so it is safe headless and under any
backend; save it with ``fig.savefig(path)``. Posterior inputs follow the schema of
:func:`monteclora_pyro.analysis.inference_data.to_inference_data`: one variable per latent
site named ``"{layer path}.{kind}"`` with ``kind`` in ``covariance``, ``concentration``,
``weights``. Depends on numpy, xarray, ArviZ, matplotlib and
:mod:`monteclora_pyro.metrics` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from monteclora_pyro import metrics
from monteclora_pyro.analysis.inference_data import HYPERPRIOR_KINDS, TERMS

__all__ = [
    "KINDS",
    "hyperprior_summaries",
    "layer_sites",
    "plot_accuracy_coverage",
    "plot_forest_layers",
    "plot_prior_posterior",
    "plot_rank",
    "plot_reliability",
    "plot_training_curves",
    "plot_uncertainty_histograms",
    "short_layer_names",
]

KINDS = HYPERPRIOR_KINDS
TERM_ORDER = TERMS
_NOT_TERMS = ("step", "epoch", "lr", "kind", "chain")
_SUMMARY_LABELS = {
    "covariance": "trace of Σ",
    "concentration": "mean concentration α",
    "weights": "max weight π",
}
_SUMMARY_SUFFIX = {"covariance": "trace", "concentration": "mean", "weights": "max"}
_MAX_LABEL = 32
PANELS_PER_ROW = 4


# ------------------------------------------------------------------------------ helpers


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _group(idata: az.InferenceData, name: str) -> xr.Dataset | None:
    return getattr(idata, name) if name in idata.groups() else None


def layer_sites(
    idata: az.InferenceData, kind: str, group: str = "posterior"
) -> dict[str, xr.DataArray]:
    """Variables of one site kind, keyed by layer path, in the group's order.

    Parameters
    ----------
    idata : arviz.InferenceData
        Posterior (and prior) samples with variables ``"{layer}.{kind}"``.
    kind : {"covariance", "concentration", "weights"}
        Site kind.
    group : str
        Group to read (``"posterior"`` or ``"prior"``); a missing group gives ``{}``.

    Returns
    -------
    dict of str to xarray.DataArray
    """
    _check_kind(kind)
    ds = _group(idata, group)
    if ds is None:
        return {}
    suffix = f".{kind}"
    return {
        str(name)[: -len(suffix)]: ds[name] for name in ds.data_vars if str(name).endswith(suffix)
    }


def short_layer_names(layers: Sequence[str], max_len: int = _MAX_LABEL) -> list[str]:
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


def _flat(values: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _eigenvalues(da: xr.DataArray) -> NDArray[np.float64]:
    """Eigenvalues of full covariance draws; diagonal covariances are their own."""
    a = np.asarray(da.values, dtype=np.float64)
    if a.ndim >= 4 and a.shape[-1] == a.shape[-2]:
        a = 0.5 * (a + np.swapaxes(a, -1, -2))
        a = a[np.all(np.isfinite(a), axis=(-2, -1))]
        return np.linalg.eigvalsh(a).ravel() if a.size else np.empty(0)
    return _flat(a)


def _is_full(da: xr.DataArray) -> bool:
    return da.ndim >= 4 and da.shape[-1] == da.shape[-2]


def _diagonal(da: xr.DataArray) -> NDArray[np.float64]:
    a = np.asarray(da.values, dtype=np.float64)
    return _flat(np.diagonal(a, axis1=-2, axis2=-1) if _is_full(da) else a)


def _quantities(da: xr.DataArray, kind: str) -> dict[str, NDArray[np.float64]]:
    """Pooled scalar quantities to compare, prior against posterior, for one site."""
    if kind == "covariance":
        if _is_full(da):
            return {"diagonal of Σ": _diagonal(da), "eigenvalues of Σ": _eigenvalues(da)}
        return {"variances (= eigenvalues of Σ)": _diagonal(da)}
    if kind == "concentration":
        return {"concentration α": _flat(da.values)}
    a = np.asarray(da.values, dtype=np.float64)
    return {"weight π_k": _flat(a), "max_k π_k": _flat(a.max(axis=-1))}


def _site_summary(da: xr.DataArray, kind: str) -> xr.DataArray:
    """A scalar per (chain, draw): trace of Σ, mean α or max π."""
    extra = [d for d in da.dims if d not in ("chain", "draw")]
    if kind == "covariance" and _is_full(da):
        values = np.trace(np.asarray(da.values, dtype=np.float64), axis1=-2, axis2=-1)
        return xr.DataArray(
            values,
            dims=("chain", "draw"),
            coords={k: da.coords[k] for k in ("chain", "draw") if k in da.coords},
        )
    if kind == "covariance":
        return da.sum(dim=extra)
    if kind == "concentration":
        return da.mean(dim=extra)
    return da.max(dim=extra)


def hyperprior_summaries(
    idata: az.InferenceData, kinds: Sequence[str] = KINDS, group: str = "posterior"
) -> xr.Dataset:
    """One scalar per layer and kind: trace of Σ, mean concentration, max weight.

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


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def _new_figure(rows: int, cols: int, width: float = 4.0, height: float = 3.0):
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _hide_unused(axes: NDArray, used: int) -> None:
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)


def _wide_positive(*arrays: NDArray[np.float64]) -> bool:
    values = np.concatenate([a for a in arrays if a.size] or [np.empty(0)])
    if values.size == 0 or np.any(values <= 0.0):
        return False
    return float(values.max() / values.min()) > 100.0


def _histograms(
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
    log = allow_log and _wide_positive(*filled.values())
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


# ------------------------------------------------------------------------- posteriors


def _posterior_and_prior(idata: az.InferenceData, kind: str) -> tuple[dict, dict]:
    post = layer_sites(idata, kind, "posterior")
    if not post:
        raise ValueError(f"idata has no posterior '*.{kind}' variables")
    return post, layer_sites(idata, kind, "prior")


def plot_prior_posterior(
    idata: az.InferenceData, kind: str, max_panels: int = 12, bins: int = 40
) -> Figure:
    """Prior against posterior draws of one site kind, per layer or pooled.

    Covariance: diagonal entries and eigenvalues of Σ (for a diagonal Σ the variances
    are the eigenvalues); concentration: the values; weights: the entries and the
    largest weight. One row per layer while ``layers × quantities <= max_panels``,
    otherwise one row pooled over all layers; a single quantity per layer wraps into rows of
    ``PANELS_PER_ROW``. Widely spread positive values (not weights)
    get log bins.

    Parameters
    ----------
    idata : arviz.InferenceData
        With a ``posterior`` group and, optionally, a ``prior`` group.
    kind : {"covariance", "concentration", "weights"}
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
    fig, axes = _new_figure(math.ceil(len(panels) / cols), cols)
    _hide_unused(axes, len(panels))
    for ax, (label, layers, quantity) in zip(axes.ravel(), panels, strict=False):
        series = {}
        for group, sites in (("prior", prior), ("posterior", post)):
            parts = [_quantities(sites[la], kind)[quantity] for la in layers if la in sites]
            if parts:
                series[group] = np.concatenate(parts)
        _histograms(ax, series, bins, allow_log=kind != "weights")
        ax.set_title(f"{label}: {quantity}", fontsize=9)
        ax.set_xlabel(quantity)
        ax.set_ylabel("fraction of draws")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{kind}: prior vs posterior")
    return fig


def _spread(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _rank_dataset(idata: az.InferenceData, var_names, max_panels: int) -> xr.Dataset:
    post = _group(idata, "posterior")
    if post is None:
        raise ValueError("idata has no posterior group")
    if var_names is None:
        out = {}
        kinds = [k for k in KINDS if layer_sites(idata, k)]
        if not kinds:
            raise ValueError("idata has no covariance, concentration or weights variables")
        per_kind = max(1, max_panels // len(kinds))
        for kind in kinds:
            sites = layer_sites(idata, kind)
            layers = list(sites)
            short = dict(zip(layers, short_layer_names(layers), strict=True))
            for idx in _spread(len(layers), min(2, per_kind)):
                layer = layers[idx]
                name = f"{short[layer]} {_SUMMARY_LABELS[kind]}"
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
        summaries (trace of Σ, mean concentration, max weight) of up to two layers per kind.
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
    rows, cols = _grid(n)
    fig, axes = _new_figure(rows, cols, width=4.0, height=2.8)
    az.plot_rank(data, ax=axes.ravel()[:n], kind="bars")
    for ax in axes.ravel()[:n]:
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            text.set_fontsize(9)
    _hide_unused(axes, n)
    fig.suptitle("rank plot across chains (training restarts)")
    return fig


def plot_forest_layers(
    idata: az.InferenceData, kind: str = "covariance", hdi_prob: float = 0.94
) -> Figure:
    """Forest plot of a per-layer scalar summary, one colour per chain.

    The summary is the trace of Σ (covariance), the mean concentration or the largest
    mixture weight; each chain shows its mean (dot) and HDI (line), and the prior, when
    present, is drawn in grey.

    Parameters
    ----------
    idata : arviz.InferenceData
        With a ``posterior`` (and optionally a ``prior``) group.
    kind : {"covariance", "concentration", "weights"}
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
    series = [(f"chain {c}", colours[c], "posterior", c) for c in range(n_chains)]
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
            values = _flat(summary.values)
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
    if all_values and _wide_positive(*all_values):
        ax.set_xscale("log")
    ax.set_xlabel(_SUMMARY_LABELS[kind])
    ax.set_ylabel("layer")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{kind} per layer: mean and {hdi_prob:.0%} HDI by chain")
    return fig


# ------------------------------------------------------------------------ predictions


def plot_reliability(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], n_bins: int = 15) -> Figure:
    """Reliability diagram: accuracy against top-class confidence per bin.

    Parameters
    ----------
    curves : mapping of str to (probs, labels)
        Class probabilities ``(n, C)`` and integer labels ``(n,)`` per curve, e.g.
        ``{"posterior mean": ..., "posterior predictive": ..., "LoRA": ...}``.
    n_bins : int
        Uniform confidence bins.

    Returns
    -------
    matplotlib.figure.Figure
        The legend names each curve with its ECE.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    for name, (probs, labels) in curves.items():
        bins = metrics.reliability_bins(probs, labels, n_bins=n_bins)
        filled = bins.count > 0
        error = metrics.ece(probs, labels, n_bins=n_bins)
        ax.plot(
            bins.confidence[filled],
            bins.accuracy[filled],
            "o-",
            ms=4,
            label=f"{name} (ECE {error:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"reliability diagram ({n_bins} bins)")
    return fig


def plot_uncertainty_histograms(
    score: ArrayLike | Mapping[str, ArrayLike],
    correct: ArrayLike,
    score_name: str = "predictive entropy",
    bins: int = 30,
) -> Figure:
    """Histograms of an uncertainty score for correct against wrong predictions.

    Parameters
    ----------
    score : array_like of shape (n,), or mapping of name to array
        Uncertainty per example (higher = more uncertain); a mapping gives one panel
        per score.
    correct : array_like of bool, shape (n,)
        Whether each prediction is right.
    score_name : str
        Axis label of a single score.
    bins : int
        Histogram bins.

    Returns
    -------
    matplotlib.figure.Figure
    """
    scores = dict(score) if isinstance(score, Mapping) else {score_name: score}
    hit = np.asarray(correct).astype(bool)
    rows, cols = _grid(len(scores))
    fig, axes = _new_figure(rows, cols, width=4.2, height=3.2)
    for ax, (name, values) in zip(axes.ravel(), scores.items(), strict=False):
        v = np.asarray(values, dtype=np.float64)
        if v.shape != hit.shape:
            raise ValueError(f"{name} has shape {v.shape} but correct has shape {hit.shape}")
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 2)
        for mask, label, colour in ((hit, "correct", "C2"), (~hit, "wrong", "C3")):
            part = v[mask]
            if part.size:
                ax.hist(
                    part,
                    bins=edges,
                    weights=np.full(part.size, 1.0 / part.size),
                    alpha=0.5,
                    color=colour,
                    label=f"{label} (n={part.size})",
                )
            else:
                ax.plot([], [], color=colour, label=f"{label} (n=0)")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of examples")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    _hide_unused(axes, len(scores))
    title = score_name if len(scores) == 1 else "uncertainty"
    fig.suptitle(f"{title}: correct vs wrong predictions")
    return fig


def plot_accuracy_coverage(curves: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> Figure:
    """Accuracy of the most confident examples against the fraction kept.

    Parameters
    ----------
    curves : mapping of str to (confidence, correct)
        Confidence per example (e.g. the top-class probability) and whether each
        prediction is right.

    Returns
    -------
    matplotlib.figure.Figure
        The legend names each curve with its area under the curve.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, (confidence, correct) in curves.items():
        coverage, acc = metrics.accuracy_coverage_curve(confidence, correct)
        area = metrics.area_under_accuracy_coverage(confidence, correct)
        ax.plot(coverage, acc, lw=1.5, label=f"{name} (area {area:.3f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("coverage")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy–coverage (selective prediction)")
    return fig


# --------------------------------------------------------------------------- training


def _training_series(history) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray]]:
    """Normalise a history to ``({term: (chains, steps)}, {term: steps})``."""
    if isinstance(history, az.InferenceData):
        history = _group(history, "training")
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
    order = sorted(
        terms, key=lambda k: (TERM_ORDER.index(k) if k in TERM_ORDER else len(TERM_ORDER), k)
    )
    rows, cols = _grid(len(order))
    fig, axes = _new_figure(rows, cols, width=4.0, height=2.8)
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
                label=f"chain {c}" if many else None,
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
    _hide_unused(axes, len(order))
    fig.suptitle("training curves")
    return fig
