"""Robustness sweeps: a learning-rate × batch-size (× seed) grid of runs, and its summary.

Each cell of the grid is an ordinary run directory ``OUTPUT/{method}-lr{lr}-bs{bs}-s{seed}``
written by :func:`monteclora_pyro.training.train`; extra axes over other fields of the
configurations (:mod:`monteclora_pyro.experiments.grid`) add ``-{field}{value}`` to the name,
and the summary has one row per method and combination of their values. A cell is finished
when its ``metrics.json`` exists (or, for a run stopped by a non-finite loss, its
``failed.json``), and a sweep started again skips finished cells and resumes interrupted ones
from their checkpoints. Cells run in worker processes on one machine, or as Ray Tune trials
(``backend="ray"``); both call :func:`run_cell`, so a cell's results do not depend on where
it ran.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from monteclora_pyro import runs
from monteclora_pyro.analysis.plots import plot_sweep
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.experiments.grid import (
    Cell,
    axis_order,
    axis_text,
    group_label,
    refuse_next_token,
)

# Re-exported: building the grid is part of this module's interface.
from monteclora_pyro.experiments.grid import cell_name as cell_name
from monteclora_pyro.experiments.grid import grid as grid
from monteclora_pyro.experiments.grid import grid_cells as grid_cells
from monteclora_pyro.files import atomic_write_text
from monteclora_pyro.runs import MODES
from monteclora_pyro.training import (
    METHOD_NAMES,
    TrainConfig,
    TrainingError,
    load_run_config,
    train,
)

logger = logging.getLogger(__name__)

SWEEP_METRICS = ("accuracy", "nll", "ece")
HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "ece": False}
FAILED_FILE = "failed.json"
CELL_FILE = "sweep_cell.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
SWEEP_PLOT = "sweep.png"
SWEEP_PLOT_DPI = 110
BACKENDS = ("local", "ray")


def is_finished(run_dir: str | Path) -> bool:
    """Whether a cell has its final metrics, or stopped for good on a non-finite loss."""
    run_dir = Path(run_dir)
    return (run_dir / runs.METRICS_FILE).is_file() or (run_dir / FAILED_FILE).is_file()


def run_cell(
    train_cfg: dict, model_cfg: dict, threads: int | None = None, axes: Sequence[str] = ()
) -> dict:
    """Train one cell unless it is finished; returns ``{"run_dir", "status", "seconds"}``.

    Takes plain data so that it can be sent to a worker process or a Ray trial. An
    interrupted cell resumes from its checkpoint. A non-finite loss writes ``failed.json``
    (the cell counts as diverged) instead of stopping the sweep. ``sweep_cell.json`` records
    the time and the names of the extra ``axes``, whose values :func:`collect` reads from
    the run's ``config.json``.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    cfg = TrainConfig(**train_cfg)
    run_dir = Path(cfg.output_dir)
    if is_finished(run_dir):
        return {"run_dir": str(run_dir), "status": "skipped", "seconds": 0.0}
    # An interrupted cell resumes from its checkpoint, or starts afresh if it died before one.
    resume = run_dir.exists()
    start = time.perf_counter()
    try:
        train(cfg, MonteCLoRAConfig.from_dict(model_cfg), resume=resume, progress=False)
        status = "finished"
    except TrainingError as err:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / FAILED_FILE, json.dumps({"error": str(err)}) + "\n")
        status = "failed"
    seconds = time.perf_counter() - start
    record = {"status": status, "seconds": seconds, "threads": torch.get_num_threads()}
    record["axes"] = list(axes)  # their values are in config.json
    atomic_write_text(run_dir / CELL_FILE, json.dumps(record) + "\n")
    return {"run_dir": str(run_dir), "status": status, "seconds": seconds}


