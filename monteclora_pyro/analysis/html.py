"""The HTML of the report: tables, embedded PNGs and the page itself."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import arviz as az

from monteclora_pyro.analysis import plots
from monteclora_pyro.analysis.heldout import GAP_METRICS
from monteclora_pyro.analysis.inference_data import RESTARTS_NOTE, prior_note
from monteclora_pyro.analysis.run_data import RunData
from monteclora_pyro.analysis.summary import METRIC_COLUMNS, METRIC_HEADERS, REGRESSION_COLUMNS
from monteclora_pyro.analysis.tables import format_value

__all__ = ["render_page"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
td.best { font-weight: bold; background: #eaf6ea; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.note { color: #666; font-style: italic; }
"""

_LOWER_IS_BETTER = {"nll", "ece", "brier", "rmse"}
_NO_BEST = {"coverage_90", "width_90"}  # closest to the level is best, not lowest or highest
_HELD_OUT_NOTE = (
    "On the evaluation split: examples the posterior never conditioned on. lppd = Σ_i log "
    "(1/S) Σ_s p(y_i | θ_s) in nats (higher is better; lppd/n = −NLL of the predictive). MI: "
    "mean mutual information (epistemic uncertainty); MI share: mean MI / mean predictive "
    "entropy (0 when all draws agree). Gaps: plug-in (A = E[A]) minus posterior predictive; a "
    "positive NLL or ECE gap, or a negative accuracy gap, favours the predictive. PSIS-LOO is "
    "not reported: it estimates leave-one-out fit of training examples, and on held-out "
    "examples it only understates this lppd by about p_loo."
)
_REGRESSION_HELD_OUT_NOTE = (
    "On the evaluation split: examples the posterior never conditioned on. lppd = Σ_i log "
    "(1/S) Σ_s N(y_i | m_s, 1/τ_s) in nats (higher is better; lppd/n = −NLL of the "
    "predictive). Epistemic var: mean variance of the draws' means; epistemic share: its part "
    "of the mean predictive variance (0 when all draws agree). Gaps: plug-in (A = E[A], τ = "
    "E[τ]) minus posterior predictive; a positive NLL or RMSE gap favours the predictive, and "
    "a coverage gap says which of the two covers more. PSIS-LOO is not reported."
)
_CONVERGENCE_NOTE = (
    "Last convergence record of each run's history, over its final window of steps: ELBO "
    "slope (least-squares slope of the per-example loss over its absolute mean, relative "
    "change per step), ELBO change (relative change of the mean loss between the window's "
    "halves), and the largest relative change ‖θ_end − θ_start‖ / ‖θ_start‖ of a variational "
    "parameter of the guide (which one)."
)
_CONVERGENCE_COLUMNS = (
    "run",
    "method",
    "step",
    "window",
    "ELBO slope",
    "ELBO change",
    "max param change",
    "parameter",
    "converged",
)
Figures = dict[str, list[tuple[str, Path]]]


def _table(rows: list[dict], columns: Sequence[str], headers: dict | None = None, best=()) -> str:
    """An HTML table; numeric columns in ``best`` mark their best value in bold."""
    if not rows:
        return '<p class="note">none</p>'
    headers = headers or {}
    marks: dict[str, float] = {}
    for c in best:
        values = [r[c] for r in rows if isinstance(r.get(c), float) and math.isfinite(r[c])]
        if len(values) > 1:
            marks[c] = min(values) if c in _LOWER_IS_BETTER else max(values)
    head = "".join(
        f'<th class="{"" if _numeric(rows, c) else "text"}">{html.escape(headers.get(c, c))}</th>'
        for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cls = "" if _numeric(rows, c) else "text"
            if c in marks and value == marks[c]:
                cls = "best"
            cells.append(f'<td class="{cls}">{html.escape(format_value(value))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _numeric(rows: list[dict], column: str) -> bool:
    return any(isinstance(r.get(column), int | float) for r in rows)


def _img(caption: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>"
    )


def _images(figures: Figures, section: str) -> str:
    return "".join(_img(caption, path) for caption, path in figures.get(section, []))


def _posterior_table(idata: az.InferenceData) -> str:
    summaries = plots.hyperprior_summaries(idata)
    if not summaries.data_vars:
        return ""
    try:
        frame = az.summary(summaries, hdi_prob=0.94, kind="all")
    except (ValueError, TypeError) as err:
        return f'<p class="note">az.summary failed: {html.escape(str(err))}</p>'
    rows = []
    for name, values in frame.iterrows():
        row = {"variable": str(name)}
        row |= {
            str(k): int(v) if str(k).startswith("ess") and math.isfinite(v) else float(v)
            for k, v in values.items()
        }
        rows.append(row)
    caption = f'<p class="note">{html.escape(RESTARTS_NOTE)}</p>'
    return caption + _table(rows, ["variable", *[str(c) for c in frame.columns]])


def _metric_columns(rows: list[dict]) -> tuple[str, ...]:
    """The metric columns of the rows: a regression run's, or classification's."""
    return REGRESSION_COLUMNS if any("pearson" in r for r in rows) else METRIC_COLUMNS


def _comparison_table(tables: dict) -> str:
    """Metrics (rows) against runs (columns), posterior predictive mode."""
    rows = [r for r in tables["metrics"] if r["mode"] == "posterior predictive"]
    runs = [r["run"] for r in rows]
    parts = []
    for metric in _metric_columns(rows):
        row = {r["run"]: r.get(metric, math.nan) for r in rows}
        values = [row[r] for r in runs if math.isfinite(row[r])]
        best = (min if metric in _LOWER_IS_BETTER else max)(values) if values else None
        best = None if metric in _NO_BEST else best
        cells = "".join(
            f'<td class="{"best" if row[r] == best and len(values) > 1 else ""}">'
            f"{html.escape(format_value(row[r]))}</td>"
            for r in runs
        )
        name = html.escape(METRIC_HEADERS[metric])
        parts.append(f'<tr><td class="text">{name}</td>{cells}</tr>')
    head = "".join(f"<th>{html.escape(r)}</th>" for r in runs)
    return f'<table><tr><th class="text">metric</th>{head}</tr>{"".join(parts)}</table>'


def render_page(
    runs: list[RunData],
    tables: dict,
    figures: Figures,
    errors: list[str],
    idata: az.InferenceData | None,
) -> str:
    """The self-contained ``report.html``.

    Parameters
    ----------
    runs : list of RunData
        The runs of the report.
    tables : dict
        From :func:`monteclora_pyro.analysis.summary.summary_tables`.
    figures : dict of str to list of (caption, path)
        PNG files per section: ``"comparison"``, ``"posterior"``, ``"run:{label}"``.
    errors : list of str
        Why figures were left out.
    idata : arviz.InferenceData, optional
        Posterior samples for the posterior summary table.

    Returns
    -------
    str
    """
    esc = html.escape
    columns = _metric_columns(tables["metrics"])
    regression = columns == REGRESSION_COLUMNS
    held_out = tables.get("held-out", [])
    mean_note = (
        "the Normal of each draw averaged into a mixture; its mean is the point prediction. "
        "Coverage and width of central 90% predictive intervals"
        if regression
        else "class probabilities averaged over posterior draws. ECE with 15 uniform bins"
    )
    uncertainty_note = (
        "mean predictive variance per example (label units²): total = aleatoric (expected "
        "noise variance 1/τ) + epistemic (variance of the draws' means)."
        if regression
        else "mean entropy per example in nats: total (predictive entropy) = aleatoric "
        "(expected entropy) + epistemic (mutual information)."
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>MonteCLoRA report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>MonteCLoRA report</h1>",
        f'<p class="note">generated {esc(_dt.datetime.now().isoformat(timespec="seconds"))}'
        f" from {len(runs)} run(s)</p>",
        "<h2>Runs</h2>",
        _table(
            tables["runs"],
            ["run", "method", "task", "split", "num_examples", "num_samples", "steps", "path"],
        ),
        "<h2>Metrics</h2>",
        '<p class="note">posterior mean: the noise switched off (A = μ); posterior predictive: '
        f"{esc(mean_note)}.</p>",
        _table(
            tables["metrics"],
            ["run", "method", "mode", *columns],
            METRIC_HEADERS,
            best=[c for c in columns if c not in _NO_BEST] if len(runs) > 1 else (),
        ),
        "<h2>Held-out fit</h2>",
        f'<p class="note">{esc(_REGRESSION_HELD_OUT_NOTE if regression else _HELD_OUT_NOTE)}</p>',
        _table(
            held_out,
            list(dict.fromkeys(k for r in held_out for k in r))
            or ["run", "method", "split", "n", "S", "lppd", "lppd/n", "MI", "MI share"]
            + [f"{m} gap" for m in GAP_METRICS],
        ),
        "<h2>Convergence</h2>",
        f'<p class="note">{esc(_CONVERGENCE_NOTE)}</p>',
        _table(tables.get("convergence", []), _CONVERGENCE_COLUMNS),
    ]
    if len(runs) > 1:
        parts += [
            "<h2>Comparison</h2>",
            '<p class="note">posterior predictive of each run; best value in bold.</p>',
            _comparison_table(tables),
        ]
    parts += [_images(figures, "comparison")]
    parts += [
        "<h2>Selective prediction</h2>",
        '<p class="note">area under the accuracy–coverage curve of the top-class probability.</p>',
        _table(tables["selective"], ["run", "method", "mode", "area"]),
        "<h2>Domain shift</h2>",
        _table(tables["shifted"], ["run", "method", "split", "mode", *columns], METRIC_HEADERS),
        "<h2>Out-of-distribution detection (AUROC)</h2>",
        '<p class="note">in-domain evaluation split against each '
        "<code>evaluations/{domain}-test</code>; a higher score means more out-of-distribution; "
        "0.5 is chance. Scores from the posterior predictive.</p>",
        _table(
            tables["ood"],
            ["run", "method", "domain", "score", "auroc", "n_in", "n_out"],
            {"auroc": "AUROC"},
        ),
        "<h2>Uncertainty decomposition</h2>",
        f'<p class="note">{esc(uncertainty_note)}</p>',
        _table(
            tables["uncertainty"], ["run", "method", "split", "total", "aleatoric", "epistemic"]
        ),
        "<h2>Posterior</h2>",
    ]
    if idata is None or "posterior" not in idata.groups():
        parts.append(
            '<p class="note">no posterior samples given (pass <code>idata</code>, e.g. from '
            "<code>to_inference_data(run_dirs)</code>); LoRA runs have none.</p>"
        )
    else:
        note = prior_note(idata)
        if note:
            parts.append(f'<p class="note"><strong>Note:</strong> {esc(note)}.</p>')
        parts += [
            f'<p class="note">{esc(RESTARTS_NOTE)}</p>',
            _images(figures, "posterior"),
            _posterior_table(idata),
        ]
    for run in runs:
        parts += [
            f"<h2>Run {esc(run.label)} ({esc(run.method)})</h2>",
            f'<p class="note">{esc(str(run.path))}</p>',
            "<h3>Configuration</h3>",
            f"<pre>{esc(json.dumps(run.config, indent=2, sort_keys=True))}</pre>",
            _images(figures, f"run:{run.label}"),
        ]
    if errors:
        items = "".join(f"<li>{esc(e)}</li>" for e in errors)
        parts += ["<h2>Figures left out</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)
