"""The ``monteclora`` command: train, sweep, evaluate, export, ensemble, calibrate and more."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from monteclora_pyro import runs
from monteclora_pyro.analysis.analyze import RESTARTS_NOTE, analyze_runs
from monteclora_pyro.analysis.summary import format_summary
from monteclora_pyro.analysis.tables import format_metrics_table as _format_table
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.cli import post_hoc
from monteclora_pyro.cli.options import (
    GridAxes,
    comma_list,
    configs,
    grid_axes,
    grid_axis,
    model_options,
    train_config,
    train_options,
)
from monteclora_pyro.data import DEFAULT_TASK, SHIFT_DOMAINS
from monteclora_pyro.experiments import sweep
from monteclora_pyro.experiments.demo import run_demo
from monteclora_pyro.experiments.results import write_results
from monteclora_pyro.peft_interop import export_peft_adapter
from monteclora_pyro.training import (
    METHOD_NAMES,
    TrainingError,
    evaluate_run,
    is_main_process,
    train,
)


def cmd_train(args: argparse.Namespace) -> int:
    train_cfg, model_cfg = configs(args)
    metrics = train(train_cfg, model_cfg, resume=args.resume, progress=not args.quiet)
    if is_main_process():  # under accelerate launch / torchrun, rank 0 reports
        print(_format_table({train_cfg.method: metrics}))
        print(f"run directory: {train_cfg.output_dir}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    base, axes = train_config(args), grid_axes(args)
    output_dir = Path(args.output_dir or f"runs/sweep-{base.task}")
    grid = (args.methods, args.lrs, args.batch_sizes, args.seeds, output_dir, axes)
    cells = sweep.grid_cells(base, model_options(args), *grid)
    records = sweep.run_sweep(
        cells, workers=args.workers, backend=args.backend, threads=args.threads
    )
    counts = {s: sum(r["status"] == s for r in records) for s in ("finished", "skipped", "failed")}
    summary = sweep.write_summary(output_dir)
    print(sweep.format_summary(summary))
    print(
        f"\n{len(cells)} cells: {counts['finished']} run now, {counts['skipped']} already "
        f"finished, {counts['failed']} diverged"
    )
    print(f"summary: {output_dir / sweep.SUMMARY_MD}, plot: {output_dir / sweep.SWEEP_PLOT}")
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    path = write_results(
        args.sweep_dirs, args.output, command=shlex.join(["monteclora", *args.argv])
    )
    print(f"written to {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_run(
        args.run_dir,
        args.task,
        args.split,
        data_dir=args.data_dir,
        num_samples=args.num_samples,
        max_examples=args.max_eval_examples,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(_format_table({f"{metrics['task']}/{metrics['split']}": metrics}))
    print(f"written to {runs.evaluation_dir(args.run_dir, metrics['task'], metrics['split'])}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = export_peft_adapter(args.run_dir, args.peft, overwrite=args.overwrite)
    print(f"PEFT LoRA adapter (posterior mean) written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(
        args.output_dir,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
        epochs=args.epochs,
        max_length=args.max_length,
        num_samples=args.num_samples,
        lr=args.lr,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(
        f"\nMovie reviews ({DEFAULT_TASK}), MiniLM-L6, "
        f"{args.max_train_examples} training examples, epochs: "
        f"{', '.join(f'{method} {n}' for method, n in result.epochs.items())}:\n"
    )
    print(result.table())
    print("\nShifted-domain accuracy (posterior mean / posterior predictive):\n")
    rows = [
        {"run": method}
        | {
            domain: f"{m['posterior_mean']['accuracy']:.4f} / "
            f"{m['posterior_predictive']['accuracy']:.4f}"
            for domain, m in domains.items()
        }
        for method, domains in result.shifted.items()
    ]
    print(format_table(rows, ["run", *SHIFT_DOMAINS]))
    print("\nRun directories:")
    for method, path in result.run_dirs.items():
        print(f"  {method}: {path}")
    print(f"\nwall time {result.seconds:.0f} s")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    analysis = analyze_runs(args.run_dirs, args.output_dir)
    for method in analysis.methods:
        print(f"\n{method.method}: {len(method.run_dirs)} run(s) as chains")
        print(method.heldout.describe())
        print("(PSIS-LOO is not reported: these examples are held out, not conditioned on)")
        for line in method.convergence:
            if line not in method.warnings:
                print(f"  convergence: {line}")
        for warning in method.warnings:
            print(f"  warning: {warning}")
        if method.prior_note:
            print(f"  note: {method.prior_note}")
        if method.summary is not None:
            print(f"hyperprior summary ({len(method.summary)} entries; lowest bulk ESS first).")
            print(RESTARTS_NOTE)
            print(method.weakest(args.summary_rows).to_string())
    print()
    print(format_summary(analysis.tables))
    print(f"\nreport: {analysis.report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monteclora",
        description="MonteCLoRA: Bayesian low-rank adaptation of language models with Pyro.",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (datasets' and transformers' too)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model with MonteCLoRA or LoRA")
    train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sweep",
        help="a learning-rate × batch-size (× seed, × --grid axes) grid of runs per method, and "
        "its summary",
    )
    train_options(p, swept=True)
    group = p.add_argument_group("grid")
    group.add_argument(
        "--methods",
        type=comma_list(str),
        default=["lora", "monteclora"],
        help=f"comma-separated, among {', '.join(METHOD_NAMES)} (default: lora,monteclora)",
    )
    group.add_argument(
        "--lrs", type=comma_list(float), required=True, help="comma-separated learning rates"
    )
    group.add_argument(
        "--batch-sizes", type=comma_list(int), default=[16, 32], help="(default: 16,32)"
    )
    group.add_argument("--seeds", type=comma_list(int), default=[0], help="(default: 0)")
    group.add_argument(
        "--grid",
        type=grid_axis,
        action=GridAxes,
        default=None,
        metavar="FIELD=V1,V2,...",
        help="one more grid axis over any other TrainConfig or MonteCLoRAConfig field (not "
        "task or the list-valued ones), e.g. sample_scaler=1e-4,5e-3 or objective=paper,bayes; "
        "repeatable, cells are the full product. Values take the field's type ('none': None); "
        "objective=bayes gives its cells the bayes preset, set options overriding it. A method "
        "that ignores the field (lora with sample_scaler) still runs one cell per value. "
        "Cell directories end in -FIELDVALUE; the summary has a row per method and values",
    )
    group.add_argument(
        "--output-dir", default=None, help="sweep directory (default: runs/sweep-TASK)"
    )
    group.add_argument(
        "--workers", type=int, default=1, help="cells run at once (default: %(default)s)"
    )
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per cell (default: CPU count / workers)",
    )
    group.add_argument(
        "--backend",
        default="local",
        choices=sweep.BACKENDS,
        help="local processes, or Ray Tune trials (the ray extra) (default: %(default)s)",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "sweep-report", help="docs/results.md: the robustness tables of finished sweeps"
    )
    p.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep directories")
    p.add_argument("--output", default="docs/results.md", help="(default: %(default)s)")
    p.set_defaults(func=cmd_sweep_report)

    p = sub.add_parser("evaluate", help="evaluate a finished run, on any task or split")
    p.add_argument("run_dir", help="a run directory written by `monteclora train`")
    p.add_argument("--task", default=None, help="task to evaluate on (default: the run's)")
    p.add_argument("--split", default=None, help="split (default: the run's evaluation split)")
    p.add_argument("--data-dir", default=None, help="local data directory")
    p.add_argument(
        "--num-samples", type=int, default=None, help="posterior draws (default: the run's)"
    )
    p.add_argument("--max-eval-examples", type=int, default=None, help="use the first N examples")
    p.add_argument("--batch-size", type=int, default=None, help="(default: the run's)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a run's posterior-mean adapter in PEFT's format")
    p.add_argument("run_dir", help="a finished monteclora or lora run directory")
    p.add_argument(
        "--peft",
        required=True,
        metavar="OUT_DIR",
        help="new PEFT LoRA adapter directory (load it with peft.PeftModel.from_pretrained)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    p.set_defaults(func=cmd_export)

    post_hoc.add_parsers(sub)

    p = sub.add_parser("analyze", help="posterior analysis, plots and an HTML report of runs")
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="finished runs; runs of one method become the chains of one posterior",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="where the PNGs and report.html go (default: FIRST_RUN_DIR/analysis)",
    )
    p.add_argument(
        "--summary-rows",
        type=int,
        default=12,
        help="rows of the hyperprior summary to print (default: %(default)s)",
    )
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo", help="MonteCLoRA against LoRA on movie reviews with MiniLM")
    p.add_argument("--output-dir", default="runs/demo", help="(default: %(default)s)")
    p.add_argument("--max-train-examples", type=int, default=2000, help="(default: %(default)s)")
    p.add_argument("--max-eval-examples", type=int, default=300, help="(default: %(default)s)")
    p.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="LoRA's epochs (the calibration study's, which the uncertainty preset was "
        "selected around); MonteCLoRA then trains its guide alone around the LoRA run for "
        "--preset uncertainty's epochs (default: %(default)s)",
    )
    p.add_argument("--max-length", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=8, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def _hide_library_progress_bars() -> None:
    """``--quiet`` for the libraries too: datasets' (tokenising, casting) and transformers'
    (loading weights) progress bars, for the rest of the process."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.quiet:
        _hide_library_progress_bars()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, TrainingError) as err:
        logging.getLogger("monteclora").error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