def run_sweep(
    cells: Sequence[Cell | TrainConfig],
    model_cfg: MonteCLoRAConfig | None = None,
    *,
    workers: int = 1,
    backend: str = "local",
    threads: int | None = None,
) -> list[dict]:
    """Run every unfinished cell; returns one :func:`run_cell` record per cell.

    ``cells`` are :class:`Cell` objects, or training configurations that share ``model_cfg``.
    ``workers`` cells run at once, each with ``threads`` torch threads (default: the CPU
    count divided by ``workers``). ``backend="local"`` uses worker processes (none when
    ``workers == 1``); ``backend="ray"`` submits the cells as Ray Tune trials, each asking
    for ``threads`` CPUs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is invalid: allowed values are {BACKENDS}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is invalid: it must be an integer >= 1")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    cells = [c if isinstance(c, Cell) else Cell(c, model_cfg) for c in cells]
    if any(c.model is None for c in cells):
        raise ValueError("cells given as TrainConfig need model_cfg")
    pending = [c for c in cells if not is_finished(c.train.output_dir)]
    done = [
        {"run_dir": c.train.output_dir, "status": "skipped", "seconds": 0.0}
        for c in cells
        if is_finished(c.train.output_dir)
    ]
    logger.info("%d of %d cells to run (%d finished)", len(pending), len(cells), len(done))
    jobs = [(dataclasses.asdict(c.train), c.model.to_dict(), list(c.axes)) for c in pending]
    if backend == "ray":
        return done + _run_ray(jobs, workers, threads)
    if workers == 1:
        return done + [_logged(run_cell(t, m, threads, a)) for t, m, a in jobs]
    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, t, m, threads, a) for t, m, a in jobs]
        for future in as_completed(futures):
            results.append(_logged(future.result()))
    return done + results


def _logged(record: dict) -> dict:
    logger.info("%s %s (%.0f s)", record["status"], record["run_dir"], record["seconds"])
    return record


def _run_ray(jobs: list[tuple[dict, dict, list]], workers: int, threads: int) -> list[dict]:
    try:
        from ray import tune
    except ImportError as err:
        raise RuntimeError(
            "--backend ray needs Ray Tune: pip install 'monteclora-pyro[ray]' "
            "(or pip install 'ray[tune]'); --backend local runs the cells on this machine"
        ) from err

    def trainable(config: dict) -> dict:
        model_cfg, axes = config["model"][Path(config["train"]["output_dir"]).name]
        return run_cell(config["train"], model_cfg, threads, axes)

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": threads}),
        param_space={
            "train": tune.grid_search([t for t, _, _ in jobs]),
            # Each cell's model configuration and axis names, by its directory name.
            "model": {Path(t["output_dir"]).name: [m, a] for t, m, a in jobs},
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=workers),
    )
    results = tuner.fit() if jobs else []
    records = []
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"a Ray trial failed: {result.error}")
        records.append({k: result.metrics[k] for k in ("run_dir", "status", "seconds")})
    return records


def collect(output_dir: str | Path) -> list[dict]:
    """One record per cell directory under ``output_dir``: its settings and final metrics.

    Diverged cells (``failed.json``) have ``"failed": True`` and no metrics; unfinished cells
    are left out. A run of a next-token task is refused (``ValueError``). When cells name extra
    axes (:func:`run_cell`), every record has ``"axes": {field: value}`` over all of them,
    read from its ``config.json``.
    """
    found = sorted(d for d in Path(output_dir).iterdir() if runs.is_run(d) and is_finished(d))
    cell_files = {d: _read_cell_file(d) for d in found}
    axes = list(dict.fromkeys(a for c in cell_files.values() for a in c.get("axes", ())))
    records = []
    for run_dir in found:
        cfg, model_cfg = load_run_config(run_dir)
        refuse_next_token(cfg.task, run_dir)
        record = {
            "run_dir": run_dir.name,
            "method": cfg.method,
            "task": cfg.task,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "failed": not (run_dir / runs.METRICS_FILE).is_file(),
        }
        if axes:
            record["axes"] = {a: getattr(cfg if hasattr(cfg, a) else model_cfg, a) for a in axes}
        if not record["failed"]:
            metrics = runs.read_metrics(run_dir)
            record.update({mode: metrics[mode] for mode in MODES})
        if "seconds" in cell_files[run_dir]:
            record["seconds"] = cell_files[run_dir]["seconds"]
        records.append(record)
    return records


def _read_cell_file(run_dir: Path) -> dict:
    path = run_dir / CELL_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def summarize(records: list[dict]) -> dict:
    """Best, median and spread (max − min) of each metric, per method and prediction mode.

    One group per method and values of the extra axes (records' ``"axes"``), its statistics
    over learning rates, batch sizes and seeds. Best is the maximum accuracy and the minimum
    NLL and ECE. Diverged cells count in ``failed`` and are left out of the statistics.

    Returns
    -------
    dict
        ``{group_label(method, axes): {"cells": n, "failed": n_failed, "seconds_median": s or
        None, mode: {metric: {"best", "median", "spread", "min", "max"}}}}``, in method order
        then axis-value order; with axes, each entry also has ``"method"`` and ``"axes"``.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], tuple(r.get("axes", {}).items())), []).append(r)
    summary = {}
    for method, axes in sorted(groups, key=_group_order):
        rows = groups[(method, axes)]
        ok = [r for r in rows if not r["failed"]]
        seconds = [r["seconds"] for r in rows if "seconds" in r and not r["failed"]]
        entry = {
            "cells": len(rows),
            "failed": len(rows) - len(ok),
            "seconds_median": statistics.median(seconds) if seconds else None,
        }
        for mode in MODES:
            entry[mode] = {}
            for metric in SWEEP_METRICS:
                values = [r[mode][metric] for r in ok]
                if not values:
                    continue
                low, high = min(values), max(values)
                entry[mode][metric] = {
                    "best": high if HIGHER_IS_BETTER[metric] else low,
                    "median": statistics.median(values),
                    "spread": high - low,
                    "min": low,
                    "max": high,
                }
        if axes:
            entry |= {"method": method, "axes": dict(axes)}
        summary[group_label(method, dict(axes))] = entry
    return summary


