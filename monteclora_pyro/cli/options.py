"""The options of ``monteclora train`` and ``sweep``, and the configurations they give."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from monteclora_pyro.config import PRESETS, MonteCLoRAConfig
from monteclora_pyro.data import TASKS, resolve_task_spec
from monteclora_pyro.experiments.grid import GRID_FIELDS, SWEPT_FIELDS, model_config
from monteclora_pyro.training import (
    METHOD_NAMES,
    OPTIMIZERS,
    PRESET_TRAINING,
    TrainConfig,
    check_preset,
    preset_training,
)
from monteclora_pyro.training.tracking import REPORT_TO, check_report_to

_MODEL_FLAGS = {f.name for f in dataclasses.fields(MonteCLoRAConfig)}


_SWEPT = ("method", "lr", "batch_size", "seed", "output_dir", "resume")


def train_options(parser: argparse.ArgumentParser, swept: bool = False) -> None:
    """Every training option; with ``swept``, none of those a sweep sets per cell."""
    d = TrainConfig()
    presets = {name: preset_training(name) for name in PRESET_TRAINING}

    def add(flag: str, **kwargs) -> None:
        name = flag[2:].replace("-", "_")
        if swept and name in _SWEPT:
            return
        set_by = {preset: values[name] for preset, values in presets.items() if name in values}
        if set_by and not swept:
            # Unset, it takes the preset's value (train_config), else TrainConfig's default.
            kwargs["default"] = argparse.SUPPRESS
            also = "".join(f"; --preset {preset}: {value}" for preset, value in set_by.items())
            kwargs["help"] = kwargs["help"].replace("%(default)s", f"{getattr(d, name)}{also}")
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
        type=epochs_value,
        default=d.epochs,
        help="passes over the training set; a fraction (0.5) stops part-way through the "
        "last (default: %(default)s)",
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
    add(
        "--guide-delay-ratio",
        type=float,
        default=d.guide_delay_ratio,
        help="fraction of the steps trained as plain LoRA first: KL off, guide held "
        "(default: %(default)s)",
    )
    add(
        "--guide-lr-restart",
        action=argparse.BooleanOptionalAction,
        default=d.guide_lr_restart,
        help="run the guide's learning-rate schedule over the steps after the delay "
        "(default: %(default)s)",
    )
    add(
        "--freeze-adapter-after-delay",
        action=argparse.BooleanOptionalAction,
        default=d.freeze_adapter_after_delay,
        help="run the adapter's schedule over the delay's steps, then hold it while the guide "
        "trains (default: %(default)s)",
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
        "--eval-every-epoch",
        action=argparse.BooleanOptionalAction,
        default=d.eval_every_epoch,
        help="evaluate at every epoch end; --no-eval-every-epoch: only at the end "
        "(default: %(default)s)",
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
        "--from-run",
        default=None,
        metavar="RUN_DIR",
        help="post-hoc MonteCLoRA around a finished lora run of ours: start from its adapter "
        "and head, frozen, and train only the guide; pass the run's --seed, "
        "--validation-fraction and --max-train-examples (the same validation split)",
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
    if not swept:
        group.add_argument(
            "--preset",
            default=None,
            choices=PRESETS,
            help="start from MonteCLoRAConfig.paper(), .bayes() or .uncertainty() (the "
            "calibration study's choice, docs/calibration.md: a guide trained around a "
            "finished lora run, --from-run, with the training options marked '--preset "
            "uncertainty' above); options set override it "
            "(default: bayes with --objective bayes, else the class defaults)",
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


def epochs_value(text: str) -> int | float:
    """``--epochs``: a whole number stays an int (as saved in ``config.json``), else a float."""
    value = float(text)
    return int(value) if value.is_integer() else value


def configs(args: argparse.Namespace) -> tuple[TrainConfig, MonteCLoRAConfig]:
    return train_config(args), model_config(model_options(args), getattr(args, "preset", None))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of the parsed training options (``None`` values left out)."""
    values = vars(args)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_kwargs = {k: v for k, v in values.items() if k in train_fields and v is not None}
    train_kwargs = preset_training(values.get("preset")) | train_kwargs
    if "method" in values:
        task = Path(args.task).name  # a save_to_disk directory: its name
        train_kwargs.setdefault("output_dir", f"runs/{task}-{args.method}-s{args.seed}")
    train_cfg = TrainConfig(**train_kwargs)
    check_preset(values.get("preset"), train_cfg)
    return train_cfg


