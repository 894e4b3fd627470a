"""Post-hoc commands: each turns finished runs into a new, ordinary run directory."""

from __future__ import annotations

import argparse

from monteclora_pyro.analysis.tables import format_metrics_table
from monteclora_pyro.experiments.ensemble import (
    CHECKPOINT_ENSEMBLE_METHOD,
    ENSEMBLE_METHOD,
    checkpoint_ensemble,
    ensemble_runs,
)
from monteclora_pyro.experiments.laplace import HESSIANS, PREDICTIVES, SUBSETS, laplace_run
from monteclora_pyro.experiments.temperature import temperature_scale


def cmd_calibrate(args: argparse.Namespace) -> int:
    metrics = temperature_scale(args.run_dir, args.output_dir)
    fitted = (
        f"temperature {metrics['temperature']:.4g} (plug-in), "
        f"{metrics['predictive_temperature']:.4g} (draws)"
    )
    return _report(fitted, metrics, args.output_dir)


def cmd_ensemble(args: argparse.Namespace) -> int:
    metrics = ensemble_runs(args.run_dirs, args.output_dir)
    return _report(f"{ENSEMBLE_METHOD} of {len(args.run_dirs)}", metrics, args.output_dir)


def cmd_checkpoint_ensemble(args: argparse.Namespace) -> int:
    metrics = checkpoint_ensemble(args.run_dir, args.output_dir, args.members)
    name = f"{CHECKPOINT_ENSEMBLE_METHOD} of epochs {metrics['epochs']}"
    return _report(name, metrics, args.output_dir)


def cmd_laplace(args: argparse.Namespace) -> int:
    metrics = laplace_run(
        args.run_dir,
        args.output_dir,
        hessian=args.hessian,
        predictive=args.predictive,
        num_samples=args.num_samples,
        subset=args.subset,
    )
    name = (
        f"laplace ({metrics['laplace_subset']}, {args.hessian}, {args.predictive}), "
        f"prior precision {metrics['prior_precision']:.3g}"
    )
    return _report(name, metrics, args.output_dir)


def _report(name: str, metrics: dict, output_dir: str) -> int:
    print(format_metrics_table({name: metrics}))
    print(f"\nrun directory: {output_dir}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the post-hoc commands to the ``monteclora`` subcommands ``sub``."""
    p = sub.add_parser("ensemble", help="average finished runs (e.g. seeds) into a deep ensemble")
    p.add_argument("run_dirs", nargs="+", help="finished runs of one task and split")
    p.add_argument("--output-dir", required=True, help="the ensemble's new run directory")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("checkpoint-ensemble", help="average the last M kept epochs of a run")
    p.add_argument("run_dir", help="a finished run trained with --keep-epoch-checkpoints M >= 2")
    p.add_argument("--members", type=int, default=None, help="M (default: every kept epoch)")
    p.add_argument("--output-dir", required=True, help="the ensemble's new run directory")
    p.set_defaults(func=cmd_checkpoint_ensemble)

    p = sub.add_parser("calibrate", help="temperature-scale a run on its carved validation split")
    p.add_argument("run_dir", help="a finished run trained with --validation-fraction > 0")
    p.add_argument("--output-dir", required=True, help="the calibrated run's new run directory")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("laplace", help="Laplace-LoRA: a Laplace posterior around a lora run")
    p.add_argument("run_dir", help="a finished lora run trained with --validation-fraction > 0")
    p.add_argument("--output-dir", required=True, help="the Laplace run's new run directory")
    p.add_argument(
        "--hessian", choices=HESSIANS, default="kron", help="the GGN's structure (default: kron)"
    )
    p.add_argument(
        "--predictive",
        choices=PREDICTIVES,
        default="glm",
        help="linearised (glm, the default) or weight-sampling (mc) posterior predictive",
    )
    p.add_argument(
        "--subset",
        choices=SUBSETS,
        default="auto",
        help="the adapter and head, the last layer, or auto: the adapter if laplace-torch can",
    )
    p.add_argument("--num-samples", type=int, default=None, help="S draws (default: the run's)")
    p.set_defaults(func=cmd_laplace)
