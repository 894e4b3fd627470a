"""The options of ``monteclora train`` and ``sweep``, and the configurations they give."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import TASKS, resolve_task_spec
from monteclora_pyro.training import METHOD_NAMES, OPTIMIZERS, TrainConfig
from monteclora_pyro.training.tracking import REPORT_TO, check_report_to

_MODEL_FLAGS = {f.name for f in dataclasses.fields(MonteCLoRAConfig)}


_SWEPT = ("method", "lr", "batch_size", "seed", "output_dir", "resume")


def train_options(parser: argparse.ArgumentParser, swept: bool = False) -> None:
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
        type=checked(resolve_task_spec),
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
        type=optional_float,
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
        "--no-eval-every-epoch",
        dest="eval_every_epoch",
        action="store_false",
        help="evaluate only at the end, not at every epoch end",
    )
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
    add(
        "--keep-epoch-checkpoints",
        type=int,
        default=d.keep_epoch_checkpoints,
        metavar="M",
        help="keep the states and predictions of the last M epochs, the members of a "
        "checkpoint ensemble (default: %(default)s)",
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
        type=checked(check_report_to),
        help=f"{', '.join(REPORT_TO)}, or several comma-separated (default: %(default)s)",
    )
    group = parser.add_argument_group(
        "MonteCLoRA model (docs/design.md §6; an unset option takes the default of the "
        "objective: MonteCLoRAConfig.paper() or MonteCLoRAConfig.bayes())"
    )
    paper, bayes = MonteCLoRAConfig.paper(), MonteCLoRAConfig.bayes()
    special = {
        "target_modules": (names, "comma-separated module names (default: the architecture's)"),
        "modules_to_save": (names, "comma-separated module names (default: the architecture's)"),
        "kl_loss_weight": (optional_float, "η (paper) or temperature (bayes); 'none': ELBO"),
        "wishart_df": (optional_float, "ν0; 'none' means r"),
        "precision_df": (optional_float, "ν0 of the precision (bayes); 'none' means r"),
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


def checked(check):
    """An argparse type keeping the text; ``check(text)`` raising ValueError is a usage error."""

    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        return text

    return parse


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def configs(args: argparse.Namespace) -> tuple[TrainConfig, MonteCLoRAConfig]:
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


def comma_list(kind: type):
    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from err
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse
