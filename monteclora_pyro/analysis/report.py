"""A self-contained HTML report of one or several finished runs.

Reads the runs (:mod:`monteclora_pyro.analysis.run_data`), writes every applicable figure of
:mod:`monteclora_pyro.analysis.plots` as PNG and one ``report.html`` with the PNGs embedded.
Posterior figures need an :class:`arviz.InferenceData` (from ``to_inference_data``); without
one they are left out. Never imports training code. A regression run's reliability figure is its
interval coverage (:func:`~monteclora_pyro.analysis.plots.plot_interval_coverage`).
"""

from __future__ import annotations

import re
from pathlib import Path

import arviz as az
import numpy as np

from monteclora_pyro.analysis import plots
from monteclora_pyro.analysis.html import render_page
from monteclora_pyro.analysis.inference_data import RESTARTS_NOTE, prior_note
from monteclora_pyro.analysis.prior_note import TILTED_KINDS
from monteclora_pyro.analysis.run_data import RunData, read_runs_data
from monteclora_pyro.analysis.summary import MODE_NAMES, ood_scores, summary_tables

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"
DPI = 100


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _curve_sets(run: RunData, with_label: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Prediction modes of a run, ``{name: (probs, labels)}``; one for LoRA-like runs."""
    p = run.predictions
    prefix = f"{run.label} ({run.method})" if with_label else ""
    if run.single_draw:
        name = prefix or ("LoRA" if run.method == "lora" else "posterior mean")
        return {name: (p.mean_probs, p.labels)}
    return {
        f"{prefix}: {mode}" if prefix else mode: (p.mode_probs(key), p.labels)
        for key, mode in MODE_NAMES.items()
    }


def _coverage_sets(run: RunData, with_label: bool) -> dict[str, tuple]:
    """Prediction modes of a regression run, ``{name: (means, precisions, labels)}``."""
    p = run.predictions
    prefix = f"{run.label} ({run.method})" if with_label else ""
    if run.single_draw:
        name = prefix or ("LoRA" if run.method == "lora" else "posterior mean")
        return {name: (*p.mode_params("posterior_mean"), p.labels)}
    return {
        f"{prefix}: {mode}" if prefix else mode: (*p.mode_params(key), p.labels)
        for key, mode in MODE_NAMES.items()
    }


def _regression_run_figures(figs: _Figures, run: RunData, section: str, reliability: bool):
    slug = _slug(run.label)
    if reliability:
        figs.add(
            section,
            f"{slug}_interval_coverage",
            "interval coverage",
            lambda: plots.plot_interval_coverage(_coverage_sets(run, with_label=False)),
        )
    if run.shifted:
        p = run.predictions
        curves = {"in-domain": (p.draw_mean, p.draw_precision, p.labels)}
        curves |= {
            name: (s.draw_mean, s.draw_precision, s.labels) for name, s in run.shifted.items()
        }
        figs.add(
            section,
            f"{slug}_interval_coverage_shifted",
            "interval coverage under domain shift (posterior predictive)",
            lambda: plots.plot_interval_coverage(curves),
        )


class _Figures:
    """Writes figures as PNG and remembers them, grouped by report section."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.sections: dict[str, list[tuple[str, Path]]] = {}
        self.errors: list[str] = []

    def add(self, section: str, name: str, caption: str, make) -> None:
        try:
            fig = make()
        except (ValueError, TypeError, np.linalg.LinAlgError) as err:
            self.errors.append(f"{caption}: {type(err).__name__}: {err}")
            return
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        self.sections.setdefault(section, []).append((caption, path))


def _posterior_figures(figs: _Figures, idata: az.InferenceData | None) -> None:
    if idata is None or "posterior" not in idata.groups():
        return
    kinds = [k for k in plots.KINDS if plots.layer_sites(idata, k)]
    note = prior_note(idata)
    for kind in kinds:
        caption = f"{kind}: prior vs posterior"
        if note and kind in TILTED_KINDS:
            caption += f" ({note})"
        figs.add(
            "posterior",
            f"prior_posterior_{kind}",
            caption,
            lambda kind=kind: plots.plot_prior_posterior(idata, kind),
        )
    for kind in kinds:
        figs.add(
            "posterior",
            f"forest_{kind}",
            f"{kind} per layer, by restart",
            lambda kind=kind: plots.plot_forest_layers(idata, kind),
        )
    if kinds:
        figs.add(
            "posterior",
            "rank",
            f"rank plots across chains. {RESTARTS_NOTE}",
            lambda: plots.plot_rank(idata),
        )
    if "training" in idata.groups():
        figs.add(
            "posterior",
            "training_chains",
            "training curves of all chains (restarts)",
            lambda: plots.plot_training_curves(idata.training),
        )


def _run_figures(figs: _Figures, run: RunData, reliability: bool) -> None:
    slug = _slug(run.label)
    section = f"run:{run.label}"
    if run.history:
        figs.add(
            section,
            f"{slug}_training",
            "training curves",
            lambda: plots.plot_training_curves(run.history),
        )
    p = run.predictions
    if p is None:
        return
    if run.regression:
        _regression_run_figures(figs, run, section, reliability)
        return
    if reliability:
        figs.add(
            section,
            f"{slug}_reliability",
            "reliability",
            lambda: plots.plot_reliability(_curve_sets(run, with_label=False)),
        )
    correct = p.predictive_probs.argmax(axis=1) == p.labels
    scores = ood_scores(p.draw_probs)
    if run.single_draw:
        scores.pop("mutual information")
    figs.add(
        section,
        f"{slug}_uncertainty",
        "uncertainty of correct and wrong predictions",
        lambda: plots.plot_uncertainty_histograms(scores, correct),
    )
    if run.shifted:
        curves = {"in-domain": (p.predictive_probs, p.labels)}
        curves |= {name: (s.predictive_probs, s.labels) for name, s in run.shifted.items()}
        figs.add(
            section,
            f"{slug}_reliability_shifted",
            "reliability under domain shift (posterior predictive)",
            lambda: plots.plot_reliability(curves),
        )


def _comparison_figures(figs: _Figures, runs: list[RunData]) -> None:
    many = len(runs) > 1
    regression = [r for r in runs if r.predictions is not None and r.regression]
    if regression:
        intervals: dict = {}
        for run in regression:
            intervals |= _coverage_sets(run, with_label=many)
        figs.add(
            "comparison",
            "comparison_interval_coverage",
            "interval coverage",
            lambda: plots.plot_interval_coverage(intervals),
        )
    with_predictions = [r for r in runs if r.predictions is not None and not r.regression]
    if not with_predictions:
        return
    curves: dict = {}
    for run in with_predictions:
        curves |= _curve_sets(run, with_label=many)
    figs.add(
        "comparison",
        "comparison_reliability",
        "reliability",
        lambda: plots.plot_reliability(curves),
    )
    coverage = {
        name: (probs.max(axis=1), probs.argmax(axis=1) == labels)
        for name, (probs, labels) in curves.items()
    }
    figs.add(
        "comparison",
        "comparison_accuracy_coverage",
        "accuracy–coverage",
        lambda: plots.plot_accuracy_coverage(coverage),
    )


def write_report(run_dirs, out_dir: str | Path, idata: az.InferenceData | None = None) -> Path:
    """Write the figures as PNG and a self-contained ``report.html``.

    Parameters
    ----------
    run_dirs : path or sequence of paths
        Finished run directories (e.g. a LoRA and a MonteCLoRA run to compare).
    out_dir : str or Path
        Created if needed; receives ``*.png`` and ``report.html``.
    idata : arviz.InferenceData, optional
        Posterior samples of the MonteCLoRA runs (from ``to_inference_data``); adds
        prior-vs-posterior, forest and rank figures and a posterior summary.

    Returns
    -------
    Path
        The ``report.html`` file.
    """
    runs = read_runs_data(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = summary_tables([r.path for r in runs])
    figs = _Figures(out)
    _comparison_figures(figs, runs)
    _posterior_figures(figs, idata)
    for run in runs:
        # With one or two runs the comparison figure already shows each run's modes.
        _run_figures(figs, run, reliability=len(runs) > 2)
    path = out / REPORT_FILE
    path.write_text(render_page(runs, tables, figs.sections, figs.errors, idata), encoding="utf-8")
    return path
