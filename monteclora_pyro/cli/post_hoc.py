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
from monteclora_pyro.experiments.temperature import temperature_scale


def cmd_calibrate(args: argparse.Namespace) -> int:
    metrics = temperature_scale(args.run_dir, args.output_dir)
    return _report(f"temperature {metrics['temperature']:.4g}", metrics, args.output_dir)


def cmd_ensemble(args: argparse.Namespace) -> int:
    metrics = ensemble_runs(args.run_dirs, args.output_dir)
    return _report(f"{ENSEMBLE_METHOD} of {len(args.run_dirs)}", metrics, args.output_dir)


def cmd_checkpoint_ensemble(args: argparse.Namespace) -> int:
    metrics = checkpoint_ensemble(args.run_dir, args.output_dir, args.members)
    name = f"{CHECKPOINT_ENSEMBLE_METHOD} of epochs {metrics['epochs']}"
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
