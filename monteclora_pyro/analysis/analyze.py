"""``monteclora analyze``: InferenceData, diagnostics, summary tables and the HTML report.

Runs of one method become the chains of one posterior: independent restarts, not MCMC chains
(:data:`~monteclora_pyro.analysis.inference_data.RESTARTS_NOTE`). The held-out fit is the lppd
of the evaluation split (:mod:`~monteclora_pyro.analysis.heldout`); PSIS-LOO is not reported,
as the posterior never conditioned on those examples. Regression runs are analysed from their
Normal draws (:mod:`~monteclora_pyro.analysis.regression`; reliability becomes interval
coverage). Next-token runs (no predictions), PEFT runs (no posterior) and a mix of regression
and classification runs are refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monteclora_pyro import runs
from monteclora_pyro.analysis.convergence import (
    convergence_message,
    convergence_warning,
    last_convergence,
)
from monteclora_pyro.analysis.heldout import HeldOut, heldout, pool_predictions
from monteclora_pyro.analysis.inference_data import (
    RESTARTS_NOTE,
    hyperprior_summary,
    prior_note,
    save_inference_data,
    to_inference_data,
)
from monteclora_pyro.analysis.regression import RegressionHeldOut
from monteclora_pyro.analysis.report import write_report
from monteclora_pyro.analysis.summary import summary_tables

__all__ = [
    "ANALYSIS_DIR",
    "RESTARTS_NOTE",
    "Analysis",
    "MethodAnalysis",
    "analyze_runs",
    "check_analyzable",
]

ANALYSIS_DIR = "analysis"


@dataclass
class MethodAnalysis:
    """The posterior of one method's runs (its chains) and its diagnostics.

    Attributes
    ----------
    method : str
        The method of the runs.
    run_dirs : list of Path
        The runs, one chain (an independent restart) each.
    heldout : HeldOut or RegressionHeldOut
        Held-out lppd, mutual information (regression: epistemic variance) and plug-in
        against predictive gaps on the evaluation split, of the runs' draws pooled (of the
        run itself when there is one).
    warnings : list of str
        Runs whose guide has not converged, with the figures of their last convergence
        record (:func:`~monteclora_pyro.analysis.convergence.convergence_warning`).
    convergence : list of str
        One line per run: its warning, its convergence figures or "no convergence record".
    summary : pandas.DataFrame or None
        ``az.summary`` of the hyperprior sites; None without a posterior (LoRA). Its R-hat
        and ESS compare restarts (``summary.attrs["caption"]``).
    prior_note : str or None
        Whether the prior draws omit the cooperative tilt (None when they omit nothing).
    """

    method: str
    run_dirs: list[Path]
    heldout: HeldOut | RegressionHeldOut
    warnings: list[str]
    convergence: list[str]
    summary: object | None
    prior_note: str | None = None

    def weakest(self, rows: int):
        """The ``rows`` entries of :attr:`summary` with the lowest bulk ESS."""
        return self.summary.sort_values("ess_bulk").head(rows)


@dataclass
class Analysis:
    """What :func:`analyze_runs` found and wrote.

    Attributes
    ----------
    methods : list of MethodAnalysis
        One per method, in the order of the first run of each.
    tables : dict
        :func:`monteclora_pyro.analysis.summary.summary_tables` of every run.
    report : Path
        The ``report.html`` written.
    """

    methods: list[MethodAnalysis]
    tables: dict[str, list[dict]]
    report: Path


def check_analyzable(run_dir: str | Path) -> str:
    """The method of a run that the analysis can read; raise why not otherwise.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a run, or an unfinished one.
    ValueError
        If the run has no class probabilities (a next-token run) or is a PEFT run.
    """
    config = runs.read_config(run_dir)
    train = config["train"]
    if "peft" in config:
        raise ValueError(
            f"{run_dir} is a {train.get('method')} run: PEFT's adapters have no posterior to "
            f"analyse; compare them with ours through `monteclora sweep` or their "
            f"{runs.METRICS_FILE}"
        )
    if not runs.has_predictions(run_dir):
        runs.read_metrics(run_dir)  # an unfinished run: says so
        raise ValueError(
            f"{run_dir} is a run of the next-token task {train.get('task')}: `monteclora "
            f"analyze` needs class probabilities ({runs.PREDICTIONS_FILE}), which next-token "
            f"runs do not write; their per-token NLL and perplexity are in its "
            f"{runs.METRICS_FILE} and {runs.HISTORY_FILE}, and its latent draws in "
            f"{runs.POSTERIOR_SAMPLES_FILE}"
        )
    return train["method"]


def _method_analysis(method: str, dirs: list[Path], summary, note: str | None) -> MethodAnalysis:
    predictions = pool_predictions([runs.read_predictions(d) for d in dirs])
    metrics = runs.read_metrics(dirs[0], missing_ok=True)
    split = metrics.get("split") or runs.read_config(dirs[0])["train"].get("eval_split", "")
    name = dirs[0].name if len(dirs) == 1 else f"{len(dirs)} restarts pooled"
    held = heldout(predictions, name, str(split))
    records = {d: last_convergence(d) for d in dirs}
    warnings = [w for d, r in records.items() if (w := convergence_warning(d.name, r))]
    lines = [convergence_message(d.name, r) for d, r in records.items()]
    return MethodAnalysis(method, dirs, held, warnings, lines, summary, note)


def analyze_runs(run_dirs: list[str | Path], output_dir: str | Path | None = None) -> Analysis:
    """Analyse finished runs: InferenceData files, diagnostics, tables and the HTML report.

    Each run gets its ``inference_data.nc``; the runs of a method with several runs also
    make ``{output_dir}/inference_data-{method}.nc``, their runs being its chains.

    Parameters
    ----------
    run_dirs : list of paths
        Finished classification runs of our methods.
    output_dir : path, optional
        Where the PNGs and ``report.html`` go; ``{first run}/analysis`` by default.

    Returns
    -------
    Analysis
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("no run directories given")
    out = Path(output_dir) if output_dir else run_dirs[0] / ANALYSIS_DIR
    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        groups.setdefault(check_analyzable(run_dir), []).append(run_dir)
    regression = [
        isinstance(runs.read_predictions(d), runs.RegressionPredictions) for d in run_dirs
    ]
    if any(regression) and not all(regression):
        named = ", ".join(str(d) for d, r in zip(run_dirs, regression, strict=True) if r)
        raise ValueError(
            f"regression runs ({named}) and classification runs cannot share one analysis: "
            "their metrics, held-out fit and reliability figures differ; analyse them apart"
        )
    methods, posterior = [], None
    for method, dirs in groups.items():
        for run_dir in dirs:
            save_inference_data(to_inference_data(run_dir), run_dir)
        idata = to_inference_data(dirs)
        if len(dirs) > 1:
            save_inference_data(idata, out, f"inference_data-{method}.nc")
        summary = None
        if "posterior" in idata.groups():
            summary = hyperprior_summary(idata)
            if posterior is None:
                posterior = idata
        methods.append(_method_analysis(method, dirs, summary, prior_note(idata)))
    tables = summary_tables(run_dirs)
    report = write_report(run_dirs, out, idata=posterior)
    return Analysis(methods, tables, report)