def _method_order(method: str) -> tuple[int, str]:
    return (METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES), method)


def _group_order(group: tuple[str, tuple]) -> tuple:
    method, axes = group
    return _method_order(method), tuple(axis_order(v) for _, v in axes)


def format_summary(summary: dict, mode: str | None = None) -> str:
    """The summary as a Markdown table: one row per group (method, axis values) and mode."""
    modes = MODES if mode is None else (mode,)
    stats = ("best", "median", "spread")
    axes = list(dict.fromkeys(a for entry in summary.values() for a in entry.get("axes", {})))
    columns = ["method", *axes, "mode", "cells"]
    columns += [f"{metric} {stat}" for metric in SWEEP_METRICS for stat in stats]
    rows = []
    for key, entry in summary.items():
        cells = f"{entry['cells'] - entry['failed']}"
        if entry["failed"]:
            cells += f" (+{entry['failed']} diverged)"
        axis_values = {a: axis_text(v) for a, v in entry.get("axes", {}).items()}
        for m in modes:
            row = {"method": entry.get("method", key), **axis_values, "mode": m, "cells": cells}
            for metric in SWEEP_METRICS:
                values = entry[m].get(metric, {})
                row |= {f"{metric} {stat}": values.get(stat) for stat in stats}
            rows.append(row)
    return format_table(rows, columns, markdown=True)


def write_summary(output_dir: str | Path) -> dict:
    """Collect the cells of a sweep; write ``summary.json``, ``summary.md`` and ``sweep.png``.

    The plot is redrawn only when a cell finished after it was last drawn; it has one line
    per summary group.
    """
    output_dir = Path(output_dir)
    records = collect(output_dir)
    if not records:
        raise ValueError(f"{output_dir} holds no finished sweep cell")
    summary = summarize(records)
    data = {"summary": summary, "cells": records}
    atomic_write_text(output_dir / SUMMARY_JSON, json.dumps(data, indent=2) + "\n")
    atomic_write_text(output_dir / SUMMARY_MD, format_summary(summary) + "\n")
    plot = output_dir / SWEEP_PLOT
    finished = [
        path.stat().st_mtime
        for r in records
        for path in (
            output_dir / r["run_dir"] / runs.METRICS_FILE,
            output_dir / r["run_dir"] / FAILED_FILE,
        )
        if path.is_file()
    ]
    if not plot.is_file() or plot.stat().st_mtime <= max(finished):
        labelled = [{**r, "method": group_label(r["method"], r.get("axes"))} for r in records]
        plot_sweep(labelled, list(summary), SWEEP_METRICS).savefig(plot, dpi=SWEEP_PLOT_DPI)
    return summary


def spread_ratio(summary: dict, method: str, reference: str, metric: str, mode: str) -> float:
    """``spread(method) / spread(reference)`` of a metric (NaN when undefined)."""
    try:
        a = summary[method][mode][metric]["spread"]
        b = summary[reference][mode][metric]["spread"]
    except KeyError:
        return math.nan
    return a / b if b > 0 else math.nan
