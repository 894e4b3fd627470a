"""Robustness sweeps: a learning-rate × batch-size (× seed) grid of runs, and its summary.

Each cell of the grid is an ordinary run directory ``OUTPUT/{method}-lr{lr}-bs{bs}-s{seed}``
written by :func:`monteclora_pyro.training.train`. A cell is finished when its ``metrics.json``
exists (or, for a run stopped by a non-finite loss, its ``failed.json``), and a sweep started
again skips finished cells and resumes interrupted ones from their checkpoints. Cells run in
worker processes on one machine, or as Ray Tune trials (``backend="ray"``); both call
:func:`run_cell`, so a cell's results do not depend on where it ran.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from monteclora_pyro import runs
from monteclora_pyro.analysis.plots import plot_sweep
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import get_task_spec
from monteclora_pyro.files import atomic_write_text
from monteclora_pyro.models.likelihood import get_likelihood
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


def cell_name(method: str, lr: float, batch_size: int, seed: int) -> str:
    """The directory name of a grid cell, e.g. ``lora-lr0.0003-bs16-s0``."""
    return f"{method}-lr{lr:g}-bs{batch_size}-s{seed}"


def grid(
    base: TrainConfig,
    methods: list[str],
    lrs: list[float],
    batch_sizes: list[int],
    seeds: list[int],
    output_dir: str | Path,
) -> list[TrainConfig]:
    """The training configuration of every cell, learning rate outermost then batch size.

    That order finishes every method of one (seed, learning rate, batch size) before the next,
    so an interrupted sweep is balanced across methods. Every field other than method, lr,
    batch size, seed and output directory is taken from ``base``; a local model or data
    directory is made absolute.

    Raises
    ------
    ValueError
        If a list is empty or repeats a value, a method is unknown, or the task is a
        next-token task (the summary compares accuracy, NLL and ECE of class probabilities).
    """
    _refuse_next_token(base.task)
    for name, values in (
        ("methods", methods),
        ("lrs", lrs),
        ("batch_sizes", batch_sizes),
        ("seeds", seeds),
    ):
        if not values:
            raise ValueError(f"the sweep needs at least one value in {name}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} has repeated values: {values}")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; allowed: {', '.join(METHOD_NAMES)}")
    root = Path(output_dir).absolute()
    # Absolute local paths: a Ray trial runs in a working directory of its own.
    local = {
        name: str(Path(getattr(base, name)).absolute())
        for name in ("model", "data_dir")
        if getattr(base, name) is not None and Path(getattr(base, name)).exists()
    }
    return [
        dataclasses.replace(
            base,
            **local,
            method=method,
            lr=lr,
            batch_size=bs,
            seed=seed,
            output_dir=str(root / cell_name(method, lr, bs, seed)),
        )
        for seed in seeds
        for lr in lrs
        for bs in batch_sizes
        for method in methods
    ]


def is_finished(run_dir: str | Path) -> bool:
    """Whether a cell has its final metrics, or stopped for good on a non-finite loss."""
    run_dir = Path(run_dir)
    return (run_dir / runs.METRICS_FILE).is_file() or (run_dir / FAILED_FILE).is_file()


def run_cell(train_cfg: dict, model_cfg: dict, threads: int | None = None) -> dict:
    """Train one cell unless it is finished; returns ``{"run_dir", "status", "seconds"}``.

    Takes plain dictionaries so that it can be sent to a worker process or a Ray trial. An
    interrupted cell resumes from its checkpoint. A non-finite loss writes ``failed.json``
    (the cell counts as diverged) instead of stopping the sweep.
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
    atomic_write_text(run_dir / CELL_FILE, json.dumps(record) + "\n")
    return {"run_dir": str(run_dir), "status": status, "seconds": seconds}


