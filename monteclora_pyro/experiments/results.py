"""``docs/results.md``: the robustness tables of finished sweeps, generated from their files."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from pathlib import Path

import numpy as np

from monteclora_pyro import runs
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.config import MonteCLoRAConfig
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
) -> str:
    """The ``monteclora sweep`` command that (re)runs a sweep's cells with their settings."""
    parts = ["monteclora", "sweep", "--task", cfg.task]
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(cfg, field.name)
        if field.name not in SWEPT and value != getattr(defaults, field.name):
            parts += ["--" + field.name.replace("_", "-"), str(value)]
    model_defaults = MonteCLoRAConfig()
    for field in dataclasses.fields(MonteCLoRAConfig):
        value = getattr(model_cfg, field.name)
        if field.name not in ("target_modules", "modules_to_save") and value != getattr(
            model_defaults, field.name
        ):
            parts += ["--" + field.name.replace("_", "-"), str(value)]
    for flag, values in grid.items():
        parts += [
            f"--{flag}",
            ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values),
        ]
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
    settings = ", ".join(f"`{k}={getattr(cfg, k)}`" for k in SETTINGS)
    grid = {"methods": methods, "lrs": lrs, "batch-sizes": sizes, "seeds": seeds}
    command = sweep_command(cfg, model_cfg, grid, sweep_dir)
    lines = [
        f"## {cfg.task.upper()} ({sweep_dir})",
        "",
        f"Finished cells: {len(records)} ({counts}); learning rates "
        f"{', '.join(f'{lr:g}' for lr in lrs)}; batch sizes "
        f"{', '.join(map(str, sizes))}; seeds {', '.join(map(str, seeds))}.",
        "",
        f"Settings shared by every cell: {settings}; MonteCLoRA `r={model_cfg.r}`, "
        f"`K={model_cfg.num_components}`, `sample_scaler={model_cfg.sample_scaler}`, "
        f"`kl_loss_weight={model_cfg.kl_loss_weight}`.",
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
    if "lora" in summary:
        ratios = []
        for method in methods:
            if method == "lora":
                continue
            cells = ", ".join(
                f"{metric} {spread_ratio(summary, method, 'lora', metric, 'posterior_mean'):.2f}"
                for metric in SWEEP_METRICS
            )
            ratios.append(f"- {method}: {cells}")
        lines += ["Spread relative to our LoRA (posterior mean; < 1 is more robust):", ""]
        lines += [*ratios, ""]
    times = {m: summary[m]["seconds_median"] for m in methods if summary[m]["seconds_median"]}
    if times:
        base = times.get("lora")
        cells = ", ".join(
            f"{m} {t:.0f} s" + (f" ({t / base:.2f}× lora)" if base else "")
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
