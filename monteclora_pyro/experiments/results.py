"""``docs/results.md``: the robustness tables of finished sweeps, generated from their files."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.experiments.grid import axis_order, axis_text, group_label
from monteclora_pyro.experiments.sweep import (
    SWEEP_METRICS,
    SWEEP_PLOT,
    collect,
    format_summary,
    spread_ratio,
    summarize,
    write_summary,
)
from monteclora_pyro.files import atomic_write_text
from monteclora_pyro.runs import MODES
from monteclora_pyro.training import TrainConfig, load_run_config

SWEPT = ("task", "method", "lr", "batch_size", "seed", "output_dir")
SETTINGS = (
    "model",
    "epochs",
    "max_steps",
    "max_train_examples",
    "max_eval_examples",
    "eval_split",
    "max_length",
    "num_samples",
    "optimizer",
    "weight_decay",
    "warmup_ratio",
)


def sweep_command(
    cfg: TrainConfig,
    model_cfg: MonteCLoRAConfig,
    grid: dict[str, list],
    sweep_dir: Path,
    axes: Mapping[str, Sequence] | None = None,
    varying: Collection[str] = (),
) -> str:
    """The ``monteclora sweep`` command that (re)runs a sweep's cells with their settings.

    Parameters
    ----------
    cfg, model_cfg : TrainConfig, MonteCLoRAConfig
        The configurations of one cell; options are their fields that differ from the
        defaults, except those of the grid, of ``axes`` and in ``varying``.
    grid : dict
        ``{flag: values}`` of the grid's own options (``methods``, ``lrs``, ...).
    sweep_dir : path-like
        The sweep directory.
    axes : mapping, optional
        The extra axes ``{field: values}``, given as ``--grid field=v1,v2``.
    varying : collection of str
        Fields that differ between cells (set by an objective's preset), left out.
    """
    axes = axes or {}
    parts = ["monteclora", "sweep", "--task", cfg.task]
    left_out = {*axes, *varying}
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(cfg, field.name)
        if field.name not in (*SWEPT, *left_out) and value != getattr(defaults, field.name):
            parts += ["--" + field.name.replace("_", "-"), str(value)]
    model_defaults = MonteCLoRAConfig()
    for field in dataclasses.fields(MonteCLoRAConfig):
        value = getattr(model_cfg, field.name)
        lists = ("target_modules", "modules_to_save")
        if field.name not in (*lists, *left_out) and value != getattr(model_defaults, field.name):
            parts += ["--" + field.name.replace("_", "-"), str(value)]
    for flag, values in grid.items():
        parts += [
            f"--{flag}",
            ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values),
        ]
    for field, values in axes.items():
        parts += ["--grid", f"{field}={','.join(axis_text(v) for v in values)}"]
    parts += ["--output-dir", str(sweep_dir)]
    return shlex.join(parts)


def sweep_section(sweep_dir: str | Path, doc_dir: Path) -> str:
    """The Markdown section of one sweep: settings, grid, summary table, spread ratios."""
    sweep_dir = Path(sweep_dir)
    records = collect(sweep_dir)
    if not records:
        raise ValueError(f"{sweep_dir} holds no finished sweep cell")
    write_summary(sweep_dir)
    summary = summarize(records)
    finished = [sweep_dir / r["run_dir"] for r in records if not r["failed"]]
    first = finished[0] if finished else sweep_dir / records[0]["run_dir"]
    cfg, model_cfg = load_run_config(first)
    varying = _varying_fields([sweep_dir / r["run_dir"] for r in records])
    names = list(dict.fromkeys(a for r in records for a in r.get("axes", {})))
    axes = {a: sorted({r["axes"][a] for r in records}, key=axis_order) for a in names}
    methods = list(summary)
    lrs = sorted({r["lr"] for r in records})
    sizes = sorted({r["batch_size"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    baseline = ""
    if finished:
        labels = runs.read_predictions(first).labels
        baseline = (
            f"Majority-class accuracy on this evaluation set ({len(labels)} examples): "
            f"{np.bincount(labels).max() / len(labels):.4f}; "
        )
    counts = ", ".join(f"{m}: {summary[m]['cells']}" for m in methods)
    settings = ", ".join(f"`{k}={getattr(cfg, k)}`" for k in SETTINGS if k not in varying)
    shown = {"r": "r", "num_components": "K", "sample_scaler": "sample_scaler"}
    shown["kl_loss_weight"] = "kl_loss_weight"
    monteclora = ", ".join(
        f"`{label}={getattr(model_cfg, field)}`"
        for field, label in shown.items()
        if field not in varying
    )
    method_names = list(dict.fromkeys(summary[m].get("method", m) for m in methods))
    grid = {"methods": method_names, "lrs": lrs, "batch-sizes": sizes, "seeds": seeds}
    command = sweep_command(cfg, model_cfg, grid, sweep_dir, axes, varying)
    extra = "".join(f"; {a} {', '.join(map(axis_text, v))}" for a, v in axes.items())
    lines = [
        f"## {cfg.task.upper()} ({sweep_dir})",
        "",
        f"Finished cells: {len(records)} ({counts}); learning rates "
        f"{', '.join(f'{lr:g}' for lr in lrs)}; batch sizes "
        f"{', '.join(map(str, sizes))}; seeds {', '.join(map(str, seeds))}{extra}.",
        "",
        f"Settings shared by every cell: {settings}"
        + (f"; MonteCLoRA {monteclora}." if monteclora else "."),
        "",
        "The cells were run with (running it again skips finished cells):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{baseline}an NLL of ln 2 = 0.6931 is a constant 50/50 prediction.",
        "",
        "Best = highest accuracy, lowest NLL and ECE over the grid; spread = max − min (smaller is "
        "more robust). PEFT's methods and our LoRA have one deterministic prediction, so their "
        "two modes coincide.",
        "",
        format_summary(summary),
        "",
    ]
    # Each row is compared with the lora row of the same extra-axis values.
    lora = {m: group_label("lora", summary[m].get("axes")) for m in methods}
    if "lora" in method_names:
        ratios = []
        for method in methods:
            if summary[method].get("method", method) == "lora":
                continue
            cells = ", ".join(
                f"{metric} "
                f"{spread_ratio(summary, method, lora[method], metric, 'posterior_mean'):.2f}"
                for metric in SWEEP_METRICS
            )
            ratios.append(f"- {method}: {cells}")
        lines += ["Spread relative to our LoRA (posterior mean; < 1 is more robust):", ""]
        lines += [*ratios, ""]
    times = {m: summary[m]["seconds_median"] for m in methods if summary[m]["seconds_median"]}
    if times:
        cells = ", ".join(
            f"{m} {t:.0f} s" + (f" ({t / times[lora[m]]:.2f}× lora)" if times.get(lora[m]) else "")
            for m, t in times.items()
        )
        lines += [
            f"Median wall time per cell (loading, training and evaluation, which for our "
            f"MonteCLoRA includes S = {cfg.num_samples} posterior draws of the evaluation set; "
            f"cells ran two at a time on a shared machine, so this is a rough figure): {cells}.",
            "",
        ]
    plot = doc_dir / f"sweep-{cfg.task}.png"
    shutil.copyfile(sweep_dir / SWEEP_PLOT, plot)
    lines += [
        f"![{cfg.task} sweep]({plot.name}) (each metric against the learning rate: median over "
        "batch sizes and seeds, band from min to max)",
        "",
    ]
    columns = [f"{m} ({mode[10:]})" for mode in MODES for m in SWEEP_METRICS]
    rows = [_cell_row(r, columns) for r in records]
    per_cell = format_table(rows, ["cell", *columns], markdown=True)
    lines += ["<details><summary>Every cell</summary>", "", per_cell, "", "</details>", ""]
    return "\n".join(lines)


def _varying_fields(run_dirs: list[Path]) -> set[str]:
    """Configuration fields whose values differ between the runs."""
    values: dict[str, set[str]] = {}
    for run_dir in run_dirs:
        for config in load_run_config(run_dir):
            for field in dataclasses.fields(config):
                values.setdefault(field.name, set()).add(repr(getattr(config, field.name)))
    return {field for field, seen in values.items() if len(seen) > 1}


def _cell_row(record: dict, columns: list[str]) -> dict:
    if record["failed"]:
        values = ["diverged"] * len(columns)
    else:
        values = [record[mode][m] for mode in MODES for m in SWEEP_METRICS]
    return {"cell": record["run_dir"], **dict(zip(columns, values, strict=True))}


def write_results(sweep_dirs: list[str | Path], output: str | Path, command: str) -> Path:
    """Write the results page of ``sweep_dirs`` to ``output``, naming ``command``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sections = [sweep_section(d, output.parent) for d in sweep_dirs]
    header = [
        "# Robustness results",
        "",
        "Generated from the sweep directories' files (do not edit by hand); regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    atomic_write_text(output, "\n".join(header + sections))
    return output
