"""The ``monteclora`` command: train, sweep, evaluate, export, ensemble, calibrate and more."""

from __future__ import annotations

import argparse
import dataclasses
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
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import DEFAULT_TASK, SHIFT_DOMAINS, TASKS, resolve_task_spec
from monteclora_pyro.experiments import sweep
from monteclora_pyro.experiments.demo import run_demo
from monteclora_pyro.experiments.ensemble import ENSEMBLE_METHOD, ensemble_runs
from monteclora_pyro.experiments.results import write_results
from monteclora_pyro.experiments.temperature import temperature_scale
from monteclora_pyro.peft_interop import export_peft_adapter
from monteclora_pyro.training import (
    METHOD_NAMES,
    OPTIMIZERS,
    TrainConfig,
    TrainingError,
    evaluate_run,
    is_main_process,
    train,
)
from monteclora_pyro.training.tracking import REPORT_TO, check_report_to

_MODEL_FLAGS = {f.name for f in dataclasses.fields(MonteCLoRAConfig)}


_SWEPT = ("method", "lr", "batch_size", "seed", "output_dir", "resume")


def _train_options(parser: argparse.ArgumentParser, swept: bool = False) -> None:
    """Every training option; with ``swept``, none of those a sweep sets per cell."""
    d = TrainConfig()

    def add(flag: str, **kwargs) -> None:
        if not (swept and flag[2:].replace("-", "_") in _SWEPT):
            parser.add_argument(flag, **kwargs)

    add(
        "--model",
        default=d.model,
        help="'minilm' (bundled MiniLM-L6), a local Hugging Face directory or a hub id "
        "(default: %(default)s)",
    )
    add(
        "--task",
        default=d.task,
        type=_checked(resolve_task_spec),
        metavar="TASK",
        help=f"task name, one of {', '.join(sorted(TASKS))}, or a directory written by "
        "datasets' save_to_disk (columns text or text_a[, text_b], label) (default: %(default)s)",
    )
    add(
        "--data-dir",
        default=None,
        help="local GLUE/SuperGLUE directory (default: $MONTECLORA_DATA, else the hub)",
    )
    add(
        "--method",
        default=d.method,
        choices=METHOD_NAMES,
        help="monteclora (MonteCLoRAGuide), lora (LoRAGuide), or PEFT's peft-lora or "
        "peft-monteclora (the peft extra) (default: %(default)s)",
    )
    add(
        "--epochs",
        type=int,
        default=d.epochs,
        help="passes over the training set (default: %(default)s)",
    )
    add("--max-steps", type=int, default=None, help="total steps; overrides --epochs")
    add("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    add("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    add(
        "--guide-lr",
        type=_optional_float,
        default=d.guide_lr,
        help="peak learning rate of the guide's variational parameters; 'none': --lr "
        "(default: %(default)s)",
    )
    add(
        "--kl-warmup-steps",
        type=int,
        default=d.kl_warmup_steps,
        help="grow the KL terms linearly to full weight over these steps (default: %(default)s)",
    )
    add("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    add("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="(default: %(default)s)")
    add(
        "--warmup-ratio",
        type=float,
        default=d.warmup_ratio,
        help="fraction of steps of linear warm-up (default: %(default)s)",
    )
    add(
        "--max-grad-norm",
        type=float,
        default=d.max_grad_norm,
        help="gradient clipping norm (default: %(default)s)",
    )
    add(
        "--max-length",
        type=int,
        default=d.max_length,
        help="maximum tokens per example (default: %(default)s)",
    )
    add("--max-train-examples", type=int, default=None, help="use the first N training examples")
    add("--max-eval-examples", type=int, default=None, help="use the first N evaluation examples")
    held_out = "a seeded fraction of training held out for `calibrate` (default: %(default)s)"
    add("--validation-fraction", type=float, default=d.validation_fraction, help=held_out)
    add("--eval-split", default=d.eval_split, help="split to evaluate (default: %(default)s)")
    add(
        "--num-samples",
        type=int,
        default=d.num_samples,
        help="posterior draws S for the posterior predictive (default: %(default)s)",
    )
    add("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    add(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="steps between checkpoints (default: %(default)s)",
    )
    add("--output-dir", default=None, help="run directory (default: runs/TASK-METHOD-sSEED)")
    add(
        "--device",
        default=d.device,
        help="torch device of a one-process run: cpu, cuda, cuda:N or mps (default: "
        "%(default)s); a data-parallel launch uses its own devices",
    )
    add("--resume", action="store_true", help="continue from the run directory's checkpoint")
    add(
        "--from-peft",
        default=None,
        metavar="ADAPTER_DIR",
        help="post-hoc MonteCLoRA: start from this PEFT LoRA adapter (its r, lora_alpha, "
        "targets and head), keep μ, B and the head frozen and train only the guide",
    )
    add(
        "--report-to",
        default=d.report_to,
        type=_checked(check_report_to),
        help=f"{', '.join(REPORT_TO)}, or several comma-separated (default: %(default)s)",
    )
    group = parser.add_argument_group(
        "MonteCLoRA model (docs/design.md §6; an unset option takes the default of the "
        "objective: MonteCLoRAConfig.paper() or MonteCLoRAConfig.bayes())"
    )
    paper, bayes = MonteCLoRAConfig.paper(), MonteCLoRAConfig.bayes()
    special = {
        "target_modules": (_names, "comma-separated module names (default: the architecture's)"),
        "modules_to_save": (_names, "comma-separated module names (default: the architecture's)"),
        "kl_loss_weight": (_optional_float, "η (paper) or temperature (bayes); 'none': ELBO"),
        "wishart_df": (_optional_float, "ν0; 'none' means r"),
        "precision_df": (_optional_float, "ν0 of the precision (bayes); 'none' means r"),
        "objective": (str, "'paper' or 'bayes'"),
    }
    for field in dataclasses.fields(MonteCLoRAConfig):
        flag = "--" + field.name.replace("_", "-")
        kind, text = special.get(field.name, (type(getattr(paper, field.name)), ""))
        defaults = f"paper: {getattr(paper, field.name)}"
        if getattr(bayes, field.name) != getattr(paper, field.name):
            defaults += f", bayes: {getattr(bayes, field.name)}"
        if field.name not in ("target_modules", "modules_to_save"):
            text = f"{text} (default: {defaults})".strip()
        # Unset options are left out, so that the objective's preset fills them in.
        group.add_argument(flag, default=argparse.SUPPRESS, type=kind, help=text)


def _checked(check):
    """An argparse type keeping the text; ``check(text)`` raising ValueError is a usage error."""

    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        return text

    return parse


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _configs(args: argparse.Namespace) -> tuple[TrainConfig, MonteCLoRAConfig]:
    values = vars(args)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_kwargs = {k: v for k, v in values.items() if k in train_fields and v is not None}
    if "method" in values:
        task = Path(args.task).name  # a save_to_disk directory: its name
        train_kwargs.setdefault("output_dir", f"runs/{task}-{args.method}-s{args.seed}")
    model_kwargs = {k: v for k, v in values.items() if k in _MODEL_FLAGS}
    preset = (
        MonteCLoRAConfig.bayes if model_kwargs.get("objective") == "bayes" else MonteCLoRAConfig
    )
    return TrainConfig(**train_kwargs), preset(**model_kwargs)


def cmd_train(args: argparse.Namespace) -> int:
    train_cfg, model_cfg = _configs(args)
    metrics = train(train_cfg, model_cfg, resume=args.resume, progress=not args.quiet)
    if is_main_process():  # under accelerate launch / torchrun, rank 0 reports
        print(_format_table({train_cfg.method: metrics}))
        print(f"run directory: {train_cfg.output_dir}")
    return 0


def _list(kind: type):
    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from err
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse


def cmd_sweep(args: argparse.Namespace) -> int:
    base, model_cfg = _configs(args)
    output_dir = Path(args.output_dir or f"runs/sweep-{base.task}")
    cells = sweep.grid(base, args.methods, args.lrs, args.batch_sizes, args.seeds, output_dir)
    records = sweep.run_sweep(
        cells, model_cfg, workers=args.workers, backend=args.backend, threads=args.threads
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


def cmd_post_hoc(args: argparse.Namespace) -> int:  # ensemble, calibrate: a new run directory
    if args.command == "calibrate":
        metrics = temperature_scale(args.run_dir, args.output_dir)
        name = f"temperature {metrics['temperature']:.4g}"
    else:
        metrics = ensemble_runs(args.run_dirs, args.output_dir)
        name = f"{ENSEMBLE_METHOD} of {len(args.run_dirs)}"
    print(_format_table({name: metrics}))
    print(f"\nrun directory: {args.output_dir}")
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
        f"{args.max_train_examples} training examples, {args.epochs} epoch(s):\n"
    )
    print(_format_table(result.metrics))
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
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model with MonteCLoRA or LoRA")
    _train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sweep",
        help="a learning-rate × batch-size (× seed) grid of runs per method, and its summary",
    )
    _train_options(p, swept=True)
    group = p.add_argument_group("grid")
    group.add_argument(
        "--methods",
        type=_list(str),
        default=["lora", "monteclora"],
        help=f"comma-separated, among {', '.join(METHOD_NAMES)} (default: lora,monteclora)",
    )
    group.add_argument(
        "--lrs", type=_list(float), required=True, help="comma-separated learning rates"
    )
    group.add_argument("--batch-sizes", type=_list(int), default=[16, 32], help="(default: 16,32)")
    group.add_argument("--seeds", type=_list(int), default=[0], help="(default: 0)")
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

    p = sub.add_parser("ensemble", help="average finished runs (e.g. seeds) into a deep ensemble")
    p.add_argument("run_dirs", nargs="+", help="finished runs of one task and split")
    p.add_argument("--output-dir", required=True, help="the ensemble's new run directory")
    p.set_defaults(func=cmd_post_hoc)
    p = sub.add_parser("calibrate", help="temperature-scale a run on its carved validation split")
    p.add_argument("run_dir", help="a finished run trained with --validation-fraction > 0")
    p.add_argument("--output-dir", required=True, help="the calibrated run's new run directory")
    p.set_defaults(func=cmd_post_hoc)

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
    p.add_argument("--epochs", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--max-length", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=8, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, TrainingError) as err:
        logging.getLogger("monteclora").error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