def run_sweep(
    cells: list[TrainConfig],
    model_cfg: MonteCLoRAConfig,
    *,
    workers: int = 1,
    backend: str = "local",
    threads: int | None = None,
) -> list[dict]:
    """Run every unfinished cell; returns one :func:`run_cell` record per cell.

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
    pending = [c for c in cells if not is_finished(c.output_dir)]
    done = [
        {"run_dir": c.output_dir, "status": "skipped", "seconds": 0.0}
        for c in cells
        if is_finished(c.output_dir)
    ]
    logger.info("%d of %d cells to run (%d finished)", len(pending), len(cells), len(done))
    jobs = [(dataclasses.asdict(c), model_cfg.to_dict()) for c in pending]
    if backend == "ray":
        return done + _run_ray(jobs, workers, threads)
    if workers == 1:
        return done + [_logged(run_cell(t, m, threads)) for t, m in jobs]
    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, t, m, threads) for t, m in jobs]
        for future in as_completed(futures):
            results.append(_logged(future.result()))
    return done + results


def _logged(record: dict) -> dict:
    logger.info("%s %s (%.0f s)", record["status"], record["run_dir"], record["seconds"])
    return record


def _run_ray(jobs: list[tuple[dict, dict]], workers: int, threads: int) -> list[dict]:
    try:
        from ray import tune
    except ImportError as err:
        raise RuntimeError(
            "--backend ray needs Ray Tune: pip install 'monteclora-pyro[ray]' "
            "(or pip install 'ray[tune]'); --backend local runs the cells on this machine"
        ) from err

    def trainable(config: dict) -> dict:
        return run_cell(config["train"], config["model"], threads)

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": threads}),
        param_space={
            "train": tune.grid_search([t for t, _ in jobs]),
            "model": jobs[0][1] if jobs else {},
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


def _refuse_next_token(task: str, run_dir: Path | None = None) -> None:
    spec = get_task_spec(task)
    if not get_likelihood(spec.likelihood).class_probabilities:
        where = f"{run_dir} is a run of" if run_dir is not None else "sweeps do not run"
        kind = spec.likelihood.replace("_", "-")
        raise ValueError(
            f"{where} the {kind} task {spec.name}: a sweep summarises accuracy, NLL and ECE "
            f"of class probabilities, which {kind} runs do not have; train {kind} runs "
            f"one by one with `monteclora train` and compare their {runs.METRICS_FILE}"
        )


def collect(output_dir: str | Path) -> list[dict]:
    """One record per cell directory under ``output_dir``: its settings and final metrics.

    Diverged cells (``failed.json``) have ``"failed": True`` and no metrics; unfinished cells
    are left out. A run of a next-token task is refused (``ValueError``).
    """
    records = []
    for run_dir in sorted(Path(output_dir).iterdir()):
        if not runs.is_run(run_dir) or not is_finished(run_dir):
            continue
        cfg, _ = load_run_config(run_dir)
        _refuse_next_token(cfg.task, run_dir)
        record = {
            "run_dir": run_dir.name,
            "method": cfg.method,
            "task": cfg.task,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "failed": not (run_dir / runs.METRICS_FILE).is_file(),
        }
        if not record["failed"]:
            metrics = runs.read_metrics(run_dir)
            record.update({mode: metrics[mode] for mode in MODES})
        cell = run_dir / CELL_FILE
        if cell.is_file():
            record["seconds"] = json.loads(cell.read_text())["seconds"]
        records.append(record)
    return records


def summarize(records: list[dict]) -> dict:
    """Best, median and spread (max − min) of each metric, per method and prediction mode.

    Best is the maximum accuracy and the minimum NLL and ECE. Diverged cells count in
    ``failed`` and are left out of the statistics.

    Returns
    -------
    dict
        ``{method: {"cells": n, "failed": n_failed, "seconds_median": s or None,
        mode: {metric: {"best", "median", "spread", "min", "max"}}}}``.
    """
    summary = {}
    for method in sorted({r["method"] for r in records}, key=_method_order):
        rows = [r for r in records if r["method"] == method]
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
        summary[method] = entry
    return summary


def _method_order(method: str) -> tuple[int, str]:
    return (METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES), method)


def format_summary(summary: dict, mode: str | None = None) -> str:
    """The summary as a Markdown table: one row per method and prediction mode."""
    modes = MODES if mode is None else (mode,)
    stats = ("best", "median", "spread")
    columns = ["method", "mode", "cells"]
    columns += [f"{metric} {stat}" for metric in SWEEP_METRICS for stat in stats]
    rows = []
    for method, entry in summary.items():
        cells = f"{entry['cells'] - entry['failed']}"
        if entry["failed"]:
            cells += f" (+{entry['failed']} diverged)"
        for m in modes:
            row = {"method": method, "mode": m, "cells": cells}
            for metric in SWEEP_METRICS:
                values = entry[m].get(metric, {})
                row |= {f"{metric} {stat}": values.get(stat) for stat in stats}
            rows.append(row)
    return format_table(rows, columns, markdown=True)


def write_summary(output_dir: str | Path) -> dict:
    """Collect the cells of a sweep; write ``summary.json``, ``summary.md`` and ``sweep.png``.

    The plot is redrawn only when a cell finished after it was last drawn.
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
        methods = sorted({r["method"] for r in records}, key=_method_order)
        plot_sweep(records, methods, SWEEP_METRICS).savefig(plot, dpi=SWEEP_PLOT_DPI)
    return summary


def spread_ratio(summary: dict, method: str, reference: str, metric: str, mode: str) -> float:
    """``spread(method) / spread(reference)`` of a metric (NaN when undefined)."""
    try:
        a = summary[method][mode][metric]["spread"]
        b = summary[reference][mode][metric]["spread"]
    except KeyError:
        return math.nan
    return a / b if b > 0 else math.nan