def model_options(args: argparse.Namespace) -> dict:
    """The MonteCLoRA options set on the command line (unset ones are absent)."""
    return {k: v for k, v in vars(args).items() if k in _MODEL_FLAGS}


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


_TYPES = {
    **typing.get_type_hints(TrainConfig),
    **typing.get_type_hints(MonteCLoRAConfig),
}
_NOT_AXES = {
    **dict.fromkeys(SWEPT_FIELDS, "the sweep sets it per cell (--methods, --lrs, ...)"),
    "task": "a sweep holds one task; run one sweep per task",
    "target_modules": "it takes a list; set it with --target-modules",
    "modules_to_save": "it takes a list; set it with --modules-to-save",
}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def grid_axis(text: str) -> tuple[str, list]:
    """Parse ``FIELD=V1,V2,...`` of ``--grid`` with the type of the field.

    ``FIELD`` is a field of ``TrainConfig`` or ``MonteCLoRAConfig`` (``-`` may stand for
    ``_``); values are int, float, str or bool (``true``/``false``) as the field is, and
    ``none`` is ``None`` for an optional field.

    Returns
    -------
    tuple
        ``(field, values)``.

    Raises
    ------
    argparse.ArgumentTypeError
        If the field is unknown (listing the grid fields) or cannot be an axis, a value does
        not parse, or the list is empty or repeats a value.
    """
    field, equals, listed = text.partition("=")
    field = field.strip().replace("-", "_")
    if not equals:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=V1,V2,...")
    if field in _NOT_AXES:
        raise argparse.ArgumentTypeError(f"{field} cannot be a grid axis: {_NOT_AXES[field]}")
    if field not in GRID_FIELDS:
        raise argparse.ArgumentTypeError(
            f"unknown field {field!r}; grid fields: {', '.join(sorted(GRID_FIELDS))}"
        )
    values = [_grid_value(field, v.strip()) for v in listed.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{field}: the list of values is empty")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{field}: repeated values {values}")
    return field, values


def _grid_value(field: str, text: str) -> object:
    hint = _TYPES[field]
    optional = type(None) in typing.get_args(hint)
    (kind,) = [k for k in typing.get_args(hint) or (hint,) if k is not type(None)]
    if optional and text.lower() == "none":
        return None
    parse = epochs_value if field == "epochs" else kind
    try:
        return _BOOLS[text.lower()] if kind is bool else parse(text)
    except (KeyError, ValueError):
        expected = _KINDS[kind] + (" or 'none'" if optional else "")
        raise argparse.ArgumentTypeError(f"{field}: {text!r} is not {expected}") from None


class GridAxes(argparse.Action):
    """``--grid``, repeatable: ``{field: values}`` in the order given; a field only once."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        field, parsed = values
        axes = dict(getattr(namespace, self.dest) or {})
        if field in axes:
            raise argparse.ArgumentError(
                self, f"{field} is given twice; give all its values at once: {field}=V1,V2,..."
            )
        setattr(namespace, self.dest, axes | {field: parsed})


def grid_axes(args: argparse.Namespace) -> dict[str, list]:
    """The extra axes of ``monteclora sweep``, refusing one that is also set as an option.

    A training option counts as set when its value differs from the ``TrainConfig`` default.

    Raises
    ------
    ValueError
        If a ``--grid`` field is also given as an option.
    """
    axes = args.grid or {}
    values = vars(args)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for field in axes:
        set_model = field in _MODEL_FLAGS and field in values
        set_train = field in defaults and values.get(field) not in (None, defaults[field])
        if set_model or set_train:
            flag = "--" + field.replace("_", "-")
            raise ValueError(f"{field} is both set by {flag} and a --grid axis; give one of them")
    return axes
