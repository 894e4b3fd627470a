"""A self-contained HTML report of one or several finished runs.

Reads what a run directory holds (``config.json``, ``metrics.json``, ``predictions.npz``,
``history.jsonl`` and ``evaluations/{task}-{split}/``), writes every applicable figure of
:mod:`monteclora_pyro.analysis.plots` as PNG and one ``report.html`` with the PNGs
embedded. Posterior figures need an :class:`arviz.InferenceData` (from
``to_inference_data``); without one they are left out. Never imports training code.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import numpy as np

from monteclora_pyro import metrics
from monteclora_pyro.analysis import plots

__all__ = [
    "OOD_DOMAINS",
    "RunData",
    "format_summary",
    "load_run",
    "read_history",
    "summary_tables",
    "write_report",
]

OOD_DOMAINS = ("tweets", "amazon", "nyt")
MODES = {"posterior_mean": "posterior mean", "posterior_predictive": "posterior predictive"}
METRIC_COLUMNS = ("accuracy", "nll", "ece", "brier")
METRIC_HEADERS = {"accuracy": "accuracy", "nll": "NLL", "ece": "ECE", "brier": "Brier"}
OOD_SCORES = ("predictive entropy", "mutual information", "1 - max prob")
DPI = 100


# ------------------------------------------------------------------------------ loading


@dataclass
class Evaluation:
    """Predictions (and metrics) on one split: ``labels``, ``mean_probs``, ``draw_probs``."""

    name: str
    labels: np.ndarray
    mean_probs: np.ndarray
    draw_probs: np.ndarray
    metrics: dict = field(default_factory=dict)

    @property
    def predictive_probs(self) -> np.ndarray:
        """Posterior predictive: the mean of the per-draw probabilities."""
        return self.draw_probs.mean(0)

    def mode_probs(self, mode: str) -> np.ndarray:
        """Probabilities of ``"posterior_mean"`` or ``"posterior_predictive"``."""
        return self.mean_probs if mode == "posterior_mean" else self.predictive_probs

    def mode_metrics(self, mode: str) -> dict:
        """Metrics of a prediction mode: from ``metrics.json``, else computed."""
        saved = self.metrics.get(mode)
        if isinstance(saved, dict) and all(k in saved for k in METRIC_COLUMNS):
            return saved
        return metrics.classification_report(self.mode_probs(mode), self.labels)


@dataclass
class RunData:
    """What a run directory holds, as loaded by :func:`load_run`."""

    path: Path
    label: str
    config: dict
    metrics: dict
    evaluation: Evaluation | None
    shifted: dict[str, Evaluation]
    history: dict[str, np.ndarray]

    @property
    def method(self) -> str:
        """``"monteclora"`` or ``"lora"`` (from the config or metrics)."""
        train = self.config.get("train", {}) if isinstance(self.config, dict) else {}
        return str(train.get("method") or self.metrics.get("method") or "unknown")

    @property
    def task(self) -> str:
        """The task the run was trained on."""
        train = self.config.get("train", {}) if isinstance(self.config, dict) else {}
        return str(train.get("task") or self.metrics.get("task") or "unknown")

    @property
    def single_draw(self) -> bool:
        """Whether there is no posterior predictive beyond the mean (LoRA, or S = 1)."""
        return self.method == "lora" or (
            self.evaluation is not None and self.evaluation.draw_probs.shape[0] == 1
        )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_evaluation(directory: Path, name: str) -> Evaluation | None:
    npz = directory / "predictions.npz"
    if not npz.is_file():
        return None
    with np.load(npz) as data:
        labels = np.asarray(data["labels"]).astype(np.int64)
        mean_probs = np.asarray(data["mean_probs"], dtype=np.float64)
        draw_probs = np.asarray(data["draw_probs"], dtype=np.float64)
    return Evaluation(name, labels, mean_probs, draw_probs, _read_json(directory / "metrics.json"))


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """Training records of ``history.jsonl`` as arrays per key (``step`` included).

    Parameters
    ----------
    path : str or Path
        The ``history.jsonl`` file or its run directory.

    Returns
    -------
    dict of str to numpy.ndarray
        Numeric fields of the ``"kind": "train"`` lines; a missing value is NaN.
        Empty when there is no file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "history.jsonl"
    if not path.is_file():
        return {}
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            record = json.loads(line)
            if record.get("kind", "train") == "train":
                records.append(record)
    keys: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in keys and isinstance(value, int | float) and not isinstance(value, bool):
                keys.append(key)
    return {
        key: np.array([float(r.get(key, math.nan)) for r in records], dtype=np.float64)
        for key in keys
    }


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def load_run(run_dir: str | Path, label: str | None = None) -> RunData:
    """Load the files of one run directory (missing ones give empty values).

    Parameters
    ----------
    run_dir : str or Path
        A finished run.
    label : str, optional
        Name in tables and figures; the directory name by default.

    Returns
    -------
    RunData
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a run directory")
    shifted = {}
    evaluations = path / "evaluations"
    if evaluations.is_dir():
        for sub in sorted(evaluations.iterdir()):
            if sub.is_dir():
                evaluation = _read_evaluation(sub, sub.name)
                if evaluation is not None:
                    shifted[sub.name] = evaluation
    return RunData(
        path=path,
        label=label or path.name,
        config=_read_json(path / "config.json"),
        metrics=_read_json(path / "metrics.json"),
        evaluation=_read_evaluation(path, "in-domain"),
        shifted=shifted,
        history=read_history(path),
    )


def _load_runs(run_dirs) -> list[RunData]:
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("no run directories given")
    return [load_run(p, label) for p, label in zip(paths, _labels(paths), strict=True)]


# ------------------------------------------------------------------------------- tables


def _ood_scores(draw_probs: np.ndarray) -> dict[str, np.ndarray]:
    decomposition = metrics.uncertainty_decomposition(draw_probs)
    return {
        "predictive entropy": decomposition.total,
        "mutual information": decomposition.epistemic,
        "1 - max prob": 1.0 - draw_probs.mean(0).max(axis=1),
    }


def _ood_domains(run: RunData, domains: Sequence[str]) -> list[tuple[str, Evaluation]]:
    found = []
    for domain in domains:
        evaluation = run.shifted.get(f"{domain}-test")
        if evaluation is not None and domain != run.task:
            found.append((domain, evaluation))
    return found


def summary_tables(run_dirs, ood_domains: Sequence[str] = OOD_DOMAINS) -> dict[str, list[dict]]:
    """The report's tables as lists of plain rows (JSON-serialisable).

    Parameters
    ----------
    run_dirs : path or sequence of paths
        Finished run directories.
    ood_domains : sequence of str
        Domains ``d`` whose ``evaluations/{d}-test`` predictions count as
        out-of-distribution against the run's own evaluation split.

    Returns
    -------
    dict
        ``"runs"`` (run, method, task, split, num_examples, num_samples, steps, path),
        ``"metrics"`` (run, method, mode, accuracy, nll, ece, brier; both prediction
        modes), ``"shifted"`` (the same per ``evaluations/*`` split), ``"ood"`` (run,
        domain, score, auroc, n_in, n_out: AUROC of predictive entropy, mutual
        information and 1 - max probability, in-domain against each domain),
        ``"uncertainty"`` (run, split, mean total, aleatoric and epistemic entropy of the
        posterior predictive, in nats) and ``"selective"`` (run, mode, area under the
        accuracy-coverage curve of the top-class probability).
    """
    runs = _load_runs(run_dirs)
    tables: dict[str, list[dict]] = {
        "runs": [],
        "metrics": [],
        "shifted": [],
        "ood": [],
        "uncertainty": [],
        "selective": [],
    }
    for run in runs:
        m = run.metrics
        ev = run.evaluation
        tables["runs"].append(
            {
                "run": run.label,
                "method": run.method,
                "task": run.task,
                "split": m.get("split", run.config.get("train", {}).get("eval_split", "")),
                "num_examples": m.get("num_examples", None if ev is None else len(ev.labels)),
                "num_samples": m.get("num_samples", None if ev is None else ev.draw_probs.shape[0]),
                "steps": m.get("steps"),
                "path": str(run.path),
            }
        )
        for mode, mode_name in MODES.items():
            values = _mode_values(ev, mode, m)
            if values:
                tables["metrics"].append(
                    {"run": run.label, "method": run.method, "mode": mode_name, **values}
                )
        for name, source in run.shifted.items():
            for mode, mode_name in MODES.items():
                values = _mode_values(source, mode, source.metrics)
                tables["shifted"].append(
                    {"run": run.label, "method": run.method, "split": name, "mode": mode_name}
                    | values
                )
        if ev is None:
            continue
        for split, source in [("in-domain", ev), *run.shifted.items()]:
            decomposition = metrics.uncertainty_decomposition(source.draw_probs)
            tables["uncertainty"].append(
                {
                    "run": run.label,
                    "method": run.method,
                    "split": split,
                    "total": float(decomposition.total.mean()),
                    "aleatoric": float(decomposition.aleatoric.mean()),
                    "epistemic": float(decomposition.epistemic.mean()),
                }
            )
        for mode, mode_name in MODES.items():
            probs = ev.mode_probs(mode)
            tables["selective"].append(
                {
                    "run": run.label,
                    "method": run.method,
                    "mode": mode_name,
                    "area": metrics.area_under_accuracy_coverage(
                        probs.max(axis=1), probs.argmax(axis=1) == ev.labels
                    ),
                }
            )
        scores_in = _ood_scores(ev.draw_probs)
        for domain, shifted in _ood_domains(run, ood_domains):
            scores_out = _ood_scores(shifted.draw_probs)
            for score in OOD_SCORES:
                tables["ood"].append(
                    {
                        "run": run.label,
                        "method": run.method,
                        "domain": domain,
                        "score": score,
                        "auroc": metrics.auroc(scores_in[score], scores_out[score]),
                        "n_in": len(ev.labels),
                        "n_out": len(shifted.labels),
                    }
                )
    return tables


def _mode_values(source: Evaluation | None, mode: str, saved: dict) -> dict:
    """Accuracy, NLL, ECE and Brier of a mode: saved in metrics.json, else computed."""
    block = saved.get(mode)
    if isinstance(block, dict) and all(k in block for k in METRIC_COLUMNS):
        return {k: float(block[k]) for k in METRIC_COLUMNS}
    if source is None:
        return {}
    report = source.mode_metrics(mode)
    return {k: float(report[k]) for k in METRIC_COLUMNS}


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def format_summary(tables: dict[str, list[dict]]) -> str:
    """Plain-text rendering of :func:`summary_tables` (for a terminal).

    Parameters
    ----------
    tables : dict
        As returned by :func:`summary_tables`.

    Returns
    -------
    str
    """
    blocks = []
    for name, rows in tables.items():
        if not rows:
            continue
        columns = [c for c in rows[0] if c != "path"]
        cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        lines = [name, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# -------------------------------------------------------------------------------- figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _curve_sets(run: RunData, with_label: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Prediction modes of a run, ``{name: (probs, labels)}``; one for LoRA-like runs."""
    ev = run.evaluation
    prefix = f"{run.label} ({run.method})" if with_label else ""
    if run.single_draw:
        name = prefix or ("LoRA" if run.method == "lora" else "posterior mean")
        return {name: (ev.mean_probs, ev.labels)}
    return {
        f"{prefix}: {mode}" if prefix else mode: (ev.mode_probs(key), ev.labels)
        for key, mode in MODES.items()
    }


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


def _posterior_figures(figs: _Figures, idata: az.InferenceData) -> None:
    if idata is None or "posterior" not in idata.groups():
        return
    kinds = [k for k in plots.KINDS if plots.layer_sites(idata, k)]
    for kind in kinds:
        figs.add(
            "posterior",
            f"prior_posterior_{kind}",
            f"{kind}: prior vs posterior",
            lambda kind=kind: plots.plot_prior_posterior(idata, kind),
        )
    for kind in kinds:
        figs.add(
            "posterior",
            f"forest_{kind}",
            f"{kind} per layer",
            lambda kind=kind: plots.plot_forest_layers(idata, kind),
        )
    if kinds:
        figs.add("posterior", "rank", "rank plots across chains", lambda: plots.plot_rank(idata))
    if "training" in idata.groups():
        figs.add(
            "posterior",
            "training_chains",
            "training curves of all chains",
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
    ev = run.evaluation
    if ev is None:
        return
    if reliability:
        figs.add(
            section,
            f"{slug}_reliability",
            "reliability",
            lambda: plots.plot_reliability(_curve_sets(run, with_label=False)),
        )
    probs = ev.predictive_probs
    correct = probs.argmax(axis=1) == ev.labels
    scores = _ood_scores(ev.draw_probs)
    if run.single_draw:
        scores.pop("mutual information")
    figs.add(
        section,
        f"{slug}_uncertainty",
        "uncertainty of correct and wrong predictions",
        lambda: plots.plot_uncertainty_histograms(scores, correct),
    )
    domains = [(name, e) for name, e in run.shifted.items()]
    if domains:
        curves = {"in-domain": (ev.predictive_probs, ev.labels)}
        curves |= {name: (e.predictive_probs, e.labels) for name, e in domains}
        figs.add(
            section,
            f"{slug}_reliability_shifted",
            "reliability under domain shift (posterior predictive)",
            lambda: plots.plot_reliability(curves),
        )


def _comparison_figures(figs: _Figures, runs: list[RunData]) -> None:
    with_predictions = [r for r in runs if r.evaluation is not None]
    if not with_predictions:
        return
    many = len(runs) > 1
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


# ----------------------------------------------------------------------------------- HTML


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

_LOWER_IS_BETTER = {"nll", "ece", "brier"}


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
            cells.append(f'<td class="{cls}">{html.escape(_fmt(value))}</td>')
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


def _images(figs: _Figures, section: str) -> str:
    return "".join(_img(caption, path) for caption, path in figs.sections.get(section, []))


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
    return _table(rows, ["variable", *[str(c) for c in frame.columns]])


def _comparison_table(tables: dict) -> str:
    """Metrics (rows) against runs (columns), posterior predictive mode."""
    rows = [r for r in tables["metrics"] if r["mode"] == "posterior predictive"]
    runs = [r["run"] for r in rows]
    out = []
    for metric in METRIC_COLUMNS:
        row = {"metric": METRIC_HEADERS[metric]}
        row |= {r["run"]: r[metric] for r in rows}
        out.append(row)
    parts = []
    for row, metric in zip(out, METRIC_COLUMNS, strict=True):
        values = [row[r] for r in runs if math.isfinite(row[r])]
        best = (min if metric in _LOWER_IS_BETTER else max)(values) if values else None
        cells = "".join(
            f'<td class="{"best" if row[r] == best and len(values) > 1 else ""}">'
            f"{html.escape(_fmt(row[r]))}</td>"
            for r in runs
        )
        parts.append(f'<tr><td class="text">{html.escape(row["metric"])}</td>{cells}</tr>')
    head = "".join(f"<th>{html.escape(r)}</th>" for r in runs)
    return f'<table><tr><th class="text">metric</th>{head}</tr>{"".join(parts)}</table>'


def _html(runs: list[RunData], tables: dict, figs: _Figures, idata) -> str:
    esc = html.escape
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
        "class probabilities averaged over posterior draws. ECE with 15 uniform bins.</p>",
        _table(
            tables["metrics"],
            ["run", "method", "mode", *METRIC_COLUMNS],
            METRIC_HEADERS,
            best=METRIC_COLUMNS if len(runs) > 1 else (),
        ),
    ]
    if len(runs) > 1:
        parts += [
            "<h2>Comparison</h2>",
            '<p class="note">posterior predictive of each run; best value in bold.</p>',
            _comparison_table(tables),
        ]
    parts += [_images(figs, "comparison")]
    parts += [
        "<h2>Selective prediction</h2>",
        '<p class="note">area under the accuracy–coverage curve of the top-class probability.</p>',
        _table(tables["selective"], ["run", "method", "mode", "area"]),
        "<h2>Domain shift</h2>",
        _table(
            tables["shifted"], ["run", "method", "split", "mode", *METRIC_COLUMNS], METRIC_HEADERS
        ),
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
        '<p class="note">mean entropy per example in nats: total (predictive entropy) = '
        "aleatoric (expected entropy) + epistemic (mutual information).</p>",
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
        parts += [_images(figs, "posterior"), _posterior_table(idata)]
    for run in runs:
        parts += [
            f"<h2>Run {esc(run.label)} ({esc(run.method)})</h2>",
            f'<p class="note">{esc(str(run.path))}</p>',
            "<h3>Configuration</h3>",
            f"<pre>{esc(json.dumps(run.config, indent=2, sort_keys=True))}</pre>",
            _images(figs, f"run:{run.label}"),
        ]
    if figs.errors:
        items = "".join(f"<li>{esc(e)}</li>" for e in figs.errors)
        parts += ["<h2>Figures left out</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


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
    runs = _load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = summary_tables([r.path for r in runs])
    figs = _Figures(out)
    _comparison_figures(figs, runs)
    _posterior_figures(figs, idata)
    for run in runs:
        # With one or two runs the comparison figure already shows each run's modes.
        _run_figures(figs, run, reliability=len(runs) > 2)
    path = out / "report.html"
    path.write_text(_html(runs, tables, figs, idata), encoding="utf-8")
    return path
