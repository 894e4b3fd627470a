"""The cells of a robustness sweep: its grid, extra axes, names and configurations."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from monteclora_pyro import runs
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import get_task_spec
from monteclora_pyro.models.likelihood import get_likelihood
from monteclora_pyro.training import METHOD_NAMES, TrainConfig
from monteclora_pyro.training.methods import METHODS

SWEPT_FIELDS = ("method", "lr", "batch_size", "seed", "output_dir")
_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(MonteCLoRAConfig))
#: Fields an extra grid axis may vary: one task per sweep, no list-valued fields.
GRID_FIELDS = tuple(
    f
    for f in (*_TRAIN_FIELDS, *_MODEL_FIELDS)
    if f not in (*SWEPT_FIELDS, "task", "target_modules", "modules_to_save")
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a sweep.

    Parameters
    ----------
    train : TrainConfig
        Its training configuration (``output_dir`` is the cell's run directory).
    model : MonteCLoRAConfig
        Its model configuration.
    axes : dict
        ``{field: value}`` of the extra grid axes (empty for a plain sweep).
    """

    train: TrainConfig
    model: MonteCLoRAConfig
    axes: dict = dataclasses.field(default_factory=dict)


def axis_text(value: object) -> str:
    """A grid value as text: ``none``, ``true``/``false``, floats as ``:g``, else ``str``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_name(
    method: str, lr: float, batch_size: int, seed: int, axes: Mapping | None = None
) -> str:
    """The directory name of a grid cell, e.g. ``lora-lr0.0003-bs16-s0``.

    Extra axes follow in field-name order, so that the order of the options does not rename
    cells: ``monteclora-lr0.0005-bs16-s0-objectivebayes-sample_scaler0.005``. Characters
    other than letters, digits and ``._+-`` in a value become ``_``.
    """
    name = f"{method}-lr{lr:g}-bs{batch_size}-s{seed}"
    for field in sorted(axes or {}):
        name += f"-{field}" + re.sub(r"[^A-Za-z0-9._+-]", "_", axis_text(axes[field]))
    return name


def axis_order(value: object) -> tuple:
    """A sort key of grid values: ``None`` last, values of one type in their natural order."""
    return value is None, type(value).__name__, 0 if value is None else value


def group_label(method: str, axes: Mapping | None = None) -> str:
    """The summary key of a method and extra-axis values: ``method`` alone without axes."""
    return " ".join([method, *(f"{k}={axis_text(v)}" for k, v in (axes or {}).items())])


def model_config(options: Mapping, preset: str | None = None) -> MonteCLoRAConfig:
    """``MonteCLoRAConfig`` of ``options``: a preset, overridden by them.

    The preset is ``preset`` (:meth:`MonteCLoRAConfig.preset`) if given; otherwise
    ``objective="bayes"`` starts from :meth:`MonteCLoRAConfig.bayes`, any other from the
    class defaults.
    """
    if preset is None:
        preset = "bayes" if options.get("objective") == "bayes" else "default"
    return MonteCLoRAConfig.preset(preset, **options)


def grid(
    base: TrainConfig,
    methods: list[str],
    lrs: list[float],
    batch_sizes: list[int],
    seeds: list[int],
    output_dir: str | Path,
) -> list[TrainConfig]:
    """The training configurations of a plain grid: :func:`grid_cells` without extra axes."""
    cells = grid_cells(base, {}, methods, lrs, batch_sizes, seeds, output_dir)
    return [cell.train for cell in cells]


def grid_cells(
    base: TrainConfig,
    model_options: Mapping,
    methods: Sequence[str],
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    output_dir: str | Path,
    axes: Mapping[str, Sequence] | None = None,
) -> list[Cell]:
    """Every cell, validated: seed outermost, then lr, batch size, extra axes, method.

    Methods vary fastest, so an interrupted sweep is balanced across methods. A cell's
    training configuration is ``base`` with its grid values (a local model or data directory
    made absolute), in ``output_dir / cell_name(...)``; its model configuration is
    :func:`model_config` of ``model_options`` and its model-field axis values, so that
    ``objective="bayes"`` gives the bayes preset in its cells.

    Parameters
    ----------
    base : TrainConfig
        The settings shared by the cells.
    model_options : mapping
        Explicitly set :class:`MonteCLoRAConfig` fields.
    methods, lrs, batch_sizes, seeds : sequences
        The grid's own axes.
    output_dir : str or path-like
        The sweep directory.
    axes : mapping of str to sequence, optional
        Extra axes ``{field: values}``, ``field`` among :data:`GRID_FIELDS`.

    Returns
    -------
    list of Cell

    Raises
    ------
    ValueError
        If a list is empty or repeats a value, a method or field is unknown, an axis is also
        in ``model_options``, a cell's configuration is invalid or its method does not run
        its objective (naming the cell), two cells get one name, or the task is a next-token
        task (the summary compares accuracy, NLL and ECE of class probabilities).
    """
    axes = dict(axes or {})
    for field in axes:
        if field not in GRID_FIELDS:
            raise ValueError(f"{field!r} is not a grid field; allowed: {', '.join(GRID_FIELDS)}")
        if field in model_options:
            raise ValueError(f"{field} is both a set option and a grid axis")
    lists = {"methods": methods, "lrs": lrs, "batch_sizes": batch_sizes, "seeds": seeds}
    for name, values in {**lists, **axes}.items():
        if not values:
            raise ValueError(f"the sweep needs at least one value in {name}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} has repeated values: {list(values)}")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; allowed: {', '.join(METHOD_NAMES)}")
    refuse_next_token(base.task)
    root = Path(output_dir).absolute()
    cells = []
    for seed, lr, bs, *values in itertools.product(seeds, lrs, batch_sizes, *axes.values()):
        extra = dict(zip(axes, values, strict=True))
        for method in methods:
            name = cell_name(method, lr, bs, seed, extra)
            fixed = {"method": method, "lr": lr, "batch_size": bs, "seed": seed}
            train = {k: v for k, v in extra.items() if k in _TRAIN_FIELDS}
            # Absolute local paths: a Ray trial runs in a working directory of its own.
            for field in ("model", "data_dir"):
                path = train.get(field, getattr(base, field))
                if path is not None and Path(path).exists():
                    train[field] = str(Path(path).absolute())
            model = {k: v for k, v in extra.items() if k in _MODEL_FIELDS}
            try:
                cell = Cell(
                    dataclasses.replace(base, **fixed, **train, output_dir=str(root / name)),
                    model_config({**model_options, **model}),
                    extra,
                )
            except (TypeError, ValueError) as err:
                raise ValueError(f"sweep cell {name}: {err}") from err
            objectives = METHODS[method].objectives
            if objectives is not None and cell.model.objective not in objectives:
                raise ValueError(
                    f"sweep cell {name}: method {method} runs objective "
                    f"{' or '.join(objectives)} only, not {cell.model.objective}; leave it out "
                    "of --methods"
                )
            cells.append(cell)
    names = [Path(c.train.output_dir).name for c in cells]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"different cells get the same directory names: {twice}")
    return cells


def refuse_next_token(task: str, run_dir: Path | None = None) -> None:
    """Refuse a task without class probabilities, naming ``run_dir`` when given."""
    spec = get_task_spec(task)
    if not get_likelihood(spec.likelihood).class_probabilities:
        where = f"{run_dir} is a run of" if run_dir is not None else "sweeps do not run"
        kind = spec.likelihood.replace("_", "-")
        raise ValueError(
            f"{where} the {kind} task {spec.name}: a sweep summarises accuracy, NLL and ECE "
            f"of class probabilities, which {kind} runs do not have; train {kind} runs "
            f"one by one with `monteclora train` and compare their {runs.METRICS_FILE}"
        )
